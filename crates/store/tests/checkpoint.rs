//! Checkpoints on both backends, fenced by the lease token as the manager calls them: the usual
//! step (one statement on Postgres) extends the lease and is stored; a wrong token, an ended
//! attempt, a gap and another attempt's step are refused with the reason; a step sent twice by
//! its attempt is a no-op.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use nightshift_core::{AgentSpec, AgentState, ManualClock, RunId, WorkerId};
use nightshift_store::{Fence, NewRun, StartInput, StartOutcome, StepInput, Store, StoreError};
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
    store.checkpoint(&run, now_held, &step(next, 23), None).await.unwrap();
    assert_eq!(store.run_steps(&run).await.unwrap().last().map(|s| (s.seq, s.attempt)), Some((next, attempt2)));
}
