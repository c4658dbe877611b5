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
//!
//! Two lanes: a [`Write`] runs on a pooled sqlx connection (each statement a round trip to that
//! connection's thread); a [`Direct`] write runs on the writer's own connection, on the writer's
//! thread (`direct.rs`). A batch commits its direct writes in one transaction, then its pooled
//! ones in another: they were all queued while the previous batch committed, none answered, so
//! any order among them is one their callers could have seen.
use std::sync::{Arc, Mutex, PoisonError};

use nightshift_group_commit::{
    Counts, GroupCommitStats, MAX_BATCH, Pending, PooledJob, QUEUE, Reply, Write, answer_all, fail_all, gone,
};
use sqlx::{AnyConnection, AnyPool, Executor};
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::Checkpoints;
use crate::direct::{self, Direct, DirectJob, Read, ReadJob};

/// The handle a store's clones share; the writer thread ends when the last one is dropped.
#[derive(Clone)]
pub struct GroupWriter {
    queue: mpsc::Sender<Job>,
    pool: AnyPool,
    own: direct::Shared,
    counts: Arc<Counts>,
    checkpoints: Arc<Checkpoints>,
}

impl std::fmt::Debug for GroupWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWriter").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl GroupWriter {
    /// Starts the writer on `pool` (one connection) and `own` (the connection of its direct
    /// writes, see [`open`](crate::open)) — together the only writers of their file's tables —
    /// on a thread of its own: each of its statements is a round trip to the connection's thread,
    /// and the writer must be back at once for the next one. As a task among the process's
    /// others it waited in the runtime's queue after every statement, and that wait — not
    /// SQLite — capped the run path (623 runs/s at 2,000 agents with a third of the cores
    /// idle, docs/benchmarks.md). The thread is named `thread` (a profile tells the writers
    /// apart by it; Linux keeps 15 bytes) and ends when the last handle is dropped. The file's
    /// checkpoints run on a second thread (`checkpoint.rs`), named `thread` with its last word
    /// replaced by `ckpt`.
    pub fn start(pool: AnyPool, own: rusqlite::Connection, thread: &str) -> std::io::Result<Self> {
        let (queue, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        let path = own.path().filter(|p| !p.is_empty()).map(str::to_owned);
        let path = path.ok_or_else(|| std::io::Error::other("the writer's connection has no file (see `open`)"))?;
        let own = Arc::new(Mutex::new(Some(own)));
        let name = thread.rsplit_once('-').map_or(thread, |(stem, _)| stem);
        let checkpoints = Arc::new(Checkpoints::start(&path, &own, &format!("{name}-ckpt"))?);
        let (p, o, c, k) = (pool.clone(), own.clone(), counts.clone(), checkpoints.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let started = runtime.and_then(|rt| {
            std::thread::Builder::new().name(thread.into()).spawn(move || rt.block_on(writer(p, o, rx, c, k)))
        });
        if let Err(e) = started {
            checkpoints.stop();
            return Err(e);
        }
        Ok(Self { queue, pool, own, counts, checkpoints })
    }

    /// The counts so far.
    pub fn stats(&self) -> GroupCommitStats {
        self.counts.stats()
    }

    /// Closes the writer's connections (writes after this fail). Waits for a batch committing
    /// on the writer's own connection and for a checkpoint running (milliseconds) so that the
    /// file is closed on return.
    pub async fn close(&self) {
        self.pool.close().await;
        let (own, checkpoints) = (self.own.clone(), self.checkpoints.clone());
        let closed = tokio::task::spawn_blocking(move || {
            drop(own.lock().unwrap_or_else(PoisonError::into_inner).take());
            if let Some(thread) = checkpoints.stop() {
                drop(thread.join());
            }
        });
        drop(closed.await);
    }

    /// Runs `write` in the next batch, on a pooled connection, and returns its result once the
    /// batch committed.
    pub async fn write<T, E>(&self, write: Write<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        let (job, answer) = nightshift_group_commit::pooled(write);
        self.send(Job::Pooled(job), answer).await
    }

    /// Runs `write` in the next batch, on the writer's own connection and thread, and returns its
    /// result once the batch committed.
    pub async fn write_direct<T, E>(&self, write: Direct<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        let (reply, answer) = Reply::new();
        self.send(Job::Direct(Box::new(Pending { write, reply })), answer).await
    }

    /// Runs `read` on the writer's own connection and thread, before the next batch's writes, and
    /// returns its result at once (it waits for no commit). For the reads of the path that also
    /// writes there: that connection's page cache stays valid from one batch to the next (no
    /// other connection writes the file), where a pooled connection finds the file changed at
    /// each read and reads the pages it needs again; and a batch of reads costs one wake-up.
    pub async fn read_direct<T, E>(&self, read: Read<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        let (reply, answer) = Reply::new();
        self.send(Job::Read(Box::new(Pending { write: Some(read), reply })), answer).await
    }

    async fn send<T, E: From<sqlx::Error>>(&self, job: Job, answer: oneshot::Receiver<Result<T, E>>) -> Result<T, E> {
        self.queue.send(job).await.map_err(|_| E::from(gone()))?;
        answer.await.map_err(|_| E::from(gone()))?
    }
}

/// A queued write, by lane, or a read.
enum Job {
    Pooled(Box<dyn PooledJob>),
    Direct(Box<dyn DirectJob>),
    Read(Box<dyn ReadJob>),
}

async fn writer(
    pool: AnyPool,
    own: direct::Shared,
    mut queue: mpsc::Receiver<Job>,
    counts: Arc<Counts>,
    checkpoints: Arc<Checkpoints>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (mut direct, mut pooled, mut reads) = (Vec::new(), Vec::new(), Vec::new());
        for job in batch.drain(..) {
            match job {
                Job::Direct(job) => direct.push(job),
                Job::Pooled(job) => pooled.push(job),
                Job::Read(job) => reads.push(job),
            }
        }
        // Each lane's batch is a task of its own: a write that panics fails its batch (its
        // callers get an error), not every write after it. The reads go first: they wait for
        // no commit.
        if !direct.is_empty() || !reads.is_empty() {
            let wrote = !direct.is_empty();
            let (own, counts) = (own.clone(), counts.clone());
            let task = tokio::spawn(async move {
                if !reads.is_empty() {
                    direct::read(&own, reads);
                }
                if direct.is_empty() {
                    return;
                }
                direct::commit(&own, &mut direct, &counts);
                answer_all(direct, &counts);
            });
            if let Err(e) = task.await {
                tracing::error!(error = %e, "group commit: a batch panicked; its writes failed");
            }
            if wrote {
                checkpoints.nudge();
            }
        }
        if !pooled.is_empty()
            && let Err(e) = tokio::spawn(commit(pool.clone(), pooled, counts.clone())).await
        {
            tracing::error!(error = %e, "group commit: a batch panicked; its writes failed");
        }
    }
    // Every handle is gone: so is the need for checkpoints (the last connection to close copies
    // the log into the file).
    checkpoints.stop();
}

