//! Lease recovery with the binaries as separate processes (Postgres, Redis queue; the LLM is the
//! testkit's scripted OpenAI-compatible server, for a deterministic hang inside a run):
//! the manager is frozen (SIGSTOP) while a worker ends its run, the worker is SIGKILLed before
//! anything is recorded, the manager comes back. The run's delivery stays unacked in the queue
//! for the whole ack wait (60 s here), so only the scheduler's lease-recovery sweep can bring it
//! back in time: it must be resumed by another worker from its checkpoints within the lease TTL
//! plus a sweep, with a `RUN_RETRYING` event saying why.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Deployment, Proc, free_port, spawn, spawn_workers, start_hanging_run_of, wait_port};
use nightshift_core::pb;
use nightshift_core::pb::event_service_client::EventServiceClient;
use nightshift_core::pb::manager_service_client::ManagerServiceClient;

/// Sends `signal` (`STOP`, `CONT`) to a child process.
fn signal(p: &Proc, signal: &str) {
    let out = std::process::Command::new("kill").args([&format!("-{signal}"), &p.child.id().to_string()]).output();
    assert!(out.unwrap().status.success(), "kill -{signal} {}", p.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_worker_died_unrecorded_is_recovered_by_the_sweep() {
    let db = nightshift_testkit::postgres_url().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (llm, script) = nightshift_testkit::llm::scripted_llm().await;
    let (pe, pm, ps) = (free_port(), free_port(), free_port());
    let events_ep = format!("http://127.0.0.1:{pe}");
    let ack_wait = Duration::from_secs(60);
    let deployment = Deployment {
        db,
        queue_url: nightshift_testkit::redis_url(),
        queue_name: format!("lease-{id}"),
        ack_wait: format!("{}s", ack_wait.as_secs()),
        events: events_ep.clone(),
    };
    let _events =
        spawn("events", "nightshift-events", &[("NIGHTSHIFT_EVENTS_LISTEN".into(), format!("127.0.0.1:{pe}"))]);
    let manager = deployment.spawn_manager(pm, ps);
    // Sweeps every second, recovering leases expired for more than a second.
    let _scheduler = deployment.spawn_scheduler(
        "scheduler",
        ps,
        &[("NIGHTSHIFT_SCHEDULER_REPUBLISH_AFTER", "2s"), ("NIGHTSHIFT_SCHEDULER_LEASE_RECOVERY_GRACE", "1s")],
    );
    // Lease TTL 3 s (spawn_workers).
    let mut w0 = spawn_workers(1, &deployment.role_env("WORKER"), pm, &[]);
    for p in [pe, pm, ps] {
        wait_port(p).await;
    }
    let mut m = ManagerServiceClient::connect(format!("http://127.0.0.1:{pm}")).await.unwrap();
    let (run, holder) = start_hanging_run_of(&mut m, "orphan", &llm, &script).await;
    assert_eq!(holder, "w0");
    let first_turns = script.first_turns.load(Ordering::SeqCst);

    // The manager freezes; the last LLM turn answers; the worker's checkpoint and FinishRun
    // hang on the frozen manager; the worker is killed; the manager comes back.
    signal(&manager, "STOP");
    script.hang_second_turn.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(w0.remove(0)); // SIGKILL
    let killed = Instant::now();
    signal(&manager, "CONT");
    let stuck = m.get_run(pb::GetRunRequest { run_id: run.id.clone() }).await.unwrap().into_inner().run.unwrap();
    assert_eq!((stuck.status(), stuck.steps.len()), (pb::RunStatus::Running, 2), "nothing of the end was recorded");

    let _w1 = spawn_workers(1, &deployment.role_env("WORKER"), pm, &[("NIGHTSHIFT_WORKER_WORKER_ID", "w1")]);
    // Lease TTL 3 s + grace 1 s + a sweep every second + the resumed attempt: well under 20 s,
    // and far under the 60 s after which the queue would redeliver the original request.
    let done = loop {
        let r = m.get_run(pb::GetRunRequest { run_id: run.id.clone() }).await.unwrap().into_inner().run.unwrap();
        if r.status() == pb::RunStatus::Succeeded {
            break r;
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "run still {:?} 20 s after its worker died", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(killed.elapsed() < ack_wait, "recovered by the sweep, not by the queue's redelivery");
    assert_eq!((done.attempt, done.retries, done.worker_id.as_str()), (2, 0, "w1"), "resumed, not retried");
    assert_eq!(
        script.first_turns.load(Ordering::SeqCst),
        first_turns,
        "the checkpointed first turn was not paid again"
    );

    // The recovery was announced, by the scheduler, with its reason.
    let mut events = EventServiceClient::connect(events_ep).await.unwrap();
    let listed = events
        .list_events(pb::ListEventsRequest { page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let retrying: Vec<_> =
        listed.iter().filter(|e| e.run_id == run.id && e.r#type() == pb::EventType::RunRetrying).collect();
    assert_eq!(retrying.len(), 1, "one RUN_RETRYING event: {retrying:?}");
    assert!(retrying[0].source.starts_with("scheduler"), "{}", retrying[0].source);
    let data = nightshift_events_client::struct_to_json(&retrying[0].data.clone().unwrap_or_default()).to_string();
    assert!(data.contains("lease expired") && data.contains("\"worker\":\"w0\""), "{data}");
}
