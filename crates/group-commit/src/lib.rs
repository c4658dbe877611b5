//! Group commit: many callers' writes committed in one transaction, each caller answered after
//! that commit. The pieces every backend shares — a write as a closure over one connection
//! ([`Write`]), where its result waits for the commit ([`Reply`], [`Pending`]), what a batch does
//! with a write whatever its kind ([`Answer`], [`PooledJob`]), the counts ([`GroupCommitStats`])
//! — and the committers of a database that locks rows ([`Committers`], Postgres). SQLite's group
//! writer (`nightshift-sqlite`) is built on the same pieces.
//!
//! A write that fails does not fail the others: the batch is rolled back and each of its writes
//! runs again in a transaction of its own. A write is a closure that can run twice, and nothing
//! of a rolled-back batch was answered, so running it again is running it for the first time.
mod committers;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::AnyConnection;
use tokio::sync::oneshot;

pub use committers::{COMMITTERS, Committers};

/// A future borrowing the writer's connection.
pub type ConnFuture<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// One write: run against the connection inside a transaction it does not end, with the
/// caller's error type (any that a database error converts into).
pub type Write<T, E> = Box<dyn for<'c> Fn(&'c mut AnyConnection) -> ConnFuture<'c, T, E> + Send + Sync>;

/// Most writes committed in one transaction: bounds how long the first of them waits for the
/// last (each is a few statements of tens of microseconds).
pub const MAX_BATCH: usize = 64;

/// Writes waiting for a committer; callers wait for a place beyond this (back-pressure).
pub const QUEUE: usize = 4096;

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

/// The counts behind [`GroupCommitStats`], shared by a writer's tasks.
#[derive(Debug, Default)]
pub struct Counts {
    writes: AtomicU64,
    commits: AtomicU64,
    split_batches: AtomicU64,
}

impl Counts {
    /// `n` transactions committed.
    pub fn commit(&self, n: u64) {
        self.commits.fetch_add(n, Ordering::Relaxed);
    }

    /// A batch was rolled back and its writes ran one by one.
    pub fn split(&self) {
        self.split_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` writes answered.
    pub fn answered(&self, n: usize) {
        self.writes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            writes: self.writes.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            split_batches: self.split_batches.load(Ordering::Relaxed),
        }
    }
}

/// The writer stopped (its store is closing).
pub fn gone() -> sqlx::Error {
    sqlx::Error::PoolClosed
}

/// Where a write's result waits for its batch's commit, and the caller it goes to.
pub struct Reply<T, E> {
    /// The write's result, kept until the batch commits.
    pub result: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E: From<sqlx::Error>> Reply<T, E> {
    /// A reply and the receiver its caller waits on.
    pub fn new() -> (Self, oneshot::Receiver<Result<T, E>>) {
        let (reply, answer) = oneshot::channel();
        (Self { result: None, reply }, answer)
    }

    /// Replaces the result with an error (the commit failed, or no connection).
    pub fn fail(&mut self, error: sqlx::Error) {
        self.result = Some(Err(error.into()));
    }

    /// Sends the result to the caller (who may have gone).
    pub fn answer(self) {
        let result = self.result.unwrap_or_else(|| Err(gone().into()));
        // The caller may have hung up (its RPC was cancelled): the write stands regardless.
        let _ = self.reply.send(result);
    }

    /// Keeps the write's result; true if it succeeded.
    pub fn keep(&mut self, result: Result<T, E>) -> bool {
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }
}

/// A write of any kind (`W`: a [`Write`], or a backend's own) with where its result goes.
pub struct Pending<W, T, E> {
    /// The write.
    pub write: W,
    /// Where its result goes.
    pub reply: Reply<T, E>,
}

/// What a batch does with a write whatever its kind, type-erased so one batch holds every kind.
pub trait Answer: Send {
    /// Replaces the result with an error (the commit failed, or no connection).
    fn fail(&mut self, error: sqlx::Error);
    /// Sends the result to the caller (who may have gone).
    fn answer(self: Box<Self>);
}

impl<W: Send, T: Send, E: From<sqlx::Error> + Send> Answer for Pending<W, T, E> {
    fn fail(&mut self, error: sqlx::Error) {
        self.reply.fail(error);
    }

    fn answer(self: Box<Self>) {
        self.reply.answer();
    }
}

/// Fails every write of a batch that found no connection to run on.
pub fn fail_all<J: Answer + ?Sized>(batch: &mut [Box<J>], error: &sqlx::Error) {
    tracing::error!(error = %error, writes = batch.len(), "group commit: no database connection; the batch failed");
    for job in batch {
        job.fail(sqlx::Error::PoolTimedOut);
    }
}

/// Answers every write of a batch that is done (committed, refused or failed), counted.
pub fn answer_all<J: Answer + ?Sized>(batch: Vec<Box<J>>, counts: &Counts) {
    counts.answered(batch.len());
    for job in batch {
        job.answer();
    }
}

/// A [`Write`] with its result.
pub trait PooledJob: Answer {
    /// Runs the write; true if it succeeded.
    fn run<'a>(&'a mut self, conn: &'a mut AnyConnection) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

impl<T, E> PooledJob for Pending<Write<T, E>, T, E>
where
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    fn run<'a>(&'a mut self, conn: &'a mut AnyConnection) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let result = (self.write)(conn).await;
            self.reply.keep(result)
        })
    }
}

/// `write` as a [`PooledJob`], and the receiver its caller waits on.
pub fn pooled<T, E>(write: Write<T, E>) -> (Box<dyn PooledJob>, oneshot::Receiver<Result<T, E>>)
where
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    let (reply, answer) = Reply::new();
    (Box::new(Pending { write, reply }), answer)
}
