//! Replaying a run (`ReplayRun`, `nightshift runs replay` / `runs diff`), with the binaries as
//! separate processes (Postgres, Redis queue). The model is the testkit's scripted
//! OpenAI-compatible server (deterministic tool calls; it counts its first and second turns and
//! keeps the model each request named); the tool is the worker's real `http_get` against an
//! endpoint that counts its hits — the side effect a frozen replay must not repeat.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Deployment, Started, bin, wait_succeeded};
use nightshift_core::pb;
use nightshift_core::pb::manager_service_client::ManagerServiceClient;
use nightshift_testkit::llm::Script;
use pb::run_step::Payload;
use tonic::transport::Channel;

/// The scripted model and a `/hit` route counting its calls, on one server.
async fn model_and_counter() -> (String, Arc<Script>, Arc<AtomicUsize>) {
    let script = Arc::new(Script::default());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let hit = axum::Router::new().route(
        "/hit",
        axum::routing::get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { format!("hit number {n}") }
        }),
    );
    let app = nightshift_testkit::llm::router(script.clone()).merge(hit);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), script, hits)
}

async fn replay(m: &mut ManagerServiceClient<Channel>, req: pb::ReplayRunRequest) -> pb::Run {
    let run = m.replay_run(req).await.unwrap().into_inner().run.unwrap();
    wait_succeeded(m, &run.id).await
}

