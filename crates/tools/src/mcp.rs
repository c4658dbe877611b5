//! MCP servers through the official `rmcp` SDK: stdio child processes and streamable HTTP.
//!
//! One [`McpClient`] per server of the spec. It connects at start and lists the server's tools,
//! hands out the live connection to concurrent calls, reconnects (restarts the child) on the next
//! call after the connection died — at most `mcp_max_restarts` times, with exponential backoff —
//! and shuts down cleanly.
use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nightshift_core::{ConfigValue, McpServer, McpTransport};
use process_wrap::tokio::{CommandWrap, ProcessGroup};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock, Implementation,
    ResourceContents,
};
use rmcp::service::{Peer, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::Mutex;

use crate::{ToolError, ToolsConfig};

/// Longest exposed tool name: OpenAI's function-name limit.
const MAX_NAME: usize = 64;
/// Time a server gets to exit after its stdin closes (then SIGTERM, then SIGKILL: rmcp's sequence).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// Headers the MCP transport sets itself; a spec may not override them.
const RESERVED_HEADERS: &[&str] =
    &["accept", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id"];

/// The name an MCP tool is exposed under: `<server>__<tool>`, with every character outside
/// `[A-Za-z0-9_-]` replaced by `_`. Names longer than 64 characters are cut to 55 and get `_` plus
/// 8 hex digits of a stable (FNV-1a) hash of the full name, so they stay unique and the same on
/// every worker and version (durable runs record tool names).
///
/// Server names are already `[A-Za-z0-9_-]{1,32}` (spec validation), so the prefix survives
/// unchanged and the double underscore separates it from the tool name.
pub fn mcp_tool_name(server: &str, tool: &str) -> String {
    let raw = format!("{server}__{tool}");
    let clean: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    if clean.len() <= MAX_NAME {
        return clean;
    }
    let hash = raw.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{}_{:08x}", &clean[..MAX_NAME - 9], hash as u32)
}

/// What the registry reports about one MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct McpServerStatus {
    /// Server name from the spec.
    pub name: String,
    /// `stdio` or `http`.
    pub transport: &'static str,
    /// Whether a live connection exists right now.
    pub connected: bool,
    /// Process id of the current child (stdio servers).
    pub pid: Option<u32>,
    /// Restarts (reconnects) so far.
    pub restarts: u32,
    /// The last connection failure, if any.
    pub last_error: Option<String>,
}

/// The restart and start settings of MCP clients, from [`ToolsConfig`].
#[derive(Debug, Clone)]
pub(crate) struct McpSettings {
    start_timeout: Duration,
    max_restarts: u32,
    backoff: Duration,
    max_backoff: Duration,
    inherit_env: Vec<String>,
    /// The client of MCP servers over HTTP (the worker's, checking every connection against its
    /// egress policy); `None`: rmcp's default client.
    http: Option<reqwest::Client>,
}

impl McpSettings {
    pub(crate) fn from_config(c: &ToolsConfig, http: Option<reqwest::Client>) -> Self {
        Self {
            http,
            start_timeout: c.mcp_start_timeout,
            max_restarts: c.mcp_max_restarts,
            backoff: c.mcp_restart_backoff,
            max_backoff: c.mcp_max_restart_backoff,
            inherit_env: c.mcp_inherit_env.clone(),
        }
    }
}

type Service = RunningService<RoleClient, ClientConfig>;

#[derive(Default)]
struct Conn {
    service: Option<Service>,
    pid: Option<u32>,
    restarts: u32,
    /// Set when a call saw the transport fail, so the next call reconnects even if the SDK has
    /// not noticed yet.
    broken: bool,
    last_error: Option<String>,
    shut_down: bool,
}

impl Conn {
    fn alive(&self) -> bool {
        !self.broken && self.service.as_ref().is_some_and(|s| !s.is_closed() && !s.peer().is_transport_closed())
    }
}

/// A connection to one MCP server.
pub(crate) struct McpClient {
    spec: McpServer,
    settings: McpSettings,
    conn: Mutex<Conn>,
}

fn client_config() -> ClientConfig {
    ClientConfig::new(ClientCapabilities::default(), Implementation::new("nightshift", env!("CARGO_PKG_VERSION")))
}

/// Reads a config value now. The error names the field and the variable, never a value.
fn resolve(field: &str, v: &ConfigValue) -> Result<String, String> {
    match v {
        ConfigValue::Literal(s) => Ok(s.clone()),
        ConfigValue::Secret(r) => r.resolve().map_err(|e| format!("{field}: {e}")),
    }
}

impl McpClient {
    /// Connects to the server and lists its tools, within the start timeout.
    pub(crate) async fn start(
        spec: McpServer,
        settings: McpSettings,
    ) -> Result<(Arc<Self>, Vec<rmcp::model::Tool>), String> {
        let client = Arc::new(Self { spec, settings, conn: Mutex::new(Conn::default()) });
        let timeout = client.settings.start_timeout;
        let started = tokio::time::timeout(timeout, async {
            let (service, pid) = client.connect().await?;
            let tools = service.list_all_tools().await.map_err(|e| format!("listing tools failed: {e}"))?;
            Ok::<_, String>((service, pid, tools))
        })
        .await
        .map_err(|_| format!("did not start and list its tools within {}", humantime::format_duration(timeout)))??;
        let (service, pid, tools) = started;
        {
            let mut c = client.conn.lock().await;
            c.service = Some(service);
            c.pid = pid;
        }
        tracing::info!(server = %client.spec.name, tools = tools.len(), ?pid, "MCP server started");
        Ok((client, tools))
    }

    pub(crate) fn name(&self) -> &str {
        &self.spec.name
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.spec.call_timeout
    }

    fn kind(&self) -> &'static str {
        match self.spec.transport {
            McpTransport::Stdio { .. } => "stdio",
            McpTransport::Http { .. } => "http",
        }
    }

    /// Opens a new connection (spawning the child for stdio), secrets resolved now.
    async fn connect(&self) -> Result<(Service, Option<u32>), String> {
        match &self.spec.transport {
            McpTransport::Stdio { command, args, env } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args).env_clear();
                for key in &self.settings.inherit_env {
                    if let Some(v) = std::env::var_os(key) {
                        cmd.env(key, v);
                    }
                }
                for (k, v) in env {
                    cmd.env(k, resolve(&format!("env.{k}"), v)?);
                }
                let mut wrap = CommandWrap::from(cmd);
                // Its own process group, so that stopping the server also stops whatever it spawned
                // (npx, uv run and shell wrappers start the real server as a grandchild).
                wrap.wrap(ProcessGroup::leader());
                let (transport, stderr) = TokioChildProcess::builder(wrap)
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start '{command}': {e}"))?;
                let pid = transport.id();
                if let Some(stderr) = stderr {
                    // The server's log goes to ours (debug level) instead of the worker's stderr.
                    let server = self.spec.name.clone();
                    tokio::spawn(async move {
                        let mut lines = tokio::io::BufReader::new(stderr).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            tracing::debug!(server = %server, "mcp stderr: {line}");
                        }
                    });
                }
                let service = client_config().serve(transport).await.map_err(|e| format!("initialize failed: {e}"))?;
                Ok((service, pid))
            }
            McpTransport::Http { url, headers } => {
                let custom = http_headers(headers)?;
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .custom_headers(custom)
                    .reinit_on_expired_session(true);
                let service = match &self.settings.http {
                    Some(client) => {
                        client_config().serve(StreamableHttpClientTransport::with_client(client.clone(), config)).await
                    }
                    None => client_config().serve(StreamableHttpClientTransport::from_config(config)).await,
                }
                .map_err(|e| format!("initialize failed: {e}"))?;
                Ok((service, None))
            }
        }
    }

    /// The live connection's peer, reconnecting first if the connection died.
    async fn peer(&self) -> Result<Peer<RoleClient>, ToolError> {
        let unavailable = |message: String| ToolError::Unavailable { server: self.spec.name.clone(), message };
        let mut c = self.conn.lock().await;
        if c.shut_down {
            return Err(unavailable("the tool registry has been shut down".into()));
        }
        if c.alive()
            && let Some(s) = &c.service
        {
            return Ok(s.peer().clone());
        }
        // Dead: stop what is left of the old connection (kills a half-dead child), then restart.
        if let Some(mut old) = c.service.take() {
            let _ = old.close_with_timeout(Duration::from_secs(1)).await;
        }
        c.pid = None;
        if c.restarts >= self.settings.max_restarts {
            let why = c.last_error.clone().unwrap_or_else(|| "connection lost".into());
            return Err(unavailable(format!(
                "it stopped and was already restarted {} times, the limit (last error: {why})",
                c.restarts
            )));
        }
        let backoff =
            nightshift_core::backoff::exponential(self.settings.backoff, c.restarts, self.settings.max_backoff);
        c.restarts += 1;
        tracing::warn!(server = %self.spec.name, restart = c.restarts, ?backoff, "MCP server connection lost; restarting");
        tokio::time::sleep(backoff).await;
        match tokio::time::timeout(self.settings.start_timeout, self.connect()).await {
            Ok(Ok((service, pid))) => {
                let peer = service.peer().clone();
                c.service = Some(service);
                c.pid = pid;
                c.broken = false;
                tracing::info!(server = %self.spec.name, ?pid, restarts = c.restarts, "MCP server restarted");
                Ok(peer)
            }
            Ok(Err(e)) => {
                c.last_error = Some(e.clone());
                Err(unavailable(format!("restart failed: {e}")))
            }
            Err(_) => {
                let e = format!(
                    "restart did not finish within {}",
                    humantime::format_duration(self.settings.start_timeout)
                );
                c.last_error = Some(e.clone());
                Err(unavailable(e))
            }
        }
    }

    /// Calls `tool` with `args` within the server's call timeout.
    pub(crate) async fn call(&self, tool: &str, args: Value) -> Result<String, ToolError> {
        let arguments = match args {
            Value::Object(o) => Some(o),
            Value::Null => None,
            other => {
                return Err(ToolError::InvalidArguments(format!(
                    "arguments must be a JSON object, got {}",
                    json_kind(&other)
                )));
            }
        };
        let peer = self.peer().await?;
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = arguments;
        let timeout = self.spec.call_timeout;
        // On timeout the request future is dropped, which makes rmcp send `notifications/cancelled`.
        match tokio::time::timeout(timeout, peer.call_tool(params)).await {
            Err(_) => Err(ToolError::Timeout(timeout)),
            Ok(Ok(result)) => render(result),
            Ok(Err(e)) => Err(self.call_error(e).await),
        }
    }

    async fn call_error(&self, e: ServiceError) -> ToolError {
        match e {
            ServiceError::McpError(err) => ToolError::Failed(format!("MCP error {}: {}", err.code.0, err.message)),
            ServiceError::Timeout { timeout } => ToolError::Timeout(timeout),
            ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
                let message = e.to_string();
                let mut c = self.conn.lock().await;
                // The call may or may not have run on the server: report it, do not re-send it.
                c.broken = true;
                c.last_error = Some(message.clone());
                tracing::warn!(server = %self.spec.name, error = %message, "MCP call failed on the transport");
                ToolError::Unavailable {
                    server: self.spec.name.clone(),
                    message: format!(
                        "the connection failed during the call ({message}); it is re-established on the next call"
                    ),
                }
            }
            other => ToolError::Failed(format!("MCP call failed: {other}")),
        }
    }

    pub(crate) async fn status(&self) -> McpServerStatus {
        let c = self.conn.lock().await;
        McpServerStatus {
            name: self.spec.name.clone(),
            transport: self.kind(),
            connected: c.alive(),
            pid: c.pid,
            restarts: c.restarts,
            last_error: c.last_error.clone(),
        }
    }

    /// Closes the connection (the child gets its stdin closed, then SIGTERM, then SIGKILL) and
    /// refuses further calls.
    pub(crate) async fn shutdown(&self) {
        let mut c = self.conn.lock().await;
        c.shut_down = true;
        c.pid = None;
        if let Some(mut service) = c.service.take() {
            match service.close_with_timeout(SHUTDOWN_GRACE).await {
                Ok(Some(_)) => tracing::debug!(server = %self.spec.name, "MCP server stopped"),
                // Dropping the service now kills the child (process group) through rmcp's guard.
                Ok(None) => tracing::warn!(server = %self.spec.name, "MCP server did not stop in time; killing it"),
                Err(e) => tracing::warn!(server = %self.spec.name, error = %e, "MCP service task failed on shutdown"),
            }
        }
    }
}

