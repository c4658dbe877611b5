//! Group commit on a database that locks rows (Postgres).
//!
//! Each of the run path's writes (StartRun, Checkpoint, Heartbeat, FinishRun, the memory
//! service's episodes) in a transaction of its own cost Postgres a `BEGIN`, a `COMMIT` and a
//! flush of its write-ahead log, each a round trip, for a few statements of work: about six
//! transactions and 2.5 ms of Postgres' CPU per run (docs/benchmarks.md). Here a few committer
//! tasks, each on a connection of the pool, take every write queued while they were busy and
//! commit them in one transaction. Row locks let several batches proceed side by side, so there
//! are [`COMMITTERS`] of them, not one; and a lone write finds a committer idle and commits at
//! once (no timer).
//!
//! Two batches that lock the same rows in opposite orders deadlock; Postgres detects it (after
//! `deadlock_timeout`, 1 s by default) and fails one transaction, whose batch then runs one
//! write at a time like any batch with a failed write. A run's writes are sent one after the
//! other, so two batches touch the same run's rows only for two runs of one agent in flight at
//! once (an overlap policy's case), and rarely then.
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Connection};
use tokio::sync::{Mutex, mpsc};

use crate::{Counts, GroupCommitStats, MAX_BATCH, PooledJob, QUEUE, Write, answer_all, fail_all, gone, pooled};

/// Batches committing at once: enough that a batch's round trips do not hold every write
/// behind them, few enough that batches stay large under load (each is one commit). Measured
/// (docs/benchmarks.md, session 21): two against four cut the transactions per run by a fifth
/// and the CPU per run by about a tenth at 1,000 agents, and a run waited no longer at 300;
/// one cut the transactions further but completed no more runs than two.
pub const COMMITTERS: usize = 2;

/// The handle a store's clones share; the committers end when the last one is dropped.
#[derive(Clone)]
pub struct Committers {
    queue: mpsc::Sender<Box<dyn PooledJob>>,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for Committers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committers").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Committers {
    /// Starts [`COMMITTERS`] tasks committing on `pool`'s connections (one each while a batch
    /// commits). Must be called within a Tokio runtime.
    pub fn start(pool: AnyPool) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let (rx, counts) = (Arc::new(Mutex::new(rx)), Arc::new(Counts::default()));
        for _ in 0..COMMITTERS {
            tokio::spawn(committer(pool.clone(), rx.clone(), counts.clone()));
        }
        Self { queue, counts }
    }

    /// The counts so far.
    pub fn stats(&self) -> GroupCommitStats {
        self.counts.stats()
    }

    /// Runs `write` in the next batch and returns its result once the batch committed.
    pub async fn write<T, E>(&self, write: Write<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        let (job, answer) = pooled(write);
        self.queue.send(job).await.map_err(|_| E::from(gone()))?;
        answer.await.map_err(|_| E::from(gone()))?
    }
}

/// Takes the writes queued while it was busy (at most [`MAX_BATCH`]) and commits them, until
/// every handle is gone.
async fn committer(pool: AnyPool, queue: Arc<Mutex<mpsc::Receiver<Box<dyn PooledJob>>>>, counts: Arc<Counts>) {
    loop {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // The lock is held only while waiting: the next committer waits for it meanwhile.
        if queue.lock().await.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        // A task of its own: a write that panics fails its batch (its callers get an error), not
        // the committer. The transaction it left open is rolled back when sqlx's handle drops.
        if let Err(e) = tokio::spawn(commit(pool.clone(), batch, counts.clone())).await {
            tracing::error!(error = %e, "group commit: a batch panicked; its writes failed");
        }
    }
}

/// Commits one batch and answers its writes.
async fn commit(pool: AnyPool, mut batch: Vec<Box<dyn PooledJob>>, counts: Arc<Counts>) {
    match pool.acquire().await {
        Ok(mut conn) => {
            if together(&mut conn, &mut batch).await {
                counts.commit(1);
            } else {
                if batch.len() > 1 {
                    counts.split();
                }
                counts.commit(one_by_one(&mut conn, &mut batch).await);
            }
        }
        Err(e) => fail_all(&mut batch, &e),
    }
    answer_all(batch, &counts);
}

/// Runs the batch in one transaction; false (rolled back) if a write or the commit failed.
async fn together(conn: &mut PoolConnection<Any>, batch: &mut [Box<dyn PooledJob>]) -> bool {
    if batch.len() == 1 {
        return false; // one_by_one is the same transaction without a second try
    }
    let mut tx = match conn.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            tracing::warn!(error = %e, "group commit: BEGIN failed; writing one by one");
            return false;
        }
    };
    for job in batch.iter_mut() {
        if !job.run(&mut tx).await {
            rollback(tx.rollback().await);
            return false;
        }
    }
    match tx.commit().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, writes = batch.len(), "group commit failed; writing one by one");
            false
        }
    }
}

/// Runs each write in a transaction of its own; returns how many committed.
async fn one_by_one(conn: &mut PoolConnection<Any>, batch: &mut [Box<dyn PooledJob>]) -> u64 {
    let mut committed = 0;
    for job in batch.iter_mut() {
        let mut tx = match conn.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                job.fail(e);
                continue;
            }
        };
        if !job.run(&mut tx).await {
            rollback(tx.rollback().await);
        } else if let Err(e) = tx.commit().await {
            job.fail(e);
        } else {
            committed += 1;
        }
    }
    committed
}

/// A failed ROLLBACK leaves the connection to sqlx (it is closed, not reused, when broken).
fn rollback(result: Result<(), sqlx::Error>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "group commit: ROLLBACK failed");
    }
}
