//! Fire-time admission (`nightshift_core::admission`) as the store executes it in
//! `fire_ticks`, on both backends: under overlap `skip`, a tick fired while the agent's previous
//! run was handed to the queue over a second ago and has not started is recorded as skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

mod common;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::env;
use nightshift_core::{AgentId, AgentSpec, AgentState, Clock, OverlapPolicy, RunId, RunStatus, WorkerId};
use nightshift_store::{StartInput, StartOutcome, TickFire, TickOutcome};
use nightshift_testkit::Db;

nightshift_testkit::both_backends!(a_tick_behind_a_pending_run_is_recorded_skipped);

fn spec(name: &str, overlap: &str) -> AgentSpec {
    AgentSpec::from_yaml(&format!(
        "name: {name}\nmodel: {{provider: openai, model: m}}\ntask: {{query: q}}\nschedule: {{interval: 60s}}\n\
         policy: {{overlap: {overlap}}}"
    ))
    .unwrap()
}

fn fire(agent: &AgentId, overlap: OverlapPolicy, tick: DateTime<Utc>) -> TickFire {
    TickFire {
        agent_id: agent.clone(),
        runs: vec![(RunId::for_tick(agent, tick.timestamp_millis()), tick)],
        last_tick: tick,
        missed: 0,
        overlap,
    }
}

async fn a_tick_behind_a_pending_run_is_recorded_skipped(kind: Db) {
    let e = env(kind).await;
    let mut agents = Vec::new();
    for (name, overlap) in
        [("late", "skip"), ("all", "allow_all"), ("fresh", "skip"), ("unsent", "skip"), ("busy", "skip")]
    {
        let rec = e.store.create_agent(&spec(name, overlap), AgentState::Active).await.unwrap();
        let seen = e.store.scheduled_agent(&rec.id).await.unwrap().unwrap();
        agents.push((rec.id, seen.overlap));
    }
    assert_eq!(agents[0].1, OverlapPolicy::Skip);
    assert_eq!(agents[1].1, OverlapPolicy::AllowAll, "the scheduler sees the agent's overlap policy");
    let [late, all, fresh, _unsent, busy] = [0, 1, 2, 3, 4].map(|i| agents[i].0.clone());
    let fires = |tick: DateTime<Utc>| agents.iter().map(|(a, o)| fire(a, *o, tick)).collect::<Vec<_>>();
    let run_of = |a: &AgentId, tick: DateTime<Utc>| RunId::for_tick(a, tick.timestamp_millis());

    // The first ticks: nothing is pending, every run is queued.
    let t1 = e.clock.now();
    let out = e.store.fire_ticks(&fires(t1)).await.unwrap();
    assert!(out.iter().all(|o| o == &[TickOutcome::Created]), "{out:?}");
    // `late`, `all` and `busy` handed over now; `busy`'s run then starts; `fresh` is handed over
    // 1.5 s later (just before the next firing); `unsent` never is.
    let handed = [run_of(&late, t1), run_of(&all, t1), run_of(&busy, t1)];
    e.store.mark_published(&handed).await.unwrap();
    let input = StartInput {
        run_id: run_of(&busy, t1),
        agent_id: busy.clone(),
        worker_id: WorkerId::from_string("w1"),
        worker_endpoint: None,
        lease_ttl: Duration::from_secs(30),
        budgets: Default::default(),
    };
    assert!(matches!(e.store.start_run(&input).await.unwrap(), StartOutcome::Started { .. }));
    e.clock.advance(chrono::Duration::milliseconds(1500));
    e.store.mark_published(&[run_of(&fresh, t1)]).await.unwrap();

    let t2 = e.clock.now();
    let out = e.store.fire_ticks(&fires(t2)).await.unwrap();
    let expected_reason = format!("overlap policy skip: run {} is still waiting to start", run_of(&late, t1));
    assert!(
        matches!(&out[0][..], [TickOutcome::Skipped { reason }] if reason.starts_with(&expected_reason)),
        "`late` waited 1.5 s unstarted: {:?}",
        out[0]
    );
    assert_eq!(out[1], [TickOutcome::Created], "allow_all admits every tick");
    assert_eq!(out[2], [TickOutcome::Created], "handed over 0 s ago: not behind yet");
    assert_eq!(out[3], [TickOutcome::Created], "never handed over: not behind, only not sent");
    assert_eq!(out[4], [TickOutcome::Created], "its run started");

    let skipped = e.store.get_run(&run_of(&late, t2)).await.unwrap().unwrap();
    assert_eq!(skipped.status, RunStatus::Skipped);
    assert_eq!(skipped.finished_at, Some(t2));
    assert_eq!(skipped.scheduled_for, Some(t2));
    assert!(skipped.reason.as_deref().is_some_and(|r| r.starts_with(&expected_reason)), "{:?}", skipped.reason);
    let stale = e.store.stale_queued_runs(t2 + chrono::Duration::hours(1), 100).await.unwrap();
    assert!(stale.iter().all(|s| s.run != skipped.id), "a skipped run is never handed to the queue");
    // Fired twice (another replica): the record stays as it is.
    let again = e.store.fire_ticks(&[fire(&late, OverlapPolicy::Skip, t2)]).await.unwrap();
    assert_eq!(again, [[TickOutcome::Existed]]);

    // A restart of an in-process queue clears the flags (`late`, `all`, `fresh` were handed
    // over and are still queued): `late`'s run waits to be handed over again, so it no longer
    // holds the agent's ticks back.
    assert_eq!(e.store.unpublish_queued().await.unwrap(), 3);
    e.clock.advance(chrono::Duration::seconds(5));
    let t3 = e.clock.now();
    let out = e.store.fire_ticks(&[fire(&late, OverlapPolicy::Skip, t3)]).await.unwrap();
    assert_eq!(out, [[TickOutcome::Created]]);
}
