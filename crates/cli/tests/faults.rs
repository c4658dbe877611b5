//! Faults of the distributed deployment, with the binaries as separate processes on loopback
//! (Postgres, NATS JetStream for the work queue **and** the event log; the LLM is the testkit's
//! scripted OpenAI-compatible server, since no hosted LLM is reachable here):
//!
//! - the NATS server is restarted under load (four agents at 1 s): no run is lost or executed
//!   twice, and a subscriber that resumes from its cursor after each disconnect sees every stored
//!   event exactly once, in order;
//! - a worker gets SIGTERM with a run in flight: it drains (the run is handed back when the grace
//!   period ends), exits cleanly, and another worker finishes the run.
//!
//! Its own test binary: restarting NATS must not disturb other tests (cargo runs test binaries
//! one after another).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Deployment, by_name, free_port, runs_of, spawn, spawn_workers, start_hanging_run, wait_port, wait_succeeded,
};
use nightshift_core::pb;
use nightshift_core::pb::event_service_client::EventServiceClient;
use nightshift_core::pb::manager_service_client::ManagerServiceClient;

const NATS_START: &str = "mkdir -p /var/lib/nats-server && start-stop-daemon --start --oknodo --background \
    --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";
const NATS_STOP: &str = "start-stop-daemon --stop --oknodo --retry 10 --exec /usr/sbin/nats-server";

