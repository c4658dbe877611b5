//! A worker SIGKILLed *inside* a turn, with the binaries as separate processes (Postgres, Redis
//! queue): the model (the testkit's scripted OpenAI-compatible server, for a deterministic
//! sequence of calls) asks for a side-effecting MCP tool of a real MCP server (the Python SDK
//! fixture over streamable HTTP, whose `journal` tool has no idempotency hint and logs every
//! call to a file); the worker dies while the call runs, before its result is checkpointed.
//! The next attempt must not run the interrupted call again (the model is told it was
//! interrupted), must run the calls the model asks for afterwards, and must end succeeded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::time::{Duration, Instant};

use common::{Deployment, Started, spawn_workers, wait_succeeded};
use nightshift_core::pb;

fn journal(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_side_effect_is_not_repeated_and_later_calls_run() {
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("journal.log");
    let fixture = nightshift_testkit::mcp::HttpFixture::with_journal(&journal_path);
    let (llm, script) = nightshift_testkit::llm::scripted_llm().await;
    *script.calls.lock().unwrap() = vec![("journal".into(), r#"{"label": "first", "seconds": 60}"#.into())];
    *script.then_calls.lock().unwrap() = vec![("journal".into(), r#"{"label": "second"}"#.into())];

    let deployment = Deployment::on_postgres_and_redis("crash").await;
    let Started { port: pm, manager: mut m, roles: _roles, workers: mut w0 } = deployment.start(1, &[]).await;
    let manifest = format!(
        "name: journaler\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\ntask: {{query: log it}}\n\
         schedule: {{manual: true}}\npolicy: {{max_retries: 0, timeout: 120s}}\n\
         tools: {{mcp: [{{name: fx, url: '{}'}}]}}",
        fixture.url
    );
    m.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: manifest }).await.unwrap();
    let agent = Some(pb::AgentRef::by_name("journaler"));
    let run = m.trigger_agent(pb::TriggerAgentRequest { agent, query_override: None }).await.unwrap().into_inner();
    let run = run.run.unwrap();

    // The first call is running (its side effect has begun): kill the worker now.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !journal(&journal_path).contains(&"start first".to_owned()) {
        assert!(Instant::now() < deadline, "the first tool call never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(w0.remove(0)); // SIGKILL
    let _w1 = spawn_workers(1, &deployment.role_env("WORKER"), pm, &[("NIGHTSHIFT_WORKER_WORKER_ID", "w1")]);

    let done = wait_succeeded(&mut m, &run.id).await;
    assert_eq!((done.attempt, done.worker_id.as_str()), (2, "w1"), "taken over by the next worker");
    let lines = journal(&journal_path);
    let count = |l: &str| lines.iter().filter(|x| *x == l).count();
    assert_eq!(count("start first"), 1, "the interrupted call was not run again: {lines:?}");
    assert_eq!((count("start second"), count("done second")), (1, 1), "the later call ran: {lines:?}");
    // The model was told why the first call has no result.
    assert!(done.result.contains("interrupted"), "{}", done.result);
}
