//! How a store commits its run path's writes, whichever database it is on: SQLite's group
//! writer (one write lock per file: one writer takes every write) or, on Postgres, which locks
//! rows, a few committers side by side (`nightshift-group-commit`). Both commit many callers'
//! writes in one transaction.
use nightshift_group_commit::{Committers, GroupCommitStats, Write};

use crate::GroupWriter;

/// The committer of a store's run-path writes, by backend.
#[derive(Debug, Clone)]
pub enum Writer {
    /// SQLite: the group writer of the store's file.
    Sqlite(GroupWriter),
    /// Postgres: committers on the store's pool.
    Postgres(Committers),
}

impl Writer {
    /// SQLite's group writer (its own connection's direct writes and reads); `None` on Postgres.
    pub fn group(&self) -> Option<&GroupWriter> {
        match self {
            Self::Sqlite(group) => Some(group),
            Self::Postgres(_) => None,
        }
    }

    /// Runs `write` in the next batch's transaction and returns its result once that committed.
    pub async fn write<T, E>(&self, write: Write<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        match self {
            Self::Sqlite(group) => group.write(write).await,
            Self::Postgres(committers) => committers.write(write).await,
        }
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> GroupCommitStats {
        match self {
            Self::Sqlite(group) => group.stats(),
            Self::Postgres(committers) => committers.stats(),
        }
    }

    /// Closes SQLite's writer (see [`GroupWriter::close`]); Postgres' committers write on the
    /// store's pool, closed with it.
    pub async fn close(&self) {
        if let Self::Sqlite(group) = self {
            group.close().await;
        }
    }
}
