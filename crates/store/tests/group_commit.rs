//! The run path's writer (group_commit.rs) under load, on both databases — SQLite's group
//! writer, Postgres' committers: StartRun, Checkpoint, Heartbeat and FinishRun of many runs at
//! once are committed in shared transactions, every caller gets its own answer, and a write
//! refused in the middle of a batch fails alone — the batch is rolled back and its other writes
//! land, each once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::time::Duration;

use futures::future::join_all;
use nightshift_core::lifecycle::Failure;
use nightshift_core::{AgentSpec, AgentState, RunId, RunOutcome, RunStatus, WorkerId};
use nightshift_store::{Fence, FinishInput, NewRun, StartInput, StartOutcome, StepInput, Store, StoreError};
use nightshift_testkit::{Db, database};

const RUNS: usize = 48;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_runs_share_commits_and_a_refused_write_fails_alone_on_sqlite() {
    many_runs_share_commits_and_a_refused_write_fails_alone(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_runs_share_commits_and_a_refused_write_fails_alone_on_postgres() {
    many_runs_share_commits_and_a_refused_write_fails_alone(Db::Postgres).await;
}

async fn many_runs_share_commits_and_a_refused_write_fails_alone(kind: Db) {
    let (url, _guard) = database(kind).await;
    let store = Store::connect(&url).await.unwrap();
    let mut runs = Vec::new();
    for i in 0..RUNS {
        let yaml = format!(
            "name: g{i}\nmodel: {{provider: openai, model: m}}\ntask: {{query: q}}\nschedule: {{manual: true}}"
        );
        let agent = store.create_agent(&AgentSpec::from_yaml(&yaml).unwrap(), AgentState::Active).await.unwrap();
        let run = RunId::generate();
        store.insert_run(&NewRun::manual(run.clone(), agent.id.clone())).await.unwrap();
        runs.push((run, agent.id));
    }
    let before = store.group_commit_stats();

    // Every run starts at once: each gets its own lease token.
    let starts = join_all(runs.iter().map(|(run, agent)| {
        let input = StartInput {
            run_id: run.clone(),
            agent_id: agent.clone(),
            worker_id: WorkerId::from_string("w"),
            worker_endpoint: None,
            lease_ttl: Duration::from_secs(30),
            budgets: Default::default(),
        };
        let store = store.clone();
        async move { store.start_run(&input).await }
    }))
    .await;
    let fences: Vec<Fence> = starts
        .into_iter()
        .map(|s| match s.unwrap() {
            StartOutcome::Started { run, lease_token, .. } => Fence { attempt: run.attempt, token: Some(lease_token) },
            other => panic!("not started: {other:?}"),
        })
        .collect();
    let mut tokens: Vec<_> = fences.iter().map(|f| f.token.clone()).collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), RUNS, "one token per run");
    let started = store.group_commit_stats();
    assert_eq!(started.writes - before.writes, RUNS as u64);
    assert!(
        started.commits - before.commits <= (RUNS / 4) as u64,
        "{RUNS} concurrent starts share transactions: {before:?} → {started:?}"
    );

    // Each run's first step, and for every third run a step that would leave a gap, at once: the
    // gaps are refused, the rest stored.
    let writes = runs.iter().zip(&fences).enumerate().flat_map(|(i, ((run, _), fence))| {
        let store = &store;
        let mut steps = vec![StepInput::new(0, "llm_response", vec![1])];
        if i % 3 == 0 {
            steps.push(StepInput::new(5, "llm_response", vec![5]));
        }
        steps.into_iter().map(move |step| {
            let (store, run, fence) = (store.clone(), run.clone(), fence.clone());
            async move { (step.seq, store.checkpoint(&run, fence, &step, Some(Duration::from_secs(60))).await) }
        })
    });
    let answers = join_all(writes).await;
    let split = store.group_commit_stats();
    for (seq, answer) in &answers {
        match seq {
            0 => assert!(answer.is_ok(), "{answer:?}"),
            _ => assert!(matches!(answer, Err(StoreError::FailedPrecondition(m)) if m.contains("gap")), "{answer:?}"),
        }
    }
    assert!(split.split_batches > started.split_batches, "a batch held a refused write: {split:?}");
    for (run, _) in &runs {
        let steps = store.run_steps(run).await.unwrap();
        assert_eq!(steps.iter().map(|s| s.seq).collect::<Vec<_>>(), [0], "run {run}");
    }

    // Heartbeats and ends at once; one with a forged token is refused alone.
    let forged = Fence { attempt: 1, token: Some("0".repeat(fences[0].token.as_ref().unwrap().len())) };
    let beats = join_all(runs.iter().zip(&fences).map(|((run, _), fence)| {
        let (store, run, fence) = (store.clone(), run.clone(), fence.clone());
        async move { store.heartbeat(&run, fence, Duration::from_secs(60)).await }
    }))
    .await;
    assert!(beats.iter().all(Result::is_ok), "{beats:?}");
    let done = FinishInput {
        outcome: RunOutcome::Succeeded,
        result: Some("ok".into()),
        error: None,
        input_tokens: 3,
        output_tokens: 2,
        failure: Failure::Retryable,
    };
    let mut ends: Vec<_> = runs.iter().zip(&fences).map(|((run, _), fence)| (run.clone(), fence.clone())).collect();
    ends.push((runs[0].0.clone(), forged));
    let ended = join_all(ends.into_iter().map(|(run, fence)| {
        let (store, done) = (store.clone(), done.clone());
        async move { store.finish_run(&run, fence, &done).await }
    }))
    .await;
    assert!(matches!(ended.last(), Some(Err(StoreError::Fenced(_)))), "{:?}", ended.last());
    for (run, _) in &runs {
        let r = store.get_run(run).await.unwrap().unwrap();
        assert_eq!((r.status, r.result.as_deref(), r.input_tokens), (RunStatus::Succeeded, Some("ok"), 3), "run {run}");
    }
}

