//! The committers against a real Postgres server (a fresh database per test).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

use std::time::Duration;

use nightshift_group_commit::{COMMITTERS, Committers, Write};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

async fn pool() -> AnyPool {
    sqlx::any::install_default_drivers();
    let url = nightshift_testkit::postgres_url().await;
    let pool = AnyPoolOptions::new().max_connections(8).connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE t (k BIGINT PRIMARY KEY)").execute(&pool).await.unwrap();
    pool
}

/// Inserts `k`; then fails (after the insert) when `fail`.
fn insert(k: i64, fail: bool) -> Write<(), sqlx::Error> {
    Box::new(move |conn| {
        Box::pin(async move {
            sqlx::query("INSERT INTO t (k) VALUES ($1)").bind(k).execute(&mut *conn).await?;
            if fail { Err(sqlx::Error::RowNotFound) } else { Ok(()) }
        })
    })
}

/// Holds a committer for `secs` (its batch is this one write).
fn sleep(secs: f64) -> Write<(), sqlx::Error> {
    Box::new(move |conn| {
        Box::pin(async move {
            sqlx::query("SELECT pg_sleep($1)").bind(secs).execute(&mut *conn).await?;
            Ok(())
        })
    })
}

async fn keys(pool: &AnyPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT k FROM t ORDER BY k").fetch_all(pool).await.unwrap()
}

/// Sends the inserts of `0..n` at once (`failing` fails after its insert); their results by key.
async fn send(committers: &Committers, n: i64, failing: Option<i64>) -> Vec<(i64, Result<(), sqlx::Error>)> {
    let writes: Vec<_> = (0..n)
        .map(|k| {
            let c = committers.clone();
            tokio::spawn(async move { (k, c.write(insert(k, failing == Some(k))).await) })
        })
        .collect();
    let mut results = Vec::new();
    for w in writes {
        results.push(w.await.unwrap());
    }
    results
}

/// Occupies every committer, so that what is sent next queues and commits as one batch.
async fn occupy(committers: &Committers) -> Vec<tokio::task::JoinHandle<()>> {
    let busy: Vec<_> = (0..COMMITTERS)
        .map(|_| {
            let c = committers.clone();
            tokio::spawn(async move { c.write(sleep(0.3)).await.unwrap() })
        })
        .collect();
    // Each committer has taken its sleeping write once all were sent and a moment passed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    busy
}

#[tokio::test]
async fn writes_queued_while_the_committers_are_busy_commit_together() {
    let pool = pool().await;
    let committers = Committers::start(pool.clone());
    let busy = occupy(&committers).await;
    for (k, result) in send(&committers, 40, None).await {
        result.unwrap_or_else(|e| panic!("write {k}: {e}"));
    }
    for b in busy {
        b.await.unwrap();
    }
    assert_eq!(keys(&pool).await, (0..40).collect::<Vec<_>>());
    let stats = committers.stats();
    assert_eq!(stats.writes, 40 + COMMITTERS as u64);
    // The sleeps commit alone; the 40 inserts queued behind them in at most a batch each.
    assert!(stats.commits <= 2 * COMMITTERS as u64, "40 writes in {} commits", stats.commits);
    assert_eq!(stats.split_batches, 0);
}

#[tokio::test]
async fn a_failed_write_is_undone_and_the_others_of_its_batch_still_commit() {
    let pool = pool().await;
    let committers = Committers::start(pool.clone());
    let busy = occupy(&committers).await;
    for (k, result) in send(&committers, 10, Some(3)).await {
        assert_eq!(result.is_err(), k == 3, "write {k}: {result:?}");
    }
    for b in busy {
        b.await.unwrap();
    }
    // 3 inserted its row and then failed: its transaction was rolled back, the others' not.
    assert_eq!(keys(&pool).await, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
    assert!(committers.stats().split_batches >= 1, "{:?}", committers.stats());
}

#[tokio::test]
async fn a_write_that_panics_fails_its_callers_and_leaves_nothing_open() {
    let pool = pool().await;
    let committers = Committers::start(pool.clone());
    let panics: Write<(), sqlx::Error> = Box::new(|conn| {
        Box::pin(async move {
            sqlx::query("INSERT INTO t (k) VALUES (100)").execute(&mut *conn).await?;
            panic!("a write that panics");
        })
    });
    assert!(committers.write(panics).await.is_err());
    // The committer lives on, and the panicked write's insert was rolled back on every
    // connection the next writes take.
    for k in 0..16 {
        committers.write(insert(k, false)).await.unwrap();
    }
    assert_eq!(keys(&pool).await, (0..16).collect::<Vec<_>>());
}
