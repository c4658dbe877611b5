//! The console in a real browser: Debian's headless Chromium, driven over the DevTools protocol
//! (chromiumoxide), against `nightshift dev` with authentication on. The model is the scripted
//! OpenAI-compatible server (deterministic tool calls; a hosted model is unreachable here), each
//! turn delayed and the tool (`http_get` of a slow route) slow, so that the run's timeline
//! visibly fills in step by step. Screenshots of each page go to
//! `target/console-screenshots/` (docs/console.md shows them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::{Page, ScreenshotParams};
use common::Dev;
use futures::StreamExt;
use nightshift_core::pb;
use nightshift_rpc::{CallChannel, ClientOptions};
use pb::manager_service_client::ManagerServiceClient;
use tonic::transport::Channel;

const CHROMIUM: &str = "/usr/bin/chromium";

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn channel(endpoint: &str, key: &str) -> CallChannel {
    let ch = Channel::from_shared(endpoint.to_owned()).unwrap().connect().await.unwrap();
    ClientOptions { api_key: key.to_owned(), ..ClientOptions::default() }.wrap(ch)
}

/// The scripted model, plus `GET /slow` (answers after 2.5 s): the agent's slow tool call.
async fn model() -> (String, Arc<nightshift_testkit::llm::Script>) {
    let script = Arc::new(nightshift_testkit::llm::Script::default());
    let slow = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            "slow answer"
        }),
    );
    let app = nightshift_testkit::llm::router(script.clone()).merge(slow);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), script)
}

async fn eval<T: serde::de::DeserializeOwned>(page: &Page, js: &str) -> T {
    page.evaluate(js).await.unwrap_or_else(|e| panic!("{js}: {e}")).into_value().unwrap()
}

/// Waits until `js` is true in the page.
async fn until(page: &Page, js: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if page.evaluate(js).await.ok().and_then(|v| v.into_value::<bool>().ok()) == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what} ({js})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn shot(page: &Page, name: &str) {
    let png = page.screenshot(ScreenshotParams::builder().full_page(true).build()).await.unwrap();
    std::fs::write(screenshots().join(name), png).unwrap();
}

async fn click(page: &Page, selector: &str) {
    page.find_element(selector).await.unwrap_or_else(|e| panic!("{selector}: {e}")).click().await.unwrap();
}

