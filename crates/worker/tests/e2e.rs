//! A worker end to end: manager (gRPC, SQLite) + in-memory queue + worker + a scripted
//! OpenAI-compatible server. The scripted server stands in for a hosted LLM (none is reachable
//! here) so that the tool-call path is deterministic; the tools are the real local tools.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use nightshift_core::{AgentSpec, pb};
use nightshift_rpc::{CancellationToken, Role};
use nightshift_testkit::llm::scripted_llm;
use nightshift_worker::{Worker, WorkerConfig, WorkerDeps, WorkerRole};

use common::*;

/// The events of the `area` agent's run up to its final answer, in the seed's order.
const UNTIL_THE_ANSWER: [&str; 5] =
    ["BACKGROUND_TASK_STARTED", "BACKGROUND_AGENT_STATUS(running)", "LLM_CALL", "TOOL_CALL", "LLM_CALL"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_triggered_run_calls_the_tool_and_finishes_with_the_seed_events() {
    let (llm, script) = scripted_llm().await;
    let (env, agent) = env(&llm).await;
    let (events, _worker) = start_worker(&env, Duration::from_secs(10)).await;
    let run = trigger(&env).await;
    let done = wait_for_status(&env, &run.id, pb::RunStatus::Succeeded).await;
    assert!(done.result.starts_with("The area is 12"), "{}", done.result);
    // The real calculate_area tool ran: its output (area 12, perimeter 14) went back to the model.
    assert!(done.result.contains("12") && done.result.contains("14"), "{}", done.result);
    assert_eq!(done.usage.unwrap().input_tokens, 130);
    let steps = &done.steps;
    assert_eq!(steps.len(), 3, "llm, tool, llm");
    assert!(
        matches!(&steps[1].payload, Some(pb::run_step::Payload::ToolResult(t)) if !t.is_error && t.tool_name == "calculate_area")
    );
    assert_eq!((script.first_turns.load(Ordering::SeqCst), script.second_turns.load(Ordering::SeqCst)), (1, 1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let end = ["BACKGROUND_TASK_COMPLETED", "BACKGROUND_AGENT_STATUS(idle)"];
    assert_eq!(event_names(&events), [&UNTIL_THE_ANSWER[..], &end].concat());
    assert!(events.lock().unwrap().iter().all(|e| e.agent_id == agent.id && e.run_id == run.id));
    let status = env.store.agent_stats(&nightshift_core::AgentId::from_string(agent.id.clone())).await.unwrap();
    assert_eq!(status.count(nightshift_core::RunStatus::Succeeded), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_worker_dies_resumes_elsewhere_on_memory_queue() {
    worker_dies_mid_run("memory://").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_worker_dies_resumes_elsewhere_on_nats() {
    worker_dies_mid_run(&nightshift_testkit::nats_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_worker_dies_resumes_elsewhere_on_redis() {
    worker_dies_mid_run(&nightshift_testkit::redis_url()).await;
}

/// A worker dies between the tool result and the next LLM call; another worker finishes the
/// run without repeating the completed LLM call or tool call.
async fn worker_dies_mid_run(queue: &str) {
    let (llm, script) = scripted_llm().await;
    let (env, _agent) = env_on(&llm, queue, "").await;
    script.hang_second_turn.store(true, Ordering::SeqCst);
    // Worker 1 lives in its own runtime, so that "killing" it drops every task it spawned, as
    // SIGKILL would (aborting only its top task would leave its run tasks going).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (endpoint, queue_url, queue_name) = (env.endpoint.clone(), env.queue_url.clone(), env.queue_name.clone());
    rt.spawn(async move {
        let (_events, task) = start_worker_at(&endpoint, &queue_url, &queue_name, Duration::from_secs(2), None).await;
        let _ = task.await;
    });
    let run = trigger(&env).await;
    // Worker 1 has done the first LLM turn and the tool call, and is waiting on the second turn.
    wait_for_second_turn(&script).await;
    assert_eq!(script.second_turns.load(Ordering::SeqCst), 1);
    rt.shutdown_background(); // dies without FinishRun, ack or nack
    script.hang_second_turn.store(false, Ordering::SeqCst);
    let (_e2, _worker2) = start_worker(&env, Duration::from_secs(2)).await;
    let done = wait_for_status(&env, &run.id, pb::RunStatus::Succeeded).await;
    assert_eq!(done.attempt, 2, "taken over with a new fencing token");
    assert_eq!(script.first_turns.load(Ordering::SeqCst), 1, "the completed LLM call was not paid again");
    let kinds: Vec<(u32, &str)> = done
        .steps
        .iter()
        .map(|s| {
            (
                s.attempt,
                match s.payload {
                    Some(pb::run_step::Payload::ToolResult(_)) => "tool",
                    _ => "llm",
                },
            )
        })
        .collect();
    assert_eq!(kinds, [(1, "llm"), (1, "tool"), (2, "llm")], "the tool ran once, by attempt 1");
    if queue.starts_with("nats:") {
        nightshift_testkit::delete_nats_stream(&env.queue_name).await;
    }
}

/// A TCP forwarder to `target` that can cut every connection and refuse new ones while
/// blocked: the manager becomes unreachable for the worker only.
async fn blockable_proxy(target: String) -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (blocked_tx, blocked_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut blocked = blocked_rx.clone();
            if *blocked.borrow() {
                continue; // dropped: the connection is refused
            }
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = blocked.wait_for(|b| *b) => {} // cut while blocked
                }
            });
        }
    });
    (format!("http://{addr}"), blocked_tx)
}

/// The manager is unreachable when an attempt ends, so `FinishRun` fails: the worker must not ack
/// the delivery (the run would stay `running` forever). It comes back after the lease, and the
/// next attempt finishes the run from its checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unrecorded_end_is_delivered_again_not_acked() {
    let (llm, script) = scripted_llm().await;
    // The production redelivery deadline (30 s), far beyond this test: only the worker's own
    // answer to the delivery can bring the run back in time.
    let model = format!("{{provider: openai, model: scripted, base_url: '{llm}'}}");
    let (env, _agent) = env_with_ack_wait(&model, "memory://", "", Duration::from_secs(30)).await;
    script.hang_second_turn.store(true, Ordering::SeqCst);
    let manager = env.endpoint.trim_start_matches("http://").to_owned();
    let (proxied, blocked) = blockable_proxy(manager).await;
    let (_events, _worker) =
        start_worker_at(&proxied, &env.queue_url, &env.queue_name, Duration::from_secs(2), None).await;
    let run = trigger(&env).await;
    wait_for_second_turn(&script).await;
    // The manager goes away while the last LLM turn runs: its checkpoint and FinishRun fail.
    blocked.send(true).unwrap();
    script.hang_second_turn.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stuck = env.manager.clone().get_run(pb::GetRunRequest { run_id: run.id.clone() }).await.unwrap();
    assert_eq!(stuck.into_inner().run.unwrap().status(), pb::RunStatus::Running, "nothing was recorded");
    blocked.send(false).unwrap();
    let done = wait_for_status(&env, &run.id, pb::RunStatus::Succeeded).await;
    assert_eq!(done.attempt, 2, "the delivery came back and was taken over after the lease");
    assert_eq!(script.first_turns.load(Ordering::SeqCst), 1, "the completed first turn was not paid again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_worker_hands_its_run_back_and_another_finishes_it() {
    let (llm, script) = scripted_llm().await;
    let (env, _agent) = env(&llm).await;
    script.hang_second_turn.store(true, Ordering::SeqCst);
    let cfg = WorkerConfig {
        // The scripted LLM and MCP servers run on loopback: the harness is the operator.
        allow: nightshift_core::operator_policy::OperatorPolicy::trusting(),
        concurrency: 2,
        lease_ttl: Duration::from_secs(10),
        queue: queue_settings(&env.queue_url, &env.queue_name),
        manager_endpoint: env.endpoint.clone(),
        ..WorkerConfig::default()
    };
    let role = Box::new(WorkerRole::build(cfg, WorkerDeps::default()).await.unwrap());
    let w1: Worker = role.worker();
    let w1_task = tokio::spawn(role.run(CancellationToken::new()));
    let run = trigger(&env).await;
    wait_for_second_turn(&script).await;
    // SIGTERM equivalent: the run cannot finish within the grace, so it is handed back.
    assert_eq!(w1.drain(Duration::from_millis(300)), 1);
    tokio::time::timeout(Duration::from_secs(10), w1_task).await.expect("the drained worker stops").unwrap().unwrap();
    let released = env
        .manager
        .clone()
        .get_run(pb::GetRunRequest { run_id: run.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(released.status(), pb::RunStatus::Queued, "handed back, not failed");
    assert_eq!(released.retries, 0, "a hand-back is not a failure");
    script.hang_second_turn.store(false, Ordering::SeqCst);
    let (_e2, _w2) = start_worker(&env, Duration::from_secs(10)).await;
    let done = wait_for_status(&env, &run.id, pb::RunStatus::Succeeded).await;
    assert_eq!(done.attempt, 2);
    assert_eq!(script.first_turns.load(Ordering::SeqCst), 1, "resumed from the checkpoints");
}

/// A scheduled agent (fired by the real scheduler) calls a local tool, a tool of the real
/// `mcp-server-time` over stdio and a tool of an MCP server over streamable HTTP (official Python
/// SDK), all in one turn; the run record shows every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_agent_calls_local_stdio_mcp_and_http_mcp_tools() {
    let servers = nightshift_testkit::mcp::servers();
    let http = nightshift_testkit::mcp::HttpFixture::start();
    let (llm, script) = scripted_llm().await;
    *script.calls.lock().unwrap() = vec![
        ("calculate_area".into(), r#"{"shape": "rectangle", "width": 3, "height": 4}"#.into()),
        ("get_current_time".into(), r#"{"timezone": "UTC"}"#.into()),
        ("add".into(), r#"{"a": 2, "b": 40}"#.into()),
    ];
    let once_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (env, agent) = env_on(&llm, "memory://", "").await;
    let spec = AgentSpec::from_yaml(&format!(
        "name: area\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\n\
         task: {{query: 'Use every tool.'}}\nschedule: {{once_at: '{once_at}'}}\npolicy: {{max_retries: 0, timeout: 60s}}\n\
         tools: {{local: [calculate_area], mcp: [{{name: time, command: '{}', args: [--local-timezone, UTC]}}, {{name: py, url: '{}'}}]}}\n",
        servers.time_server, http.url
    ))
    .unwrap();
    let id = nightshift_core::AgentId::from_string(agent.id.clone());
    env.store.update_agent(&id, &spec, None).await.unwrap();
    let (_stop, _scheduler) = start_scheduler(&env).await;
    let (_events, _worker) = start_worker(&env, Duration::from_secs(10)).await;

    let mut runs = Vec::new();
    for _ in 0..200 {
        runs = area_runs(&env).await;
        if runs.first().is_some_and(|r| r.status() == pb::RunStatus::Succeeded) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(runs.len(), 1, "a once schedule fires once");
    let run = wait_for_status(&env, &runs[0].id, pb::RunStatus::Succeeded).await;
    assert_eq!(run.trigger(), pb::TriggerKind::Schedule);
    let results: Vec<(String, String, bool)> = run
        .steps
        .iter()
        .filter_map(|s| match &s.payload {
            Some(pb::run_step::Payload::ToolResult(t)) => Some((t.tool_name.clone(), t.output.clone(), t.is_error)),
            _ => None,
        })
        .collect();
    // A tool whose server does not say it is read-only or idempotent is irreversible: it is
    // marked as started before it runs (docs/governance.md).
    let started: Vec<&str> = run
        .steps
        .iter()
        .filter_map(|s| match &s.payload {
            Some(pb::run_step::Payload::ToolStarted(t)) => Some(t.tool_name.as_str()),
            _ => None,
        })
        .collect();
    assert!(started.iter().all(|n| n.starts_with("time__") || n.starts_with("py__")), "{started:?}");
    assert_eq!(run.steps.len() - started.len(), 5, "llm, three tool results, llm: {results:?}");
    assert!(results.iter().all(|(_, _, err)| !err), "{results:?}");
    assert!(results.iter().any(|(n, o, _)| n == "calculate_area" && o.contains("12")), "{results:?}");
    assert!(results.iter().any(|(n, o, _)| n.contains("get_current_time") && o.contains("UTC")), "{results:?}");
    assert!(results.iter().any(|(n, o, _)| n.contains("add") && o.contains("42")), "{results:?}");
}

/// An LLM failure fails the attempt; the manager retries after the configured backoff and the
/// second attempt succeeds. Events and status counts say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_attempt_is_retried_with_backoff() {
    let (llm, script) = scripted_llm().await;
    // A transient failure that outlasts the client's own HTTP retries (4 attempts): the attempt
    // fails and the run's policy retries it.
    script.fail_status.store(503, Ordering::SeqCst);
    script.fail_first.store(4, Ordering::SeqCst);
    let (env, _agent) = env_on(&llm, "memory://", "").await;
    set_spec(&env, area_spec(&llm, "{max_retries: 2, retry_delay: 1s, timeout: 60s}")).await;
    let (events, _worker) = start_worker(&env, Duration::from_secs(10)).await;
    let t0 = std::time::Instant::now();
    let run = env
        .manager
        .clone()
        .trigger_agent(pb::TriggerAgentRequest { agent: by_name("area"), query_override: None })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let done = wait_for_status(&env, &run.id, pb::RunStatus::Succeeded).await;
    assert!(t0.elapsed() >= Duration::from_secs(1), "the retry waited for its backoff");
    assert_eq!((done.attempt, done.retries), (2, 1));
    assert!(done.error.contains("scripted failure"), "the failed attempt's error is kept: {}", done.error);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let names = event_names(&events);
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap_or_else(|| panic!("{n} missing in {names:?}"));
    assert!(pos("BACKGROUND_TASK_ERROR") < pos("RUN_RETRYING"));
    assert!(pos("RUN_RETRYING") < pos("BACKGROUND_TASK_COMPLETED"));
    let st = area_status(&env).await;
    assert_eq!((st.total_runs, st.succeeded, st.failed), (1, 1, 0));
    assert!(st.last_error.contains("scripted failure"));
}

/// A lease much longer than the queue's ack wait (60 s vs 2 s): the worker's beats must push the
/// delivery's deadline out too, or the queue hands the run to another consumer mid-attempt, which
/// is told LEASED_ELSEWHERE and parks it for the rest of the lease — and the retry after a timeout
/// would wait up to a minute instead of its 1 s backoff (it did before beats followed the ack wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_a_timeout_waits_its_backoff_not_the_lease() {
    let (llm, script) = scripted_llm().await;
    script.delay_ms.store(30_000, Ordering::SeqCst); // every LLM answer outlasts the timeout
    let (env, _agent) = env_on(&llm, "memory://", "").await;
    set_spec(&env, area_spec(&llm, "{max_retries: 1, retry_delay: 1s, timeout: 3s}")).await;
    let (_events, _worker) = start_worker(&env, Duration::from_secs(60)).await;
    let run = trigger(&env).await;
    // Two attempts of 3 s and a 1 s backoff: well within 20 s, far from the 60 s lease.
    let done = wait_for_status_within(&env, &run.id, pb::RunStatus::TimedOut, Duration::from_secs(20)).await;
    assert_eq!((done.attempt, done.retries), (2, 1));
}

/// Failures no retry can fix end the run at once, whatever retries its policy allows: an unset
/// API key variable (the model cannot even be built), and a request the provider refuses (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_permanent_failure_is_not_retried() {
    let (llm, script) = scripted_llm().await;
    let (env, _agent) = env_on(&llm, "memory://", "").await;
    let (_events, _worker) = start_worker(&env, Duration::from_secs(10)).await;
    for (model, error) in [
        (
            format!("{{provider: openai, model: scripted, base_url: '{llm}', api_key: 'env:NS_TEST_UNSET_KEY_4711'}}"),
            "NS_TEST_UNSET_KEY_4711",
        ),
        (format!("{{provider: openai, model: scripted, base_url: '{llm}'}}"), "scripted failure"),
    ] {
        script.fail_first.store(1, Ordering::SeqCst); // a 400, for the second case
        let spec_yaml = format!(
            "name: area\nmodel: {model}\ntask: {{query: q}}\nschedule: {{manual: true}}\n\
             policy: {{max_retries: 3, retry_delay: 1s, timeout: 60s}}\ntools: {{local: [calculate_area]}}"
        );
        set_spec(&env, spec_yaml).await;
        let run = trigger(&env).await;
        let done = wait_for_status(&env, &run.id, pb::RunStatus::Failed).await;
        assert_eq!((done.attempt, done.retries), (1, 0), "no retry: {}", done.error);
        assert!(done.error.contains(error), "the reason is kept: {}", done.error);
    }
}

/// A run that outlasts its 1 s interval makes the following ticks `skipped`, never concurrent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_outlasting_its_interval_skips_the_next_ticks() {
    let (llm, script) = scripted_llm().await;
    script.delay_ms.store(1_200, Ordering::SeqCst); // two LLM turns: ~2.4 s per run
    let (env, _agent) = env_on(&llm, "memory://", "").await;
    let spec_yaml = format!(
        "name: area\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\ntask: {{query: q}}\n\
         schedule: {{interval: 1s}}\npolicy: {{overlap: skip, max_retries: 0}}\ntools: {{local: [calculate_area]}}"
    );
    set_spec(&env, spec_yaml).await;
    let (stop, sched) = start_scheduler(&env).await;
    let (_events, _worker) = start_worker(&env, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    stop.cancel();
    sched.await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // let the last run finish
    let runs = area_runs(&env).await;
    let skipped = runs.iter().filter(|r| r.status() == pb::RunStatus::Skipped).count();
    let ran: Vec<&pb::Run> = runs.iter().filter(|r| r.started_at.is_some()).collect();
    assert!(skipped >= 2, "ticks during a long run are skipped: {skipped} of {}", runs.len());
    assert!(ran.len() >= 2, "runs happen between skips: {}", ran.len());
    // Never two at once: the started..finished intervals do not overlap.
    let mut spans: Vec<(i64, i64)> = ran
        .iter()
        .map(|r| {
            let s = r.started_at.unwrap();
            let f = r.finished_at.expect("finished");
            (s.seconds * 1000 + i64::from(s.nanos / 1_000_000), f.seconds * 1000 + i64::from(f.nanos / 1_000_000))
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "runs overlapped: {spans:?}");
    }
}

/// A run cancelled at the manager while its final LLM call is in flight, on a worker the cancel
/// cannot reach in time (no WorkerService advertised, heartbeats every 10 s): the answer arrives
/// after the cancel, the manager refuses its FinishRun, and the worker does not report the run
/// completed — it did not end with that answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_final_answer_the_manager_refused_is_not_reported_completed() {
    let (llm, script) = scripted_llm().await;
    let model = format!("{{provider: openai, model: scripted, base_url: '{llm}'}}");
    let (env, _agent) = env_with_ack_wait(&model, "memory://", "", Duration::from_secs(30)).await;
    script.hang_second_turn.store(true, Ordering::SeqCst);
    let (events, _worker) = start_worker(&env, Duration::from_secs(30)).await;
    let run = trigger(&env).await;
    wait_for_second_turn(&script).await;
    let req = pb::CancelRunRequest { run_id: run.id.clone(), reason: "test".into() };
    env.manager.clone().cancel_run(req).await.unwrap();
    wait_for_status(&env, &run.id, pb::RunStatus::Cancelled).await;
    script.hang_second_turn.store(false, Ordering::SeqCst);
    let idle = "BACKGROUND_AGENT_STATUS(idle)".to_owned();
    let since = std::time::Instant::now();
    while !event_names(&events).contains(&idle) {
        assert!(since.elapsed() < Duration::from_secs(10), "the attempt never ended: {:?}", event_names(&events));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(event_names(&events), [&UNTIL_THE_ANSWER[..], &[idle.as_str()]].concat());
    let ended = env.manager.clone().get_run(pb::GetRunRequest { run_id: run.id.clone() }).await.unwrap();
    let ended = ended.into_inner().run.unwrap();
    assert_eq!((ended.status(), ended.result.as_str()), (pb::RunStatus::Cancelled, ""), "the answer was not recorded");
}
