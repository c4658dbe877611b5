//! Watching a run live (`WatchRun`, `nightshift runs watch`), with the binaries as separate
//! processes (Postgres, Redis queue): a watcher joined mid-run sees each step as it is
//! checkpointed, across a worker SIGKILL and the next worker's resumed attempt, and what it saw
//! equals the run's checkpointed steps; a watcher that disconnects resumes from its cursor with
//! no gap and no repeat. The model is the testkit's scripted OpenAI-compatible server (its second
//! turn held until the test lets it go, for a deterministic point to kill the worker at).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
mod common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Deployment, Started, bin, spawn_workers, start_hanging_run, wait_succeeded};
use nightshift_core::pb;
use nightshift_core::pb::manager_service_client::ManagerServiceClient;
use pb::watch_run_response::Item;
use tonic::transport::Channel;

type Seen = Arc<Mutex<Vec<pb::WatchRunResponse>>>;

/// Follows `run` from `cursor` into `seen` until the stream ends.
fn watcher(m: &ManagerServiceClient<Channel>, run: &str, cursor: &str) -> (Seen, tokio::task::JoinHandle<()>) {
    let (mut m, seen) = (m.clone(), Seen::default());
    let req = pb::WatchRunRequest { run_id: run.to_owned(), cursor: cursor.to_owned() };
    let into = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = m.watch_run(req).await.unwrap().into_inner();
        while let Some(item) = stream.message().await.unwrap() {
            into.lock().unwrap().push(item);
        }
    });
    (seen, task)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn steps(seen: &[pb::WatchRunResponse]) -> Vec<pb::RunStep> {
    seen.iter()
        .filter_map(|r| match &r.item {
            Some(Item::Step(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// (attempt, status) of each run item.
fn states(seen: &[pb::WatchRunResponse]) -> Vec<(u32, pb::RunStatus)> {
    seen.iter()
        .filter_map(|r| match &r.item {
            Some(Item::Run(run)) => Some((run.attempt, run.status())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_sees_each_step_across_a_worker_kill_and_a_dropped_stream_resumes_from_its_cursor() {
    let (llm, script) = nightshift_testkit::llm::scripted_llm().await;
    let deployment = Deployment::on_postgres_and_redis("watch").await;
    let Started { port: pm, manager: mut m, roles: _roles, workers: mut w0 } = deployment.start(1, &[]).await;

    // The run has checkpointed its first LLM turn and the tool's result, and waits in its second
    // LLM call: a watcher joins now, from the start.
    let (run, _) = start_hanging_run(&mut m, &llm, &script).await;
    let (all, all_done) = watcher(&m, &run.id, "");
    until("the steps so far and the run's state", || all.lock().unwrap().len() >= 3).await;
    {
        let seen = all.lock().unwrap();
        assert_eq!(steps(&seen).iter().map(|s| (s.seq, s.attempt)).collect::<Vec<_>>(), [(0, 1), (1, 1)]);
        assert_eq!(states(&seen), [(1, pb::RunStatus::Running)]);
    }
    // A second watcher takes the first two items and hangs up.
    let (early, early_task) = watcher(&m, &run.id, "");
    until("the second watcher's first items", || early.lock().unwrap().len() >= 2).await;
    early_task.abort();
    let early: Vec<pb::WatchRunResponse> = early.lock().unwrap().drain(..2).collect();

    // SIGKILL the worker inside the LLM call; the next worker takes the expired lease over and
    // resumes: the watcher sees the new attempt and its steps as they come.
    drop(w0.remove(0));
    script.hang_second_turn.store(false, Ordering::SeqCst);
    let _w1 = spawn_workers(1, &deployment.role_env("WORKER"), pm, &[("NIGHTSHIFT_WORKER_WORKER_ID", "w1")]);
    let done = wait_succeeded(&mut m, &run.id).await;
    tokio::time::timeout(Duration::from_secs(10), all_done).await.expect("the stream ends with the run").unwrap();
    assert_eq!(done.attempt, 2, "taken over");

    // What the watcher saw is what was checkpointed, in order, each step once.
    let seen = all.lock().unwrap().clone();
    let got = m.get_run(pb::GetRunRequest { run_id: run.id.clone() }).await.unwrap().into_inner().run.unwrap();
    assert_eq!(steps(&seen), got.steps);
    assert_eq!(got.steps.iter().map(|s| (s.seq, s.attempt)).collect::<Vec<_>>(), [(0, 1), (1, 1), (2, 2)]);
    let states = states(&seen);
    assert_eq!(states.first(), Some(&(1, pb::RunStatus::Running)));
    assert!(states.contains(&(2, pb::RunStatus::Running)), "the second attempt's start: {states:?}");
    assert_eq!(states.last(), Some(&(2, pb::RunStatus::Succeeded)), "the end is the last item: {states:?}");
    assert!(matches!(&seen.last().unwrap().item, Some(Item::Run(r)) if r.result == done.result));

    // The watcher that hung up resumes after its second item: the rest of the run's steps, none
    // twice, none missing.
    let (rest, rest_done) = watcher(&m, &run.id, &early[1].cursor);
    tokio::time::timeout(Duration::from_secs(10), rest_done).await.expect("the resumed stream ends").unwrap();
    let rest = rest.lock().unwrap().clone();
    let mut joined = steps(&early);
    joined.extend(steps(&rest));
    assert_eq!(joined, got.steps);

    // A cursor that WatchRun did not hand out is refused.
    let bad = m.watch_run(pb::WatchRunRequest { run_id: run.id.clone(), cursor: "junk".into() }).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);

    // `nightshift runs watch` renders the ended run, a line per step, and returns.
    let out = Command::new(bin("nightshift"))
        .args(["--endpoint", &format!("http://127.0.0.1:{pm}"), "runs", "watch", &run.id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "three steps and the end: {text}");
    assert!(
        lines[0].starts_with("[1/0] llm scripted · in 50 · out 10 ·") && lines[0].contains("→ calls calculate_area"),
        "{text}"
    );
    assert!(lines[1].starts_with("[1/1] tool calculate_area ·") && lines[1].contains(" ok: "), "{text}");
    assert!(
        lines[2].starts_with("[2/2] llm scripted · in 80 · out 12 ·") && lines[2].contains("→ answer: The area is 12"),
        "{text}"
    );
    assert!(lines[3].starts_with(&format!("run {} succeeded (attempt 2) · answer: The area is 12", run.id)), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn llm_text_streams_to_a_watcher_and_the_model_is_not_asked_to_stream_when_nobody_watches() {
    let (llm, script) = nightshift_testkit::llm::scripted_llm().await;
    let deployment = Deployment::on_postgres_and_redis("watch").await;
    let Started { manager: m, .. } = &mut deployment.start(1, &[]).await;
    let manifest = format!(
        "name: streamer\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\ntask: {{query: area}}\n\
         schedule: {{manual: true}}\npolicy: {{max_retries: 0}}\ntools: {{local: [calculate_area]}}"
    );
    m.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: manifest }).await.unwrap();
    let trigger = async |m: &mut ManagerServiceClient<Channel>| {
        let agent = Some(pb::AgentRef::by_name("streamer"));
        m.trigger_agent(pb::TriggerAgentRequest { agent, query_override: None })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap()
    };
    // Nobody watches: the model is asked for whole answers.
    let quiet = trigger(m).await;
    wait_succeeded(m, &quiet.id).await;
    assert_eq!(script.streamed.load(Ordering::SeqCst), 0);

    // A watcher joins while the first turn is slow: the answer after the tool is streamed to
    // it a word at a time, before the step is checkpointed.
    script.delay_ms.store(1500, Ordering::SeqCst);
    script.stream_gap_ms.store(100, Ordering::SeqCst);
    let run = trigger(m).await;
    let (seen, done) = watcher(m, &run.id, "");
    tokio::time::timeout(Duration::from_secs(30), done).await.expect("the stream ends with the run").unwrap();
    let seen = seen.lock().unwrap().clone();
    // The answer's turn was asked while the watcher listened; the first turn may have been too
    // (the watcher can join before the worker takes the run), and has no text.
    let streamed = script.streamed.load(Ordering::SeqCst);
    assert!((1..=2).contains(&streamed), "{streamed}");
    let answer = steps(&seen).into_iter().find(|s| s.seq == 2).expect("the answer's step");
    let Some(pb::run_step::Payload::LlmResponse(answer_step)) = &answer.payload else { panic!("{answer:?}") };
    let deltas: Vec<(usize, &pb::LlmDelta)> = seen
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.item {
            Some(Item::Delta(d)) => Some((i, d)),
            _ => None,
        })
        .collect();
    assert!(deltas.len() > 3, "a word at a time: {deltas:?}");
    // Each piece belongs to the answer's step and carries no cursor (resuming is by steps).
    assert!(deltas.iter().all(|(i, d)| (d.attempt, d.seq) == (1, 2) && seen[*i].cursor.is_empty()), "{deltas:?}");
    let text: String = deltas.iter().map(|(_, d)| d.text.as_str()).collect();
    assert_eq!(text, answer_step.content);
    let step_at = seen.iter().position(|r| matches!(&r.item, Some(Item::Step(s)) if s.seq == 2)).unwrap();
    assert!(deltas.iter().all(|(i, _)| *i < step_at), "the text comes before its step");
    let got = m.get_run(pb::GetRunRequest { run_id: run.id.clone() }).await.unwrap().into_inner().run.unwrap();
    assert_eq!(steps(&seen), got.steps);
}
