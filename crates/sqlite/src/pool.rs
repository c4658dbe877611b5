//! How a pool on a SQLite file of this process is set up (the run store's and the memory store's),
//! and the group writer's own connection on the same file.
use std::str::FromStr;

use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::SqliteConnectOptions;

use crate::direct::db_error;

/// Every connection's settings, before the caller's own (see [`configure`]).
const SETTINGS: [&str; 3] = ["PRAGMA journal_mode = WAL", "PRAGMA busy_timeout = 30000", "PRAGMA synchronous = NORMAL"];

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
                for pragma in SETTINGS.iter().chain(pragmas) {
                    sqlx::query(*pragma).execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
}

/// The group writer's own connection on the file of `url` (`sqlite://PATH?…`, a file the pool
/// has created and migrated), set up as [`configure`] sets up the pool's, with the caller's
/// `pragmas` after, and without automatic checkpoints: the group writer's checkpointing thread
/// does them (`checkpoint.rs`). A database in memory is refused: each connection would see its
/// own.
pub fn open(url: &str, pragmas: &[&str]) -> Result<rusqlite::Connection, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?;
    let file = options.get_filename();
    if file.as_os_str().is_empty() || file.as_os_str() == ":memory:" {
        return Err(sqlx::Error::Configuration(
            format!("'{url}' is a database in memory; the SQLite store needs a file").into(),
        ));
    }
    let conn = rusqlite::Connection::open(file).map_err(db_error)?;
    // Without the query planner's stability guarantee SQLite plans a statement with `LIMIT $n`
    // for the value bound to `$n`, so every new binding re-prepared it (the memory service's
    // recall, each run: parsing and planning were a twentieth of its writer's CPU). The plans of
    // this connection's statements do not depend on their values.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(db_error)?;
    for pragma in SETTINGS.iter().chain(pragmas).chain(&["PRAGMA wal_autocheckpoint = 0"]) {
        // `journal_mode` and `wal_autocheckpoint` answer with a row; the others with none.
        conn.query_row(pragma, [], |_| Ok(())).or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(()),
            e => Err(db_error(e)),
        })?;
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
    use rusqlite::StatementStatus;

    /// A statement with `LIMIT $1` on the writer's connection is prepared once, however often
    /// `$1` is bound again (each run's recall binds its limit anew).
    #[test]
    fn a_new_limit_does_not_prepare_the_statement_again() {
        let db = nightshift_testkit::sqlite_db();
        let conn = super::open(&format!("{}?mode=rwc", db.url), &[]).unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1), (2), (3);").unwrap();
        let sql = "SELECT n FROM t ORDER BY n DESC LIMIT $1";
        for limit in [1i64, 2, 3, 2] {
            let mut stmt = conn.prepare_cached(sql).unwrap();
            let got: Vec<i64> = stmt.query_map([limit], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
            assert_eq!(got.len() as i64, limit);
            assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "prepared again for LIMIT {limit}");
        }
    }
}
