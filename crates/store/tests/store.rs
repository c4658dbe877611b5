//! Store contract tests, run against both backends: an embedded SQLite file and the real
//! Postgres server (a fresh database per test).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

mod common;
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::env;
use nightshift_core::{AgentSpec, AgentState, Clock, RunId, RunOutcome, RunStatus, TriggerKind, WorkerId};
use nightshift_store::{
    AgentFilter, ApplyOutcome, FinishInput, NewRun, Recovered, RunFilter, StartInput, StartOutcome, StepInput, Store,
    StoreError, TickFire, TickOutcome, WaitingLookup,
};
use nightshift_testkit::Db;

fn spec(name: &str, extra: &str) -> AgentSpec {
    AgentSpec::from_yaml(&format!(
        "name: {name}\nmodel: {{provider: openai, model: m}}\ntask: {{query: q}}\nschedule: {{interval: 60s}}\n{extra}"
    ))
    .unwrap()
}

fn start_input(run: &RunId, agent: &nightshift_core::AgentId, worker: &str) -> StartInput {
    StartInput {
        run_id: run.clone(),
        agent_id: agent.clone(),
        worker_id: WorkerId::from_string(worker),
        worker_endpoint: Some(format!("http://{worker}:50053")),
        lease_ttl: Duration::from_secs(30),
        budgets: Default::default(),
    }
}

/// Records a run as the scheduler does (StartRun starts only recorded runs); a no-op for a run
/// that exists.
async fn record(store: &Store, run: &RunId, agent: &nightshift_core::AgentId, scheduled_for: Option<DateTime<Utc>>) {
    let new = NewRun {
        id: run.clone(),
        agent_id: agent.clone(),
        trigger: TriggerKind::Schedule,
        scheduled_for,
        query_override: None,
    };
    store.insert_run(&new).await.unwrap();
}

/// Records the run (if new), then StartRun.
async fn start(store: &Store, input: &StartInput) -> Result<StartOutcome, nightshift_store::StoreError> {
    record(store, &input.run_id, &input.agent_id, None).await;
    store.start_run(input).await
}

fn finish(outcome: RunOutcome) -> FinishInput {
    FinishInput {
        outcome,
        result: Some("done".into()),
        error: Some("boom".into()),
        input_tokens: 10,
        output_tokens: 5,
        failure: nightshift_core::lifecycle::Failure::Retryable,
    }
}

nightshift_testkit::both_backends!(
    agent_lifecycle,
    apply_is_idempotent,
    list_pages_and_filters_by_label,
    concurrent_start_with_skip_policy_starts_exactly_one,
    concurrent_start_of_one_run_grants_one_lease,
    stale_fencing_token_is_refused_after_takeover,
    lost_leases_are_recovered_resumed_then_failed,
    a_run_starts_with_the_version_it_was_queued_at,
    checkpoints_are_idempotent_and_gapless,
    failures_retry_with_backoff_then_fail,
    buffer_one_and_cancel_other_and_allow_all,
    buffered_runs_start_first_in_first_out,
    paused_agent_runs_are_skipped,
    stats_aggregate_runs,
    enqueue_is_idempotent_per_tick,
    fire_ticks_batches_and_reports_each_run,
);

