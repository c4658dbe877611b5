//! What the worker end-to-end tests share: a manager role on SQLite with the `area` agent, worker
//! and scheduler roles on the test's queue, a memory role, and waits on run states. Each test
//! binary uses a part of it.
#![allow(dead_code)]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nightshift_core::{AgentSpec, AgentState, EventType, pb};
use nightshift_manager::{ManagerConfig, ManagerDeps, ManagerRole};
use nightshift_queue::QueueSettings;
use nightshift_rpc::{CancellationToken, GrpcServer, Role, serve_roles};
use nightshift_store::Store;
use nightshift_worker::{WorkerConfig, WorkerDeps, WorkerRole};

/// A manager role serving the test's store, and a client of it.
pub struct Env {
    pub manager: pb::manager_service_client::ManagerServiceClient<tonic::transport::Channel>,
    pub endpoint: String,
    pub queue_url: String,
    pub queue_name: String,
    pub store: Store,
    _db: Option<nightshift_testkit::SqliteDb>,
}

/// The test's queue: redelivery after 2 s.
pub fn queue_settings(url: &str, name: &str) -> QueueSettings {
    QueueSettings { url: url.to_owned(), name: name.to_owned(), ack_wait: Duration::from_secs(2) }
}

pub async fn env(llm_url: &str) -> (Env, pb::Agent) {
    env_on(llm_url, "memory://", "").await
}

/// A manager on SQLite with the queue at `queue` (`memory://` gets a private name) and the
/// `area` agent (`extra` YAML appended to its spec).
pub async fn env_on(llm_url: &str, queue: &str, extra: &str) -> (Env, pb::Agent) {
    env_with(&format!("{{provider: openai, model: scripted, base_url: '{llm_url}'}}"), queue, extra).await
}

/// Like [`env_on`] with the agent's `model:` given as YAML.
pub async fn env_with(model: &str, queue: &str, extra: &str) -> (Env, pb::Agent) {
    env_with_ack_wait(model, queue, extra, Duration::from_secs(2)).await
}

/// Like [`env_with`], with the queue's redelivery deadline (a named in-process queue keeps the
/// settings of its first `connect`, which is this one).
pub async fn env_with_ack_wait(model: &str, queue: &str, extra: &str, ack_wait: Duration) -> (Env, pb::Agent) {
    env_on_db(nightshift_testkit::Db::Sqlite, model, queue, extra, ack_wait, |_| {}).await
}

/// Like [`env_with_ack_wait`] on a database of the given kind.
pub async fn env_on_db(
    kind: nightshift_testkit::Db,
    model: &str,
    queue: &str,
    extra: &str,
    ack_wait: Duration,
    configure: impl FnOnce(&mut ManagerConfig),
) -> (Env, pb::Agent) {
    let (url, db) = nightshift_testkit::database(kind).await;
    let store = Store::connect(&url).await.unwrap();
    let queue_name = format!("worker-test-{}", uuid::Uuid::new_v4().simple());
    let queue_url = if queue == "memory://" { format!("memory://{queue_name}") } else { queue.to_owned() };
    let queue = QueueSettings { ack_wait, ..queue_settings(&queue_url, &queue_name) };
    // The scripted LLM and MCP servers run on loopback: the harness is the operator.
    let worker_allow = nightshift_core::operator_policy::OperatorPolicy::trusting();
    let mut cfg = ManagerConfig { queue, worker_allow, ..ManagerConfig::default() };
    configure(&mut cfg);
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
        .get_agent(pb::GetAgentRequest { agent: Some(pb::AgentRef::by_id(agent.id.to_string())) })
        .await
        .unwrap();
    (env, got.into_inner().agent.unwrap())
}

/// The events a worker emitted, in order.
pub type Events = Arc<Mutex<Vec<pb::Event>>>;

pub async fn start_worker(env: &Env, lease: Duration) -> (Events, tokio::task::JoinHandle<()>) {
    start_worker_at(&env.endpoint, &env.queue_url, &env.queue_name, lease, None).await
}

pub async fn start_worker_at(
    endpoint: &str,
    queue_url: &str,
    queue_name: &str,
    lease: Duration,
    memory_endpoint: Option<&str>,
) -> (Events, tokio::task::JoinHandle<()>) {
    // The scripted LLM and MCP servers run on loopback: the harness is the operator.
    let allow = nightshift_core::operator_policy::OperatorPolicy::trusting();
    start_worker_allowing(endpoint, queue_url, queue_name, lease, memory_endpoint, allow).await
}

/// A worker whose operator allows (`[allow]`) only `allow`.
pub async fn start_worker_allowing(
    endpoint: &str,
    queue_url: &str,
    queue_name: &str,
    lease: Duration,
    memory_endpoint: Option<&str>,
    allow: nightshift_core::operator_policy::OperatorPolicy,
) -> (Events, tokio::task::JoinHandle<()>) {
    start_worker_configured(endpoint, queue_url, queue_name, lease, memory_endpoint, |c| c.allow = allow).await
}

