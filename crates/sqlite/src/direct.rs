//! The group writer's own connection, on its own thread: writes whose statements SQLite runs
//! right there, without a hand-off per statement.
//!
//! sqlx runs each SQLite connection on a thread of its own, and every statement is a round trip
//! to it: sent over a channel, the connection's thread woken, the rows sent back one by one, the
//! caller woken. On the run path that was about 25 context switches per run, half of the
//! process's CPU (docs/benchmarks.md, session 16). The usual writes of the run path (a run's
//! start, its checkpoints, its end, its episode) are written for this connection instead: a
//! batch of them costs the writer one wake-up, whatever the number of statements. Their unusual
//! cases fall back to the pooled lane (sqlx), which says exactly what is wrong.
use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use sqlx::error::{DatabaseError, ErrorKind};

use nightshift_group_commit::{Answer, Counts, Pending};

/// One write on the writer's own connection, inside a transaction it does not end, with the
/// caller's error type. It may run twice (a batch whose other write failed is run again one
/// write at a time), so it must be a function of its inputs only.
pub type Direct<T, E> = Box<dyn Fn(&Connection) -> Result<T, E> + Send>;

/// One read on the writer's own connection, outside any write transaction. Runs once.
pub type Read<T, E> = Box<dyn FnOnce(&Connection) -> Result<T, E> + Send>;

/// The writer's own connection; `None` once the writer was closed.
pub(crate) type Shared = Arc<Mutex<Option<Connection>>>;

/// A direct write with its result.
pub(crate) trait DirectJob: Answer {
    /// Runs the write; true if it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
}

impl<T, E> DirectJob for Pending<Direct<T, E>, T, E>
where
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        // A write that panics (a bug) fails alone, like one that returns an error: the batch is
        // rolled back and the others run again without it. Nothing it saw outlives the unwind
        // but the connection, whose open transaction the rollback ends.
        let result = unwound("write", || (self.write)(conn));
        self.reply.keep(result)
    }
}

/// `job`'s result, or — if it panicked (a bug) — an error for its caller alone.
fn unwound<T, E: From<sqlx::Error>>(what: &str, job: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    std::panic::catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|_| {
        tracing::error!("group commit: a {what} panicked; it failed alone");
        Err(E::from(sqlx::Error::WorkerCrashed))
    })
}

/// The writer's own connection, with a transaction left open (by a batch that panicked) rolled
/// back; `None` once the writer was closed.
fn ready(conn: &Option<Connection>) -> Option<&Connection> {
    let conn = conn.as_ref()?;
    if !conn.is_autocommit() {
        tracing::warn!("group commit: a transaction was left open; rolling it back");
        rollback(conn);
    }
    Some(conn)
}

/// A read with its result (the read is taken when it runs).
pub(crate) trait ReadJob: Answer {
    /// Runs the read.
    fn run(&mut self, conn: &Connection);
}

impl<T, E> ReadJob for Pending<Option<Read<T, E>>, T, E>
where
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(read) = self.write.take() {
            self.reply.keep(unwound("read", || read(conn)));
        }
    }
}

/// Runs the batch's reads, each answered as soon as it has run, in one read transaction: one
/// snapshot, taken at the first read, after the writer's previous batch committed — so a read
/// sees every write answered before it was sent.
pub(crate) fn read(shared: &Shared, batch: Vec<Box<dyn ReadJob>>) {
    let guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(conn) = ready(&guard) else {
        for mut job in batch {
            job.fail(sqlx::Error::PoolClosed);
            job.answer();
        }
        return;
    };
    // A deferred BEGIN takes no lock until the first read, and only a read lock then. Without
    // it each statement would take and drop a snapshot of its own; the reads are still right.
    let together = batch.len() > 1 && exec(conn, "BEGIN").is_ok();
    for mut job in batch {
        job.run(conn);
        job.answer();
    }
    if together {
        rollback(conn); // it wrote nothing: ending it either way is the same
    }
}

