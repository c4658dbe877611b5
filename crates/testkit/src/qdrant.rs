//! A real Qdrant server for tests: the Qdrant 1.19 binary built from Qdrant's public source that
//! the machine provides (`NIGHTSHIFT_QDRANT_BIN`, else `shared/bin/qdrant` beside the checkout,
//! else `/work/shared/bin/qdrant`), started on free ports in a throw-away directory and killed
//! when the guard drops. A missing binary fails the test: the suite never skips Qdrant.
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running Qdrant.
pub struct QdrantServer {
    _child: crate::ChildGuard,
    /// REST base URL `http://127.0.0.1:PORT`.
    pub url: String,
    /// gRPC URL `http://127.0.0.1:PORT` (what `QdrantIndex::connect` takes).
    pub grpc_url: String,
    /// The same endpoint as a memory `vector.url`: `qdrant://127.0.0.1:PORT` (add `/COLLECTION`).
    pub vector_url: String,
    _dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    let candidates = [
        std::env::var_os("NIGHTSHIFT_QDRANT_BIN").map(PathBuf::from),
        Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/bin/qdrant"))),
        Some(PathBuf::from("/work/shared/bin/qdrant")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("no Qdrant binary: set NIGHTSHIFT_QDRANT_BIN (the machine's shared/bin/qdrant); the Qdrant tests do not skip")
    })
}

impl QdrantServer {
    /// Starts Qdrant (REST and gRPC on free ports, storage in a temporary directory, telemetry
    /// off) and waits until `/readyz` answers and the gRPC port accepts connections.
    pub fn start() -> Self {
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("tempdir");
        let (http, grpc) = (crate::mcp::free_port(), crate::mcp::free_port());
        let log = std::fs::File::create(dir.path().join("qdrant.log")).expect("log file");
        let child = Command::new(binary())
            // It writes `snapshots/` and `.qdrant-initialized` into its working directory.
            .current_dir(dir.path())
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", http.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", grpc.to_string())
            .env("QDRANT__STORAGE__STORAGE_PATH", dir.path().join("storage"))
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("cannot start qdrant");
        // The gRPC listener starts on its own thread: wait for it too, not only for REST.
        let child = crate::ChildGuard::ready(child, "qdrant", Duration::from_secs(30), || {
            crate::http_ok(http, "/readyz") && std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok()
        });
        eprintln!("qdrant ready on {http} (gRPC {grpc}) in {:.1?}", started.elapsed());
        Self {
            _child: child,
            url: format!("http://127.0.0.1:{http}"),
            grpc_url: format!("http://127.0.0.1:{grpc}"),
            vector_url: format!("qdrant://127.0.0.1:{grpc}"),
            _dir: dir,
        }
    }
}
