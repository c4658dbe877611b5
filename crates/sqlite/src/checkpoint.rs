//! The write-ahead log's checkpoints, on a thread of their own.
//!
//! In WAL mode SQLite copies the log back into the database file (a checkpoint) at the end of
//! the commit that finds the log over 1,000 pages, on the committing connection. For the group
//! writer that was its own thread: it copied megabytes and waited for the disk (`synchronous =
//! NORMAL` syncs the log and then the file at each checkpoint) while every caller's next write
//! queued behind it — a tenth of the writers' CPU in `fsync` alone, and a stall for every run in
//! flight (docs/benchmarks.md, session 19). The writer's own connection does not checkpoint
//! (`wal_autocheckpoint = 0`, set by [`open`](crate::open)); this thread does, on a connection
//! of its own, shortly after the writer commits: a passive checkpoint, which waits for no reader
//! or writer and which none waits for.
//!
//! The log starts again from its beginning only when a write begins with every frame of it
//! copied. A writer that commits every millisecond or two would always find the last few
//! frames uncopied, and the log would grow without end; so once it is [`RESTART_AT`] frames
//! long, the thread copies the last frames while holding the writer's connection (the writer
//! waits for those few frames only), and the writer's next transaction starts the log afresh.
//! Other connections on the file (the pool's) keep SQLite's automatic checkpoints.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use rusqlite::Connection;

use crate::direct::Shared;

/// How long the thread waits after a commit nudged it: the commits in between are copied in one
/// checkpoint, and a page that many of them wrote is copied once.
const GATHER: Duration = Duration::from_millis(50);

/// A log this long (frames of one page, 4 KiB: 32 MiB) is copied to its end with the writer
/// held, so that it starts again from its beginning (see the module's documentation).
const RESTART_AT: i64 = 8192;

/// The checkpointing thread, as the group writer sees it.
pub(crate) struct Checkpoints {
    thread: Thread,
    stop: Arc<AtomicBool>,
    joined: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpoints {
    /// Starts the thread, named `name`, on a connection of its own to the file at `path` (that of
    /// the writer's connection `own`).
    pub(crate) fn start(path: &str, own: &Shared, name: &str) -> std::io::Result<Self> {
        let conn = Connection::open(path).map_err(std::io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (own, halt) = (own.clone(), stop.clone());
        let handle = std::thread::Builder::new().name(name.into()).spawn(move || run(&conn, &own, &halt))?;
        Ok(Self { thread: handle.thread().clone(), stop, joined: Mutex::new(Some(handle)) })
    }

    /// Says that the writer committed: a checkpoint follows within [`GATHER`].
    pub(crate) fn nudge(&self) {
        self.thread.unpark();
    }

    /// Ends the thread (after the checkpoint it may be running); its connection is closed when
    /// the returned handle is joined.
    pub(crate) fn stop(&self) -> Option<JoinHandle<()>> {
        self.stop.store(true, Ordering::Release);
        self.thread.unpark();
        self.joined.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

fn run(conn: &Connection, own: &Shared, stop: &AtomicBool) {
    loop {
        std::thread::park();
        if stop.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(GATHER);
        let Some(log) = checkpoint(conn) else { continue };
        if log >= RESTART_AT {
            // The writer's transaction open during the checkpoint began before the log was all
            // copied, so its commit went on at the log's end: copy what it added (if anything)
            // with the writer held, and its next transaction begins with the log all copied.
            let writer = own.lock().unwrap_or_else(PoisonError::into_inner);
            if writer.is_none() {
                return; // closed
            }
            checkpoint(conn);
        }
    }
}

/// A passive checkpoint; the log's length, in frames.
fn checkpoint(conn: &Connection) -> Option<i64> {
    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| Ok((row.get::<_, i64>(0)?, row.get(1)?)));
    match done {
        Ok((0, log)) => Some(log),
        // Another connection's automatic checkpoint was running: it copies what this one would.
        Ok(_busy) => None,
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint failed; the log keeps growing until one succeeds");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
    use std::sync::atomic::AtomicU64;

    use nightshift_testkit::sqlite_db;

    use super::*;
    use crate::Direct;
    use crate::group_writer::tests::writer_on;

    /// The writer's connection does not checkpoint, and it commits without pause: the log is
    /// still copied back and starts again, so it stays far shorter than what was written
    /// through it (eight times [`RESTART_AT`]); it would hold all of it if nothing copied it or
    /// if it never started again. How much shorter depends on how fast the disk copies against
    /// how fast the writer writes, hence the wide margin: half. After `close()` every write is
    /// in the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_copied_back_and_starts_again_while_the_writer_keeps_writing() {
        const ROWS: i64 = 16;
        const BLOB: i64 = 64 * 1024;
        let db = sqlite_db();
        let group = writer_on(&db.url, "CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL)").await;
        let path = db.url.trim_start_matches("sqlite://").to_owned();
        let log = format!("{path}-wal");
        let update = |n: i64| -> Direct<(), sqlx::Error> {
            Box::new(move |conn| {
                let sql = "INSERT INTO t (id, b) VALUES (?1, zeroblob(?2)) \
                           ON CONFLICT (id) DO UPDATE SET b = excluded.b";
                conn.execute(sql, [n % ROWS, BLOB + n]).map(|_| ()).map_err(crate::db_error)
            })
        };
        // Each write puts about BLOB / 4 KiB frames in the log.
        let writes = 8 * RESTART_AT * 4096 / BLOB;
        let longest = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let watch = {
            let (longest, done, log) = (longest.clone(), done.clone(), log.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                    longest.fetch_max(len, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        // Eight callers, each sending its next write as soon as the last is answered.
        let callers = (0..8).map(|c| {
            let group = group.clone();
            tokio::spawn(async move {
                for n in (c..writes).step_by(8) {
                    group.write_direct(update(n)).await.unwrap();
                }
            })
        });
        for caller in futures::future::join_all(callers).await {
            caller.unwrap();
        }
        done.store(true, Ordering::Relaxed);
        watch.await.unwrap();
        let written = u64::try_from(writes * BLOB).unwrap();
        let longest = longest.load(Ordering::Relaxed);
        assert!(longest > 0, "the log was watched");
        assert!(
            longest < written / 2,
            "the log grew to {longest} bytes of the {written} written through it: it did not start again"
        );
        group.close().await;
        let conn = Connection::open(&path).unwrap();
        let (rows, bytes): (i64, i64) =
            conn.query_row("SELECT count(*), sum(length(b)) FROM t", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!(rows, ROWS);
        assert_eq!(bytes, (writes - ROWS..writes).map(|n| BLOB + n).sum::<i64>(), "the last write of each row");
    }
}
