//! Group commit of many callers' writes on SQLite (the embedded database of `nightshift dev`).
//!
//! SQLite has one write lock per file. The run path's writes (the run store's StartRun,
//! Checkpoint, FinishRun, Heartbeat; the memory service's episodes) of many runs come at once —
//! every agent due in the same second — and each in a transaction of its own on one of several
//! connections queued for that lock (SQLite's busy handler sleeps 1 to 100 ms between tries,
//! however soon the lock is free) and each commit appended its own copies of the same pages to
//! the write-ahead log. Here one connection takes them all: the writes queued while a batch
//! commits run together in the next batch's one transaction (`BEGIN IMMEDIATE`: the lock is held
//! from the start, so no write inside can be refused for a stale snapshot), and each caller is
//! answered only after that commit. There is no timer: a write that finds the writer idle is
//! committed at once, alone.
//!
//! A write that fails does not fail the others: the batch is rolled back and each of its writes
//! runs again in a transaction of its own. A write is a closure that can run twice, and nothing
//! of a rolled-back batch was answered, so running it again is running it for the first time.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{AnyConnection, AnyPool, Executor};
use tokio::sync::{mpsc, oneshot};

/// A future borrowing the writer's connection.
pub type ConnFuture<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// One write: run against the connection inside a transaction it does not end, with the
/// caller's error type (any that a database error converts into).
pub type Write<T, E> = Box<dyn for<'c> Fn(&'c mut AnyConnection) -> ConnFuture<'c, T, E> + Send + Sync>;

/// Most writes committed in one transaction: bounds how long the first of them waits for the
/// last (each is a few statements of tens of microseconds).
const MAX_BATCH: usize = 64;

/// Writes waiting for the writer; callers wait for a place beyond this (back-pressure).
const QUEUE: usize = 4096;

/// The handle a store's clones share; the writer thread ends when the last one is dropped.
#[derive(Debug, Clone)]
pub struct GroupWriter {
    queue: mpsc::Sender<Box<dyn Job>>,
    pool: AnyPool,
    counts: Arc<Counts>,
}

/// What a group writer has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Writes answered (committed or refused).
    pub writes: u64,
    /// Transactions committed, a batch's or a single write's.
    pub commits: u64,
    /// Batches rolled back because one of their writes failed, whose writes then ran one by one.
    pub split_batches: u64,
}

#[derive(Debug, Default)]
struct Counts {
    writes: AtomicU64,
    commits: AtomicU64,
    split_batches: AtomicU64,
}

impl GroupWriter {
    /// Starts the writer on `pool` (one connection: it is the only writer of its file's tables),
    /// on a thread of its own: each of its statements is a round trip to the connection's thread,
    /// and the writer must be back at once for the next one. As a task among the process's
    /// others it waited in the runtime's queue after every statement, and that wait — not
    /// SQLite — capped the run path (623 runs/s at 2,000 agents with a third of the cores
    /// idle, docs/benchmarks.md). The thread is named `thread` (a profile tells the writers
    /// apart by it; Linux keeps 15 bytes) and ends when the last handle is dropped.
    pub fn start(pool: AnyPool, thread: &str) -> std::io::Result<Self> {
        let (queue, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        let run = writer(pool.clone(), rx, counts.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        runtime.and_then(|rt| std::thread::Builder::new().name(thread.into()).spawn(move || rt.block_on(run)))?;
        Ok(Self { queue, pool, counts })
    }

    /// The counts so far.
    pub fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            writes: self.counts.writes.load(Ordering::Relaxed),
            commits: self.counts.commits.load(Ordering::Relaxed),
            split_batches: self.counts.split_batches.load(Ordering::Relaxed),
        }
    }

    /// Closes the writer's connection (writes after this fail).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `write` in the next batch and returns its result once the batch committed.
    pub async fn write<T, E>(&self, write: Write<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending { write, result: None, reply });
        self.queue.send(job).await.map_err(|_| E::from(gone()))?;
        answer.await.map_err(|_| E::from(gone()))?
    }
}

/// Runs `write` in a transaction: in `group`'s next batch when there is one (SQLite), else in a
/// transaction of its own on `pool` (Postgres, which locks rows: its writers proceed side by
/// side).
pub async fn transaction<T, E>(group: Option<&GroupWriter>, pool: &AnyPool, write: Write<T, E>) -> Result<T, E>
where
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    if let Some(group) = group {
        return group.write(write).await;
    }
    let mut tx = pool.begin().await?;
    let value = write(&mut tx).await?;
    tx.commit().await?;
    Ok(value)
}

/// The writer stopped (its store is closing).
fn gone() -> sqlx::Error {
    sqlx::Error::PoolClosed
}

/// A write with its result, type-erased so one queue holds every kind.
trait Job: Send {
    /// Runs the write; true if it succeeded.
    fn run<'a>(&'a mut self, conn: &'a mut AnyConnection) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
    /// Replaces the result with an error (the commit failed, or no connection).
    fn fail(&mut self, error: sqlx::Error);
    /// Sends the result to the caller (who may have gone).
    fn answer(self: Box<Self>);
}

struct Pending<T, E> {
    write: Write<T, E>,
    result: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E> Job for Pending<T, E>
where
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    fn run<'a>(&'a mut self, conn: &'a mut AnyConnection) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let result = (self.write)(conn).await;
            let ok = result.is_ok();
            self.result = Some(result);
            ok
        })
    }

    fn fail(&mut self, error: sqlx::Error) {
        self.result = Some(Err(error.into()));
    }

    fn answer(self: Box<Self>) {
        let result = self.result.unwrap_or_else(|| Err(gone().into()));
        // The caller may have hung up (its RPC was cancelled): the write stands regardless.
        let _ = self.reply.send(result);
    }
}

