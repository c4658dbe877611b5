//! Where the run path's writes go: to the store's [`Writer`](nightshift_sqlite::Writer), which
//! commits many runs' writes in one transaction — on SQLite the group writer (one write lock per
//! file), on Postgres a few committers side by side (rows are locked).
use nightshift_sqlite::GroupCommitStats;

use crate::error::StoreError;

/// One write of the run path, run inside a transaction it does not end.
pub(crate) type Write<T> = nightshift_sqlite::Write<T, StoreError>;

impl crate::Store {
    /// What the run path's writer has done (writes, commits, batches split).
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.writer.stats()
    }

    /// Runs `write` in the writer's next batch, in one transaction with the other writes queued
    /// meanwhile, and returns its result once that committed.
    pub(crate) async fn transaction<T: Send + 'static>(&self, write: Write<T>) -> Result<T, StoreError> {
        self.writer.write(write).await
    }
}
