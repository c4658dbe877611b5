//! Test-only helpers shared by the crates' integration tests.
//!
//! Tests talk to real servers. Postgres is expected on `NIGHTSHIFT_TEST_POSTGRES`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`); each call to [`postgres_url`]
//! creates a fresh database named `ns_test_*`, so tests never depend on a clean server and may
//! run in parallel. `.ci/run` drops leftover `ns_test_*` databases before a run. Redis and NATS
//! are at [`redis_url`] and [`nats_url`] (`NIGHTSHIFT_TEST_REDIS`, `NIGHTSHIFT_TEST_NATS`), the
//! 3-master Redis Cluster that `scripts/services.sh` starts at [`redis_cluster_url`]
//! (`NIGHTSHIFT_TEST_REDIS_CLUSTER`); tests isolate themselves there with unique key prefixes and
//! stream names, and remove their keys with [`redis_delete_prefix`].

// Test support: a fixture that cannot start must fail the test loudly, and the fixtures print
// their progress for the test log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use sqlx::{Connection, Executor, PgConnection};

/// Admin URL of the test Postgres server.
pub fn postgres_admin_url() -> String {
    std::env::var("NIGHTSHIFT_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The test Redis server: `NIGHTSHIFT_TEST_REDIS`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("NIGHTSHIFT_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The test Redis Cluster (3 masters, `scripts/services.sh`): `NIGHTSHIFT_TEST_REDIS_CLUSTER`,
/// default `redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003`.
pub fn redis_cluster_url() -> String {
    std::env::var("NIGHTSHIFT_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".into())
}

/// Deletes every key of the hash tag `{prefix}` (`{prefix}:…`, the layout of every Nightshift
/// Redis backend) on the server or cluster at `url`. On a cluster `KEYS` asks every master, and
/// the keys of one tag share one slot, so one `DEL` removes them.
pub async fn redis_delete_prefix(url: &str, prefix: &str) {
    let connector = nightshift_redis::Connector::open(url).expect("redis url");
    let mut conn = connector
        .connection(nightshift_redis::Timeouts::COMMANDS)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is required for this test (scripts/services.sh starts it): {e}"));
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{{{prefix}}}*")).query_async(&mut conn).await.expect("KEYS");
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await.expect("DEL");
    }
}

/// The test NATS server (with JetStream): `NIGHTSHIFT_TEST_NATS`, default `nats://127.0.0.1:4222`.
pub fn nats_url() -> String {
    std::env::var("NIGHTSHIFT_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Creates a fresh, uniquely named database and returns its URL.
///
/// Panics with a clear message if Postgres is unreachable: these tests need the real server.
pub async fn postgres_url() -> String {
    let admin = postgres_admin_url();
    let mut conn = PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("Postgres at {admin} is required for this test (start it as in README.md): {e}"));
    let name = format!("ns_test_{}", uuid::Uuid::new_v4().simple());
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin);
    format!("{base}/{name}")
}

/// A SQLite database file in a temporary directory (deleted when the guard drops).
pub struct SqliteDb {
    /// `sqlite://...` URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

/// Creates a SQLite database URL in a fresh temporary directory.
pub fn sqlite_db() -> SqliteDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("nightshift.db").display());
    SqliteDb { url, _dir: dir }
}

/// Both backends a store test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// Embedded SQLite file.
    Sqlite,
    /// The Postgres test server.
    Postgres,
}

/// A database of the given kind; keep the returned guard alive for the test's duration.
pub async fn database(kind: Db) -> (String, Option<SqliteDb>) {
    match kind {
        Db::Sqlite => {
            let db = sqlite_db();
            (db.url.clone(), Some(db))
        }
        Db::Postgres => (postgres_url().await, None),
    }
}
pub mod chroma;
pub mod llama;
pub mod llm;
pub mod mcp;
pub mod otel;
pub mod pgvector;
pub mod qdrant;
pub mod tls;
pub mod webhook;

/// `GET path` on 127.0.0.1:`port` answers 200 (a readiness probe; plain HTTP/1.1, 2 s timeout).
pub(crate) fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Deletes a JetStream stream a test created on the test NATS server (its work queue or event
/// log), so test runs do not pile streams up on the server. Failures are only
/// reported: a leftover stream harms nothing but disk.
pub async fn delete_nats_stream(name: &str) {
    match async_nats::connect(nats_url()).await {
        Ok(client) => {
            if let Err(e) = async_nats::jetstream::new(client).delete_stream(name).await {
                eprintln!("cleanup: deleting NATS stream {name}: {e}");
            }
        }
        Err(e) => eprintln!("cleanup: connecting to NATS to delete stream {name}: {e}"),
    }
}

/// A server process a test fixture started: killed and reaped on drop (also on panic).
pub(crate) struct ChildGuard(std::process::Child);

impl ChildGuard {
    /// Waits until `ready` holds, polling every 100 ms; panics if the process exits first or
    /// `timeout` passes (these fixtures never let a test skip silently).
    pub(crate) fn ready(
        child: std::process::Child,
        what: &str,
        timeout: std::time::Duration,
        ready: impl Fn() -> bool,
    ) -> Self {
        let mut guard = Self(child);
        let deadline = std::time::Instant::now() + timeout;
        while !ready() {
            if let Ok(Some(status)) = guard.0.try_wait() {
                panic!("{what} exited early: {status}");
            }
            assert!(std::time::Instant::now() < deadline, "{what} was not ready within {timeout:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        guard
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs an install script (`bash SCRIPT ARGS…`, idempotent and cached) and returns the
/// `KEY=VALUE` lines it prints. A failure fails the test with the script's output: tests that
/// need a real server never skip silently.
pub(crate) fn run_setup(
    script: &std::path::Path,
    args: &[&str],
    what: &str,
) -> std::collections::BTreeMap<String, String> {
    let started = std::time::Instant::now();
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "installing {what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{what} ready in {:.1?}", started.elapsed());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// Generates, for each listed `async fn name(kind: Db)`, one `#[tokio::test]` per backend in the
/// modules `sqlite` and `postgres`, so that a suite runs against both databases.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name($crate::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name($crate::Db::Postgres).await })*
        }
    };
}
