//! A failing agent under a real `nightshift dev` process with `[events.alerts]` and
//! `[events.sink]` configured: its runs fail (the testkit's scripted OpenAI-compatible server
//! refuses every request with HTTP 400, a permanent failure), a real HTTP receiver gets one
//! webhook POST per alert rule match (the first answered 503 and retried), and the sink file
//! holds the runs' events as JSON lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nightshift_core::pb;
use nightshift_core::pb::manager_service_client::ManagerServiceClient;

const BIN: &str = env!("CARGO_BIN_EXE_nightshift");
const DEADLINE: Duration = Duration::from_secs(30);

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A webhook receiver answering 503 to its first request and 200 afterwards; returns its URL,
/// the number of requests and the accepted texts.
async fn receiver() -> (String, Arc<AtomicU32>, Arc<Mutex<Vec<String>>>) {
    use axum::Json;
    use axum::http::StatusCode;
    let calls = Arc::new(AtomicU32::new(0));
    let texts: Arc<Mutex<Vec<String>>> = Arc::default();
    let (c, t) = (calls.clone(), texts.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |Json(body): Json<serde_json::Value>| {
            let (c, t) = (c.clone(), t.clone());
            async move {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                t.lock().unwrap().push(body["text"].as_str().unwrap_or_default().to_owned());
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls, texts)
}

async fn wait_failed(m: &mut ManagerServiceClient<tonic::transport::Channel>, run_id: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let r = m.get_run(pb::GetRunRequest { run_id: run_id.to_owned() }).await.unwrap().into_inner().run.unwrap();
        if r.status() == pb::RunStatus::Failed {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "run {run_id} did not fail: {:?}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_agent_alerts_the_webhook_and_fills_the_sink() {
    let (llm, script) = nightshift_testkit::llm::scripted_llm().await;
    script.fail_first.store(1000, Ordering::SeqCst); // HTTP 400 to every request
    let (hook, calls, texts) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    let config = dir.path().join("dev.toml");
    std::fs::write(
        &config,
        format!(
            "[events.alerts]\nwebhook_url = \"{hook}\"\nconsecutive_failures = 2\nmin_interval = \"1h\"\n\
             retry_backoff = \"50ms\"\n[events.sink]\npath = \"{}\"\n",
            sink.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
    let mut child = Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut banner).unwrap();
    let _dev = Dev(child);
    let addr = banner.split_whitespace().nth(4).unwrap_or_else(|| {
        let log = std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default();
        panic!("unexpected banner {banner:?}; log:\n{log}")
    });
    let mut m = ManagerServiceClient::connect(format!("http://{addr}")).await.unwrap();

    let manifest = format!(
        "name: flaky\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\ntask: {{query: hello}}\n\
         schedule: {{manual: true}}\npolicy: {{max_retries: 0}}"
    );
    m.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: manifest }).await.unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let agent = Some(pb::AgentRef { r#ref: Some(pb::agent_ref::Ref::Name("flaky".into())) });
        let run = m.trigger_agent(pb::TriggerAgentRequest { agent, query_override: None }).await.unwrap();
        let run = run.into_inner().run.unwrap().id;
        wait_failed(&mut m, &run).await;
        runs.push(run);
    }

    // Run 1: on_task_error. Run 2: the second failure in a row (consecutive_failures = 2).
    // Run 3: rate limited (min_interval 1h) and the streak already alerted: no POST.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while texts.lock().unwrap().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "alerts: {:?}", texts.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .filter(|l| l["type"] == "BACKGROUND_TASK_ERROR")
            .map(|l| l["run_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&sink).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    while errors(&read()).len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "sink: {:?}", read());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let texts = texts.lock().unwrap().clone();
    assert_eq!(texts.len(), 2, "one POST per rule match: {texts:#?}");
    assert!(texts[0].contains("*flaky*") && texts[0].contains(&format!("`{}` failed", runs[0])), "{}", texts[0]);
    assert!(texts[1].contains("failed 2 runs in a row") && texts[1].contains(&runs[1]), "{}", texts[1]);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the first POST got 503 and was retried");

    let lines = read();
    assert_eq!(errors(&lines), runs, "one BACKGROUND_TASK_ERROR line per failed run");
    let ids: std::collections::HashSet<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), lines.len(), "each event written once");
    for run in &runs {
        assert!(lines.iter().any(|l| l["type"] == "BACKGROUND_TASK_STARTED" && l["run_id"] == run.as_str()), "{run}");
    }
}
