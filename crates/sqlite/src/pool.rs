//! How a pool on a SQLite file of this process is set up (the run store's and the memory store's).
use sqlx::any::AnyPoolOptions;

/// `options` for a SQLite file that this process's tasks share: no liveness ping before each
/// acquire, and on every new connection WAL, a busy timeout, `synchronous = NORMAL`, then the
/// caller's own `pragmas` (e.g. `PRAGMA foreign_keys = ON`).
pub fn configure(options: AnyPoolOptions, pragmas: &'static [&'static str]) -> AnyPoolOptions {
    options
        // A pool connection is a handle on a file in this process: the "is it alive" ping before
        // each acquire found nothing ever, and cost a round trip to the connection's thread
        // (4.7 % of `nightshift dev`'s CPU at 400 agents, docs/benchmarks.md).
        .test_before_acquire(false)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                // WAL lets readers proceed during a write; the busy timeout makes a writer wait for
                // the lock (held by another connection, another process or a migration) instead of
                // failing with SQLITE_BUSY. `synchronous = NORMAL` syncs the log at checkpoints
                // rather than at every commit: a commit survives the process crashing; the last
                // ones may not survive a power loss.
                for pragma in
                    ["PRAGMA journal_mode = WAL", "PRAGMA busy_timeout = 30000", "PRAGMA synchronous = NORMAL"]
                        .iter()
                        .chain(pragmas)
                {
                    sqlx::query(*pragma).execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
}
