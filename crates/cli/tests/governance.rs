//! Governance through what users run: `nightshift dev` with authentication on and the operator's
//! namespace policy in its config (every `http_get` of the default namespace needs approval;
//! the agent's own manifest says nothing of it), the `nightshift approvals` CLI, and the
//! console's Approve button in a real headless Chromium. The model is the scripted
//! OpenAI-compatible server (a deterministic tool call); the side effect is a real HTTP route
//! here that records what it receives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Dev;
use common::browser::*;
use nightshift_core::pb;
use nightshift_rpc::CallChannel;
use pb::manager_service_client::ManagerServiceClient;

/// The scripted model, plus `GET /send` (the side effect): records each request's path and query.
async fn model_and_outbox() -> (String, Arc<nightshift_testkit::llm::Script>, Arc<Mutex<Vec<String>>>) {
    let script = Arc::new(nightshift_testkit::llm::Script::default());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let send = axum::Router::new().route(
        "/send",
        axum::routing::get(move |uri: axum::http::Uri| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(uri.to_string());
                "sent"
            }
        }),
    );
    let app = nightshift_testkit::llm::router(script.clone()).merge(send);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), script, seen)
}

/// `nightshift approvals ARGS -o json` against `dev` with `key`.
fn approvals_cli(dev: &Dev, key: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .args(["approvals"])
        .args(args)
        .args(["-o", "json", "--endpoint", &dev.endpoint])
        .env("NIGHTSHIFT_API_KEY", key)
        .output()
        .unwrap();
    assert!(out.status.success(), "nightshift approvals {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn wait_status(m: &mut ManagerServiceClient<CallChannel>, run: &str, want: pb::RunStatus) -> pb::Run {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = m.get_run(pb::GetRunRequest { run_id: run.into() }).await.unwrap().into_inner().run.unwrap();
        if r.status() == want {
            return r;
        }
        assert!(Instant::now() < deadline, "run {run} never reached {want:?}: {r:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn events_of(base: &str, key: &str, run: &str, ty: pb::EventType) -> Vec<pb::Event> {
    let mut api = pb::event_service_client::EventServiceClient::new(channel(base, key).await);
    let filter = pb::EventFilter { types: vec![ty as i32], run_ids: vec![run.into()], ..Default::default() };
    let req = pb::ListEventsRequest { filter: Some(filter), ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = api.list_events(req.clone()).await.unwrap().into_inner().events;
        if !events.is_empty() || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn field(e: &pb::Event, key: &str) -> String {
    match e.data.as_ref().and_then(|d| d.fields.get(key)).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_operator_gates_waits_for_a_person_who_approves_it_in_the_console() {
    let (llm, script, seen) = model_and_outbox().await;
    script.calls.lock().unwrap().push(("http_get".into(), format!("{{\"url\":\"{llm}/send?to=a\"}}")));
    let policy = "[manager.governance.default]\ntools = [{ tools = [\"http_get\"], action = \"require_approval\" }]\n";
    let secured = secured_dev(&llm, policy).await;
    let dev = &secured.dev;
    let (admin, operator, viewer) = (secured.admin.clone(), secured.operator.clone(), secured.viewer.clone());
    let base = dev.endpoint.clone();

    // An agent whose manifest has no governance section: the operator's policy still applies.
    let mut manager = ManagerServiceClient::new(channel(&base, &operator).await);
    let yaml = format!(
        "name: mailer\nmodel: {{provider: openai, model: scripted, base_url: '{llm}/v1'}}\n\
         task: {{query: 'Send the report'}}\nschedule: {{manual: true}}\ntools: {{local: [http_get]}}\npolicy: {{max_retries: 0}}"
    );
    manager.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: yaml }).await.unwrap();
    let trigger = pb::TriggerAgentRequest { agent: Some(pb::AgentRef::by_name("mailer")), query_override: None };
    let run = manager.trigger_agent(trigger).await.unwrap().into_inner().run.unwrap();
    wait_status(&mut manager, &run.id, pb::RunStatus::AwaitingApproval).await;
    assert!(seen.lock().unwrap().is_empty(), "nothing sent before approval");

    // The CLI lists it; the event says what waits; a viewer may see it but not decide.
    let listed = approvals_cli(dev, &viewer, &["list"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!((listed[0]["tool"].as_str(), listed[0]["status"].as_str()), (Some("http_get"), Some("pending")));
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let requested = events_of(&base, &admin, &run.id, pb::EventType::ApprovalRequested).await;
    assert_eq!(requested.len(), 1, "APPROVAL_REQUESTED");
    assert_eq!(field(&requested[0], "approval_id"), id);
    let mut as_viewer = ManagerServiceClient::new(channel(&base, &viewer).await);
    let req = pb::ApproveToolCallRequest { approval_id: id.clone(), arguments_json: None, reason: String::new() };
    let refused = as_viewer.approve_tool_call(req).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");

    // The operator approves in the console, editing the arguments.
    let profile = tempfile::tempdir().unwrap();
    let (mut browser, handler) = launch(profile.path()).await;
    let page = browser.new_page("about:blank").await.unwrap();
    sign_in(&page, &base, &operator).await;
    page.goto(format!("{base}/runs/{}", run.id)).await.unwrap();
    until(&page, "!!document.querySelector('p.waiting a')", "the run's waiting note").await;
    // The live timeline re-renders the section while the run waits: follow the link's address.
    let href: String = eval(&page, "document.querySelector('p.waiting a').href").await;
    assert!(href.ends_with(&format!("/approvals?run={}", run.id)), "{href}");
    page.goto(href).await.unwrap();
    until(&page, "!!document.querySelector('section.approval form.approve textarea')", "the approval form").await;
    shot(&page, "approvals.png").await;
    let edited = serde_json::json!({"url": format!("{llm}/send?to=b")}).to_string();
    let set = format!(
        "(() => {{ document.querySelector('section.approval form.approve textarea').value = {}; \
         document.querySelector('section.approval form.approve input[name=reason]').value = 'b, not a'; return true; }})()",
        serde_json::Value::String(edited.clone())
    );
    assert!(eval::<bool>(&page, &set).await);
    click(&page, "section.approval form.approve button[type=submit]").await;
    until(&page, "document.querySelector('section.approval .badge')?.textContent === 'approved'", "the decision").await;

    let done = wait_status(&mut manager, &run.id, pb::RunStatus::Succeeded).await;
    assert_eq!(*seen.lock().unwrap(), ["/send?to=b"], "the call ran once, with the edited arguments");
    assert!(done.result.contains("sent"), "{}", done.result);
    let decided = approvals_cli(dev, &operator, &["list", "--status", "approved"]);
    let decided = &decided.as_array().unwrap()[0];
    // The principal: the key's id and name.
    let by = decided["decided_by"].as_str().unwrap().to_owned();
    assert!(by.starts_with("key:") && by.ends_with(":ops"), "{by}");
    assert_eq!(decided["reason"].as_str(), Some("b, not a"));
    assert_eq!(decided["approved_arguments"].as_str(), Some(edited.as_str()));
    let decided = events_of(&base, &admin, &run.id, pb::EventType::ApprovalDecided).await;
    assert_eq!((field(&decided[0], "decision"), field(&decided[0], "by")), ("approved".into(), by));

    browser.close().await.unwrap();
    let _ = browser.wait().await;
    handler.abort();
}
