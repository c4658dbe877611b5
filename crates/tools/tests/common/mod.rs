//! Helpers shared by the integration tests: installing the real MCP servers and starting the
//! streamable-HTTP fixture.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nightshift_core::{ConfigValue, McpServer, McpTransport};

pub use nightshift_testkit::mcp::{HttpFixture, free_port, servers};

/// The npm filesystem server over stdio, allowed to see `dir`.
pub fn fs_server(name: &str, dir: &Path) -> McpServer {
    let s = servers();
    McpServer {
        name: name.into(),
        transport: McpTransport::Stdio {
            command: s.node.clone(),
            args: vec![s.fs_server_js.clone(), dir.display().to_string()],
            env: BTreeMap::new(),
        },
        call_timeout: Duration::from_secs(20),
    }
}

/// `mcp-server-time` over stdio.
pub fn time_server(name: &str) -> McpServer {
    McpServer {
        name: name.into(),
        transport: McpTransport::Stdio {
            command: servers().time_server.clone(),
            args: vec!["--local-timezone".into(), "UTC".into()],
            env: BTreeMap::from([("PYTHONUNBUFFERED".to_owned(), ConfigValue::Literal("1".into()))]),
        },
        call_timeout: Duration::from_secs(20),
    }
}

/// An MCP server spec pointing at the HTTP fixture.
pub fn http_spec(
    fixture: &HttpFixture,
    name: &str,
    headers: BTreeMap<String, ConfigValue>,
    call_timeout: Duration,
) -> McpServer {
    McpServer { name: name.into(), transport: McpTransport::Http { url: fixture.url.clone(), headers }, call_timeout }
}

/// Whether process `pid` still exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
    }
}

/// Polls `cond` every 50 ms for up to `limit`.
pub async fn wait_for<F: FnMut() -> bool>(limit: Duration, mut cond: F) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}
