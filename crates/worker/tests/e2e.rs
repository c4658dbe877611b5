//! A worker end to end: manager (gRPC, SQLite) + in-memory queue + worker + a scripted
//! OpenAI-compatible server. The scripted server stands in for a hosted LLM (none is reachable
//! here) so that the tool-call path is deterministic; the tools are the real local tools.
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nightshift_core::{AgentSpec, AgentState, EventType, pb};
use nightshift_manager::{ManagerConfig, ManagerDeps, ManagerRole};
use nightshift_queue::QueueSettings;
use nightshift_rpc::{CancellationToken, GrpcServer, Role, serve_roles};
use nightshift_store::Store;
use nightshift_worker::{Worker, WorkerConfig, WorkerDeps, WorkerRole};

use nightshift_testkit::llm::scripted_llm;

struct Env {
    manager: pb::manager_service_client::ManagerServiceClient<tonic::transport::Channel>,
    endpoint: String,
    queue_url: String,
    queue_name: String,
    store: Store,
    _db: nightshift_testkit::SqliteDb,
}

/// The test's queue: redelivery after 2 s.
fn queue_settings(url: &str, name: &str) -> QueueSettings {
    QueueSettings { url: url.to_owned(), name: name.to_owned(), ack_wait: Duration::from_secs(2) }
}

async fn env(llm_url: &str) -> (Env, pb::Agent) {
    env_on(llm_url, "memory://", "").await
}

/// A manager on SQLite with the queue at `queue` (`memory://` gets a private name) and the
/// `area` agent (`extra` YAML appended to its spec).
async fn env_on(llm_url: &str, queue: &str, extra: &str) -> (Env, pb::Agent) {
    env_with(&format!("{{provider: openai, model: scripted, base_url: '{llm_url}'}}"), queue, extra).await
}