fn sh(cmd: &str) {
    let out = std::process::Command::new("bash").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// What a cursor-resuming subscriber saw: (cursor, event).
type Seen = Arc<Mutex<Vec<(String, pb::Event)>>>;

/// Subscribes from the beginning and, whenever the stream breaks (the event service lost NATS,
/// or told us we lagged), resumes strictly after the last cursor it saw.
fn subscriber(endpoint: String) -> (Seen, Arc<Mutex<u32>>, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let resumes = Arc::new(Mutex::new(0u32));
    let (out, count) = (seen.clone(), resumes.clone());
    let task = tokio::spawn(async move {
        let mut after: Option<String> = None;
        loop {
            let from = match &after {
                Some(c) => pb::subscribe_request::From::AfterCursor(c.clone()),
                None => pb::subscribe_request::From::FromBeginning(true),
            };
            let req = pb::SubscribeRequest { filter: None, from: Some(from) };
            if let Ok(mut client) = EventServiceClient::connect(endpoint.clone()).await
                && let Ok(stream) = client.subscribe(req).await
            {
                let mut stream = stream.into_inner();
                while let Ok(Some(item)) = stream.message().await {
                    match item.item {
                        Some(pb::subscribe_response::Item::Event(e)) => {
                            after = Some(e.cursor.clone());
                            out.lock().unwrap().push((e.cursor.clone(), e));
                        }
                        Some(pb::subscribe_response::Item::Lagged(l)) => {
                            after = Some(l.resume_after_cursor);
                            break;
                        }
                        None => {}
                    }
                }
            }
            *count.lock().unwrap() += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    (seen, resumes, task)
}

async fn all_events(endpoint: &str) -> Vec<pb::Event> {
    let mut client = EventServiceClient::connect(endpoint.to_owned()).await.unwrap();
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_events(pb::ListEventsRequest { page_size: 1000, page_token: token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_restart_under_load_and_worker_sigterm_lose_nothing() {
    let db = nightshift_testkit::postgres_url().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let queue_name = format!("faults-{id}");
    let (llm, script) = nightshift_testkit::llm::scripted_llm().await;
    let (pe, pm, ps) = (free_port(), free_port(), free_port());
    let events_ep = format!("http://127.0.0.1:{pe}");
    let deployment = Deployment {
        db,
        queue_url: nightshift_testkit::nats_url(),
        queue_name: queue_name.clone(),
        ack_wait: "4s".into(),
        events: events_ep.clone(),
    };
    let _events = spawn(
        "events",
        "nightshift-events",
        &[
            ("NIGHTSHIFT_EVENTS_LISTEN".into(), format!("127.0.0.1:{pe}")),
            ("NIGHTSHIFT_EVENTS_BACKEND_URL".into(), nightshift_testkit::nats_url()),
            ("NIGHTSHIFT_EVENTS_PREFIX".into(), format!("faults-events-{id}")),
        ],
    );
    let _manager = deployment.spawn_manager(pm, ps);
    let _scheduler = deployment.spawn_scheduler("scheduler", ps, &[("NIGHTSHIFT_SCHEDULER_REPUBLISH_AFTER", "2s")]);
    let mut workers = spawn_workers(2, &deployment.role_env("WORKER"), pm, &[("NIGHTSHIFT_WORKER_DRAIN_GRACE", "1s")]);
    for p in [pe, pm, ps] {
        wait_port(p).await;
    }
    let (seen, resumes, sub) = subscriber(events_ep.clone());
    let mut m = ManagerServiceClient::connect(format!("http://127.0.0.1:{pm}")).await.unwrap();
    let agents: Vec<String> = (0..4).map(|i| format!("tick{i}")).collect();
    for a in &agents {
        let manifest = format!(
            "name: {a}\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\ntask: {{query: tick}}\n\
             schedule: {{interval: 1s}}\npolicy: {{overlap: allow_all, max_retries: 0}}\ntools: {{local: [calculate_area]}}"
        );
        m.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: manifest }).await.unwrap();
    }
    let t0 = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 1. Restart NATS under load.
    let down = Instant::now();
    sh(NATS_STOP);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sh(NATS_START);
    wait_port(4222).await;
    let up = chrono::Utc::now();
    let outage = down.elapsed();
    // Recovery: the first run of a tick after NATS came back completes.
    let mut recovery = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while recovery.is_none() && Instant::now() < deadline {
        let runs = runs_of(&mut m, &agents[0]).await;
        if runs.iter().any(|r| {
            r.status() == pb::RunStatus::Succeeded && r.scheduled_for.is_some_and(|t| t.seconds > up.timestamp())
        }) {
            recovery = Some((chrono::Utc::now() - up).to_std().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovery = recovery.expect("runs complete again after the NATS restart");
    tokio::time::sleep(Duration::from_secs(4)).await;
    for a in &agents {
        m.pause_agent(pb::PauseAgentRequest { agent: by_name(a) }).await.unwrap();
    }
    let t1 = chrono::Utc::now();

    // Every tick of the window ran exactly once (late runs of the outage are published by the
    // outbox sweep and complete a little later).
    let mut executed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for a in &agents {
        let expected: BTreeSet<i64> = (t0.timestamp() + 2..=t1.timestamp() - 2).collect();
        loop {
            let runs = runs_of(&mut m, a).await;
            let ticks: BTreeMap<i64, &pb::Run> =
                runs.iter().filter_map(|r| r.scheduled_for.map(|t| (t.seconds, r))).collect();
            assert_eq!(ticks.len(), runs.len(), "{a}: one run per tick");
            let missing: Vec<_> = expected.iter().filter(|t| !ticks.contains_key(t)).collect();
            assert!(missing.is_empty(), "{a}: ticks lost around the NATS restart: {missing:?}");
            let unfinished: Vec<_> = expected
                .iter()
                .filter(|t| ticks[t].status() != pb::RunStatus::Succeeded)
                .map(|t| (t, ticks[t].status()))
                .collect();
            if unfinished.is_empty() {
                for t in &expected {
                    assert_eq!(ticks[t].attempt, 1, "{a}@{t} ran more than once");
                }
                executed += expected.len();
                break;
            }
            assert!(Instant::now() < deadline, "{a}: runs never finished after the NATS restart: {unfinished:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    // 2. SIGTERM the worker running a multi-step run: it hands the run back and exits; the
    // other worker finishes it.
    let (run, holder) = start_hanging_run(&mut m, &llm, &script).await;
    let idx = workers.iter().position(|w| w.name == holder).expect("holder is one of ours");
    let mut leaving = workers.remove(idx);
    sh(&format!("kill -TERM {}", leaving.child.id()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = leaving.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the worker did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "a draining worker exits cleanly: {status}");
    script.hang_second_turn.store(false, Ordering::SeqCst);
    let finished = wait_succeeded(&mut m, &run.id).await;
    assert_ne!(finished.worker_id, holder);
    assert_eq!(finished.attempt, 2, "one attempt handed back, one completed");
    let tools: Vec<u32> = finished
        .steps
        .iter()
        .filter(|s| matches!(s.payload, Some(pb::run_step::Payload::ToolResult(_))))
        .map(|s| s.attempt)
        .collect();
    assert_eq!(tools, [1], "the tool ran once, before the hand-back");

    // 3. The subscriber, resuming from its cursor after every break, saw the stored history
    // exactly once and in order.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sub.abort();
    let history = all_events(&events_ep).await;
    let got = seen.lock().unwrap().clone();
    let cursors: Vec<&str> = got.iter().map(|(c, _)| c.as_str()).collect();
    let unique: BTreeSet<&str> = cursors.iter().copied().collect();
    assert_eq!(unique.len(), cursors.len(), "an event was delivered twice");
    let want: Vec<&str> = history.iter().map(|e| e.cursor.as_str()).collect();
    assert_eq!(cursors, want, "the subscriber saw exactly the log's events, in order");
    let completed: BTreeMap<&str, usize> = history
        .iter()
        .filter(|e| e.r#type() == pb::EventType::BackgroundTaskCompleted)
        .fold(BTreeMap::new(), |mut m, e| {
            *m.entry(e.run_id.as_str()).or_default() += 1;
            m
        });
    assert!(completed.values().all(|n| *n == 1), "a run completed twice: {completed:?}");
    eprintln!(
        "faults: NATS outage {outage:.1?}, first run completed {recovery:.1?} after NATS was back; {executed} window \
         runs executed once each, 0 lost; {} events seen by the subscriber ({} resumes), {} in the log; \
         SIGTERM: run handed back and finished on the other worker",
        cursors.len(),
        resumes.lock().unwrap(),
        want.len()
    );
    drop((workers, _scheduler, _manager, _events));
    nightshift_testkit::delete_nats_stream(&queue_name).await;
    nightshift_testkit::delete_nats_stream(&format!("faults-events-{id}_events")).await;
}
