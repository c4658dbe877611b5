//! The five-binary deployment on loopback: `nightshift-events`, `nightshift-manager`, two
//! `nightshift-scheduler`s and three `nightshift-worker`s as separate processes, on the real
//! Postgres and NATS JetStream — again with Redis Streams as the queue, and again with a 3-master
//! Redis Cluster as both the queue and the event log — talking gRPC only. The LLM is the scripted
//! OpenAI-compatible server of the testkit (no hosted LLM is reachable here).
//!
//! Proves: scheduled runs flow end to end; a worker SIGKILLed mid-run has its run finished by
//! another worker without repeating the completed LLM call or tool call; a SIGKILLed scheduler
//! loses no tick.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{
    Deployment, Proc, by_name, free_port, runs_of, spawn, spawn_workers, start_hanging_run, wait_port, wait_succeeded,
};
use nightshift_core::pb;
use nightshift_core::pb::manager_service_client::ManagerServiceClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_binaries_on_postgres_and_nats_survive_killed_workers_and_schedulers() {
    five_binaries_survive_killed_workers_and_schedulers(&nightshift_testkit::nats_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_binaries_on_postgres_and_redis_survive_killed_workers_and_schedulers() {
    five_binaries_survive_killed_workers_and_schedulers(&nightshift_testkit::redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_binaries_on_postgres_and_a_redis_cluster_survive_killed_workers_and_schedulers() {
    five_binaries_survive_killed_workers_and_schedulers(&nightshift_testkit::redis_cluster_url()).await;
}

/// With a Redis Cluster as the queue, the event log is on the cluster as well.
async fn five_binaries_survive_killed_workers_and_schedulers(queue_url: &str) {
    let cluster = queue_url.starts_with("redis+cluster:");
    let db = nightshift_testkit::postgres_url().await;
    let queue_name = format!("dist-{}", uuid::Uuid::new_v4().simple());
    let (llm, script) = nightshift_testkit::llm::scripted_llm().await;
    let (pe, pm) = (free_port(), free_port());
    let ps = [free_port(), free_port()];
    let events_ep = format!("http://127.0.0.1:{pe}");
    let deployment = Deployment {
        db,
        queue_url: queue_url.to_owned(),
        queue_name: queue_name.clone(),
        ack_wait: "4s".into(),
        events: events_ep.clone(),
    };

    let events_prefix = format!("ev-{}", uuid::Uuid::new_v4().simple());
    let mut events_env = vec![("NIGHTSHIFT_EVENTS_LISTEN".to_owned(), format!("127.0.0.1:{pe}"))];
    if cluster {
        events_env.push(("NIGHTSHIFT_EVENTS_BACKEND_URL".into(), queue_url.to_owned()));
        events_env.push(("NIGHTSHIFT_EVENTS_PREFIX".into(), events_prefix.clone()));
    }
    let _events = spawn("events", "nightshift-events", &events_env);
    let _manager = deployment.spawn_manager(pm, ps[0]);
    wait_port(pm).await;
    let mut schedulers: Vec<Proc> = ps
        .iter()
        .enumerate()
        .map(|(i, port)| {
            deployment.spawn_scheduler(
                &format!("scheduler{i}"),
                *port,
                &[
                    ("NIGHTSHIFT_SCHEDULER_SHARD_COUNT", "8"),
                    ("NIGHTSHIFT_SCHEDULER_SHARD_LEASE", "3s"),
                    ("NIGHTSHIFT_SCHEDULER_COORDINATION_INTERVAL", "500ms"),
                    ("NIGHTSHIFT_SCHEDULER_SYNC_INTERVAL", "300ms"),
                ],
            )
        })
        .collect();
    let mut workers = spawn_workers(3, &deployment.role_env("WORKER"), pm, &[]);
    for p in ps {
        wait_port(p).await;
    }
    let mut m = ManagerServiceClient::connect(format!("http://127.0.0.1:{pm}")).await.unwrap();

    // 1. A 1 s schedule flows scheduler → NATS → worker → manager, through gRPC only.
    let ticker = format!(
        "name: ticker\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\ntask: {{query: tick}}\n\
         schedule: {{interval: 1s}}\npolicy: {{overlap: allow_all, max_retries: 0}}\ntools: {{local: [calculate_area]}}"
    );
    m.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: ticker }).await.unwrap();
    let t0 = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let done = runs_of(&mut m, "ticker").await.iter().filter(|r| r.status() == pb::RunStatus::Succeeded).count();
    assert!(done >= 3, "scheduled runs complete end to end: {done}");

    // 2. SIGKILL one scheduler; ticks keep coming from the other, none lost, none doubled.
    let killed = schedulers.remove(0);
    drop(killed);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let t1 = chrono::Utc::now();

    // 3. SIGKILL the worker running a multi-step run between its tool call and its next LLM call.
    m.pause_agent(pb::PauseAgentRequest { agent: by_name("ticker") }).await.unwrap();
    // Ticker runs in flight finish first (on a loaded machine that takes more than a moment):
    // their LLM calls must not be counted as the hanging run's.
    let drained = tokio::time::Instant::now() + Duration::from_secs(60);
    while runs_of(&mut m, "ticker")
        .await
        .iter()
        .any(|r| matches!(r.status(), pb::RunStatus::Queued | pb::RunStatus::Running))
    {
        assert!(tokio::time::Instant::now() < drained, "ticker runs still in flight a minute after pausing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first_turns_before = script.first_turns.load(Ordering::SeqCst);
    let (run, holder) = start_hanging_run(&mut m, &llm, &script).await;
    let idx = workers.iter().position(|w| w.name == holder).expect("holder is one of ours");
    drop(workers.remove(idx)); // SIGKILL
    script.hang_second_turn.store(false, Ordering::SeqCst);
    let finished = wait_succeeded(&mut m, &run.id).await;
    assert_ne!(finished.worker_id, holder);
    assert_eq!(finished.attempt, 2);
    assert_eq!(
        script.first_turns.load(Ordering::SeqCst),
        first_turns_before + 1,
        "the first LLM call was not repeated"
    );
    let attempts: Vec<(u32, bool)> = finished
        .steps
        .iter()
        .map(|s| (s.attempt, matches!(s.payload, Some(pb::run_step::Payload::ToolResult(_)))))
        .collect();
    assert_eq!(attempts, [(1, false), (1, true), (2, false)], "the tool ran once, in attempt 1");

    // Ticks of the window around the scheduler kill: every second has exactly one run.
    let ticks: BTreeSet<i64> =
        runs_of(&mut m, "ticker").await.iter().filter_map(|r| r.scheduled_for.map(|t| t.seconds)).collect();
    // (Whole seconds: the agent's ticks sit at its phase within each, up to 1 s after it.)
    let expected: BTreeSet<i64> = (t0.timestamp() + 2..=t1.timestamp() - 2).collect();
    let missing: Vec<_> = expected.difference(&ticks).collect();
    assert!(missing.is_empty(), "ticks lost around the scheduler kill: {missing:?}");
    let all = runs_of(&mut m, "ticker").await;
    assert_eq!(all.len(), ticks.len(), "one run per tick");
    if cluster {
        // The runs' events went through the cluster's stream.
        let mut conn = nightshift_redis::Connector::open(queue_url)
            .unwrap()
            .connection(nightshift_redis::Timeouts::COMMANDS)
            .await
            .unwrap();
        let stored: u64 = redis::cmd("XLEN")
            .arg(nightshift_redis::key(&events_prefix, "events"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(stored >= 10, "the event log on the cluster holds the runs' events: {stored}");
    }
    drop((workers, schedulers, _manager, _events));
    if queue_url.starts_with("nats:") {
        nightshift_testkit::delete_nats_stream(&queue_name).await;
    } else {
        nightshift_testkit::redis_delete_prefix(queue_url, &queue_name).await;
        nightshift_testkit::redis_delete_prefix(queue_url, &events_prefix).await;
    }
}