/// Commits one batch of pooled writes and answers them.
async fn commit(pool: AnyPool, mut batch: Vec<Box<dyn PooledJob>>, counts: Arc<Counts>) {
    match pool.acquire().await {
        Ok(mut conn) => {
            let mut healthy = true;
            if together(&mut conn, &mut batch, &mut healthy).await {
                counts.commit(1);
            } else {
                if batch.len() > 1 {
                    counts.split();
                }
                let committed = one_by_one(&mut conn, &mut batch, &mut healthy).await;
                counts.commit(committed);
            }
            if !healthy {
                // A transaction may be left open on it: the pool opens a new one.
                conn.close_on_drop();
            }
        }
        Err(e) => fail_all(&mut batch, &e),
    }
    answer_all(batch, &counts);
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
async fn together(conn: &mut AnyConnection, batch: &mut [Box<dyn PooledJob>], healthy: &mut bool) -> bool {
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
async fn one_by_one(conn: &mut AnyConnection, batch: &mut [Box<dyn PooledJob>], healthy: &mut bool) -> u64 {
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
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
    use nightshift_testkit::sqlite_db;
    use sqlx::Row;
    use sqlx::any::AnyPoolOptions;

    use super::*;

    /// A writer on a new file at `url` whose schema is `schema`.
    pub(crate) async fn writer_on(url: &str, schema: &str) -> GroupWriter {
        sqlx::any::install_default_drivers();
        let url = format!("{url}?mode=rwc");
        let pool = AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(schema)).execute(&pool).await.unwrap();
        GroupWriter::start(pool, crate::open(&url, &[]).unwrap(), "test-writer").unwrap()
    }

    /// Direct writes sent together: the one that fails gets its error, the one that panics
    /// fails its caller, and every other one commits (batched or, after the failure, one by
    /// one); pooled writes in the same batches commit too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_direct_write_that_fails_fails_alone() {
        let db = sqlite_db();
        let group = writer_on(&db.url, "CREATE TABLE t (n INTEGER NOT NULL UNIQUE)").await;
        let insert = |n: i64| -> Direct<(), sqlx::Error> {
            Box::new(move |conn| {
                conn.execute("INSERT INTO t (n) VALUES (?1)", [n]).map_err(crate::db_error)?;
                match n {
                    7 => Err(sqlx::Error::RowNotFound), // a refusal after a statement took
                    13 => panic!("a bug in a direct write"),
                    _ => Ok(()),
                }
            })
        };
        let pooled = |n: i64| -> Write<(), sqlx::Error> {
            Box::new(move |conn| {
                Box::pin(
                    async move { sqlx::query("INSERT INTO t (n) VALUES ($1)").bind(n).execute(conn).await.map(|_| ()) },
                )
            })
        };
        let direct = futures::future::join_all((0..20).map(|n| group.write_direct(insert(n))));
        let pooled = futures::future::join_all((100..110).map(|n| group.write(pooled(n))));
        let (direct, pooled) = tokio::join!(direct, pooled);
        for (n, result) in direct.iter().enumerate() {
            assert_eq!(result.is_ok(), n != 7 && n != 13, "write {n}: {result:?}");
        }
        assert!(pooled.iter().all(Result::is_ok), "{pooled:?}");
        let read: Write<Vec<i64>, sqlx::Error> = Box::new(|conn| {
            Box::pin(async move {
                let rows = sqlx::query("SELECT n FROM t ORDER BY n").fetch_all(&mut *conn).await?;
                rows.iter().map(|r| r.try_get::<i64, _>("n")).collect()
            })
        });
        let expected: Vec<i64> = (0..20).filter(|n| *n != 7 && *n != 13).chain(100..110).collect();
        assert_eq!(group.write(read).await.unwrap(), expected, "the failed writes left nothing");

        // A duplicate is the database's unique violation, as sqlx reports it.
        let again = group.write_direct(insert(0)).await.unwrap_err();
        assert!(matches!(&again, sqlx::Error::Database(e) if e.is_unique_violation()), "{again:?}");
        group.close().await;
        assert!(group.write_direct(insert(50)).await.is_err(), "closed");
    }

    /// A direct read sees every write answered before it was sent, whichever lane; sent
    /// together, the read that fails and the one that panics fail alone; after `close()` reads
    /// fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_direct_read_sees_what_was_answered_and_fails_alone() {
        let db = sqlite_db();
        let group = writer_on(&db.url, "CREATE TABLE t (n INTEGER NOT NULL)").await;
        let count = |fail: Option<bool>| -> Read<i64, sqlx::Error> {
            Box::new(move |conn| {
                let n = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).map_err(crate::db_error)?;
                match fail {
                    Some(true) => panic!("a bug in a direct read"),
                    Some(false) => Err(sqlx::Error::RowNotFound),
                    None => Ok(n),
                }
            })
        };
        for n in 1..=3 {
            let direct: Direct<(), sqlx::Error> =
                Box::new(|conn| conn.execute("INSERT INTO t (n) VALUES (1)", []).map(|_| ()).map_err(crate::db_error));
            group.write_direct(direct).await.unwrap();
            let pooled: Write<(), sqlx::Error> = Box::new(|conn| {
                Box::pin(async move { sqlx::query("INSERT INTO t (n) VALUES (2)").execute(conn).await.map(|_| ()) })
            });
            group.write(pooled).await.unwrap();
            assert_eq!(group.read_direct(count(None)).await.unwrap(), 2 * n, "both lanes' writes are seen");
        }
        let reads = futures::future::join_all((0..20).map(|i| {
            group.read_direct(count(match i {
                5 => Some(false),
                9 => Some(true),
                _ => None,
            }))
        }))
        .await;
        for (i, read) in reads.iter().enumerate() {
            match i {
                5 | 9 => assert!(read.is_err(), "read {i}: {read:?}"),
                _ => assert_eq!(read.as_ref().ok(), Some(&6), "read {i}: {read:?}"),
            }
        }
        assert_eq!(group.stats().writes, 6, "reads are not counted as writes");
        group.close().await;
        assert!(group.read_direct(count(None)).await.is_err(), "closed");
    }

    /// A write that panics halfway through its batch's transaction fails its caller; what it
    /// wrote is rolled back, and the writes after it commit on the same writer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_panics_fails_alone() {
        let db = sqlite_db();
        sqlx::any::install_default_drivers();
        let group = writer_on(&db.url, "CREATE TABLE t (n INTEGER NOT NULL); INSERT INTO t (n) VALUES (1)").await;

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
