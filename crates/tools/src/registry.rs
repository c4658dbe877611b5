//! [`ToolRegistry`]: the tools of one agent, with validation, timeouts and MCP lifecycle.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use nightshift_core::{BUILTIN_LOCAL_TOOLS, ToolsSpec};
use serde_json::Value;

use crate::mcp::{McpClient, McpServerStatus, McpSettings, mcp_tool_name};
use crate::schema::ArgSchema;
use nightshift_core::governance::Hints;

use crate::{RegistryError, Tool, ToolDef, ToolError, ToolOutput, ToolSource, ToolsConfig, local};

/// Longest schema text quoted back to the model after a validation failure.
const MAX_SCHEMA_HINT: usize = 2000;

enum Exec {
    Local(Arc<dyn Tool>),
    Mcp { client: Arc<McpClient>, tool: String },
}

struct Entry {
    /// Index into `defs`.
    def: usize,
    /// `None` when an MCP server's schema does not compile; the server then validates itself.
    schema: Option<ArgSchema>,
    timeout: Duration,
    exec: Exec,
}

/// The tools of one agent: the local tools its spec names, the tools of its MCP servers, and
/// any extra tools registered with [`ToolRegistry::register`].
///
/// Cheap to share behind an `Arc`; calls may run concurrently. Call [`ToolRegistry::shutdown`]
/// when done so MCP child processes exit cleanly (dropping the registry also kills them, but
/// without the graceful close).
pub struct ToolRegistry {
    defs: Vec<ToolDef>,
    entries: HashMap<String, Entry>,
    mcp: Vec<Arc<McpClient>>,
    max_output_bytes: usize,
    default_timeout: Duration,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.defs.iter().map(|d| d.name.as_str()).collect();
        f.debug_struct("ToolRegistry").field("tools", &names).finish()
    }
}

impl ToolRegistry {
    /// Builds the registry of an agent: its local tools from `config`, and its MCP servers, which
    /// are started (concurrently) and asked for their tools. If any server fails to start, the
    /// ones already started are shut down and the error names the server.
    pub async fn new(spec: &ToolsSpec, config: &ToolsConfig) -> Result<Self, RegistryError> {
        Self::with_http(spec, config, None).await
    }

    /// [`Self::new`], reaching MCP servers over HTTP with `http` (a client that checks where it
    /// connects; `None`: rmcp's default).
    pub async fn with_http(
        spec: &ToolsSpec,
        config: &ToolsConfig,
        http: Option<reqwest::Client>,
    ) -> Result<Self, RegistryError> {
        let mut reg = Self {
            defs: Vec::new(),
            entries: HashMap::new(),
            mcp: Vec::new(),
            max_output_bytes: config.max_output_bytes.max(1),
            default_timeout: config.default_timeout,
        };
        for name in &spec.local {
            let tool = match local::builtin(name, config) {
                None => {
                    return Err(RegistryError::UnknownLocalTool {
                        name: name.clone(),
                        known: BUILTIN_LOCAL_TOOLS.join(", "),
                    });
                }
                Some(Err(message)) => return Err(RegistryError::InvalidConfig { tool: name.clone(), message }),
                Some(Ok(t)) => t,
            };
            reg.register(tool, config.timeout_of(name))?;
        }
        let settings = McpSettings::from_config(config, http);
        let started = join_all(spec.mcp.iter().map(|s| McpClient::start(s.clone(), settings.clone()))).await;
        let mut failure = None;
        let mut clients = Vec::new();
        for (server, result) in spec.mcp.iter().zip(started) {
            match result {
                Ok(c) => clients.push(c),
                Err(message) => {
                    tracing::warn!(server = %server.name, error = %message, "MCP server failed to start");
                    failure.get_or_insert(RegistryError::McpStart { server: server.name.clone(), message });
                }
            }
        }
        reg.mcp = clients.iter().map(|(c, _)| c.clone()).collect();
        if let Some(e) = failure {
            reg.shutdown().await;
            return Err(e);
        }
        for (client, tools) in clients {
            for t in tools {
                reg.add_mcp_tool(&client, t);
            }
        }
        Ok(reg)
    }

