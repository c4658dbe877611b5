//! A real ChromaDB server for tests: installed into a cached venv by `crates/memory/scripts/chroma-venv.sh`
//! (`$HOME/.cache/nightshift-test/venv-chromadb-<version>`), started on a free port with a
//! throw-away data directory, killed when the guard drops (also on panic).
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `chroma run`.
pub struct ChromaServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    dir: tempfile::TempDir,
}

impl ChromaServer {
    /// Installs (if needed) and starts ChromaDB; panics loudly if either fails.
    pub async fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../memory/scripts/chroma-venv.sh");
        let started = Instant::now();
        let out = Command::new("bash").arg(script).stderr(Stdio::inherit()).output().expect("run chroma-venv.sh");
        assert!(out.status.success(), "installing ChromaDB failed (scripts/chroma-venv.sh exited {})", out.status);
        let venv = String::from_utf8(out.stdout).expect("utf-8 path").trim().to_owned();
        eprintln!("chroma venv ready at {venv} in {:.1}s", started.elapsed().as_secs_f64());
        let port = crate::mcp::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("chroma.log")).expect("log file");
        let child = Command::new(format!("{venv}/bin/chroma"))
            .args(["run", "--host", "127.0.0.1", "--port", &port.to_string(), "--path"])
            .arg(dir.path().join("data"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn chroma run");
        let server = Self { child, url: format!("http://127.0.0.1:{port}"), dir };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if crate::http_ok(port, "/api/v2/heartbeat") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chroma did not become ready in 90s; log:\n{}",
                std::fs::read_to_string(server.dir.path().join("chroma.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("chroma ready at {} after {:.1}s", server.url, started.elapsed().as_secs_f64());
        server
    }
}

impl Drop for ChromaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
