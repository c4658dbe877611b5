//! Where the run path's writes go: on SQLite to the group writer (`nightshift-sqlite`), which
//! commits many runs' writes in one transaction; on Postgres, which locks rows, each in its own.
use nightshift_sqlite::{GroupCommitStats, GroupWriter};

use crate::error::StoreError;

/// One write of the run path, run inside a transaction it does not end.
pub(crate) type Write<T> = nightshift_sqlite::Write<T, StoreError>;

impl crate::Store {
    /// What SQLite's group writer has done (writes, commits); `None` on Postgres, which has none.
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        self.group.as_ref().map(GroupWriter::stats)
    }

    /// Runs `write` in a transaction: on SQLite in the group writer's next batch, on Postgres in
    /// a transaction of its own.
    pub(crate) async fn transaction<T: Send + 'static>(&self, write: Write<T>) -> Result<T, StoreError> {
        nightshift_sqlite::transaction(self.group.as_ref(), &self.pool, write).await
    }

    /// Runs `write`, whose statements are each safe alone (a fenced update): on SQLite in the
    /// group writer's next batch, on Postgres on one connection without a transaction.
    pub(crate) async fn statements<T: Send + 'static>(&self, write: Write<T>) -> Result<T, StoreError> {
        if let Some(group) = &self.group {
            return group.write(write).await;
        }
        let mut conn = self.pool.acquire().await?;
        write(&mut conn).await
    }
}
