//! The five overlap policies end to end: a manager, a worker serving its WorkerService (so that
//! cancellations reach it) and slow runs (the testkit's scripted OpenAI-compatible server delays
//! every answer, so runs overlap deterministically; each run is one tool call and an answer).
//! Three runs of one agent are triggered while the first still runs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Env, env, queue_settings, set_spec, trigger};
use nightshift_core::pb;
use nightshift_rpc::{GrpcServer, Role, serve_roles};
use nightshift_testkit::llm::scripted_llm;
use nightshift_worker::{WorkerConfig, WorkerDeps, WorkerRole};

/// Each LLM answer takes this long: a run (two answers) takes about twice as long.
const ANSWER: Duration = Duration::from_millis(1200);
/// The lease: heartbeats every third of it, so a cancellation noticed by a heartbeat would take
/// 20 s; one delivered to the worker takes milliseconds.
const LEASE: Duration = Duration::from_secs(60);

/// A worker role with its WorkerService served on its own port, advertised to the manager.
async fn served_worker(env: &Env) -> pb::worker_service_client::WorkerServiceClient<tonic::transport::Channel> {
    let listener = GrpcServer::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let cfg = WorkerConfig {
        // The scripted LLM and MCP servers run on loopback: the harness is the operator.
        allow: nightshift_core::operator_policy::OperatorPolicy::trusting(),
        concurrency: 4,
        lease_ttl: LEASE,
        queue: queue_settings(&env.queue_url, &env.queue_name),
        manager_endpoint: env.endpoint.clone(),
        advertise_endpoint: endpoint.clone(),
        ..WorkerConfig::default()
    };
    let role: Box<dyn Role> = Box::new(WorkerRole::build(cfg, WorkerDeps::default()).await.unwrap());
    tokio::spawn(serve_roles(vec![role], listener, std::future::pending()));
    pb::worker_service_client::WorkerServiceClient::connect(endpoint).await.unwrap()
}

async fn get(env: &Env, run: &pb::Run) -> pb::Run {
    env.manager.clone().get_run(pb::GetRunRequest { run_id: run.id.clone() }).await.unwrap().into_inner().run.unwrap()
}

