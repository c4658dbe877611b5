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
    /// still copied back and starts again from its beginning while the writer keeps writing —
    /// the checkpoint sequence number in the log's header (bytes 12–15, big-endian) is what
    /// SQLite advances at each restart; a log that never started again would keep its first.
    /// How soon it starts again depends on how fast the disk copies against how fast the writer
    /// writes (a busy CI machine's disk took longer than eight times [`RESTART_AT`] of writes),
    /// so the callers keep writing until it has — at most 32 times [`RESTART_AT`] of frames.
    /// How long the log grows is a benchmark's matter (docs/benchmarks.md, session 19). After
    /// `close()` every row holds its last write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_copied_back_and_starts_again_while_the_writer_keeps_writing() {
        const ROWS: i64 = 16;
        const CALLERS: i64 = 8;
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
        let (writes, most) = (8 * RESTART_AT * 4096 / BLOB, 32 * RESTART_AT * 4096 / BLOB);
        let restarts = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let watch = {
            let (restarts, done, log) = (restarts.clone(), done.clone(), log.clone());
            tokio::spawn(async move {
                let mut first = None;
                while !done.load(Ordering::Relaxed) {
                    if let Some(seq) = checkpoint_sequence(&log) {
                        let first = *first.get_or_insert(seq);
                        restarts.store(u64::from(seq.wrapping_sub(first)), Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        // Callers each sending their next write as soon as the last is answered, until the log
        // has started again and `writes` are done; each returns the last it wrote.
        let callers = (0..CALLERS).map(|c| {
            let (group, restarts) = (group.clone(), restarts.clone());
            tokio::spawn(async move {
                let mut n = c;
                loop {
                    group.write_direct(update(n)).await.unwrap();
                    let next = n + CALLERS;
                    if next >= most || (next >= writes && restarts.load(Ordering::Relaxed) > 0) {
                        return n;
                    }
                    n = next;
                }
            })
        });
        let mut last = Vec::new();
        for caller in futures::future::join_all(callers).await {
            last.push(caller.unwrap());
        }
        done.store(true, Ordering::Relaxed);
        watch.await.unwrap();
        assert!(
            restarts.load(Ordering::Relaxed) > 0,
            "the log never started again in {} writes of {BLOB} bytes",
            last.iter().max().unwrap() + 1
        );
        group.close().await;
        let conn = Connection::open(&path).unwrap();
        let (rows, bytes): (i64, i64) =
            conn.query_row("SELECT count(*), sum(length(b)) FROM t", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!(rows, ROWS);
        // Caller c writes rows c and c + 8 in turn: its last two writes are each one's last.
        let expected: i64 = last.iter().map(|n| (BLOB + n) + (BLOB + n - CALLERS)).sum();
        assert_eq!(bytes, expected, "the last write of each row");
    }

    /// The checkpoint sequence number in the header of the log at `path`, once it has one.
    fn checkpoint_sequence(path: &str) -> Option<u32> {
        use std::io::Read;
        let mut header = [0u8; 16];
        std::fs::File::open(path).ok()?.read_exact(&mut header).ok()?;
        Some(u32::from_be_bytes([header[12], header[13], header[14], header[15]]))
    }
}