    fn add_mcp_tool(&mut self, client: &Arc<McpClient>, t: rmcp::model::Tool) {
        let base = mcp_tool_name(client.name(), &t.name);
        // Two tool names that differ only in characters the sanitising replaced would collide:
        // number the later ones (listing order is the server's, so this is deterministic).
        let mut name = base.clone();
        let mut n = 2;
        while self.entries.contains_key(&name) {
            let suffix = format!("_{n}");
            name = format!("{}{suffix}", &base[..base.len().min(64 - suffix.len())]);
            n += 1;
        }
        let input_schema = Value::Object((*t.input_schema).clone());
        let schema = match ArgSchema::compile(&input_schema) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(server = %client.name(), tool = %t.name, error = %e, "MCP tool schema does not compile; arguments go unvalidated");
                None
            }
        };
        // Annotations are hints from the server. Trusting "read-only" or "idempotent" decides
        // whether an interrupted call may be repeated after a crash, and rules of the agent's tool
        // policy may select by them; an operator who does not trust a server sets effects and
        // actions by name instead.
        let hints = t.annotations.as_ref().map_or_else(Hints::default, |a| Hints {
            read_only: a.read_only_hint == Some(true),
            // MCP's default for destructiveHint is true (when not read-only).
            destructive: a.destructive_hint.unwrap_or(a.read_only_hint != Some(true)),
            idempotent: a.idempotent_hint == Some(true),
            open_world: a.open_world_hint.unwrap_or(true),
        });
        let description = t.description.as_deref().map(str::to_owned).or_else(|| t.title.clone()).unwrap_or_default();
        let def = ToolDef {
            name: name.clone(),
            description,
            input_schema,
            source: ToolSource::Mcp { server: client.name().to_owned(), tool: t.name.to_string() },
            hints,
        };
        self.defs.push(def);
        self.entries.insert(
            name,
            Entry {
                def: self.defs.len() - 1,
                schema,
                timeout: client.call_timeout(),
                exec: Exec::Mcp { client: client.clone(), tool: t.name.to_string() },
            },
        );
    }

    /// Adds a local tool (for example a worker- or test-specific one) with its call timeout. The
    /// name must be 1-64 characters of `[A-Za-z0-9_-]`, unique, and the schema must compile.
    pub fn register(&mut self, tool: Arc<dyn Tool>, timeout: Duration) -> Result<(), RegistryError> {
        let def = tool.definition();
        let name_ok = !def.name.is_empty()
            && def.name.len() <= 64
            && def.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(RegistryError::InvalidConfig {
                tool: def.name.clone(),
                message: "tool names are 1-64 characters of [A-Za-z0-9_-]".into(),
            });
        }
        if self.entries.contains_key(&def.name) {
            return Err(RegistryError::DuplicateTool(def.name));
        }
        let schema = ArgSchema::compile(&def.input_schema)
            .map_err(|message| RegistryError::InvalidSchema { tool: def.name.clone(), message })?;
        let name = def.name.clone();
        self.defs.push(def);
        self.entries
            .insert(name, Entry { def: self.defs.len() - 1, schema: Some(schema), timeout, exec: Exec::Local(tool) });
        Ok(())
    }

    /// Adds a local tool with the configuration's default timeout.
    pub fn register_default(&mut self, tool: Arc<dyn Tool>) -> Result<(), RegistryError> {
        self.register(tool, self.default_timeout)
    }

    /// The tools, for the model: local tools in spec order, then each MCP server's tools in the
    /// server's order, then registered extras.
    pub fn definitions(&self) -> &[ToolDef] {
        &self.defs
    }

    /// The definition of one tool (e.g. to read its `idempotent` flag).
    pub fn definition(&self, name: &str) -> Option<&ToolDef> {
        self.entries.get(name).map(|e| &self.defs[e.def])
    }

    /// Runs a call the model made, with `arguments_json` as the model sent it (an empty string
    /// means no arguments). Never fails: every problem — unknown tool, bad JSON, schema
    /// violation, timeout, tool failure, dead server — is an output with `is_error = true` and a
    /// message the model can act on. The content is cut at `max_output_bytes`.
    pub async fn call(&self, name: &str, arguments_json: &str) -> ToolOutput {
        let out = ToolOutput::from(self.try_call(name, arguments_json).await);
        ToolOutput { content: truncate(out.content, self.max_output_bytes), is_error: out.is_error }
    }

    /// [`call`](Self::call) with already parsed arguments (e.g. Anthropic's `input` object).
    pub async fn call_value(&self, name: &str, arguments: Value) -> ToolOutput {
        let out = ToolOutput::from(self.try_call_value(name, arguments).await);
        ToolOutput { content: truncate(out.content, self.max_output_bytes), is_error: out.is_error }
    }

    /// Like [`call`](Self::call) but with the typed error, for callers that decide on retries
    /// (see [`ToolError::is_transient`]). The output is not cut.
    pub async fn try_call(&self, name: &str, arguments_json: &str) -> Result<String, ToolError> {
        let text = arguments_json.trim();
        let args = if text.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(text).map_err(|e| {
                ToolError::InvalidArguments(format!("the arguments are not valid JSON ({e}); send a JSON object"))
            })?
        };
        self.try_call_value(name, args).await
    }

    /// Like [`call_value`](Self::call_value) but with the typed error.
    #[tracing::instrument(name = "tool.call", skip_all, fields(tool = %name))]
    pub async fn try_call_value(&self, name: &str, arguments: Value) -> Result<String, ToolError> {
        let Some(entry) = self.entries.get(name) else {
            let available = self.defs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(ToolError::UnknownTool { name: name.to_owned(), available });
        };
        // Models often send `null` for tools without parameters.
        let args = if arguments.is_null() { Value::Object(Default::default()) } else { arguments };
        if let Some(schema) = &entry.schema
            && let Err(why) = schema.check(&args)
        {
            let mut hint = self.defs[entry.def].input_schema.to_string();
            if hint.len() > MAX_SCHEMA_HINT {
                hint = truncate(hint, MAX_SCHEMA_HINT);
            }
            return Err(ToolError::InvalidArguments(format!(
                "{why}. The arguments must match this JSON Schema: {hint}"
            )));
        }
        let started = Instant::now();
        let result = match &entry.exec {
            Exec::Local(tool) => run_local(tool.clone(), args, entry.timeout).await,
            Exec::Mcp { client, tool } => client.call(tool, args).await,
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(_) => tracing::debug!(tool = name, elapsed_ms, "tool call succeeded"),
            Err(e) => tracing::debug!(tool = name, elapsed_ms, error = %e, "tool call failed"),
        }
        result
    }

    /// The state of each MCP server (connected, child pid, restarts).
    pub async fn mcp_status(&self) -> Vec<McpServerStatus> {
        join_all(self.mcp.iter().map(|c| c.status())).await
    }

    /// Stops every MCP server: closes the connections, lets children exit (SIGTERM, then SIGKILL
    /// to the process group if they do not), and makes later MCP calls fail as unavailable.
    /// Idempotent.
    pub async fn shutdown(&self) {
        join_all(self.mcp.iter().map(|c| c.shutdown())).await;
    }
}

/// Runs a local tool on its own task, so a panic in it becomes a tool error instead of taking
/// down the caller, and a timeout aborts it.
async fn run_local(tool: Arc<dyn Tool>, args: Value, timeout: Duration) -> Result<String, ToolError> {
    let mut handle = tokio::spawn(async move { tool.call(args).await });
    match tokio::time::timeout(timeout, &mut handle).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if e.is_panic() => Err(ToolError::Failed("the tool crashed (internal error)".into())),
        Ok(Err(_)) => Err(ToolError::Failed("the tool was cancelled".into())),
        Err(_) => {
            handle.abort();
            Err(ToolError::Timeout(timeout))
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary and says so.
fn truncate(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[output truncated: {end} of {} bytes shown]", &s[..end], s.len())
}