/// Waits (up to 60 s) until `run` satisfies `pred`.
async fn until(env: &Env, run: &pb::Run, what: &str, pred: impl Fn(&pb::Run) -> bool) -> pb::Run {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = get(env, run).await;
        if pred(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "run {} never {what}: {r:?}", run.id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn terminal(r: &pb::Run) -> bool {
    !matches!(r.status(), pb::RunStatus::Queued | pb::RunStatus::Running)
}

fn secs(t: Option<prost_types::Timestamp>) -> f64 {
    let t = t.expect("timestamp");
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

/// The test's `area` agent (on the scripted model) with overlap `policy`.
async fn agent_with_policy(policy: &str) -> (Env, std::sync::Arc<nightshift_testkit::llm::Script>) {
    let (llm, script) = scripted_llm().await;
    let (env, _) = env(&llm).await;
    set_spec(
        &env,
        format!(
            "name: area\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\n\
             task: {{query: 'Area of a 3x4 rectangle?'}}\nschedule: {{manual: true}}\n\
             policy: {{overlap: {policy}, max_retries: 0, timeout: 60s}}\ntools: {{local: [calculate_area]}}"
        ),
    )
    .await;
    (env, script)
}

/// The agent with `policy`, a served worker, and run 1 running; then runs 2 and 3 triggered
/// (in that order) while run 1 runs. Returns the three runs once all ended, and the worker.
async fn three_overlapping(
    policy: &str,
) -> (Env, [pb::Run; 3], pb::worker_service_client::WorkerServiceClient<tonic::transport::Channel>) {
    let (env, script) = agent_with_policy(policy).await;
    script.delay_ms.store(ANSWER.as_millis() as u64, Ordering::SeqCst);
    let worker = served_worker(&env).await;
    let r1 = trigger(&env).await;
    until(&env, &r1, "started", |r| r.status() == pb::RunStatus::Running).await;
    let r2 = trigger(&env).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r3 = trigger(&env).await;
    (env, [r1, r2, r3], worker)
}

async fn all_ended(env: &Env, runs: &[pb::Run; 3]) -> [pb::Run; 3] {
    let mut out = Vec::new();
    for r in runs {
        out.push(until(env, r, "ended", terminal).await);
    }
    out.try_into().unwrap()
}

fn statuses(runs: &[pb::Run; 3]) -> [pb::RunStatus; 3] {
    [runs[0].status(), runs[1].status(), runs[2].status()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skip_records_the_overlapping_runs_as_skipped() {
    let (env, runs, _w) = three_overlapping("skip").await;
    let runs = all_ended(&env, &runs).await;
    use pb::RunStatus::{Skipped, Succeeded};
    assert_eq!(statuses(&runs), [Succeeded, Skipped, Skipped]);
    for r in &runs[1..] {
        assert!(r.reason.contains(&runs[0].id), "names the running run: {}", r.reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_all_runs_them_side_by_side() {
    let (env, runs, _w) = three_overlapping("allow_all").await;
    let runs = all_ended(&env, &runs).await;
    use pb::RunStatus::Succeeded;
    assert_eq!(statuses(&runs), [Succeeded; 3]);
    assert!(secs(runs[1].started_at) < secs(runs[0].finished_at), "run 2 started while run 1 ran");
    assert!(secs(runs[2].started_at) < secs(runs[0].finished_at), "run 3 started while run 1 ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffer_one_keeps_one_waiting_and_runs_it_next() {
    let (env, runs, _w) = three_overlapping("buffer_one").await;
    let runs = all_ended(&env, &runs).await;
    use pb::RunStatus::{Skipped, Succeeded};
    assert_eq!(statuses(&runs), [Succeeded, Succeeded, Skipped]);
    assert!(runs[2].reason.contains(&runs[1].id), "skipped because run 2 waits: {}", runs[2].reason);
    assert!(secs(runs[1].started_at) >= secs(runs[0].finished_at), "run 2 waited for run 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffer_all_runs_every_one_in_order_one_at_a_time() {
    let (env, runs, _w) = three_overlapping("buffer_all").await;
    let runs = all_ended(&env, &runs).await;
    use pb::RunStatus::Succeeded;
    assert_eq!(statuses(&runs), [Succeeded; 3]);
    // First in, first out, never two at once: run 3 (which polls as often as run 2) never
    // overtakes run 2.
    assert!(secs(runs[1].started_at) >= secs(runs[0].finished_at), "run 2 after run 1: {runs:?}");
    assert!(secs(runs[2].started_at) >= secs(runs[1].finished_at), "run 3 after run 2: {runs:?}");
}

/// Cancel_other with runs that hang in their last LLM call: a cancelled run can only let go of
/// the worker because the cancellation reached the worker (no checkpoint, and the next heartbeat
/// is 20 s away).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_other_stops_the_running_run_at_once_on_its_worker() {
    let (env, script) = agent_with_policy("cancel_other").await;
    let mut worker = served_worker(&env).await;
    script.hang_second_turn.store(true, Ordering::SeqCst);
    let mut runs = Vec::new();
    for i in 0..3 {
        let before = script.second_turns.load(Ordering::SeqCst);
        let run = trigger(&env).await;
        // Each run hangs in its second LLM call; the next one cancels it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while script.second_turns.load(Ordering::SeqCst) == before {
            assert!(Instant::now() < deadline, "run {i} never reached its second turn");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if i > 0 {
            let prev: &pb::Run = &runs[i - 1];
            let cancelled = until(&env, prev, "cancelled", |r| r.status() == pb::RunStatus::Cancelled).await;
            assert!(cancelled.reason.contains(&run.id), "cancelled in favour of the newcomer: {}", cancelled.reason);
            let since = Instant::now();
            loop {
                let status = worker.get_worker_status(pb::GetWorkerStatusRequest {}).await.unwrap().into_inner();
                if !status.active_runs.iter().any(|a| a.run_id == prev.id) {
                    break;
                }
                assert!(since.elapsed() < Duration::from_secs(10), "the worker still runs cancelled run {}", prev.id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        runs.push(run);
    }
    script.hang_second_turn.store(false, Ordering::SeqCst);
    let runs: [pb::Run; 3] = runs.try_into().unwrap();
    let runs = all_ended(&env, &runs).await;
    use pb::RunStatus::{Cancelled, Succeeded};
    assert_eq!(statuses(&runs), [Cancelled, Cancelled, Succeeded]);
}