/// Like [`env_on`] with the agent's `model:` given as YAML.
async fn env_with(model: &str, queue: &str, extra: &str) -> (Env, pb::Agent) {
    let db = nightshift_testkit::sqlite_db();
    let store = Store::connect(&db.url).await.unwrap();
    let queue_name = format!("worker-test-{}", uuid::Uuid::new_v4().simple());
    let queue_url = if queue == "memory://" { format!("memory://{queue_name}") } else { queue.to_owned() };
    let cfg = ManagerConfig { queue: queue_settings(&queue_url, &queue_name), ..ManagerConfig::default() };
    let manager = ManagerRole::build(cfg, ManagerDeps { store: store.clone(), observer: None }).await.unwrap();
    let listener = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let roles: Vec<Box<dyn Role>> = vec![Box::new(manager)];
    tokio::spawn(serve_roles(roles, listener, std::future::pending()));
    let spec = AgentSpec::from_yaml(&format!(
        "name: area\nmodel: {model}\n\
         system_instruction: You compute areas.\ntask: {{query: 'Area of a 3x4 rectangle?'}}\n\
         schedule: {{manual: true}}\npolicy: {{max_retries: 0, timeout: 60s}}\ntools: {{local: [calculate_area]}}\n{extra}"
    ))
    .unwrap();
    let agent = store.create_agent(&spec, AgentState::Active).await.unwrap();
    let manager = pb::manager_service_client::ManagerServiceClient::connect(endpoint.clone()).await.unwrap();
    let env = Env { manager, endpoint, queue_url, queue_name, store, _db: db };
    let got = env
        .manager
        .clone()
        .get_agent(pb::GetAgentRequest {
            agent: Some(pb::AgentRef { r#ref: Some(pb::agent_ref::Ref::Id(agent.id.to_string())) }),
        })
        .await
        .unwrap();
    (env, got.into_inner().agent.unwrap())
}

type Events = Arc<Mutex<Vec<pb::Event>>>;

async fn start_worker(env: &Env, lease: Duration) -> (Events, tokio::task::JoinHandle<()>) {
    start_worker_at(&env.endpoint, &env.queue_url, &env.queue_name, lease, None).await
}

async fn start_worker_at(
    endpoint: &str,
    queue_url: &str,
    queue_name: &str,
    lease: Duration,
    memory_endpoint: Option<&str>,
) -> (Events, tokio::task::JoinHandle<()>) {
    let cfg = WorkerConfig {
        concurrency: 4,
        lease_ttl: lease,
        queue: queue_settings(queue_url, queue_name),
        manager_endpoint: endpoint.to_owned(),
        memory_endpoint: memory_endpoint.unwrap_or_default().to_owned(),
        ..WorkerConfig::default()
    };
    let events: Events = Arc::default();
    let sink = events.clone();
    let deps = WorkerDeps { events: Some(Arc::new(move |e| sink.lock().unwrap().push(e))) };
    let worker = Box::new(WorkerRole::build(cfg, deps).await.unwrap());
    let task = tokio::spawn(async move {
        worker.run(CancellationToken::new()).await.unwrap();
    });
    (events, task)
}

async fn wait_for_status(env: &Env, run_id: &str, want: pb::RunStatus) -> pb::Run {
    wait_for_status_within(env, run_id, want, Duration::from_secs(20)).await
}

async fn wait_for_status_within(env: &Env, run_id: &str, want: pb::RunStatus, limit: Duration) -> pb::Run {
    let mut last = None;
    for _ in 0..limit.as_millis() / 100 {
        let run = env
            .manager
            .clone()
            .get_run(pb::GetRunRequest { run_id: run_id.into() })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        if run.status() == want {
            return run;
        }
        last = Some(run);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("run {run_id} never reached {want:?}; last seen: {last:#?}");
}

fn event_names(events: &Events) -> Vec<String> {
    events
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            let ty = EventType::from_pb(e.r#type()).map(|t| t.as_str().to_owned()).unwrap_or_default();
            match e.data.as_ref().and_then(|d| d.fields.get("status")).and_then(|v| v.kind.clone()) {
                Some(prost_types::value::Kind::StringValue(s)) => format!("{ty}({s})"),
                _ => ty,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_triggered_run_calls_the_tool_and_finishes_with_the_seed_events() {
    let (llm, script) = scripted_llm().await;
    let (env, agent) = env(&llm).await;
    let (events, _worker) = start_worker(&env, Duration::from_secs(10)).await;
    let run = trigger(&env).await;
    let done = wait_for_status(&env, &run.id, pb::RunStatus::Succeeded).await;
    assert!(done.result.starts_with("The area is 12"), "{}", done.result);
    // The real calculate_area tool ran: its output (area 12, perimeter 14) went back to the model.
    assert!(done.result.contains("12") && done.result.contains("14"), "{}", done.result);
    assert_eq!(done.usage.unwrap().input_tokens, 130);
    let steps = &done.steps;
    assert_eq!(steps.len(), 3, "llm, tool, llm");
    assert!(
        matches!(&steps[1].payload, Some(pb::run_step::Payload::ToolResult(t)) if !t.is_error && t.tool_name == "calculate_area")
    );
    assert_eq!((script.first_turns.load(Ordering::SeqCst), script.second_turns.load(Ordering::SeqCst)), (1, 1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        event_names(&events),
        [
            "BACKGROUND_TASK_STARTED",
            "BACKGROUND_AGENT_STATUS(running)",
            "LLM_CALL",
            "TOOL_CALL",
            "LLM_CALL",
            "BACKGROUND_TASK_COMPLETED",
            "BACKGROUND_AGENT_STATUS(idle)"
        ]
    );
    assert!(events.lock().unwrap().iter().all(|e| e.agent_id == agent.id && e.run_id == run.id));
    let status = env.store.agent_stats(&nightshift_core::AgentId::from_string(agent.id.clone())).await.unwrap();
    assert_eq!(status.count(nightshift_core::RunStatus::Succeeded), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_worker_dies_resumes_elsewhere_on_memory_queue() {
    worker_dies_mid_run("memory://").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_worker_dies_resumes_elsewhere_on_nats() {
    worker_dies_mid_run(&nightshift_testkit::nats_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_worker_dies_resumes_elsewhere_on_redis() {
    worker_dies_mid_run(&nightshift_testkit::redis_url()).await;
}

/// A worker dies between the tool result and the next LLM call; another worker finishes the
/// run without repeating the completed LLM call or tool call.
async fn worker_dies_mid_run(queue: &str) {
    let (llm, script) = scripted_llm().await;
    let (env, _agent) = env_on(&llm, queue, "").await;
    script.hang_second_turn.store(true, Ordering::SeqCst);
    // Worker 1 lives in its own runtime, so that "killing" it drops every task it spawned, as
    // SIGKILL would (aborting only its top task would leave its run tasks going).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (endpoint, queue_url, queue_name) = (env.endpoint.clone(), env.queue_url.clone(), env.queue_name.clone());
    rt.spawn(async move {
        let (_events, task) = start_worker_at(&endpoint, &queue_url, &queue_name, Duration::from_secs(2), None).await;
        let _ = task.await;
    });
    let run = trigger(&env).await;
    // Worker 1 has done the first LLM turn and the tool call, and is waiting on the second turn.
    wait_for_second_turn(&script).await;
    assert_eq!(script.second_turns.load(Ordering::SeqCst), 1);
    rt.shutdown_background(); // dies without FinishRun, ack or nack
    script.hang_second_turn.store(false, Ordering::SeqCst);
    let (_e2, _worker2) = start_worker(&env, Duration::from_secs(2)).await;
    let done = wait_for_status(&env, &run.id, pb::RunStatus::Succeeded).await;
    assert_eq!(done.attempt, 2, "taken over with a new fencing token");
    assert_eq!(script.first_turns.load(Ordering::SeqCst), 1, "the completed LLM call was not paid again");
    let kinds: Vec<(u32, &str)> = done
        .steps
        .iter()
        .map(|s| {
            (
                s.attempt,
                match s.payload {
                    Some(pb::run_step::Payload::ToolResult(_)) => "tool",
                    _ => "llm",
                },
            )
        })
        .collect();
    assert_eq!(kinds, [(1, "llm"), (1, "tool"), (2, "llm")], "the tool ran once, by attempt 1");
    if queue.starts_with("nats:") {
        nightshift_testkit::delete_nats_stream(&env.queue_name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_worker_hands_its_run_back_and_another_finishes_it() {
    let (llm, script) = scripted_llm().await;
    let (env, _agent) = env(&llm).await;
    script.hang_second_turn.store(true, Ordering::SeqCst);
    let cfg = WorkerConfig {
        concurrency: 2,
        lease_ttl: Duration::from_secs(10),
        queue: queue_settings(&env.queue_url, &env.queue_name),
        manager_endpoint: env.endpoint.clone(),
        ..WorkerConfig::default()
    };
    let role = Box::new(WorkerRole::build(cfg, WorkerDeps::default()).await.unwrap());
    let w1: Worker = role.worker();
    let w1_task = tokio::spawn(role.run(CancellationToken::new()));
    let run = trigger(&env).await;
    wait_for_second_turn(&script).await;
    // SIGTERM equivalent: the run cannot finish within the grace, so it is handed back.
    assert_eq!(w1.drain(Duration::from_millis(300)), 1);
    tokio::time::timeout(Duration::from_secs(10), w1_task).await.expect("the drained worker stops").unwrap().unwrap();
    let released = env
        .manager
        .clone()
        .get_run(pb::GetRunRequest { run_id: run.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(released.status(), pb::RunStatus::Queued, "handed back, not failed");
    assert_eq!(released.retries, 0, "a hand-back is not a failure");
    script.hang_second_turn.store(false, Ordering::SeqCst);
    let (_e2, _w2) = start_worker(&env, Duration::from_secs(10)).await;
    let done = wait_for_status(&env, &run.id, pb::RunStatus::Succeeded).await;
    assert_eq!(done.attempt, 2);
    assert_eq!(script.first_turns.load(Ordering::SeqCst), 1, "resumed from the checkpoints");
}

/// Triggers the `area` agent and returns the queued run.
async fn trigger(env: &Env) -> pb::Run {
    let req = pb::TriggerAgentRequest { agent: by_name("area"), query_override: None };
    env.manager.clone().trigger_agent(req).await.unwrap().into_inner().run.unwrap()
}

/// Waits until some worker has done the first LLM turn and the tool call and asks for the second.
async fn wait_for_second_turn(script: &nightshift_testkit::llm::Script) {
    for _ in 0..100 {
        if script.second_turns.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scheduler replica on the test's store and queue, with fast coordination.
async fn start_scheduler(env: &Env) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cfg = nightshift_scheduler::SchedulerConfig {
        shard_count: 1,
        coordination_interval: Duration::from_millis(200),
        sync_interval: Duration::from_millis(200),
        queue: queue_settings(&env.queue_url, &env.queue_name),
        ..Default::default()
    };
    let deps =
        nightshift_scheduler::SchedulerDeps { store: env.store.clone(), clock: Arc::new(nightshift_core::SystemClock) };
    let role = Box::new(nightshift_scheduler::SchedulerRole::build(cfg, deps).await.unwrap());
    let stop = CancellationToken::new();
    let token = stop.clone();
    (stop, tokio::spawn(async move { role.run(token).await.unwrap() }))
}

/// Replaces the `area` agent's spec through the manager.
async fn set_spec(env: &Env, manifest_yaml: String) {
    let upd = pb::UpdateAgentRequest { agent: by_name("area"), spec: None, expected_version: None, manifest_yaml };
    env.manager.clone().update_agent(upd).await.unwrap();
}

/// Runs of the test agent `area`, newest first.
async fn area_runs(env: &Env) -> Vec<pb::Run> {
    env.manager
        .clone()
        .list_runs(pb::ListRunsRequest { agent: by_name("area"), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .runs
}

fn by_name(name: &str) -> Option<pb::AgentRef> {
    Some(pb::AgentRef { r#ref: Some(pb::agent_ref::Ref::Name(name.into())) })
}

/// A scheduled agent (fired by the real scheduler) calls a local tool, a tool of the real
/// `mcp-server-time` over stdio and a tool of an MCP server over streamable HTTP (official Python
/// SDK), all in one turn; the run record shows every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_agent_calls_local_stdio_mcp_and_http_mcp_tools() {
    let servers = nightshift_testkit::mcp::servers();
    let http = nightshift_testkit::mcp::HttpFixture::start();
    let (llm, script) = scripted_llm().await;
    *script.calls.lock().unwrap() = vec![
        ("calculate_area".into(), r#"{"shape": "rectangle", "width": 3, "height": 4}"#.into()),
        ("get_current_time".into(), r#"{"timezone": "UTC"}"#.into()),
        ("add".into(), r#"{"a": 2, "b": 40}"#.into()),
    ];
    let once_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (env, agent) = env_on(&llm, "memory://", "").await;
    let spec = AgentSpec::from_yaml(&format!(
        "name: area\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\n\
         task: {{query: 'Use every tool.'}}\nschedule: {{once_at: '{once_at}'}}\npolicy: {{max_retries: 0, timeout: 60s}}\n\
         tools: {{local: [calculate_area], mcp: [{{name: time, command: '{}', args: [--local-timezone, UTC]}}, {{name: py, url: '{}'}}]}}\n",
        servers.time_server, http.url
    ))
    .unwrap();
    let id = nightshift_core::AgentId::from_string(agent.id.clone());
    env.store.update_agent(&id, &spec, None).await.unwrap();
    let (_stop, _scheduler) = start_scheduler(&env).await;
    let (_events, _worker) = start_worker(&env, Duration::from_secs(10)).await;

    let mut runs = Vec::new();
    for _ in 0..200 {
        runs = area_runs(&env).await;
        if runs.first().is_some_and(|r| r.status() == pb::RunStatus::Succeeded) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(runs.len(), 1, "a once schedule fires once");
    let run = wait_for_status(&env, &runs[0].id, pb::RunStatus::Succeeded).await;
    assert_eq!(run.trigger(), pb::TriggerKind::Schedule);
    let results: Vec<(String, String, bool)> = run
        .steps
        .iter()
        .filter_map(|s| match &s.payload {
            Some(pb::run_step::Payload::ToolResult(t)) => Some((t.tool_name.clone(), t.output.clone(), t.is_error)),
            _ => None,
        })
        .collect();
    assert_eq!(run.steps.len(), 5, "llm, three tool results, llm: {results:?}");
    assert!(results.iter().all(|(_, _, err)| !err), "{results:?}");
    assert!(results.iter().any(|(n, o, _)| n == "calculate_area" && o.contains("12")), "{results:?}");
    assert!(results.iter().any(|(n, o, _)| n.contains("get_current_time") && o.contains("UTC")), "{results:?}");
    assert!(results.iter().any(|(n, o, _)| n.contains("add") && o.contains("42")), "{results:?}");
}

/// An LLM failure fails the attempt; the manager retries after the configured backoff and the
/// second attempt succeeds. Events and status counts say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_attempt_is_retried_with_backoff() {
    let (llm, script) = scripted_llm().await;
    script.fail_first.store(1, Ordering::SeqCst);
    let (env, _agent) = env_on(&llm, "memory://", "").await;
    let spec_yaml = format!(
        "name: area\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\ntask: {{query: q}}\n\
         schedule: {{manual: true}}\npolicy: {{max_retries: 2, retry_delay: 1s, timeout: 60s}}\ntools: {{local: [calculate_area]}}"
    );
    set_spec(&env, spec_yaml).await;
    let (events, _worker) = start_worker(&env, Duration::from_secs(10)).await;
    let t0 = std::time::Instant::now();
    let run = env
        .manager
        .clone()
        .trigger_agent(pb::TriggerAgentRequest { agent: by_name("area"), query_override: None })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let done = wait_for_status(&env, &run.id, pb::RunStatus::Succeeded).await;
    assert!(t0.elapsed() >= Duration::from_secs(1), "the retry waited for its backoff");
    assert_eq!((done.attempt, done.retries), (2, 1));
    assert!(done.error.contains("scripted failure"), "the failed attempt's error is kept: {}", done.error);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let names = event_names(&events);
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap_or_else(|| panic!("{n} missing in {names:?}"));
    assert!(pos("BACKGROUND_TASK_ERROR") < pos("RUN_RETRYING"));
    assert!(pos("RUN_RETRYING") < pos("BACKGROUND_TASK_COMPLETED"));
    let st = env
        .manager
        .clone()
        .get_agent_status(pb::GetAgentStatusRequest { agent: by_name("area") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((st.total_runs, st.succeeded, st.failed), (1, 1, 0));
    assert!(st.last_error.contains("scripted failure"));
}

/// A run that outlasts its 1 s interval makes the following ticks `skipped`, never concurrent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_outlasting_its_interval_skips_the_next_ticks() {
    let (llm, script) = scripted_llm().await;
    script.delay_ms.store(1_200, Ordering::SeqCst); // two LLM turns: ~2.4 s per run
    let (env, _agent) = env_on(&llm, "memory://", "").await;
    let spec_yaml = format!(
        "name: area\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\ntask: {{query: q}}\n\
         schedule: {{interval: 1s}}\npolicy: {{overlap: skip, max_retries: 0}}\ntools: {{local: [calculate_area]}}"
    );
    set_spec(&env, spec_yaml).await;
    let (stop, sched) = start_scheduler(&env).await;
    let (_events, _worker) = start_worker(&env, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    stop.cancel();
    sched.await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // let the last run finish
    let runs = area_runs(&env).await;
    let skipped = runs.iter().filter(|r| r.status() == pb::RunStatus::Skipped).count();
    let ran: Vec<&pb::Run> = runs.iter().filter(|r| r.started_at.is_some()).collect();
    assert!(skipped >= 2, "ticks during a long run are skipped: {skipped} of {}", runs.len());
    assert!(ran.len() >= 2, "runs happen between skips: {}", ran.len());
    // Never two at once: the started..finished intervals do not overlap.
    let mut spans: Vec<(i64, i64)> = ran
        .iter()
        .map(|r| {
            let s = r.started_at.unwrap();
            let f = r.finished_at.expect("finished");
            (s.seconds * 1000 + i64::from(s.nanos / 1_000_000), f.seconds * 1000 + i64::from(f.nanos / 1_000_000))
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "runs overlapped: {spans:?}");
    }
}

/// A memory service role (in-memory stores) on its own gRPC server; returns its endpoint and a
/// channel to it.
async fn memory_service() -> (String, tonic::transport::Channel) {
    let mut cfg = nightshift_memory::MemoryConfig::default();
    for store in
        [&mut cfg.stores.working, &mut cfg.stores.episodic, &mut cfg.stores.long_term, &mut cfg.stores.procedural]
    {
        *store = "memory://".into();
    }
    let role = nightshift_memory::MemoryRole::build(&cfg).await.unwrap();
    let listener = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let roles: Vec<Box<dyn Role>> = vec![Box::new(role)];
    tokio::spawn(serve_roles(roles, listener, std::future::pending()));
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone()).unwrap().connect_lazy();
    (endpoint, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_recall_memory_and_store_their_result_as_an_episode() {
    let (llm, script) = scripted_llm().await;
    let (env, agent) = env(&llm).await;
    let (memory_endpoint, channel) = memory_service().await;
    let memory = pb::memory_service_client::MemoryServiceClient::new(channel);
    let (_events, _worker) = start_worker_at(
        &env.endpoint,
        &env.queue_url,
        &env.queue_name,
        Duration::from_secs(10),
        Some(&memory_endpoint),
    )
    .await;
    let scope = pb::MemoryScope { agent_id: agent.id.clone(), session: "agent".into() };
    let recall = |kind: pb::MemoryType| {
        let (mut memory, scope) = (memory.clone(), scope.clone());
        async move {
            memory
                .recall(pb::RecallRequest { scope: Some(scope), r#type: kind as i32, limit: 10, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .records
        }
    };

    let first = trigger(&env).await;
    let first = wait_for_status(&env, &first.id, pb::RunStatus::Succeeded).await;
    let episodes = recall(pb::MemoryType::Episodic).await;
    assert_eq!(episodes.len(), 1);
    assert_eq!(episodes[0].id, format!("episode-{}", first.id));
    assert_eq!(episodes[0].run_id, first.id);
    assert!(
        episodes[0].content.starts_with("Task: Area of a 3x4 rectangle?\nResult: The area is 12"),
        "{}",
        episodes[0].content
    );
    assert_eq!(episodes[0].metadata.get("steps").map(String::as_str), Some("2"));

    // A note the agent keeps about its job, then a second run: both reach the prompt.
    memory
        .clone()
        .store(pb::StoreMemoryRequest {
            records: vec![pb::MemoryRecord {
                r#type: pb::MemoryType::Procedural as i32,
                scope: Some(scope.clone()),
                content: "Always give areas in square metres.".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let second = trigger(&env).await;
    wait_for_status(&env, &second.id, pb::RunStatus::Succeeded).await;
    let systems = script.systems.lock().unwrap().clone();
    assert_eq!(systems.len(), 2);
    assert!(!systems[0].contains("## Your memory") && !systems[0].contains("no memory"), "{}", systems[0]);
    assert!(systems[1].starts_with("You compute areas.\n\n## Your memory"), "{}", systems[1]);
    assert!(systems[1].contains("- Always give areas in square metres."), "{}", systems[1]);
    assert!(systems[1].contains("Your earlier runs, newest first:"), "{}", systems[1]);
    assert!(systems[1].contains("Task: Area of a 3x4 rectangle? | Result: The area is 12"), "{}", systems[1]);
    assert_eq!(recall(pb::MemoryType::Episodic).await.len(), 2);
}

/// A **real** LLM (SmolLM2-135M on llama.cpp, `scripts/llm.sh`) picks and calls the local
/// `calculate_area` tool in structured-output mode, and the run completes with its answer stored
/// in memory. The model is tiny, so the test asserts what the platform guarantees (a valid tool
/// call executed and checkpointed, a final answer, the episode stored), not the model's prose.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_small_llm_calls_a_local_tool_in_structured_mode() {
    let llama = tokio::task::spawn_blocking(nightshift_testkit::llama::LlamaServer::start).await.unwrap();
    let model = format!(
        "{{provider: openai, model: smollm2, base_url: '{}', tool_call_mode: structured, temperature: 0, max_tokens: 256, request_timeout: 120s}}",
        llama.base_url
    );
    let extra = "memory: {recall_recent: 3}";
    let (env, agent) = env_with(&model, "memory://", extra).await;
    set_spec(
        &env,
        format!(
            "name: area\nmodel: {model}\nsystem_instruction: You compute areas of shapes with the calculate_area tool.\n\
             task: {{query: 'What is the area of a rectangle that is 3 wide and 4 high? Call calculate_area with shape rectangle, width 3, height 4, then give the final answer.'}}\n\
             schedule: {{manual: true}}\npolicy: {{max_retries: 0, max_steps: 6, timeout: 300s}}\ntools: {{local: [calculate_area]}}\n{extra}"
        ),
    )
    .await;
    let (memory_endpoint, channel) = memory_service().await;
    let memory = pb::memory_service_client::MemoryServiceClient::new(channel);
    let (_events, _worker) = start_worker_at(
        &env.endpoint,
        &env.queue_url,
        &env.queue_name,
        Duration::from_secs(30),
        Some(&memory_endpoint),
    )
    .await;
    let run = trigger(&env).await;
    let done = wait_for_status_within(&env, &run.id, pb::RunStatus::Succeeded, Duration::from_secs(180)).await;
    let calls: Vec<&pb::ToolResult> = done
        .steps
        .iter()
        .filter_map(|s| match &s.payload {
            Some(pb::run_step::Payload::ToolResult(t)) => Some(t),
            _ => None,
        })
        .collect();
    let ok: Vec<&&pb::ToolResult> = calls.iter().filter(|t| t.tool_name == "calculate_area" && !t.is_error).collect();
    assert!(!ok.is_empty(), "the model never made a valid calculate_area call: {calls:#?}");
    // The tool really ran on the model's arguments: a rectangle's result carries its area.
    assert!(ok[0].output.contains("\"area\""), "{}", ok[0].output);
    // Greedy decoding under a grammar is deterministic: the answer quotes the tool's area. (The
    // model keeps re-calling the tool; the last allowed turn, final-only, makes it answer.)
    assert!(done.result.contains("12"), "answer {:?}", done.result);
    eprintln!(
        "SmolLM2 answered {:?} after {} steps; tool results: {:?}",
        done.result,
        done.steps.len(),
        calls.iter().map(|t| &t.output).collect::<Vec<_>>()
    );

    let episodes = memory
        .clone()
        .recall(pb::RecallRequest {
            scope: Some(pb::MemoryScope { agent_id: agent.id.clone(), session: "agent".into() }),
            r#type: pb::MemoryType::Episodic as i32,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(episodes.len(), 1);
    assert!(
        episodes[0].content.contains(done.result.trim()),
        "episode {:?} vs answer {:?}",
        episodes[0].content,
        done.result
    );
}