/// A worker with its options (`[allow]`, concurrency, tools …) changed by `configure`.
pub async fn start_worker_configured(
    endpoint: &str,
    queue_url: &str,
    queue_name: &str,
    lease: Duration,
    memory_endpoint: Option<&str>,
    configure: impl FnOnce(&mut WorkerConfig),
) -> (Events, tokio::task::JoinHandle<()>) {
    let mut cfg = WorkerConfig {
        concurrency: 4,
        lease_ttl: lease,
        queue: queue_settings(queue_url, queue_name),
        manager_endpoint: endpoint.to_owned(),
        memory_endpoint: memory_endpoint.unwrap_or_default().to_owned(),
        ..WorkerConfig::default()
    };
    configure(&mut cfg);
    let events: Events = Arc::default();
    let sink = events.clone();
    let deps = WorkerDeps { events: Some(Arc::new(move |e| sink.lock().unwrap().push(e))) };
    let worker = Box::new(WorkerRole::build(cfg, deps).await.unwrap());
    let task = tokio::spawn(async move {
        worker.run(CancellationToken::new()).await.unwrap();
    });
    (events, task)
}

pub async fn wait_for_status(env: &Env, run_id: &str, want: pb::RunStatus) -> pb::Run {
    wait_for_status_within(env, run_id, want, Duration::from_secs(20)).await
}

pub async fn wait_for_status_within(env: &Env, run_id: &str, want: pb::RunStatus, limit: Duration) -> pb::Run {
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

pub fn event_names(events: &Events) -> Vec<String> {
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

/// The `area` agent's status.
pub async fn area_status(env: &Env) -> pb::GetAgentStatusResponse {
    let req = pb::GetAgentStatusRequest { agent: by_name("area") };
    env.manager.clone().get_agent_status(req).await.unwrap().into_inner()
}

/// Triggers the `area` agent and returns the queued run.
pub async fn trigger(env: &Env) -> pb::Run {
    let req = pb::TriggerAgentRequest { agent: by_name("area"), query_override: None };
    env.manager.clone().trigger_agent(req).await.unwrap().into_inner().run.unwrap()
}

/// Waits until some worker has done the first LLM turn and the tool call and asks for the second.
pub async fn wait_for_second_turn(script: &nightshift_testkit::llm::Script) {
    for _ in 0..100 {
        if script.second_turns.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scheduler replica on the test's store and queue, with fast coordination.
pub async fn start_scheduler(env: &Env) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    start_scheduler_with(env, |_| {}).await
}

/// [`start_scheduler`] with its options changed by `configure`.
pub async fn start_scheduler_with(
    env: &Env,
    configure: impl FnOnce(&mut nightshift_scheduler::SchedulerConfig),
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut cfg = nightshift_scheduler::SchedulerConfig {
        shard_count: 1,
        coordination_interval: Duration::from_millis(200),
        sync_interval: Duration::from_millis(200),
        queue: queue_settings(&env.queue_url, &env.queue_name),
        ..Default::default()
    };
    configure(&mut cfg);
    let deps =
        nightshift_scheduler::SchedulerDeps { store: env.store.clone(), clock: Arc::new(nightshift_core::SystemClock) };
    let role = Box::new(nightshift_scheduler::SchedulerRole::build(cfg, deps).await.unwrap());
    let stop = CancellationToken::new();
    let token = stop.clone();
    (stop, tokio::spawn(async move { role.run(token).await.unwrap() }))
}

/// Replaces the `area` agent's spec through the manager.
pub async fn set_spec(env: &Env, manifest_yaml: String) {
    let upd = pb::UpdateAgentRequest { agent: by_name("area"), spec: None, expected_version: None, manifest_yaml };
    env.manager.clone().update_agent(upd).await.unwrap();
}

/// Replaces the `area` agent's spec in the store directly, past the manager's checks.
pub async fn set_spec_in_store(env: &Env, manifest_yaml: &str) {
    let spec = AgentSpec::from_yaml(manifest_yaml).unwrap();
    env.store.apply_agent(&spec).await.unwrap();
}

/// Runs of the test agent `area`, newest first.
pub async fn area_runs(env: &Env) -> Vec<pb::Run> {
    env.manager
        .clone()
        .list_runs(pb::ListRunsRequest { agent: by_name("area"), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .runs
}

pub fn by_name(name: &str) -> Option<pb::AgentRef> {
    Some(pb::AgentRef::by_name(name))
}

/// A memory service role (in-memory stores) on its own gRPC server; returns its endpoint and a
/// channel to it.
pub async fn memory_service() -> (String, tonic::transport::Channel) {
    memory_service_with(|_| {}).await
}

/// [`memory_service`] with its options changed by `configure` (e.g. a summarizer).
pub async fn memory_service_with(
    configure: impl FnOnce(&mut nightshift_memory::MemoryConfig),
) -> (String, tonic::transport::Channel) {
    let mut cfg = nightshift_memory::MemoryConfig::default();
    for store in
        [&mut cfg.stores.working, &mut cfg.stores.episodic, &mut cfg.stores.long_term, &mut cfg.stores.procedural]
    {
        *store = "memory://".into();
    }
    configure(&mut cfg);
    let role = nightshift_memory::MemoryRole::build(&cfg).await.unwrap();
    let listener = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let roles: Vec<Box<dyn Role>> = vec![Box::new(role)];
    tokio::spawn(serve_roles(roles, listener, std::future::pending()));
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone()).unwrap().connect_lazy();
    (endpoint, channel)
}

/// The `area` agent on the scripted LLM at `llm` (manual trigger, `calculate_area`) with the given
/// `policy` flow mapping, e.g. `{max_retries: 1, retry_delay: 2s, timeout: 2s}`.
pub fn area_spec(llm: &str, policy: &str) -> String {
    format!(
        "name: area\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\n\
         system_instruction: You compute areas.\ntask: {{query: 'Area of a 3x4 rectangle?'}}\n\
         schedule: {{manual: true}}\npolicy: {policy}\ntools: {{local: [calculate_area]}}\n"
    )
}
