//! Exactly-once firing with several scheduler replicas, against the real Postgres and NATS /
//! Redis servers, and the schedule lifecycle (pause, resume, restart) on the embedded backends.
//!
//! These tests take real time (schedules tick every second), so they run for ~25 s each.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{AgentId, AgentSpec, AgentState, RunStatus, SystemClock, time};
use nightshift_queue::{QueueOptions, WorkQueue};
use nightshift_scheduler::{Scheduler, SchedulerConfig};
use nightshift_store::{RunFilter, Store};
use tokio::sync::watch;

fn spec(name: &str, schedule: &str) -> AgentSpec {
    AgentSpec::from_yaml(&format!(
        "name: {name}\nmodel: {{provider: openai, model: m}}\ntask: {{query: q}}\nschedule: {schedule}\npolicy: {{overlap: allow_all}}"
    ))
    .unwrap()
}

fn config(shard_count: u32) -> SchedulerConfig {
    SchedulerConfig {
        shard_count,
        shard_lease: Duration::from_secs(3),
        coordination_interval: Duration::from_millis(500),
        sync_interval: Duration::from_millis(300),
        republish_after: Duration::from_secs(2),
        ..SchedulerConfig::default()
    }
}

struct Replica {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(store: Store, queue: Arc<dyn WorkQueue>, cfg: SchedulerConfig) -> Replica {
    let s = Scheduler::new(store, queue, Arc::new(SystemClock), cfg);
    let (stop, rx) = watch::channel(false);
    Replica { stop, task: tokio::spawn(s.run(rx)) }
}

/// Drains the queue, acking everything, and records every delivered run id.
fn drain(queue: Arc<dyn WorkQueue>) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            match queue.receive(256, Duration::from_millis(500)).await {
                Ok(batch) => {
                    for d in batch {
                        out.lock().unwrap().push(d.request.run_id.clone());
                        d.ack().await.unwrap();
                    }
                }
                Err(e) => panic!("receive failed: {e}"),
            }
        }
    });
    (seen, task)
}