async fn sign_in(page: &Page, base: &str, key: &str) {
    page.goto(format!("{base}/agents")).await.unwrap();
    until(page, "location.pathname === '/login' && !!document.querySelector('#credential')", "the sign-in page").await;
    page.find_element("#credential").await.unwrap().click().await.unwrap().type_str(key).await.unwrap();
    click(page, "section.signin button[type=submit]").await;
    until(page, "location.pathname === '/agents' && !!document.querySelector('table.agents')", "the agents page").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium package"
    );
    let (llm, script) = model().await;
    script.delay_ms.store(1500, Ordering::SeqCst);
    script.calls.lock().unwrap().push(("http_get".into(), format!("{{\"url\":\"{llm}/slow\"}}")));

    let keys = tempfile::tempdir().unwrap();
    let admin = format!("{:064x}", rand::random::<u128>());
    let admin_file = keys.path().join("admin.key");
    std::fs::write(&admin_file, &admin).unwrap();
    let config = format!(
        "[auth]\nmode = \"required\"\nbootstrap_admin_key_file = \"{}\"\n\
         [worker.tools]\nhttp_allow = [\"{llm}/\"]\n[worker.allow]\nprivate_egress = [\"127.0.0.1\"]\n",
        admin_file.display()
    );
    let dev = Dev::start(Some(&config));
    let base = dev.endpoint.clone();

    // Keys for an operator and a viewer; the demo agent (manual trigger) and a scheduled one.
    let mut auth = pb::auth_service_client::AuthServiceClient::new(channel(&base, &admin).await);
    let mut key = async |name: &str, role: &str| {
        let req =
            pb::CreateApiKeyRequest { name: name.into(), role: role.into(), ttl_seconds: 3600, namespaces: vec![] };
        auth.create_api_key(req).await.unwrap().into_inner().secret
    };
    let operator = key("ops", "operator").await;
    let viewer = key("watcher", "viewer").await;
    let mut manager: ManagerServiceClient<CallChannel> = ManagerServiceClient::new(channel(&base, &admin).await);
    for (name, schedule) in [("console-demo", "manual: true"), ("nightly-report", "cron: '0 3 * * *'")] {
        let yaml = format!(
            "name: {name}\nlabels: {{team: data}}\nmodel: {{provider: openai, model: scripted, base_url: '{llm}/v1'}}\n\
             task: {{query: 'Fetch the slow page and report'}}\nschedule: {{{schedule}}}\n\
             tools: {{local: [http_get]}}\npolicy: {{max_retries: 0}}"
        );
        manager.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: yaml }).await.unwrap();
    }
    let runs_of = async |m: &mut ManagerServiceClient<CallChannel>| {
        let agent = Some(pb::AgentRef::by_name("console-demo"));
        m.list_runs(pb::ListRunsRequest { agent, ..Default::default() }).await.unwrap().into_inner().runs
    };

    let profile = tempfile::tempdir().unwrap();
    let config = BrowserConfig::builder()
        .chrome_executable(CHROMIUM)
        .no_sandbox()
        .user_data_dir(profile.path())
        .window_size(1280, 900)
        .viewport(None)
        .args([
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .build()
        .unwrap();
    let (mut browser, mut handler) = Browser::launch(config).await.expect("launching Chromium");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = browser.new_page("about:blank").await.unwrap();

    // 1. Signing in: a wrong key is refused; the operator's key opens the agents page.
    page.goto(format!("{base}/agents")).await.unwrap();
    until(&page, "location.pathname === '/login'", "the redirect to sign in").await;
    shot(&page, "login.png").await;
    page.find_element("#credential").await.unwrap().click().await.unwrap().type_str("nsk_wrong").await.unwrap();
    click(&page, "section.signin button[type=submit]").await;
    until(&page, "document.querySelector('.error')?.textContent.includes('not accepted') === true", "a refusal").await;
    sign_in(&page, &base, &operator).await;
    let names: Vec<String> =
        eval(&page, "Array.from(document.querySelectorAll('tr[data-agent]')).map(r => r.dataset.agent)").await;
    assert_eq!(names, ["console-demo", "nightly-report"]);
    let schedule: String =
        eval(&page, "document.querySelector('tr[data-agent=nightly-report] td:nth-child(4)').textContent").await;
    assert_eq!(schedule, "cron 0 3 * * * (UTC)");
    // Search by name.
    page.goto(format!("{base}/agents?q=night")).await.unwrap();
    until(&page, "document.querySelectorAll('tr[data-agent]').length === 1", "the filtered list").await;

    // 2. Trigger from the agent's page: the browser lands on the run, whose timeline fills in live.
    page.goto(format!("{base}/agents/default/console-demo")).await.unwrap();
    until(&page, "!!document.querySelector('form[action$=\"/trigger\"] button')", "the agent page").await;
    shot(&page, "agent.png").await;
    page.find_element("#query").await.unwrap().click().await.unwrap().type_str("Fetch it now").await.unwrap();
    click(&page, "form[action$='/trigger'] button").await;
    until(&page, "location.pathname.startsWith('/runs/')", "the run page").await;
    let _: bool = eval(&page, "window.__notReloaded = true").await;
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let steps: String = eval(
            &page,
            "Array.from(document.querySelectorAll('ol.timeline li.step')).map(li => li.dataset.step).join(',')",
        )
        .await;
        if seen.last() != Some(&steps) {
            seen.push(steps.clone());
        }
        if steps.ends_with("answer") {
            break;
        }
        assert!(Instant::now() < deadline, "the run did not finish in the page; seen {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(eval::<bool>(&page, "window.__notReloaded === true").await, "the page was reloaded");
    // Each state the page showed is the one before plus what came next: LLM, then tool, then answer.
    let expected = ["pending", "llm,pending", "llm,tool,pending", "llm,tool,llm,answer"];
    assert_eq!(seen, expected, "the timeline's states, in order");
    let badge: String = eval(&page, "document.querySelector('h1 .badge').textContent").await;
    assert_eq!(badge, "succeeded");
    let query: String = eval(&page, "document.querySelector('q').textContent").await;
    assert_eq!(query, "Fetch it now");
    shot(&page, "run.png").await;
    assert_eq!(runs_of(&mut manager).await.len(), 1);

    // 3. Pause from the agents list; the services agree.
    page.goto(format!("{base}/agents")).await.unwrap();
    until(&page, "!!document.querySelector('tr[data-agent=console-demo] form[action$=\"/pause\"] button')", "pause")
        .await;
    click(&page, "tr[data-agent=console-demo] form[action$='/pause'] button").await;
    until(&page, "document.querySelector('tr[data-agent=console-demo] .badge')?.textContent === 'paused'", "paused")
        .await;
    let agent = manager.get_agent(pb::GetAgentRequest { agent: Some(pb::AgentRef::by_name("console-demo")) }).await;
    assert_eq!(agent.unwrap().into_inner().agent.unwrap().state, pb::AgentState::Paused as i32);
    shot(&page, "agents.png").await;

    // 4. The live tail: an event appears without reloading; paused, it is held back and counted.
    page.goto(format!("{base}/events")).await.unwrap();
    until(&page, "document.getElementById('tail-state')?.textContent === 'Live'", "the live tail").await;
    let by_name = || Some(pb::AgentRef::by_name("console-demo"));
    manager.resume_agent(pb::ResumeAgentRequest { agent: by_name() }).await.unwrap();
    until(&page, "!!document.querySelector('tr[data-type=AGENT_RESUMED]')", "the AGENT_RESUMED row").await;
    click(&page, "#tail-pause").await;
    manager.pause_agent(pb::PauseAgentRequest { agent: by_name() }).await.unwrap();
    // Once the event service has it (and a moment to deliver it), it is held back and counted.
    let mut events_api = pb::event_service_client::EventServiceClient::new(channel(&base, &admin).await);
    let paused_event = pb::EventFilter { types: vec![pb::EventType::AgentPaused as i32], ..Default::default() };
    let listed = pb::ListEventsRequest { filter: Some(paused_event), ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while events_api.list_events(listed.clone()).await.unwrap().into_inner().events.is_empty() {
        assert!(Instant::now() < deadline, "AGENT_PAUSED never reached the event service");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    until(&page, "/^Paused: [1-9]\\d* new$/.test(document.getElementById('tail-state').textContent)", "a held event")
        .await;
    assert!(
        eval::<bool>(&page, "!document.querySelector('tr[data-type=AGENT_PAUSED]')").await,
        "a row shown while paused"
    );
    click(&page, "#tail-pause").await;
    until(&page, "!!document.querySelector('tr[data-type=AGENT_PAUSED]')", "the held row shown").await;
    shot(&page, "events.png").await;
    manager.resume_agent(pb::ResumeAgentRequest { agent: by_name() }).await.unwrap();

    // 5. A viewer sees the agent but its trigger button is disabled, and a forged POST is refused.
    click(&page, "header.top form[action='/logout'] button").await;
    until(&page, "location.pathname === '/login'", "signed out").await;
    sign_in(&page, &base, &viewer).await;
    page.goto(format!("{base}/agents/default/console-demo")).await.unwrap();
    until(&page, "!!document.querySelector('form[action$=\"/trigger\"] button')", "the agent page").await;
    assert!(eval::<bool>(&page, "document.querySelector('form[action$=\"/trigger\"] button').disabled").await);
    assert!(eval::<bool>(&page, "!document.querySelector('form[action$=\"/delete\"]')").await);
    // With the session's own CSRF token the console passes the call on; the manager refuses it.
    let status: u16 = eval(
        &page,
        "fetch(location.pathname + '/trigger', {method: 'POST', body: new URLSearchParams({csrf: \
         document.querySelector('input[name=csrf]').value})}).then(r => r.status)",
    )
    .await;
    assert_eq!(status, 403, "a viewer's trigger");
    // Without the token the console refuses it itself.
    let status: u16 = eval(&page, "fetch(location.pathname + '/trigger', {method: 'POST'}).then(r => r.status)").await;
    assert_eq!(status, 403, "a trigger without the CSRF token");
    // From another origin, with the operator's session: refused before anything runs.
    let cookie = operator_session(&base, &operator).await;
    let forged = reqwest::Client::new()
        .post(format!("{base}/agents/default/console-demo/trigger"))
        .header("cookie", cookie)
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=guess")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(runs_of(&mut manager).await.len(), 1, "no refused action started a run");

    browser.close().await.unwrap();
    let _ = browser.wait().await;
    events.abort();
}

/// A session cookie of the operator, signed in over plain HTTP as the login form would.
async fn operator_session(base: &str, key: &str) -> String {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let res = client
        .post(format!("{base}/login"))
        .header("origin", base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("credential={key}&next=%2Fagents"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "signing in");
    let cookie = res.headers().get("set-cookie").unwrap().to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}