fn tool_results(run: &pb::Run) -> Vec<&pb::ToolResult> {
    run.steps
        .iter()
        .filter_map(|s| match &s.payload {
            Some(Payload::ToolResult(t)) => Some(t),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_reuses_paid_steps_serves_frozen_tools_from_the_recording_and_diffs() {
    let (base, script, hits) = model_and_counter().await;
    let url = format!("{base}/hit");
    *script.calls.lock().unwrap() = vec![("http_get".into(), format!("{{\"url\":\"{url}\"}}"))];
    let deployment = Deployment::on_postgres_and_redis("replay").await;
    let allow = format!("[\"{base}/\"]");
    let Started { port: pm, manager: mut m, roles: _roles, workers: _w0 } =
        deployment.start(1, &[("NIGHTSHIFT_WORKER_TOOLS__HTTP_ALLOW", &allow)]).await;
    let manifest = format!(
        "name: replayed\nmodel: {{provider: openai, model: scripted, base_url: '{base}/v1'}}\ntask: {{query: fetch it}}\n\
         schedule: {{manual: true}}\npolicy: {{max_retries: 0}}\ntools: {{local: [http_get]}}"
    );
    m.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: manifest }).await.unwrap();
    let agent = Some(pb::AgentRef::by_name("replayed"));
    let first = m.trigger_agent(pb::TriggerAgentRequest { agent, query_override: None }).await.unwrap();
    let original = wait_succeeded(&mut m, &first.into_inner().run.unwrap().id).await;
    assert_eq!(original.steps.len(), 3, "llm, tool, llm");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let turns = |s: &Script| (s.first_turns.load(Ordering::SeqCst), s.second_turns.load(Ordering::SeqCst));
    assert_eq!(turns(&script), (1, 1));

    // From step 2, with another model: the LLM turn and the tool result are reused — the first
    // turn is not asked again, the tool not called again — and only the last turn runs, with
    // the new model.
    let req = |from_step, tools: pb::ReplayTools| pb::ReplayRunRequest {
        run_id: original.id.clone(),
        from_step,
        tools: tools as i32,
        ..Default::default()
    };
    let r2 =
        replay(&mut m, pb::ReplayRunRequest { model: "scripted-v2".into(), ..req(2, pb::ReplayTools::Frozen) }).await;
    assert_eq!(r2.replay_of, original.id);
    assert_eq!((turns(&script), hits.load(Ordering::SeqCst)), ((1, 2), 1));
    assert_eq!(script.models.lock().unwrap().last().map(String::as_str), Some("scripted-v2"));
    assert_eq!(r2.steps.iter().map(|s| (s.seq, s.attempt)).collect::<Vec<_>>(), [(0, 0), (1, 0), (2, 1)]);
    assert_eq!(
        r2.steps[..2].iter().map(|s| &s.payload).collect::<Vec<_>>(),
        original.steps[..2].iter().map(|s| &s.payload).collect::<Vec<_>>()
    );
    assert_eq!(r2.usage.unwrap().input_tokens, 80, "only the new turn is paid");

    // From the start, tools frozen: the model is asked again, the call is answered from the
    // recording, and the endpoint is not hit.
    let r0 = replay(&mut m, req(0, pb::ReplayTools::Unspecified)).await;
    assert_eq!((turns(&script), hits.load(Ordering::SeqCst)), ((2, 3), 1));
    assert_eq!(tool_results(&r0)[0].output, tool_results(&original)[0].output);
    assert!(tool_results(&r0)[0].output.contains("hit number 1"), "{}", tool_results(&r0)[0].output);

    // The model now asks for another URL: a frozen replay refuses the call, and the model reads
    // why; nothing is hit.
    *script.calls.lock().unwrap() = vec![("http_get".into(), format!("{{\"url\":\"{url}?again=1\"}}"))];
    let refused = replay(&mut m, req(0, pb::ReplayTools::Frozen)).await;
    let t = tool_results(&refused)[0];
    assert!(t.is_error && t.output.contains("is not in the recording of run"), "{}", t.output);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Live tools run it.
    let live = replay(&mut m, req(0, pb::ReplayTools::Live)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert!(tool_results(&live)[0].output.contains("hit number 2"));

    // Refusals: past the original's steps; a run that has not ended.
    let past = m.replay_run(req(4, pb::ReplayTools::Frozen)).await.unwrap_err();
    assert_eq!(past.code(), tonic::Code::InvalidArgument, "{past:?}");
    assert!(past.message().contains("from_step"), "{past:?}");

    // `runs diff`: the refused replay against the original — the call's arguments changed, the
    // answers differ; the CLI's replay with --watch follows a replay to its end.
    let cli = |args: &[&str]| {
        let out = Command::new(bin("nightshift"))
            .args(["--endpoint", &format!("http://127.0.0.1:{pm}")])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "nightshift {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let diff: serde_json::Value =
        serde_json::from_str(&cli(&["-o", "json", "runs", "diff", &original.id, &refused.id])).unwrap();
    assert_eq!(diff["tool_calls"][0]["change"], "changed", "{diff:#}");
    assert_eq!(diff["tool_calls"].as_array().unwrap().len(), 1, "{diff:#}");
    assert_eq!(diff["same_answer"], false);
    assert_eq!((diff["a"]["llm_calls"].as_u64(), diff["b"]["llm_calls"].as_u64()), (Some(2), Some(2)));
    let table = cli(&["runs", "diff", &original.id, &r2.id]);
    assert!(table.contains("= http_get"), "{table}");
    assert!(table.contains("reused steps"), "{table}");
    // The batch form: the agent's last run (the original; replays are not replayed) against
    // another model — the model now asks for the other URL, so the call changed, and the answer.
    let summary: serde_json::Value = serde_json::from_str(&cli(&[
        "-o",
        "json",
        "runs",
        "diff",
        "--agent",
        "replayed",
        "--last",
        "3",
        "--model",
        "scripted-v3",
    ]))
    .unwrap();
    assert_eq!(summary["runs"], 1, "{summary:#}");
    assert_eq!(summary["pairs"][0]["original"], original.id.as_str());
    assert_eq!(
        (summary["answers_changed"].as_u64(), summary["runs_with_tool_calls_changed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(script.models.lock().unwrap().last().map(String::as_str), Some("scripted-v3"));
    assert_eq!(hits.load(Ordering::SeqCst), 2, "frozen: nothing hit");

    *script.calls.lock().unwrap() = vec![("http_get".into(), format!("{{\"url\":\"{url}\"}}"))];
    let watched = cli(&["runs", "replay", &original.id, "--from-step", "1", "--watch"]);
    assert!(watched.lines().any(|l| l.contains("succeeded (attempt 1)")), "{watched}");
    assert!(watched.lines().any(|l| l.starts_with("[0/0] llm scripted")), "the reused step is shown: {watched}");
    assert_eq!(hits.load(Ordering::SeqCst), 2, "the pending call was served from the recording");
}
