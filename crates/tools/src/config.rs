//! Worker-level settings of the tools (the agent spec says *which* tools; this says how far they
//! may reach on this worker).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of a worker's tools. Serialisable so a worker can embed it in its TOML configuration
/// (durations as humantime text, e.g. `"30s"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolsConfig {
    /// Directory `read_file` and `list_dir` are confined to. `None`: both refuse every call.
    pub file_root: Option<PathBuf>,
    /// Most bytes `read_file` returns from one file.
    pub read_max_bytes: u64,
    /// Most entries `list_dir` returns.
    pub list_max_entries: usize,
    /// What `http_get` may fetch. An entry is a host (`example.com`; `*.example.com` also matches
    /// its subdomains) or a URL prefix (`https://api.example.com/v1/`: same scheme, host and port,
    /// path below it). Empty: `http_get` refuses every URL.
    pub http_allow: Vec<String>,
    /// Most body bytes `http_get` returns (the rest is cut off and the cut is reported).
    pub http_max_bytes: usize,
    /// Time limit of one `http_get` request, connection included.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub http_timeout: Duration,
    /// Timeout of a local tool call unless `tool_timeouts` names the tool.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub default_timeout: Duration,
    /// Per-tool timeouts of local tools, by name.
    #[serde(with = "nightshift_core::config::duration_text_map")]
    pub tool_timeouts: BTreeMap<String, Duration>,
    /// Longest tool result handed to the model; longer ones are cut and the cut is reported, so one
    /// chatty tool cannot fill the model's context.
    pub max_output_bytes: usize,
    /// Time an MCP server gets to start, initialise and list its tools.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub mcp_start_timeout: Duration,
    /// How often a dead MCP server is restarted over the registry's life before its tools report
    /// it unavailable.
    pub mcp_max_restarts: u32,
    /// Wait before the first restart of a dead MCP server; doubled for each further restart.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub mcp_restart_backoff: Duration,
    /// Upper bound of that wait.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub mcp_max_restart_backoff: Duration,
    /// Variables of the worker's own environment a stdio MCP server inherits; everything else it
    /// gets only through the spec's `env`. This keeps the worker's credentials (LLM API keys,
    /// database URLs) away from third-party server processes.
    pub mcp_inherit_env: Vec<String>,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            file_root: None,
            read_max_bytes: 256 * 1024,
            list_max_entries: 1000,
            http_allow: Vec::new(),
            http_max_bytes: 1024 * 1024,
            http_timeout: Duration::from_secs(20),
            default_timeout: Duration::from_secs(30),
            tool_timeouts: BTreeMap::new(),
            max_output_bytes: 64 * 1024,
            mcp_start_timeout: Duration::from_secs(30),
            mcp_max_restarts: 5,
            mcp_restart_backoff: Duration::from_millis(200),
            mcp_max_restart_backoff: Duration::from_secs(10),
            mcp_inherit_env: ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LC_ALL", "TMPDIR", "TZ"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl ToolsConfig {
    /// The timeout of the local tool `name`.
    pub fn timeout_of(&self, name: &str) -> Duration {
        self.tool_timeouts.get(name).copied().unwrap_or(self.default_timeout)
    }
}
