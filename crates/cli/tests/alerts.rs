//! A failing agent under a real `nightshift dev` process with `[events.alerts]` and
//! `[events.sink]` configured: its runs fail (the testkit's scripted OpenAI-compatible server
//! refuses every request with HTTP 400, a permanent failure), a real HTTP receiver gets one
//! webhook POST per alert rule match (the first answered 503 and retried), and the sink file
//! holds the runs' events as JSON lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::sync::atomic::Ordering;
use std::time::Duration;

use nightshift_core::pb;
use nightshift_core::pb::manager_service_client::ManagerServiceClient;
use nightshift_testkit::webhook::WebhookReceiver;
use tonic::transport::Channel;

mod common;

use common::{Dev, by_name, wait_status};

const DEADLINE: Duration = Duration::from_secs(30);

/// Applies a manual agent `name` on the scripted LLM at `llm`, never retried.
async fn apply(m: &mut ManagerServiceClient<Channel>, name: &str, llm: &str) {
    let manifest = format!(
        "name: {name}\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\ntask: {{query: hello}}\n\
         schedule: {{manual: true}}\npolicy: {{max_retries: 0}}"
    );
    m.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: manifest }).await.unwrap();
}

/// Triggers `name` and waits until its run failed; returns the run id.
async fn failed_run(m: &mut ManagerServiceClient<Channel>, name: &str) -> String {
    let run = m.trigger_agent(pb::TriggerAgentRequest { agent: by_name(name), query_override: None }).await.unwrap();
    let run = run.into_inner().run.unwrap().id;
    wait_status(m, &run, pb::RunStatus::Failed).await;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_agent_alerts_the_webhook_and_fills_the_sink() {
    let (llm, script) = nightshift_testkit::llm::scripted_llm().await;
    script.fail_first.store(1000, Ordering::SeqCst); // HTTP 400 to every request
    let hook = WebhookReceiver::start(1).await;
    let files = tempfile::tempdir().unwrap();
    let sink = files.path().join("events.jsonl");
    let dev = Dev::start(Some(&format!(
        "[events.alerts]\nwebhook_url = \"{}\"\nconsecutive_failures = 2\nmin_interval = \"1h\"\n\
         retry_backoff = \"50ms\"\n[events.sink]\npath = \"{}\"\n",
        hook.url,
        sink.display()
    )));
    let mut m = ManagerServiceClient::connect(dev.endpoint.clone()).await.unwrap();

    apply(&mut m, "flaky", &llm).await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(failed_run(&mut m, "flaky").await);
    }
    // A fresh agent's failure alerts after the others: alerts go out one after the other in
    // the order they were raised, so once its alert arrived every earlier one has too.
    apply(&mut m, "sentinel", &llm).await;
    let sentinel = failed_run(&mut m, "sentinel").await;

    // Run 1: on_task_error. Run 2: the second failure in a row (consecutive_failures = 2).
    // Run 3: rate limited (min_interval 1h) and the streak already alerted: no POST.
    let texts = hook.wait_for("*sentinel*", DEADLINE).await;
    assert_eq!(texts.len(), 3, "one POST per rule match: {texts:#?}");
    assert!(texts[0].contains("*flaky*") && texts[0].contains(&format!("`{}` failed", runs[0])), "{}", texts[0]);
    assert!(texts[1].contains("failed 2 runs in a row") && texts[1].contains(&runs[1]), "{}", texts[1]);
    assert!(texts[2].contains(&format!("`{sentinel}` failed")), "{}", texts[2]);
    assert_eq!(hook.calls(), 4, "the first POST got 503 and was retried");

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
    // The sink follows the log on its own: wait for the sentinel's failure there too.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !errors(&read()).contains(&sentinel) {
        assert!(tokio::time::Instant::now() < deadline, "sink: {:?}", read());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = read();
    let mut expected = runs.clone();
    expected.push(sentinel);
    assert_eq!(errors(&lines), expected, "one BACKGROUND_TASK_ERROR line per failed run");
    let ids: std::collections::HashSet<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), lines.len(), "each event written once");
    for run in &runs {
        assert!(lines.iter().any(|l| l["type"] == "BACKGROUND_TASK_STARTED" && l["run_id"] == run.as_str()), "{run}");
    }
}
