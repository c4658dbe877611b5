//! Observability of the five service binaries as separate processes (events, manager,
//! scheduler, worker, memory) on the real Postgres and NATS JetStream, each exporting its spans
//! over OTLP/gRPC to a real collector (rotel) and serving `/metrics`. The LLM is the testkit's
//! scripted OpenAI-compatible server (no hosted LLM is reachable here); it makes one tool call.
//!
//! Proves that one run is one trace: the trace context crosses the work queue (scheduler →
//! worker) and gRPC metadata (worker → manager, worker → memory); every span of a scheduled run
//! shares the trace id of the scheduler's `scheduler.fire` span, and every span's parent is in
//! that trace. And that every service's `/metrics` passes `promtool check metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Proc, free_port, runs_of, spawn, wait_port};
use nightshift_core::pb;
use nightshift_core::pb::manager_service_client::ManagerServiceClient;
use nightshift_testkit::otel::{Receiver, Span};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_binaries_make_one_trace_per_run_and_serve_valid_metrics() {
    let otel = Receiver::start();
    let db = nightshift_testkit::postgres_url().await;
    let queue_name = format!("trace-{}", uuid::Uuid::new_v4().simple());
    let (llm, _script) = nightshift_testkit::llm::scripted_llm().await;
    let (pe, pm, ps, pw, pmem) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let roles = ["events", "memory", "manager", "scheduler", "worker"];
    let metrics_ports: BTreeMap<&str, u16> = roles.iter().map(|r| (*r, free_port())).collect();
    // `nightshift-ROLE` listening on `port`, exporting spans to the collector, serving /metrics,
    // with its role's settings `extra` (keys without the NIGHTSHIFT_ROLE_ prefix).
    let start = |role: &str, port: u16, extra: &[(&str, String)]| -> Proc {
        let p = format!("NIGHTSHIFT_{}_", role.to_uppercase());
        let mut e = vec![
            (format!("{p}LISTEN"), format!("127.0.0.1:{port}")),
            (format!("{p}METRICS_LISTEN"), format!("127.0.0.1:{}", metrics_ports[role])),
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), otel.endpoint.clone()),
            ("OTEL_SERVICE_NAME".to_owned(), format!("nightshift-{role}")),
            // Export every 100 ms instead of every 5 s, so the test does not wait.
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ];
        if matches!(role, "manager" | "scheduler" | "worker") {
            e.extend([
                (format!("{p}QUEUE_URL"), nightshift_testkit::nats_url()),
                (format!("{p}QUEUE_NAME"), queue_name.clone()),
                (format!("{p}EVENTS_ENDPOINT"), format!("http://127.0.0.1:{pe}")),
            ]);
        }
        e.extend(extra.iter().map(|(k, v)| (format!("{p}{k}"), v.clone())));
        spawn(&format!("t-{role}"), &format!("nightshift-{role}"), &e)
    };
    let memory_store = "memory://".to_owned();
    let _events = start("events", pe, &[]);
    let _memory = start(
        "memory",
        pmem,
        &[
            ("STORES__EPISODIC", memory_store.clone()),
            ("STORES__LONG_TERM", memory_store.clone()),
            ("STORES__PROCEDURAL", memory_store),
        ],
    );
    let _manager =
        start("manager", pm, &[("DATABASE_URL", db.clone()), ("SCHEDULER_ENDPOINT", format!("http://127.0.0.1:{ps}"))]);
    let _scheduler = start("scheduler", ps, &[("DATABASE_URL", db.clone()), ("SYNC_INTERVAL", "300ms".into())]);
    let _worker = start(
        "worker",
        pw,
        &[
            ("MANAGER_ENDPOINT", format!("http://127.0.0.1:{pm}")),
            ("MEMORY_ENDPOINT", format!("http://127.0.0.1:{pmem}")),
        ],
    );
    for p in [pe, pmem, pm, ps, pw] {
        wait_port(p).await;
    }
    let mut m = ManagerServiceClient::connect(format!("http://127.0.0.1:{pm}")).await.unwrap();
    let agent = format!(
        "name: traced\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\ntask: {{query: measure}}\n\
         schedule: {{interval: 1s}}\npolicy: {{max_retries: 0}}\ntools: {{local: [calculate_area]}}"
    );
    m.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: agent }).await.unwrap();

    // Ticks come every second; the first run that succeeds is the one followed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let runs = runs_of(&mut m, "traced").await;
        if let Some(r) = runs.iter().find(|r| r.status() == pb::RunStatus::Succeeded) {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "no scheduled run succeeded within 30 s: {runs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(run.trigger(), pb::TriggerKind::Schedule);

    // Wait until the services exported the run's spans: the root, the worker's run span and its
    // FinishRun call (the last thing the worker does) on the manager side.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (trace, spans) = loop {
        let all = otel.spans();
        let root = all.iter().find(|s| s.name == "scheduler.fire" && s.attributes.get("run") == Some(&run.id));
        if let Some(root) = root {
            let trace: Vec<Span> = all.iter().filter(|s| s.trace_id == root.trace_id).cloned().collect();
            let has = |name: &str| trace.iter().any(|s| s.name == name);
            if has("agent.run")
                && has("/nightshift.v1.ManagerService/FinishRun")
                && has("memory.store_episode")
                && has("/nightshift.v1.MemoryService/Store")
            {
                break (root.trace_id.clone(), trace);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the run's spans did not all reach the collector within 20 s (log: {}); run {}:\n{:#?}",
            otel.log_path().display(),
            run.id,
            all.iter().map(|s| (&s.service, &s.name, &s.trace_id)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let by_service: BTreeMap<&str, BTreeSet<&str>> = spans.iter().fold(BTreeMap::new(), |mut acc, s| {
        acc.entry(s.service.as_str()).or_default().insert(s.name.as_str());
        acc
    });
    let expect = |service: &str, names: &[&str]| {
        let got =
            by_service.get(service).unwrap_or_else(|| panic!("no {service} span in trace {trace}: {by_service:#?}"));
        for n in names {
            assert!(got.contains(n), "{service} has no '{n}' span in trace {trace}: {by_service:#?}");
        }
    };
    expect("nightshift-scheduler", &["scheduler.fire"]);
    expect("nightshift-worker", &["agent.run", "llm.chat", "tool.call", "memory.recall", "memory.store_episode"]);
    expect(
        "nightshift-manager",
        &[
            "/nightshift.v1.ManagerService/StartRun",
            "/nightshift.v1.ManagerService/Checkpoint",
            "/nightshift.v1.ManagerService/FinishRun",
        ],
    );
    expect("nightshift-memory", &["/nightshift.v1.MemoryService/RecallForRun", "/nightshift.v1.MemoryService/Store"]);

    // One tree: a single root (the tick), every other span's parent is a span of this trace.
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    let roots: Vec<&Span> = spans.iter().filter(|s| s.parent_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root span: {roots:#?}");
    assert_eq!(roots[0].name, "scheduler.fire");
    for s in &spans {
        assert!(
            s.parent_id.is_empty() || ids.contains(s.parent_id.as_str()),
            "span {} ({}) has a parent outside the trace",
            s.name,
            s.service
        );
    }
    // The worker's run span hangs directly under the tick that queued it.
    let run_span = spans.iter().find(|s| s.name == "agent.run").unwrap();
    assert_eq!(run_span.parent_id, roots[0].id);

    // A manual trigger: the run's trace starts at the manager's TriggerAgent call.
    let manual = m
        .trigger_agent(pb::TriggerAgentRequest { agent: common::by_name("traced"), query_override: None })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    common::wait_succeeded(&mut m, &manual.id).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = otel.spans();
        let run_span = all.iter().find(|s| s.name == "agent.run" && s.attributes.get("run") == Some(&manual.id));
        if let Some(run_span) = run_span {
            let parent = all.iter().find(|s| s.id == run_span.parent_id);
            if let Some(parent) = parent {
                assert_eq!(
                    (parent.service.as_str(), parent.name.as_str(), parent.trace_id.as_str()),
                    ("nightshift-manager", "/nightshift.v1.ManagerService/TriggerAgent", run_span.trace_id.as_str())
                );
                break;
            }
        }
        assert!(Instant::now() < deadline, "the manual run's span and its parent were not exported within 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every service's /metrics is valid Prometheus text holding its own metrics.
    let wanted = [
        ("events", "nightshift_events_published_total"),
        ("memory", "nightshift_memory_records_stored_total"),
        ("manager", "nightshift_grpc_requests_total{method=\"/nightshift.v1.ManagerService/StartRun\",code=\"Ok\"}"),
        ("scheduler", "nightshift_scheduler_fired_total"),
        ("worker", "nightshift_worker_runs_total{status=\"succeeded\"}"),
        ("worker", "nightshift_tool_calls_total"),
        ("worker", "nightshift_llm_request_duration_seconds_bucket"),
    ];
    for (role, metric) in wanted {
        let text = get_metrics(metrics_ports[role]);
        assert!(text.contains(metric), "{role} /metrics lacks {metric}:\n{text}");
        promtool_check(role, &text);
    }
    drop((_worker, _scheduler, _manager, _memory, _events));
    nightshift_testkit::delete_nats_stream(&queue_name).await;
}

/// `GET /metrics` (HTTP/1.0, so the body ends with the connection).
fn get_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "GET /metrics on {port}: {head}");
    body.to_owned()
}

/// `promtool check metrics` (Prometheus' own linter; installed by scripts/test.sh).
fn promtool_check(role: &str, text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is required (scripts/test.sh installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejects the {role} metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