async fn agent_lifecycle(kind: Db) {
    let e = env(kind).await;
    let a = e.store.create_agent(&spec("alpha", ""), AgentState::Active).await.unwrap();
    assert_eq!(a.version, 1);
    assert!(matches!(
        e.store.create_agent(&spec("alpha", ""), AgentState::Active).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(e.store.get_agent_by_name(&Default::default(), "alpha").await.unwrap().unwrap().id, a.id);

    let changed = spec("alpha", "description: changed");
    assert!(matches!(e.store.update_agent(&a.id, &changed, Some(7)).await, Err(StoreError::VersionConflict(_))));
    let (b, did) = e.store.update_agent(&a.id, &changed, Some(1)).await.unwrap();
    assert!(did);
    assert_eq!(b.version, 2);
    let (c, did) = e.store.update_agent(&a.id, &changed, None).await.unwrap();
    assert!(!did, "identical spec must not bump the version");
    assert_eq!(c.version, 2);
    assert_eq!(e.store.get_agent_version(&a.id, 1).await.unwrap().description, "");
    assert_eq!(e.store.get_agent_version(&a.id, 2).await.unwrap().description, "changed");

    let (p, did) = e.store.set_agent_state(&a.id, AgentState::Paused).await.unwrap();
    assert!(did);
    assert_eq!(p.state, AgentState::Paused);
    assert!(!e.store.set_agent_state(&a.id, AgentState::Paused).await.unwrap().1);

    let run = RunId::generate();
    e.store.insert_run(&NewRun::manual(run.clone(), a.id.clone())).await.unwrap();
    e.store.delete_agent(&a.id).await.unwrap();
    assert!(e.store.get_agent(&a.id).await.unwrap().is_none());
    assert!(e.store.get_run(&run).await.unwrap().is_none(), "runs go with their agent");
    assert!(matches!(e.store.delete_agent(&a.id).await, Err(StoreError::NotFound(_))));
}

async fn apply_is_idempotent(kind: Db) {
    let e = env(kind).await;
    let (a, o) = e.store.apply_agent(&spec("beta", "")).await.unwrap();
    assert_eq!(o, ApplyOutcome::Created);
    let (b, o) = e.store.apply_agent(&spec("beta", "")).await.unwrap();
    assert_eq!((o, b.version, &b.id), (ApplyOutcome::Unchanged, 1, &a.id));
    let (c, o) = e.store.apply_agent(&spec("beta", "labels: {team: x}")).await.unwrap();
    assert_eq!((o, c.version), (ApplyOutcome::Updated, 2));
    // The history, newest first, a page at a time; each version keeps its own spec.
    let history = e.store.list_agent_versions(&a.id, None, 10).await.unwrap();
    assert_eq!(history.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(history[0].spec.labels.get("team").map(String::as_str), Some("x"));
    assert!(history[1].spec.labels.is_empty());
    let older = e.store.list_agent_versions(&a.id, Some(2), 10).await.unwrap();
    assert_eq!(older.iter().map(|v| v.version).collect::<Vec<_>>(), [1]);
    assert_eq!(e.store.list_agent_versions(&a.id, None, 1).await.unwrap().len(), 1);
}

async fn list_pages_and_filters_by_label(kind: Db) {
    let e = env(kind).await;
    for i in 0..7 {
        let team = if i % 2 == 0 { "ops" } else { "data" };
        e.store
            .create_agent(
                &spec(&format!("agent-{i}"), &format!("labels: {{team: {team}, tier: gold}}")),
                AgentState::Active,
            )
            .await
            .unwrap();
    }
    let mut names = Vec::new();
    let mut token = None;
    loop {
        let page =
            e.store.list_agents(&AgentFilter { limit: 3, page_token: token, ..Default::default() }).await.unwrap();
        assert!(page.items.len() <= 3);
        names.extend(page.items.iter().map(|a| a.spec.name.to_string()));
        token = page.next_page_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(names, (0..7).map(|i| format!("agent-{i}")).collect::<Vec<_>>());
    let labels = BTreeMap::from([("team".to_owned(), "ops".to_owned()), ("tier".to_owned(), "gold".to_owned())]);
    let ops = e.store.list_agents(&AgentFilter { limit: 100, labels, ..Default::default() }).await.unwrap();
    assert_eq!(ops.items.len(), 4);
    assert!(ops.items.iter().all(|a| a.spec.labels["team"] == "ops"));
    // Name search: contains, case-insensitive, LIKE's wildcards taken literally.
    let named = |text: &str| AgentFilter { limit: 100, name_contains: Some(text.into()), ..Default::default() };
    let found = e.store.list_agents(&named("NT-3")).await.unwrap();
    assert_eq!(found.items.iter().map(|a| a.spec.name.to_string()).collect::<Vec<_>>(), ["agent-3"]);
    assert_eq!(e.store.list_agents(&named("agent")).await.unwrap().items.len(), 7);
    assert!(e.store.list_agents(&named("a%t")).await.unwrap().items.is_empty());
    assert!(e.store.list_agents(&named("agent_")).await.unwrap().items.is_empty());
}

async fn concurrent_start_with_skip_policy_starts_exactly_one(kind: Db) {
    let e = env(kind).await;
    let a = e.store.create_agent(&spec("gamma", "policy: {overlap: skip}"), AgentState::Active).await.unwrap();
    const N: usize = 12;
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = e.store.clone();
        let input = start_input(&RunId::for_tick(&a.id, i as i64), &a.id, &format!("w{i}"));
        tasks.push(tokio::spawn(async move { start(&store, &input).await.unwrap() }));
    }
    let mut started = 0;
    let mut skipped = 0;
    for t in tasks {
        match t.await.unwrap() {
            StartOutcome::Started { .. } => started += 1,
            StartOutcome::Skipped { run, .. } => {
                assert_eq!(run.status, RunStatus::Skipped);
                skipped += 1
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((started, skipped), (1, N - 1));
    let runs =
        e.store.list_runs(&RunFilter { agent_id: Some(a.id.clone()), limit: 100, ..Default::default() }).await.unwrap();
    let running = runs.items.iter().filter(|r| r.status == RunStatus::Running).count();
    let skipped_rows = runs.items.iter().filter(|r| r.status == RunStatus::Skipped).count();
    assert_eq!((running, skipped_rows), (1, N - 1), "the store agrees with the answers");
}

async fn concurrent_start_of_one_run_grants_one_lease(kind: Db) {
    let e = env(kind).await;
    let a = e.store.create_agent(&spec("delta", "policy: {overlap: allow_all}"), AgentState::Active).await.unwrap();
    let run = RunId::generate();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = e.store.clone();
        let input = start_input(&run, &a.id, &format!("w{i}"));
        tasks.push(tokio::spawn(async move { start(&store, &input).await.unwrap() }));
    }
    let mut started = 0;
    for t in tasks {
        match t.await.unwrap() {
            StartOutcome::Started { run, .. } => {
                assert_eq!(run.attempt, 1);
                started += 1
            }
            StartOutcome::LeasedElsewhere { retry_after, .. } => assert!(retry_after <= Duration::from_secs(30)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(started, 1);
}

async fn stale_fencing_token_is_refused_after_takeover(kind: Db) {
    let e = env(kind).await;
    let a = e.store.create_agent(&spec("eps", ""), AgentState::Active).await.unwrap();
    let run = RunId::generate();
    let StartOutcome::Started { run: r1, .. } = start(&e.store, &start_input(&run, &a.id, "w1")).await.unwrap() else {
        panic!("first start")
    };
    assert_eq!(r1.attempt, 1);
    // What StartRun answers is what the store holds (it is not read back from the row).
    assert_eq!(Some(&r1), e.store.get_run(&run).await.unwrap().as_ref());
    let step = StepInput::new(0, "llm_response", vec![1, 2, 3]);
    e.store.checkpoint(&run, 1, &step, Some(Duration::from_secs(30))).await.unwrap();
    // w1 goes silent; its lease runs out and w2 takes over with attempt 2 and w1's step.
    e.clock.advance(chrono::Duration::seconds(31));
    let StartOutcome::Started { run: r2, steps, .. } = start(&e.store, &start_input(&run, &a.id, "w2")).await.unwrap()
    else {
        panic!("takeover")
    };
    assert_eq!(r2.attempt, 2);
    assert_eq!(Some(&r2), e.store.get_run(&run).await.unwrap().as_ref());
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].payload, vec![1, 2, 3]);
    // Every fenced call of the old attempt is refused.
    assert!(matches!(e.store.heartbeat(&run, 1, Duration::from_secs(30)).await, Err(StoreError::Fenced(_))));
    let step1 = StepInput::new(1, "tool_result", vec![9]);
    assert!(matches!(e.store.checkpoint(&run, 1, &step1, None).await, Err(StoreError::Fenced(_))));
    assert!(matches!(e.store.finish_run(&run, 1, &finish(RunOutcome::Succeeded)).await, Err(StoreError::Fenced(_))));
    // The new holder proceeds.
    e.store.heartbeat(&run, 2, Duration::from_secs(30)).await.unwrap();
    e.store.checkpoint(&run, 2, &step1, None).await.unwrap();
    let (done, retry) = e.store.finish_run(&run, 2, &finish(RunOutcome::Succeeded)).await.unwrap();
    assert_eq!((done.status, retry), (RunStatus::Succeeded, None));
    assert_eq!(Some(&done), e.store.get_run(&run).await.unwrap().as_ref());
    assert!(matches!(e.store.heartbeat(&run, 2, Duration::from_secs(30)).await, Err(StoreError::Fenced(_))));
    assert!(matches!(
        start(&e.store, &start_input(&run, &a.id, "w3")).await.unwrap(),
        StartOutcome::AlreadyFinished { .. }
    ));
}

/// Lease recovery: a run whose worker vanished (and whose delivery is gone) is resumed by the
/// sweep, published again, taken by the next worker with its checkpoints; the dead worker is
/// fenced off; a live lease is never touched; the run that loses its worker too often fails.
async fn lost_leases_are_recovered_resumed_then_failed(kind: Db) {
    let e = env(kind).await;
    let a = e.store.create_agent(&spec("lost", "policy: {max_retries: 0}"), AgentState::Active).await.unwrap();
    let run = RunId::generate();
    let StartOutcome::Started { .. } = start(&e.store, &start_input(&run, &a.id, "w1")).await.unwrap() else {
        panic!("first start")
    };
    let step = StepInput::new(0, "llm_response", vec![7]);
    e.store.checkpoint(&run, 1, &step, None).await.unwrap();
    e.store.mark_published(std::slice::from_ref(&run)).await.unwrap();

    // A live lease is neither listed nor recovered.
    assert!(e.store.expired_leases(e.clock.now(), 10).await.unwrap().is_empty());
    assert!(e.store.recover_lost_lease(&run, &a.id).await.unwrap().is_none());

    let mut attempt = 1;
    for lost in 1..=nightshift_core::lifecycle::MAX_LOST_LEASES {
        e.clock.advance(chrono::Duration::seconds(31));
        assert_eq!(e.store.expired_leases(e.clock.now(), 10).await.unwrap(), [(run.clone(), a.id.clone())]);
        let Some(Recovered::Resumed(r)) = e.store.recover_lost_lease(&run, &a.id).await.unwrap() else {
            panic!("resumed")
        };
        assert_eq!((r.status, r.lost_leases, r.retries), (RunStatus::Queued, lost, 0), "not a retry");
        assert_eq!(Some(&r), e.store.get_run(&run).await.unwrap().as_ref());
        assert!(e.store.recover_lost_lease(&run, &a.id).await.unwrap().is_none(), "recovered once");
        // The dead worker's attempt is fenced off.
        assert!(matches!(
            e.store.finish_run(&run, attempt, &finish(RunOutcome::Succeeded)).await,
            Err(StoreError::Fenced(_))
        ));
        // The outbox sweep publishes it again (with its attempts, the dedup id of the request).
        let stale = e.store.stale_queued_runs(e.clock.now(), 10).await.unwrap();
        assert_eq!(stale.iter().map(|s| (&s.run, s.attempt)).collect::<Vec<_>>(), [(&run, attempt)]);
        e.store.mark_published(std::slice::from_ref(&run)).await.unwrap();
        // The next worker resumes it from its checkpoint.
        let StartOutcome::Started { run: r, steps, .. } =
            start(&e.store, &start_input(&run, &a.id, &format!("w{}", attempt + 1))).await.unwrap()
        else {
            panic!("resume")
        };
        attempt += 1;
        assert_eq!((r.attempt, steps.len()), (attempt, 1));
    }
    // One lost lease too many: failed, whoever notices (here StartRun's takeover).
    e.clock.advance(chrono::Duration::seconds(31));
    let StartOutcome::AlreadyFinished { run: failed } = start(&e.store, &start_input(&run, &a.id, "w9")).await.unwrap()
    else {
        panic!("failed by the takeover")
    };
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(failed.error.as_deref().unwrap_or_default().contains("lost its worker"), "{:?}", failed.error);
    assert_eq!(Some(&failed), e.store.get_run(&run).await.unwrap().as_ref());
    assert!(e.store.expired_leases(e.clock.now(), 10).await.unwrap().is_empty());

    // The sweep fails one too: a second run that lost its worker MAX times already.
    let other = RunId::generate();
    start(&e.store, &start_input(&other, &a.id, "w1")).await.unwrap();
    for _ in 0..nightshift_core::lifecycle::MAX_LOST_LEASES {
        e.clock.advance(chrono::Duration::seconds(31));
        start(&e.store, &start_input(&other, &a.id, "w2")).await.unwrap();
    }
    e.clock.advance(chrono::Duration::seconds(31));
    let Some(Recovered::Failed(r)) = e.store.recover_lost_lease(&other, &a.id).await.unwrap() else {
        panic!("failed by the sweep")
    };
    assert_eq!((r.status, r.lost_leases), (RunStatus::Failed, nightshift_core::lifecycle::MAX_LOST_LEASES + 1));
    assert_eq!(Some(&r), e.store.get_run(&other).await.unwrap().as_ref());
}

async fn a_run_starts_with_the_version_it_was_queued_at(kind: Db) {
    let e = env(kind).await;
    let a = e
        .store
        .create_agent(&spec("theta", "description: first\npolicy: {overlap: allow_all}"), AgentState::Active)
        .await
        .unwrap();
    let queued = RunId::generate();
    let new = |id: &RunId| NewRun::manual(id.clone(), a.id.clone());
    e.store.insert_run(&new(&queued)).await.unwrap();
    e.store
        .update_agent(&a.id, &spec("theta", "description: second\npolicy: {overlap: allow_all}"), None)
        .await
        .unwrap();
    let later = RunId::generate();
    e.store.insert_run(&new(&later)).await.unwrap();
    for (run, version, description) in [(&queued, 1, "first"), (&later, 2, "second")] {
        let out = start(&e.store, &start_input(run, &a.id, "w")).await.unwrap();
        let StartOutcome::Started { run: r, spec, steps, .. } = out else { panic!("{out:?}") };
        assert_eq!((r.agent_version, spec.description.as_str()), (version, description));
        assert!(steps.is_empty());
        assert_eq!(Some(&r), e.store.get_run(run).await.unwrap().as_ref());
    }
}

async fn checkpoints_are_idempotent_and_gapless(kind: Db) {
    let e = env(kind).await;
    let a = e.store.create_agent(&spec("zeta", ""), AgentState::Active).await.unwrap();
    let run = RunId::generate();
    start(&e.store, &start_input(&run, &a.id, "w1")).await.unwrap();
    let s0 = StepInput::new(0, "llm_response", vec![0]);
    e.store.checkpoint(&run, 1, &s0, None).await.unwrap();
    e.store.checkpoint(&run, 1, &s0, None).await.unwrap();
    let gap = StepInput::new(5, "llm_response", vec![5]);
    assert!(matches!(e.store.checkpoint(&run, 1, &gap, None).await, Err(StoreError::FailedPrecondition(_))));
    assert_eq!(e.store.run_steps(&run).await.unwrap().len(), 1);
}

async fn failures_retry_with_backoff_then_fail(kind: Db) {
    let e = env(kind).await;
    let a = e
        .store
        .create_agent(
            &spec("eta", "policy: {max_retries: 2, retry_delay: 10s, backoff: exponential, max_delay: 1m}"),
            AgentState::Active,
        )
        .await
        .unwrap();
    let run = RunId::generate();
    let mut delays = Vec::new();
    for attempt in 1..=3u32 {
        let out = start(&e.store, &start_input(&run, &a.id, "w")).await.unwrap();
        let StartOutcome::Started { run: r, .. } = out else { panic!("attempt {attempt}: {out:?}") };
        assert_eq!(r.attempt, attempt);
        let (r, retry) = e.store.finish_run(&run, attempt, &finish(RunOutcome::Failed)).await.unwrap();
        assert_eq!(Some(&r), e.store.get_run(&run).await.unwrap().as_ref());
        match retry {
            Some(d) => {
                assert_eq!(r.status, RunStatus::Queued);
                delays.push(d.as_secs());
                let early = start(&e.store, &start_input(&run, &a.id, "w")).await.unwrap();
                assert!(matches!(early, StartOutcome::NotYet { .. }), "backoff must hold: {early:?}");
                e.clock.advance(chrono::Duration::from_std(d).unwrap());
            }
            None => {
                assert_eq!(r.status, RunStatus::Failed);
                assert_eq!(r.error.as_deref(), Some("boom"));
            }
        }
    }
    assert_eq!(delays, [10, 20]);
}

async fn buffer_one_and_cancel_other_and_allow_all(kind: Db) {
    let e = env(kind).await;
    // buffer_one: one waits, the next is skipped, and the waiting one starts once the first ends.
    let a = e.store.create_agent(&spec("buf", "policy: {overlap: buffer_one}"), AgentState::Active).await.unwrap();
    let (r1, r2, r3) = (RunId::generate(), RunId::generate(), RunId::generate());
    assert!(matches!(start(&e.store, &start_input(&r1, &a.id, "w")).await.unwrap(), StartOutcome::Started { .. }));
    assert!(matches!(start(&e.store, &start_input(&r2, &a.id, "w")).await.unwrap(), StartOutcome::Deferred { .. }));
    assert!(matches!(start(&e.store, &start_input(&r3, &a.id, "w")).await.unwrap(), StartOutcome::Skipped { .. }));
    assert!(matches!(start(&e.store, &start_input(&r2, &a.id, "w")).await.unwrap(), StartOutcome::Deferred { .. }));
    // The end finds the waiting run, to be published next (Postgres: in the same statement).
    let ended = e.store.finish_run_with_steps(&r1, 1, &[], &finish(RunOutcome::Succeeded)).await.unwrap();
    match ended.waiting {
        WaitingLookup::Found(waiting) => assert_eq!(waiting.map(|w| w.id), Some(r2.clone())),
        WaitingLookup::NotLooked => assert_eq!(kind, Db::Sqlite, "Postgres looks it up with the end"),
    }
    assert_eq!(e.store.first_waiting_run(&a.id).await.unwrap().map(|w| w.id), Some(r2.clone()));
    assert!(matches!(start(&e.store, &start_input(&r2, &a.id, "w")).await.unwrap(), StartOutcome::Started { .. }));

    // cancel_other: the newcomer wins and the old run is fenced out.
    let b = e.store.create_agent(&spec("canc", "policy: {overlap: cancel_other}"), AgentState::Active).await.unwrap();
    let (c1, c2) = (RunId::generate(), RunId::generate());
    start(&e.store, &start_input(&c1, &b.id, "w1")).await.unwrap();
    let StartOutcome::Started { cancelled, .. } = start(&e.store, &start_input(&c2, &b.id, "w2")).await.unwrap() else {
        panic!("cancel_other starts the newcomer")
    };
    // The cancelled run is handed back with where its worker listens, to be told at once.
    let told: Vec<_> = cancelled.iter().map(|r| (&r.id, r.status, r.worker_endpoint.as_deref())).collect();
    assert_eq!(told, [(&c1, RunStatus::Cancelled, Some("http://w1:50053"))]);
    assert_eq!(e.store.get_run(&c1).await.unwrap().unwrap().status, RunStatus::Cancelled);
    assert!(matches!(e.store.heartbeat(&c1, 1, Duration::from_secs(5)).await, Err(StoreError::Fenced(_))));

    // allow_all: both run.
    let c = e.store.create_agent(&spec("all", "policy: {overlap: allow_all}"), AgentState::Active).await.unwrap();
    for _ in 0..2 {
        assert!(matches!(
            start(&e.store, &start_input(&RunId::generate(), &c.id, "w")).await.unwrap(),
            StartOutcome::Started { .. }
        ));
    }
}

/// buffer_all: waiting runs start in schedule order whoever asks first, and the first waiting
/// run is what the manager wakes when a run of the agent ends.
async fn buffered_runs_start_first_in_first_out(kind: Db) {
    let e = env(kind).await;
    let a = e.store.create_agent(&spec("fifo", "policy: {overlap: buffer_all}"), AgentState::Active).await.unwrap();
    let tick = |s: i64| Some(e.clock.now() + chrono::Duration::seconds(s));
    let runs: Vec<RunId> = (0..4).map(|_| RunId::generate()).collect();
    for (i, run) in runs.iter().enumerate() {
        record(&e.store, run, &a.id, tick(i as i64)).await;
    }
    let at = |run: &RunId, _tick: i64| start_input(run, &a.id, "w");
    assert!(matches!(start(&e.store, &at(&runs[0], 0)).await.unwrap(), StartOutcome::Started { .. }));
    // The later ticks ask first: all wait.
    for (i, run) in runs.iter().enumerate().skip(1).rev() {
        let out = start(&e.store, &at(run, i as i64)).await.unwrap();
        assert!(matches!(out, StartOutcome::Deferred { .. }), "{out:?}");
    }
    let mut attempt_of_running = (runs[0].clone(), 1);
    for next in 1..4 {
        assert_eq!(e.store.first_waiting_run(&a.id).await.unwrap().map(|w| w.id), Some(runs[next].clone()));
        let (running, attempt) = &attempt_of_running;
        e.store.finish_run(running, *attempt, &finish(RunOutcome::Succeeded)).await.unwrap();
        // Nothing runs now, but the runs behind `next` still wait for it.
        for later in runs.iter().skip(next + 1).rev() {
            let out = start(&e.store, &start_input(later, &a.id, "w")).await.unwrap();
            let StartOutcome::Deferred { reason, due_ahead, .. } = out else {
                panic!("{later} overtook {}: {out:?}", runs[next])
            };
            assert!(reason.contains(&format!("waiting behind run {}", runs[next])), "{reason}");
            // The run it waits behind is due: handed back to be nudged (its delivery may be lost).
            assert_eq!(due_ahead.map(|w| w.id), Some(runs[next].clone()));
        }
        let StartOutcome::Started { run, .. } = start(&e.store, &start_input(&runs[next], &a.id, "w")).await.unwrap()
        else {
            panic!("{} starts in its turn", runs[next])
        };
        attempt_of_running = (run.id, run.attempt);
    }
    assert!(e.store.first_waiting_run(&a.id).await.unwrap().is_none());
}

async fn paused_agent_runs_are_skipped(kind: Db) {
    let e = env(kind).await;
    let a = e.store.create_agent(&spec("paused", ""), AgentState::Paused).await.unwrap();
    let out = start(&e.store, &start_input(&RunId::generate(), &a.id, "w")).await.unwrap();
    let StartOutcome::Skipped { reason, run } = out else { panic!("{out:?}") };
    assert!(reason.contains("paused"));
    assert_eq!(run.status, RunStatus::Skipped);
}

async fn stats_aggregate_runs(kind: Db) {
    let e = env(kind).await;
    let a = e
        .store
        .create_agent(&spec("stats", "policy: {max_retries: 0, overlap: allow_all}"), AgentState::Active)
        .await
        .unwrap();
    for outcome in [RunOutcome::Succeeded, RunOutcome::Succeeded, RunOutcome::Failed] {
        let run = RunId::generate();
        start(&e.store, &start_input(&run, &a.id, "w")).await.unwrap();
        e.clock.advance(chrono::Duration::seconds(2));
        e.store.finish_run(&run, 1, &finish(outcome)).await.unwrap();
    }
    let s = e.store.agent_stats(&a.id).await.unwrap();
    assert_eq!((s.total(), s.count(RunStatus::Succeeded), s.count(RunStatus::Failed)), (3, 2, 1));
    assert_eq!((s.input_tokens, s.output_tokens), (30, 15));
    assert_eq!(s.mean_duration, Some(Duration::from_secs(2)));
    assert_eq!(s.last_error.as_ref().map(|(e, _)| e.as_str()), Some("boom"));
    assert_eq!(s.last_run.unwrap().status, RunStatus::Failed);
    // By the hour they were created in (the console's last 24 hours).
    let day = e.store.runs_by_hour(&a.id, e.clock.now() - chrono::Duration::hours(1)).await.unwrap();
    let sum = |f: fn(&nightshift_store::HourRuns) -> u64| day.iter().map(f).sum::<u64>();
    assert_eq!((sum(|h| h.succeeded), sum(|h| h.failed), sum(|h| h.other)), (2, 1, 0));
    assert!(day.iter().all(|h| h.hour.timestamp() % 3600 == 0), "hours start on the hour");
    assert!(day.iter().filter(|h| h.succeeded > 0).all(|h| h.mean_duration == Some(Duration::from_secs(2))));
    let later = e.store.runs_by_hour(&a.id, e.clock.now() + chrono::Duration::hours(1)).await.unwrap();
    assert!(later.is_empty());
}

async fn enqueue_is_idempotent_per_tick(kind: Db) {
    let e = env(kind).await;
    let a = e.store.create_agent(&spec("tick", ""), AgentState::Active).await.unwrap();
    let id = RunId::for_tick(&a.id, 1_000);
    let new = NewRun {
        id,
        agent_id: a.id.clone(),
        trigger: TriggerKind::Schedule,
        scheduled_for: Some(Utc::now()),
        query_override: None,
    };
    assert!(e.store.insert_run(&new).await.unwrap().1);
    assert!(!e.store.insert_run(&new).await.unwrap().1);
    let page =
        e.store.list_runs(&RunFilter { agent_id: Some(a.id.clone()), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(page.items.len(), 1);
}

/// More agents than one multi-row statement holds (128), two ticks for some, a tick fired twice
/// and an agent deleted before its tick is recorded: every run gets the right outcome, and the
/// schedule progress (last tick, fired, missed counters) adds up.
async fn fire_ticks_batches_and_reports_each_run(kind: Db) {
    let e = env(kind).await;
    let mut agents = Vec::new();
    for i in 0..620 {
        agents.push(e.store.create_agent(&spec(&format!("herd-{i}"), ""), AgentState::Active).await.unwrap().id);
    }
    let t1 = Utc.with_ymd_and_hms(2026, 3, 1, 12, 1, 0).unwrap();
    let t2 = Utc.with_ymd_and_hms(2026, 3, 1, 12, 2, 0).unwrap();
    let fire = |agent: &nightshift_core::AgentId, ticks: &[chrono::DateTime<Utc>], missed: u64| TickFire {
        agent_id: agent.clone(),
        runs: ticks.iter().map(|t| (RunId::for_tick(agent, t.timestamp_millis()), *t)).collect(),
        last_tick: *ticks.last().unwrap(),
        missed,
        overlap: nightshift_core::OverlapPolicy::Skip,
    };
    // The first pass: one tick each, agent 0 also misses one.
    let first: Vec<TickFire> = agents.iter().enumerate().map(|(i, a)| fire(a, &[t1], u64::from(i == 0))).collect();
    let out = e.store.fire_ticks(&first).await.unwrap();
    assert_eq!(out.len(), 620);
    assert!(out.iter().all(|o| o == &[TickOutcome::Created]));

    // The second pass: agent 1 is deleted, agent 2 repeats t1 (another replica) and adds t2.
    e.store.delete_agent(&agents[1]).await.unwrap();
    let mut second: Vec<TickFire> = agents.iter().map(|a| fire(a, &[t2], 0)).collect();
    second[2] = fire(&agents[2], &[t1, t2], 0);
    let out = e.store.fire_ticks(&second).await.unwrap();
    assert_eq!(out[0], vec![TickOutcome::Created]);
    assert_eq!(out[1], vec![TickOutcome::NoAgent]);
    assert_eq!(out[2], vec![TickOutcome::Existed, TickOutcome::Created]);
    assert!(out[3..].iter().all(|o| o == &[TickOutcome::Created]));

    let a0 = e.store.scheduled_agent(&agents[0]).await.unwrap().unwrap();
    assert_eq!((a0.anchor, a0.fired, a0.missed), (t2, 2, 1));
    // Agent 2's repeated tick still counts as handled once per pass: progress is the newest tick.
    let a2 = e.store.scheduled_agent(&agents[2]).await.unwrap().unwrap();
    assert_eq!((a2.anchor, a2.fired), (t2, 3));
    assert!(e.store.scheduled_agent(&agents[1]).await.unwrap().is_none());
    let run = e.store.get_run(&RunId::for_tick(&agents[619], t2.timestamp_millis())).await.unwrap().unwrap();
    assert_eq!((run.status, run.scheduled_for), (RunStatus::Queued, Some(t2)));
    let page = e
        .store
        .list_runs(&RunFilter { agent_id: Some(agents[2].clone()), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);

    // Taking a prepared tick back: the unpublished run goes, progress and count step back; a
    // published run is never taken back.
    let r3 = RunId::for_tick(&agents[3], t2.timestamp_millis());
    assert_eq!(e.store.unprepare_ticks(&agents[3], std::slice::from_ref(&r3), t2, t1).await.unwrap(), 1);
    assert!(e.store.get_run(&r3).await.unwrap().is_none());
    let a3 = e.store.scheduled_agent(&agents[3]).await.unwrap().unwrap();
    assert_eq!((a3.anchor, a3.fired), (t1, 1));
    let r4 = RunId::for_tick(&agents[4], t2.timestamp_millis());
    e.store.mark_published(std::slice::from_ref(&r4)).await.unwrap();
    assert_eq!(e.store.unprepare_ticks(&agents[4], std::slice::from_ref(&r4), t2, t1).await.unwrap(), 0);
    assert!(e.store.get_run(&r4).await.unwrap().is_some());
    assert_eq!(e.store.scheduled_agent(&agents[4]).await.unwrap().unwrap().anchor, t2);
}