/// On Postgres a batch holds its runs' rows locked until it commits. The scheduler's outbox flag
/// skips such a row (the run is being started: it needs no flag) instead of waiting for it while
/// holding the rows it already flagged, which deadlocked with those batches.
#[tokio::test]
async fn the_outbox_flag_skips_a_run_whose_row_is_locked_on_postgres() {
    let (url, _guard) = database(Db::Postgres).await;
    let store = Store::connect(&url).await.unwrap();
    let yaml = "name: o\nmodel: {provider: openai, model: m}\ntask: {query: q}\nschedule: {manual: true}";
    let agent = store.create_agent(&AgentSpec::from_yaml(yaml).unwrap(), AgentState::Active).await.unwrap();
    let (held, free) = (RunId::generate(), RunId::generate());
    for run in [&held, &free] {
        store.insert_run(&NewRun::manual(run.clone(), agent.id.clone())).await.unwrap();
    }
    let other = sqlx::PgPool::connect(&url).await.unwrap();
    let mut lock = other.begin().await.unwrap();
    sqlx::query("UPDATE runs SET attempt = attempt WHERE id = $1")
        .bind(held.as_str())
        .execute(&mut *lock)
        .await
        .unwrap();

    // Waiting for the lock would never end while it is held: the bound only turns a hang into a
    // failure.
    let both = [held.clone(), free.clone()];
    let flagged = tokio::time::timeout(Duration::from_secs(10), store.mark_published(&both));
    flagged.await.expect("the flag waited for a locked row").unwrap();
    lock.rollback().await.unwrap();
    let published = |run: RunId| {
        let other = other.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT published FROM runs WHERE id = $1")
                .bind(run.as_str().to_owned())
                .fetch_one(&other)
                .await
                .unwrap()
        }
    };
    assert_eq!(published(held).await, 0, "the locked run is skipped");
    assert!(published(free).await > 0, "the other run is flagged");
}