async fn scheduled_runs(store: &Store, agents: &[AgentId]) -> BTreeMap<AgentId, BTreeSet<i64>> {
    let mut out = BTreeMap::new();
    for a in agents {
        let mut ticks = BTreeSet::new();
        let mut token = None;
        loop {
            let page = store
                .list_runs(&RunFilter {
                    agent_id: Some(a.clone()),
                    limit: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap();
            for r in &page.items {
                let tick = time::to_millis(r.scheduled_for.expect("scheduled run"));
                assert!(ticks.insert(tick), "tick {tick} of {a} recorded twice");
                assert_eq!(r.id.as_str(), format!("{a}@{tick}"), "run id derives from the tick");
            }
            token = page.next_page_token;
            if token.is_none() {
                break;
            }
        }
        out.insert(a.clone(), ticks);
    }
    out
}

/// Two replicas, 50 agents at 1 s, one replica killed halfway: every tick in the window is one
/// run in the store and one delivery on the queue.
async fn two_replicas_one_killed(queue_url: &str) {
    let db = nightshift_testkit::postgres_url().await;
    let store_a = Store::connect(&db).await.unwrap();
    let store_b = Store::connect(&db).await.unwrap();
    let opts = QueueOptions::named(format!("sched-test-{}", uuid::Uuid::new_v4().simple()));
    let queue_a = nightshift_queue::connect(queue_url, &opts).await.unwrap();
    let queue_b = nightshift_queue::connect(queue_url, &opts).await.unwrap();
    let queue_c = nightshift_queue::connect(queue_url, &opts).await.unwrap();

    let mut agents = Vec::new();
    for i in 0..50 {
        agents.push(
            store_a.create_agent(&spec(&format!("a{i}"), "{interval: 1s}"), AgentState::Active).await.unwrap().id,
        );
    }
    let (delivered, consumer) = drain(queue_c);
    let a = start(store_a.clone(), queue_a, config(16));
    let b = start(store_b.clone(), queue_b, config(16));
    let t0: DateTime<Utc> = Utc::now();
    tokio::time::sleep(Duration::from_secs(11)).await;
    // SIGKILL-like: the task is dropped mid-flight; it never leaves the shard table.
    a.task.abort();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let t1 = Utc::now();
    let _ = b.stop.send(true);
    b.task.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    consumer.abort();

    let runs = scheduled_runs(&store_a, &agents).await;
    // Every second strictly inside the window (after start-up and before the stop), at the
    // agent's phase within it.
    let first = (time::to_millis(t0) / 1000 + 2) * 1000;
    let last = (time::to_millis(t1) / 1000 - 2) * 1000;
    let seconds: Vec<i64> = (first / 1000..=last / 1000).map(|s| s * 1000).collect();
    assert!(seconds.len() >= 18, "window too short: {}", seconds.len());
    let schedule = spec("a", "{interval: 1s}").schedule;
    for (agent, ticks) in &runs {
        let phase = i64::try_from(schedule.phase(agent).as_millis()).unwrap();
        let expected: BTreeSet<i64> = seconds.iter().map(|s| s + phase).collect();
        let missing: Vec<_> = expected.difference(ticks).collect();
        assert!(missing.is_empty(), "agent {agent} lost ticks {missing:?}");
    }
    let delivered = delivered.lock().unwrap().clone();
    let unique: BTreeSet<&String> = delivered.iter().collect();
    assert_eq!(unique.len(), delivered.len(), "a run was delivered twice");
    let total: usize = runs.values().map(BTreeSet::len).sum();
    assert_eq!(unique.len(), total, "every recorded run was delivered exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_and_nats() {
    two_replicas_one_killed(&nightshift_testkit::nats_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_and_redis() {
    two_replicas_one_killed(&nightshift_testkit::redis_url()).await;
}

/// Pause stops firing, resume restarts without catch-up, a restart resumes from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_restart_on_embedded_backends() {
    let db = nightshift_testkit::sqlite_db();
    let store = Store::connect(&db.url).await.unwrap();
    let queue = nightshift_queue::connect("memory://", &QueueOptions::default()).await.unwrap();
    let agent = store.create_agent(&spec("ticker", "{interval: 1s, misfire: skip}"), AgentState::Active).await.unwrap();
    let count = |store: Store| {
        let id = agent.id.clone();
        async move {
            let page =
                store.list_runs(&RunFilter { agent_id: Some(id), limit: 1000, ..Default::default() }).await.unwrap();
            assert!(page.items.iter().all(|r| r.status == RunStatus::Queued));
            page.items.len()
        }
    };

    let r = start(store.clone(), queue.clone(), config(4));
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let running = count(store.clone()).await;
    // Up to five fired ticks in 4.5 s, plus the next one recorded `prepare_ahead` early.
    assert!((3..=6).contains(&running), "about one run per second, got {running}");

    store.set_agent_state(&agent.id, AgentState::Paused).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await; // the scheduler picks the change up
    let at_pause = count(store.clone()).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(count(store.clone()).await, at_pause, "a paused agent never fires");

    store.set_agent_state(&agent.id, AgentState::Active).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let after_resume = count(store.clone()).await - at_pause;
    // 2.6 s hold up to three fired ticks plus the next one, recorded up to `prepare_ahead` (1 s)
    // before it is due; a burst of the ~5 ticks skipped while paused would give 6 or more.
    assert!((1..=4).contains(&after_resume), "resume fires again without a burst of the paused ticks: {after_resume}");

    // Restart: a new replica continues from the stored progress, without repeating ticks.
    let _ = r.stop.send(true);
    r.task.await.unwrap();
    let before_restart = count(store.clone()).await;
    let r2 = start(store.clone(), queue.clone(), config(4));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after_restart = count(store.clone()).await - before_restart;
    assert!((2..=5).contains(&after_restart), "the restarted scheduler keeps firing: {after_restart}");
    let _ = r2.stop.send(true);
    r2.task.await.unwrap();
    // Every run left was published and flagged: published runs are flagged in batches, the
    // last of them (newer than the outbox sweep's `republish_after`) by the flush at the stop.
    let unflagged = store.stale_queued_runs(Utc::now() + chrono::Duration::hours(1), 1000).await.unwrap();
    assert_eq!(unflagged.len(), 0, "runs published but not flagged");
    let state = store.scheduled_agent(&agent.id).await.unwrap().unwrap();
    assert_eq!(state.fired as usize, count(store.clone()).await, "progress matches the runs");
}
