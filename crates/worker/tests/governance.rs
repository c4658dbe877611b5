//! Governance end to end: a run whose tool call needs a person's approval parks without holding
//! its worker, resumes on a decision and runs exactly the approved call (or tells the model of a
//! denial or an expiry), and an irreversible call is never repeated after its worker dies.
//!
//! Real manager, worker and scheduler roles over gRPC on SQLite and Postgres; the model is the
//! scripted OpenAI-compatible server (a deterministic tool-call sequence: each agent's task
//! names the call it makes), and the irreversible side effect is an `http_get` of a real HTTP
//! endpoint here that counts what it receives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nightshift_core::pb;
use nightshift_testkit::Db;

/// An HTTP endpoint whose GETs are the side effect: it records each request's path and query,
/// and answers after `delay`.
struct Outbox {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn outbox(delay: Duration) -> Outbox {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/send",
        axum::routing::get(move |uri: axum::http::Uri| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(uri.to_string());
                tokio::time::sleep(delay).await;
                "sent"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/send", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Outbox { url, seen }
}

/// The `mailer` agent: its task makes the model call `http_get` of `to`, which its policy says
/// is irreversible and needs approval.
fn mailer(llm: &str, url: &str, to: &str, approval: &str) -> String {
    format!(
        "name: mailer\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\n\
         task:\n  query: |\n    Send the report.\n    call http_get {{\"url\": \"{url}?to={to}\"}}\n\
         schedule: {{manual: true}}\npolicy: {{max_retries: 0, timeout: 60s}}\ntools: {{local: [http_get]}}\n\
         governance:\n  tools:\n    - tools: [http_get]\n      action: require_approval\n      effect: irreversible\n\
         {approval}\n"
    )
}

struct Setup {
    env: Env,
    llm: String,
    script: Arc<nightshift_testkit::llm::Script>,
    outbox: Outbox,
    _scheduler: nightshift_rpc::CancellationToken,
}

/// A manager on `db`, the `area` agent (ungoverned) and the `mailer` agent, and a scheduler
/// sweeping every second (approval expiry, republishing). No worker yet.
async fn setup(db: Db, approval: &str, outbox_delay: Duration) -> Setup {
    let (llm, script) = nightshift_testkit::llm::scripted_llm().await;
    script.calls_from_task.store(true, Ordering::SeqCst);
    let model = format!("{{provider: openai, model: scripted, base_url: '{llm}'}}");
    // The scripted model's name is priced: $2 per million prompt tokens ($0.50 read from the
    // prompt cache), $8 per million completion tokens.
    let prices = |c: &mut nightshift_manager::ManagerConfig| {
        let price = nightshift_core::cost::Price { input: 2.0, output: 8.0, cached_input: Some(0.5) };
        c.prices.0.insert("scripted".into(), price);
    };
    let (env, _) = env_on_db(db, &model, "memory://", "", Duration::from_secs(2), prices).await;
    let outbox = outbox(outbox_delay).await;
    let apply = pb::ApplyAgentRequest { spec: None, manifest_yaml: mailer(&llm, &outbox.url, "a", approval) };
    env.manager.clone().apply_agent(apply).await.unwrap();
    let (scheduler, _) = start_scheduler_with(&env, |c| c.republish_after = Duration::from_secs(2)).await;
    Setup { env, llm, script, outbox, _scheduler: scheduler }
}

async fn one_slot_worker(env: &Env) -> (Events, tokio::task::JoinHandle<()>) {
    one_slot_worker_at(&env.endpoint, &env.queue_url, &env.queue_name).await
}

/// A worker with one slot whose `http_get` may reach this machine.
async fn one_slot_worker_at(
    endpoint: &str,
    queue_url: &str,
    queue_name: &str,
) -> (Events, tokio::task::JoinHandle<()>) {
    start_worker_configured(endpoint, queue_url, queue_name, Duration::from_secs(2), None, |c| {
        // The HTTP endpoint runs on loopback: the harness is the operator.
        c.allow = nightshift_core::operator_policy::OperatorPolicy::trusting();
        c.concurrency = 1;
        c.tools.http_allow = vec!["127.0.0.1".into()];
    })
    .await
}

async fn trigger_mailer(env: &Env) -> pb::Run {
    let req = pb::TriggerAgentRequest { agent: by_name("mailer"), query_override: None };
    env.manager.clone().trigger_agent(req).await.unwrap().into_inner().run.unwrap()
}

async fn pending(env: &Env, run: &str) -> Vec<pb::Approval> {
    let req = pb::ListApprovalsRequest { run_id: run.into(), ..Default::default() };
    env.manager.clone().list_approvals(req).await.unwrap().into_inner().approvals
}

fn kinds(run: &pb::Run) -> Vec<&'static str> {
    use pb::run_step::Payload;
    run.steps
        .iter()
        .map(|s| match &s.payload {
            Some(Payload::LlmResponse(_)) => "llm",
            Some(Payload::ToolStarted(_)) => "started",
            Some(Payload::ToolResult(_)) => "tool",
            Some(Payload::MemoryStored(_)) => "memory",
            None => "none",
        })
        .collect()
}

fn tool_output(run: &pb::Run) -> String {
    run.steps
        .iter()
        .find_map(|s| match &s.payload {
            Some(pb::run_step::Payload::ToolResult(t)) => Some(t.output.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

async fn approve_with_edited_arguments(db: Db) {
    let s = setup(db, "", Duration::ZERO).await;
    let (_, worker) = one_slot_worker(&s.env).await;
    let run = trigger_mailer(&s.env).await;
    let parked = wait_for_status(&s.env, &run.id, pb::RunStatus::AwaitingApproval).await;
    assert_eq!(kinds(&parked), ["llm"], "parked before the call ran");
    assert!(s.outbox.seen.lock().unwrap().is_empty(), "nothing sent without approval");

    // The worker's only slot is free while the run waits: another agent's run completes on it.
    let other = trigger(&s.env).await;
    let done = wait_for_status(&s.env, &other.id, pb::RunStatus::Succeeded).await;
    assert!(done.result.contains("12"), "{}", done.result);
    assert_eq!(
        wait_for_status(&s.env, &run.id, pb::RunStatus::AwaitingApproval).await.status(),
        pb::RunStatus::AwaitingApproval
    );

    let asked = pending(&s.env, &run.id).await;
    assert_eq!(asked.len(), 1, "{asked:#?}");
    let a = &asked[0];
    assert_eq!((a.tool_name.as_str(), a.status()), ("http_get", pb::ApprovalStatus::Pending));
    assert!(a.arguments_json.contains("to=a"), "{}", a.arguments_json);
    assert_eq!(a.effect(), pb::ToolEffect::Irreversible);

    // Edited arguments must be a JSON object.
    let bad = pb::ApproveToolCallRequest {
        approval_id: a.id.clone(),
        arguments_json: Some("[1]".into()),
        reason: String::new(),
    };
    let err = s.env.manager.clone().approve_tool_call(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    let edited = format!(r#"{{"url": "{}?to=b"}}"#, s.outbox.url);
    let ok = pb::ApproveToolCallRequest {
        approval_id: a.id.clone(),
        arguments_json: Some(edited),
        reason: "b, not a".into(),
    };
    let decided = s.env.manager.clone().approve_tool_call(ok.clone()).await.unwrap().into_inner().approval.unwrap();
    assert_eq!(decided.status(), pb::ApprovalStatus::Approved);
    assert_eq!(decided.decided_by, "anonymous (auth off)", "no auth in this harness: recorded as such");
    // A decision is final.
    let again = s.env.manager.clone().approve_tool_call(ok).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again}");

    let done = wait_for_status(&s.env, &run.id, pb::RunStatus::Succeeded).await;
    assert_eq!(kinds(&done), ["llm", "started", "tool", "llm"]);
    assert_eq!(*s.outbox.seen.lock().unwrap(), ["/send?to=b"], "the call ran once, with the edited arguments");
    assert!(done.result.contains("sent"), "{}", done.result);
    assert_eq!(done.attempt, 2, "parked after attempt 1, resumed as attempt 2");
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_call_runs_once_with_edited_arguments_sqlite() {
    approve_with_edited_arguments(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_call_runs_once_with_edited_arguments_postgres() {
    approve_with_edited_arguments(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cost_ledger_sums_to_the_providers_reported_usage() {
    let s = setup(Db::Sqlite, "", Duration::ZERO).await;
    let (_, worker) = one_slot_worker(&s.env).await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let run = trigger(&s.env).await;
        runs.push(wait_for_status(&s.env, &run.id, pb::RunStatus::Succeeded).await);
    }
    // The scripted model reports 50 + 10 tokens for the turn that calls the tool and 80 (40 of
    // them cached) + 12 for the answer: the runs' usage is what the provider reported, and the
    // ledger matches it.
    let (input, output): (u64, u64) =
        runs.iter().map(|r| r.usage.unwrap()).fold((0, 0), |(i, o), u| (i + u.input_tokens, o + u.output_tokens));
    assert_eq!((input, output), (3 * 130, 3 * 22));
    let cost = |group_by: pb::CostGrouping| {
        let req = pb::GetCostsRequest { group_by: group_by as i32, ..Default::default() };
        let mut m = s.env.manager.clone();
        async move { m.get_costs(req).await.unwrap().into_inner().rows }
    };
    let by_agent = cost(pb::CostGrouping::Agent).await;
    assert_eq!(by_agent.len(), 1, "{by_agent:#?}");
    let row = &by_agent[0];
    assert_eq!(row.key, "default/area");
    assert_eq!((row.calls, row.input_tokens, row.output_tokens, row.unpriced_calls), (6, input, output, 0));
    // micro-USD = tokens × USD per million tokens: 3 × (50 × 2 + 10 × 8 + 40 × 2 + 40 × 0.5 + 12 × 8).
    assert_eq!(row.cost_micro_usd, 3 * (100 + 80 + 80 + 20 + 96));
    let by_model = cost(pb::CostGrouping::Model).await;
    assert_eq!((by_model[0].key.as_str(), by_model[0].cost_micro_usd), ("scripted", row.cost_micro_usd));
    assert_eq!(area_status(&s.env).await.cost_micro_usd, row.cost_micro_usd);
    let since = pb::GetCostsRequest {
        since: Some(nightshift_core::time::to_pb(chrono::Utc::now() + chrono::Duration::minutes(1))),
        ..Default::default()
    };
    assert!(s.env.manager.clone().get_costs(since).await.unwrap().into_inner().rows.is_empty(), "nothing after now");
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_skip_a_run_over_the_daily_limit_and_stop_one_over_its_own() {
    let s = setup(Db::Sqlite, "", Duration::ZERO).await;
    let (_, worker) = one_slot_worker(&s.env).await;
    let policy = "{max_retries: 0, timeout: 60s}";
    // Each run of `area` costs 376 micro-USD (the ledger test above): with $0.001 a day, two runs
    // fit (376, then 376 + a projected 376 = 752) and the third does not (752 + 376).
    set_spec(&s.env, format!("{}budget: {{per_day: {{usd: 0.001}}}}\n", area_spec(&s.llm, policy))).await;
    for _ in 0..2 {
        let run = trigger(&s.env).await;
        wait_for_status(&s.env, &run.id, pb::RunStatus::Succeeded).await;
    }
    let third = trigger(&s.env).await;
    let skipped = wait_for_status(&s.env, &third.id, pb::RunStatus::Skipped).await;
    assert!(skipped.reason.starts_with("budget: the agent's daily budget of $0.001000"), "{}", skipped.reason);
    assert_eq!(s.script.first_turns.load(Ordering::SeqCst), 2, "the skipped run called no model");

    // 100 tokens a run: the first turn spends 60, and a second like it would pass 100.
    set_spec(&s.env, format!("{}budget: {{per_run: {{tokens: 100}}}}\n", area_spec(&s.llm, policy))).await;
    let run = trigger(&s.env).await;
    let failed = wait_for_status(&s.env, &run.id, pb::RunStatus::Failed).await;
    assert!(failed.error.contains("budget: the run's budget of 100 tokens"), "{}", failed.error);
    assert_eq!(failed.usage.unwrap().input_tokens + failed.usage.unwrap().output_tokens, 60, "one LLM call, paid");
    assert_eq!(s.script.second_turns.load(Ordering::SeqCst), 2, "no second turn for the stopped run");
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_denied_call_is_not_run_and_the_model_is_told_why() {
    let s = setup(Db::Sqlite, "", Duration::ZERO).await;
    let (_, worker) = one_slot_worker(&s.env).await;
    let run = trigger_mailer(&s.env).await;
    wait_for_status(&s.env, &run.id, pb::RunStatus::AwaitingApproval).await;
    let a = pending(&s.env, &run.id).await.remove(0);
    let deny = pb::DenyToolCallRequest { approval_id: a.id, reason: "not on a Sunday".into() };
    s.env.manager.clone().deny_tool_call(deny).await.unwrap();
    let done = wait_for_status(&s.env, &run.id, pb::RunStatus::Succeeded).await;
    assert_eq!(kinds(&done), ["llm", "tool", "llm"], "no call started");
    let told = tool_output(&done);
    assert!(told.contains("denied") && told.contains("not on a Sunday"), "{told}");
    assert!(done.result.contains("not on a Sunday"), "the model read it: {}", done.result);
    assert!(s.outbox.seen.lock().unwrap().is_empty());
    assert_eq!(s.script.first_turns.load(Ordering::SeqCst), 1, "the first LLM turn was not paid again");
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unanswered_request_expires_per_the_policy() {
    // on_approval_timeout: fail → the run fails.
    let s = setup(Db::Sqlite, "  approval_timeout: 2s\n  on_approval_timeout: fail", Duration::ZERO).await;
    let (_, worker) = one_slot_worker(&s.env).await;
    let run = trigger_mailer(&s.env).await;
    let failed = wait_for_status_within(&s.env, &run.id, pb::RunStatus::Failed, Duration::from_secs(30)).await;
    assert!(failed.error.contains("in time"), "{}", failed.error);
    let list = pb::ListApprovalsRequest {
        run_id: run.id.clone(),
        statuses: vec![pb::ApprovalStatus::Expired as i32],
        ..Default::default()
    };
    assert_eq!(s.env.manager.clone().list_approvals(list).await.unwrap().into_inner().approvals.len(), 1);

    // on_approval_timeout: deny (the default) → the model is told, and the run goes on.
    let spec = mailer(&s.llm, &s.outbox.url, "a", "  approval_timeout: 2s");
    s.env.manager.clone().apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: spec }).await.unwrap();
    let run = trigger_mailer(&s.env).await;
    let done = wait_for_status_within(&s.env, &run.id, pb::RunStatus::Succeeded, Duration::from_secs(30)).await;
    assert!(tool_output(&done).contains("nobody approved"), "{}", tool_output(&done));
    assert!(s.outbox.seen.lock().unwrap().is_empty());
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_irreversible_call_is_not_repeated_when_its_worker_dies_mid_call() {
    // The side effect takes 3 s: the worker dies while it is under way.
    let s = setup(Db::Sqlite, "", Duration::from_secs(3)).await;
    // The first worker lives in its own runtime, so that "killing" it drops every task it
    // spawned, as SIGKILL would.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (endpoint, queue_url, queue_name) = (s.env.endpoint.clone(), s.env.queue_url.clone(), s.env.queue_name.clone());
    rt.spawn(async move {
        let (_, task) = one_slot_worker_at(&endpoint, &queue_url, &queue_name).await;
        let _ = task.await;
    });
    let run = trigger_mailer(&s.env).await;
    wait_for_status(&s.env, &run.id, pb::RunStatus::AwaitingApproval).await;
    let a = pending(&s.env, &run.id).await.remove(0);
    let ok = pb::ApproveToolCallRequest { approval_id: a.id, arguments_json: None, reason: String::new() };
    s.env.manager.clone().approve_tool_call(ok).await.unwrap();
    for _ in 0..100 {
        if !s.outbox.seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.outbox.seen.lock().unwrap().len(), 1, "the approved call is under way");
    rt.shutdown_background(); // the worker dies mid-call, before the result is checkpointed
    let (_, next) = one_slot_worker(&s.env).await;
    let done = wait_for_status_within(&s.env, &run.id, pb::RunStatus::Succeeded, Duration::from_secs(30)).await;
    assert_eq!(s.outbox.seen.lock().unwrap().len(), 1, "the irreversible call was not repeated");
    assert_eq!(kinds(&done), ["llm", "started", "tool", "llm"]);
    assert!(tool_output(&done).contains("may or may not have taken effect"), "{}", tool_output(&done));
    next.abort();
}
