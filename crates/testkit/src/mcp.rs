//! The real third-party MCP servers tests use, installed by `mcp/setup.sh` (idempotent, cached
//! under `$NIGHTSHIFT_TEST_CACHE` or ~/.cache/nightshift-test, flock-serialised across test
//! binaries), and the streamable-HTTP fixture `mcp/http_server.py` (official Python SDK).
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// Paths of the installed third-party MCP servers.
#[derive(Debug)]
pub struct Servers {
    /// The `node` executable.
    pub node: String,
    /// `@modelcontextprotocol/server-filesystem`'s entry script (stdio).
    pub fs_server_js: String,
    /// The `mcp-server-time` executable (stdio).
    pub time_server: String,
    /// The Python with the `mcp` SDK, for the streamable-HTTP fixture.
    pub mcp_python: String,
}

/// Runs `mcp/setup.sh` once per test binary (it is idempotent and cached under
/// ~/.cache/nightshift-test, and flock-serialised across binaries). An install failure fails the
/// test with the script's output: these tests never skip silently.
pub fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp/setup.sh");
        let vars = crate::run_setup(&script, &[], "the MCP test servers");
        let get = |k: &str| vars.get(k).cloned().unwrap_or_else(|| panic!("setup.sh did not print {k}"));
        Servers {
            node: get("NODE"),
            fs_server_js: get("FS_SERVER_JS"),
            time_server: get("TIME_SERVER"),
            mcp_python: get("MCP_PYTHON"),
        }
    })
}

/// A free port on 127.0.0.1 (bound and released; the fixture binds it right after).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The python streamable-HTTP MCP server of tests/fixtures, killed on drop.
pub struct HttpFixture {
    _child: crate::ChildGuard,
    /// Its endpoint (`http://127.0.0.1:PORT/mcp`).
    pub url: String,
}

impl HttpFixture {
    /// Starts it on a free loopback port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// [`HttpFixture::start`] with the `journal` tool writing to `journal`.
    pub fn with_journal(journal: &Path) -> Self {
        Self::start_with(Some(journal))
    }

    fn start_with(journal: Option<&Path>) -> Self {
        let port = free_port();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mcp/http_server.py");
        let child = std::process::Command::new(&servers().mcp_python)
            .arg(&script)
            .arg(port.to_string())
            .args(journal)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("cannot start the python MCP HTTP fixture");
        let child = crate::ChildGuard::ready(child, "the python MCP HTTP fixture", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self { _child: child, url: format!("http://127.0.0.1:{port}/mcp") }
    }
}
