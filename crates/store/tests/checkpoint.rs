//! Checkpoints on both backends, fenced by the lease token as the manager calls them: the usual
//! step (one statement on Postgres) extends the lease and is stored; a wrong token, an ended
//! attempt, a gap and another attempt's step are refused with the reason; a step sent twice by
//! its attempt is a no-op. FinishRun's steps are checked the same way, and a refused one leaves
//! the run running with nothing of it written.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use nightshift_core::lifecycle::Failure;
use nightshift_core::{AgentSpec, AgentState, ManualClock, RunId, WorkerId};
use nightshift_core::{RunOutcome, RunStatus};
use nightshift_store::{Fence, FinishInput, NewRun, StartInput, StartOutcome, StepInput, Store, StoreError};
use nightshift_testkit::{Db, database};

nightshift_testkit::both_backends!(token_fenced_checkpoints_store_the_next_step_and_refuse_the_rest);

fn step(seq: u32, payload: u8) -> StepInput {
    StepInput::new(seq, "llm_response", vec![payload])
}

async fn start(store: &Store, run: &RunId, agent: &nightshift_core::AgentId, worker: &str) -> (u32, String) {
    let input = StartInput {
        run_id: run.clone(),
        agent_id: agent.clone(),
        worker_id: WorkerId::from_string(worker),
        worker_endpoint: None,
        lease_ttl: Duration::from_secs(30),
        budgets: Default::default(),
    };
    match store.start_run(&input).await.unwrap() {
        StartOutcome::Started { run, lease_token, .. } => (run.attempt, lease_token),
        other => panic!("not started: {other:?}"),
    }
}

async fn token_fenced_checkpoints_store_the_next_step_and_refuse_the_rest(kind: Db) {
    let (url, _guard) = database(kind).await;
    let clock = ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let store = Store::connect_with_clock(&url, Arc::new(clock.clone())).await.unwrap();
    let spec = AgentSpec::from_yaml(
        "name: c\nmodel: {provider: openai, model: m}\ntask: {query: q}\nschedule: {manual: true}",
    )
    .unwrap();
    let agent = store.create_agent(&spec, AgentState::Active).await.unwrap();
    let run = RunId::generate();
    let new = NewRun::manual(run.clone(), agent.id.clone());
    store.insert_run(&new).await.unwrap();
    let (attempt, token) = start(&store, &run, &agent.id, "w1").await;
    let held = Fence { attempt, token: Some(token.clone()) };

    // The usual step: stored, and the lease extended to what the call answers.
    let until = store.checkpoint(&run, held.clone(), &step(0, 10), Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(store.get_run(&run).await.unwrap().unwrap().lease_expires_at, until);
    assert!(until.is_some());
    // Without a new TTL the lease stays where it is.
    assert_eq!(store.checkpoint(&run, held.clone(), &step(1, 11), None).await.unwrap(), None);
    assert_eq!(store.get_run(&run).await.unwrap().unwrap().lease_expires_at, until);
    // Sent twice by its attempt: a no-op, the first payload kept.
    store.checkpoint(&run, held.clone(), &step(1, 99), None).await.unwrap();
    // A gap, a wrong token, a wrong attempt: refused, nothing stored.
    let gap = store.checkpoint(&run, held.clone(), &step(5, 15), None).await.unwrap_err();
    assert!(matches!(&gap, StoreError::FailedPrecondition(m) if m.contains("the next step is 2")), "{gap:?}");
    let forged = Fence { attempt, token: Some("0".repeat(token.len())) };
    let refused = store.checkpoint(&run, forged, &step(2, 12), None).await.unwrap_err();
    assert!(matches!(&refused, StoreError::Fenced(m) if m.contains("lease token")), "{refused:?}");
    let stale = Fence { attempt: attempt + 1, token: Some(token.clone()) };
    assert!(matches!(store.checkpoint(&run, stale, &step(2, 12), None).await, Err(StoreError::Fenced(_))));
    let stored: Vec<(u32, Vec<u8>)> =
        store.run_steps(&run).await.unwrap().into_iter().map(|s| (s.seq, s.payload)).collect();
    assert_eq!(stored, vec![(0, vec![10]), (1, vec![11])]);

    // The lease runs out and another worker takes the run over (attempt 2, a new token): the old
    // attempt is refused, and the new one may not rewrite a step the old one recorded.
    clock.advance(chrono::Duration::seconds(61));
    let (attempt2, token2) = start(&store, &run, &agent.id, "w2").await;
    assert_eq!(attempt2, attempt + 1);
    let old = store.checkpoint(&run, held, &step(3, 13), None).await.unwrap_err();
    assert!(matches!(&old, StoreError::Fenced(m) if m.contains("superseded")), "{old:?}");
    let now_held = Fence { attempt: attempt2, token: Some(token2) };
    let rewrite = store.checkpoint(&run, now_held.clone(), &step(1, 21), None).await.unwrap_err();
    assert!(
        matches!(&rewrite, StoreError::FailedPrecondition(m) if m.contains("already recorded by attempt 1")),
        "{rewrite:?}"
    );
    let next = store.run_steps(&run).await.unwrap().len() as u32;
    store.checkpoint(&run, now_held.clone(), &step(next, 23), None).await.unwrap();
    assert_eq!(store.run_steps(&run).await.unwrap().last().map(|s| (s.seq, s.attempt)), Some((next, attempt2)));

    // FinishRun with steps (the worker's `MemoryStored`): a forged token or a gap is refused
    // before anything of it is written; the run stays running.
    let end = FinishInput {
        outcome: RunOutcome::Succeeded,
        result: Some("done".into()),
        error: None,
        input_tokens: 0,
        output_tokens: 0,
        failure: Failure::Retryable,
    };
    let forged = Fence { attempt: attempt2, token: Some("0".repeat(token.len())) };
    let refused = store.finish_run_with_steps(&run, forged, &[step(next + 1, 24)], &end).await.unwrap_err();
    assert!(matches!(&refused, StoreError::Fenced(_)), "{refused:?}");
    let gap = [step(next + 1, 24), step(next + 3, 26)];
    let refused = store.finish_run_with_steps(&run, now_held.clone(), &gap, &end).await.unwrap_err();
    assert!(matches!(&refused, StoreError::FailedPrecondition(m) if m.contains("gap")), "{refused:?}");
    let r = store.get_run(&run).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Running);
    // On SQLite the steps and the end are one transaction: the first step of the refused
    // FinishRun is not kept either. (On Postgres each step commits alone, as a Checkpoint.)
    let kept = store.run_steps(&run).await.unwrap().len() as u32;
    assert_eq!(kept, if kind == Db::Sqlite { next + 1 } else { next + 2 });
    // The accepted one: its steps stored with the attempt, and the run ended with the result.
    let ended = store.finish_run_with_steps(&run, now_held, &[step(kept, 27)], &end).await.unwrap();
    assert_eq!(
        (ended.run.status, ended.run.result.as_deref(), ended.retry_after),
        (RunStatus::Succeeded, Some("done"), None)
    );
    assert_eq!(
        store.run_steps(&run).await.unwrap().last().map(|s| (s.seq, s.attempt, s.payload.clone())),
        Some((kept, attempt2, vec![27]))
    );
}