async fn writer(pool: AnyPool, mut queue: mpsc::Receiver<Box<dyn Job>>, counts: Arc<Counts>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        // Each batch is a task of its own: a write that panics fails its batch (its callers get
        // an error), not every write after it.
        if let Err(e) = tokio::spawn(commit(pool.clone(), jobs, counts.clone())).await {
            tracing::error!(error = %e, "group commit: a batch panicked; its writes failed");
        }
    }
}

/// Commits one batch and answers its writes.
async fn commit(pool: AnyPool, mut batch: Vec<Box<dyn Job>>, counts: Arc<Counts>) {
    match pool.acquire().await {
        Ok(mut conn) => {
            let mut healthy = true;
            if together(&mut conn, &mut batch, &mut healthy).await {
                counts.commits.fetch_add(1, Ordering::Relaxed);
            } else {
                if batch.len() > 1 {
                    counts.split_batches.fetch_add(1, Ordering::Relaxed);
                }
                let committed = one_by_one(&mut conn, &mut batch, &mut healthy).await;
                counts.commits.fetch_add(committed, Ordering::Relaxed);
            }
            if !healthy {
                // A transaction may be left open on it: the pool opens a new one.
                conn.close_on_drop();
            }
        }
        Err(e) => {
            tracing::error!(error = %e, writes = batch.len(), "group commit: no database connection; the batch failed");
            for job in &mut batch {
                job.fail(sqlx::Error::PoolTimedOut);
            }
        }
    }
    counts.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
    for job in batch {
        job.answer();
    }
}

/// `BEGIN IMMEDIATE`. A transaction left open on the connection (by a batch whose task
/// panicked) is rolled back first.
async fn begin(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    match conn.execute("BEGIN IMMEDIATE").await {
        Err(e) if e.to_string().contains("within a transaction") => {
            tracing::warn!("group commit: a transaction was left open; rolling it back");
            conn.execute("ROLLBACK").await?;
            conn.execute("BEGIN IMMEDIATE").await.map(|_| ())
        }
        done => done.map(|_| ()),
    }
}

/// Runs the batch in one transaction; false (rolled back) if a write or the commit failed.
async fn together(conn: &mut AnyConnection, batch: &mut [Box<dyn Job>], healthy: &mut bool) -> bool {
    if batch.len() == 1 {
        return false; // one_by_one is the same transaction without a second try
    }
    if let Err(e) = begin(conn).await {
        tracing::warn!(error = %e, "group commit: BEGIN failed; writing one by one");
        return false;
    }
    for job in batch.iter_mut() {
        if !job.run(conn).await {
            *healthy &= rollback(conn).await;
            return false;
        }
    }
    match conn.execute("COMMIT").await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, writes = batch.len(), "group commit failed; writing one by one");
            *healthy &= rollback(conn).await;
            false
        }
    }
}

/// Runs each write in a transaction of its own; returns how many committed.
async fn one_by_one(conn: &mut AnyConnection, batch: &mut [Box<dyn Job>], healthy: &mut bool) -> u64 {
    let mut committed = 0;
    for job in batch.iter_mut() {
        if let Err(e) = begin(conn).await {
            job.fail(e);
            continue;
        }
        if !job.run(conn).await {
            *healthy &= rollback(conn).await;
        } else if let Err(e) = conn.execute("COMMIT").await {
            job.fail(e);
            *healthy &= rollback(conn).await;
        } else {
            committed += 1;
        }
    }
    committed
}

/// Ends the open transaction, if any (SQLite may have rolled it back itself after an error);
/// false if the connection may still hold one.
async fn rollback(conn: &mut AnyConnection) -> bool {
    match conn.execute("ROLLBACK").await {
        Ok(_) => true,
        Err(e) if e.to_string().contains("no transaction is active") => true,
        Err(e) => {
            tracing::warn!(error = %e, "group commit: ROLLBACK failed; dropping the connection");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
    use nightshift_testkit::sqlite_db;
    use sqlx::Row;
    use sqlx::any::AnyPoolOptions;

    use super::*;

    /// A write that panics halfway through its batch's transaction fails its caller; what it
    /// wrote is rolled back, and the writes after it commit on the same writer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_panics_fails_alone() {
        let db = sqlite_db();
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new().max_connections(1).connect(&format!("{}?mode=rwc", db.url)).await.unwrap();
        pool.execute("CREATE TABLE t (n INTEGER NOT NULL)").await.unwrap();
        pool.execute("INSERT INTO t (n) VALUES (1)").await.unwrap();
        let group = GroupWriter::start(pool, "test-writer").unwrap();

        let panics: Write<(), sqlx::Error> = Box::new(|conn| {
            Box::pin(async move {
                conn.execute("UPDATE t SET n = 99").await?;
                panic!("a bug in a write");
            })
        });
        assert!(group.write(panics).await.is_err(), "its caller gets an error");

        let read: Write<i64, sqlx::Error> = Box::new(|conn| {
            Box::pin(async move {
                let row = sqlx::query("SELECT n FROM t").fetch_one(&mut *conn).await?;
                row.try_get::<i64, _>("n")
            })
        });
        assert_eq!(group.write(read).await.unwrap(), 1, "the panicked write was rolled back");
        let stats = group.stats();
        assert_eq!((stats.writes, stats.commits), (1, 1), "the next write committed: {stats:?}");
    }
}