/// Commits the batch's direct writes: together in one transaction, or — when one of them or the
/// commit failed — each in a transaction of its own.
pub(crate) fn commit(shared: &Shared, batch: &mut [Box<dyn DirectJob>], counts: &Counts) {
    // A batch that panicked poisoned the lock; the connection itself is checked below.
    let guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(conn) = ready(&guard) else {
        for job in batch.iter_mut() {
            job.fail(sqlx::Error::PoolClosed);
        }
        return;
    };
    if together(conn, batch) {
        counts.commit(1);
    } else {
        if batch.len() > 1 {
            counts.split();
        }
        counts.commit(one_by_one(conn, batch));
    }
}

/// Runs the batch in one transaction; false (rolled back) if a write or the commit failed.
fn together(conn: &Connection, batch: &mut [Box<dyn DirectJob>]) -> bool {
    if batch.len() == 1 {
        return false; // one_by_one is the same transaction without a second try
    }
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        tracing::warn!(error = %e, "group commit: BEGIN failed; writing one by one");
        return false;
    }
    for job in batch.iter_mut() {
        if !job.run(conn) {
            rollback(conn);
            return false;
        }
    }
    match exec(conn, "COMMIT") {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, writes = batch.len(), "group commit failed; writing one by one");
            rollback(conn);
            false
        }
    }
}

/// Runs each write in a transaction of its own; returns how many committed.
fn one_by_one(conn: &Connection, batch: &mut [Box<dyn DirectJob>]) -> u64 {
    let mut committed = 0;
    for job in batch.iter_mut() {
        if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
            job.fail(db_error(e));
            continue;
        }
        if !job.run(conn) {
            rollback(conn);
        } else if let Err(e) = exec(conn, "COMMIT") {
            job.fail(db_error(e));
            rollback(conn);
        } else {
            committed += 1;
        }
    }
    committed
}

/// Ends the open transaction, if any (SQLite may have rolled it back itself after an error).
fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = exec(conn, "ROLLBACK")
    {
        // The next batch finds the transaction still open and tries again.
        tracing::warn!(error = %e, "group commit: ROLLBACK failed");
    }
}

/// Binds `values` to the statement's numbered parameters `$1`, `$2`, … — sqlx's spelling, so
/// that both lanes share their SQL (to SQLite `$4` is a name, numbered by first appearance, so
/// binding by position would misplace values written out of order). A value whose number the
/// statement does not use is skipped; a parameter left without a value is an error.
pub fn bind_numbered(stmt: &mut rusqlite::Statement<'_>, values: &[&dyn rusqlite::ToSql]) -> rusqlite::Result<()> {
    // Each of the statement's parameters by its name's number: no name is written or searched
    // for (a statement of the run path binds up to eleven, ≈ 30 per run).
    for index in 1..=stmt.parameter_count() {
        let name = stmt.parameter_name(index).unwrap_or("?");
        let Some(value) =
            name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).and_then(|n| values.get(n.checked_sub(1)?))
        else {
            return Err(rusqlite::Error::InvalidParameterName(name.to_owned()));
        };
        stmt.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

fn exec(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// A rusqlite error as sqlx's database error: the stores keep one error type for their database
/// whichever lane a write took (and a unique violation is recognised the same way on both).
pub fn db_error(e: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::Database(Box::new(DirectError { message: e.to_string(), source: e }))
}

/// See [`db_error`].
#[derive(Debug)]
struct DirectError {
    message: String,
    source: rusqlite::Error,
}

impl std::fmt::Display for DirectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DirectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl DatabaseError for DirectError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.source.sqlite_error().map(|e| Cow::Owned(e.extended_code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.source.sqlite_error().map(|e| e.extended_code) {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => ErrorKind::UniqueViolation,
            Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => ErrorKind::ForeignKeyViolation,
            Some(ffi::SQLITE_CONSTRAINT_NOTNULL) => ErrorKind::NotNullViolation,
            Some(ffi::SQLITE_CONSTRAINT_CHECK) => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}
