//! A **real** small LLM for end-to-end tests: llama.cpp's `llama-server` with SmolLM2-135M-Instruct
//! (Q4_1), installed by `scripts/llm.sh` (idempotent, cached under `$NIGHTSHIFT_TEST_CACHE` or
//! ~/.cache/nightshift-test; the first install compiles llama.cpp, which `.ci/run` does up front).
//! The model has no native tool calling; it is driven through the structured-output mode, which
//! llama.cpp enforces with a grammar compiled from the JSON schema.
use std::path::Path;
use std::time::{Duration, Instant};

use crate::mcp::free_port;

/// A running `llama-server`, killed on drop.
pub struct LlamaServer {
    _child: crate::ChildGuard,
    /// OpenAI-compatible base URL (`http://127.0.0.1:PORT/v1`).
    pub base_url: String,
}

impl LlamaServer {
    /// Installs (if needed) and starts the server on a free port, waiting until `/health` is OK.
    /// One thread (`-t 1`): replies stay fast while other tests or builds load the cores.
    /// An install failure fails the test with the script's output: it never skips silently.
    pub fn start() -> Self {
        Self::start_with_threads(1)
    }

    /// [`LlamaServer::start`] with `threads` inference threads (the benchmark uses every core).
    pub fn start_with_threads(threads: u32) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/llm.sh");
        let started = Instant::now();
        let vars = crate::run_setup(&script, &["env"], "llama.cpp + SmolLM2");
        let get = |k: &str| vars.get(k).cloned().unwrap_or_else(|| panic!("scripts/llm.sh env did not print {k}"));
        let port = free_port();
        let child = std::process::Command::new(get("NIGHTSHIFT_LLAMA_SERVER"))
            .args(["-m", &get("NIGHTSHIFT_SMOLLM2_GGUF"), "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", "4096", "-t", &threads.to_string(), "--jinja"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot start llama-server");
        let child = crate::ChildGuard::ready(child, "llama-server", Duration::from_secs(60), || {
            crate::http_ok(port, "/health")
        });
        eprintln!("llama-server ready on {port} in {:.1?}", started.elapsed());
        Self { _child: child, base_url: format!("http://127.0.0.1:{port}/v1") }
    }
}