/// Builds the HTTP headers of a streamable-HTTP server; secret values are marked sensitive so
/// that debug output of the request never shows them.
fn http_headers(
    headers: &BTreeMap<String, ConfigValue>,
) -> Result<HashMap<reqwest::header::HeaderName, reqwest::header::HeaderValue>, String> {
    let mut out = HashMap::new();
    for (k, v) in headers {
        if RESERVED_HEADERS.iter().any(|r| k.eq_ignore_ascii_case(r)) {
            return Err(format!("header '{k}' is set by the MCP transport and cannot be overridden"));
        }
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("'{k}' is not a valid HTTP header name"))?;
        let mut value = reqwest::header::HeaderValue::from_str(&resolve(&format!("headers.{k}"), v)?)
            .map_err(|_| format!("the value of header '{k}' is not a valid HTTP header value"))?;
        if matches!(v, ConfigValue::Secret(_)) {
            value.set_sensitive(true);
        }
        out.insert(name, value);
    }
    Ok(out)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Turns a tool result into text for the model; `isError` results become [`ToolError::Failed`].
fn render(result: CallToolResult) -> Result<String, ToolError> {
    let mut parts: Vec<String> = result
        .content
        .iter()
        .map(|block| match block {
            ContentBlock::Text(t) => t.text.clone(),
            ContentBlock::Image(i) => format!("[image: {}, {} bytes base64]", i.mime_type, i.data.len()),
            ContentBlock::Audio(a) => format!("[audio: {}, {} bytes base64]", a.mime_type, a.data.len()),
            ContentBlock::Resource(r) => match &r.resource {
                ResourceContents::TextResourceContents { text, .. } => text.clone(),
                ResourceContents::BlobResourceContents { uri, blob, .. } => {
                    format!("[binary resource {uri}: {} bytes base64]", blob.len())
                }
                _ => "[resource]".to_owned(),
            },
            ContentBlock::ResourceLink(r) => format!("[resource link: {}]", r.uri),
            _ => "[unsupported content]".to_owned(),
        })
        .collect();
    if parts.is_empty()
        && let Some(s) = &result.structured_content
    {
        parts.push(s.to_string());
    }
    let text = parts.join("\n");
    if result.is_error == Some(true) { Err(ToolError::Failed(text)) } else { Ok(text) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_openai_safe_and_stable() {
        assert_eq!(mcp_tool_name("fs", "read_file"), "fs__read_file");
        assert_eq!(mcp_tool_name("time", "get.current time"), "time__get_current_time");
        let long = mcp_tool_name("server", &"x".repeat(100));
        assert_eq!(long.len(), 64);
        assert_eq!(long, mcp_tool_name("server", &"x".repeat(100)));
        assert_ne!(long, mcp_tool_name("server", &"x".repeat(101)));
        assert!(long.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    }
}
