//! The validated agent specification and its one validation function, [`AgentSpec::from_proto`].
//! The model section (provider, sampling) is in [`model`].
mod model;

pub use model::{MAX_STOP_LEN, MAX_STOP_SEQUENCES, ModelConfig, ModelProvider, Sampling, ToolCallMode};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::error::{Errors, ValidationError, ValidationErrors};
use crate::governance::ToolPolicy;
use crate::ids::AgentName;
use crate::namespace::Namespace;
use crate::policy::{Backoff, OverlapPolicy, RunPolicy};
use crate::schedule::Schedule;
use crate::{duration, pb};

/// Local tools every worker ships (see the `tools` crate). A spec naming another local tool is
/// refused at registration instead of failing on every run.
pub const BUILTIN_LOCAL_TOOLS: &[&str] =
    &["calculate_area", "get_system_info", "format_data", "http_get", "read_file", "list_dir"];

const MAX_TEXT: usize = 64 * 1024;
/// MCP servers per agent.
const MAX_MCP_SERVERS: usize = 16;
/// Args, env entries or headers per MCP server.
const MAX_MCP_ENTRIES: usize = 64;
/// Bytes per MCP server argument.
const MAX_MCP_ARG: usize = 4096;
const DEFAULT_MCP_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated agent specification.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    /// The namespace it belongs to (its runs, events and memory with it).
    pub namespace: Namespace,
    /// Unique name within its namespace.
    pub name: AgentName,
    /// Free text.
    pub description: String,
    /// Selection labels.
    pub labels: BTreeMap<String, String>,
    /// The model and how to reach it.
    pub model: ModelConfig,
    /// System prompt of every run.
    pub system_instruction: String,
    /// The task (user message) of every run.
    pub query: String,
    /// When it runs.
    pub schedule: Schedule,
    /// Overlap, retries and limits.
    pub policy: RunPolicy,
    /// Tools available to the model.
    pub tools: ToolsSpec,
    /// Memory behaviour.
    pub memory: MemoryConfig,
    /// Tool policy (`governance:`).
    pub governance: ToolPolicy,
    /// Spending limits (`budget:`).
    pub budget: crate::budget::Budget,
}

/// A reference to a secret; the value is resolved where it is used and never stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretRef {
    /// An environment variable of the process that uses the secret.
    Env(String),
}

impl SecretRef {
    /// Parses `env:NAME`. Anything else is refused without echoing the value.
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        match s.strip_prefix("env:") {
            Some(name) if is_env_name(name) => Ok(Self::Env(name.to_owned())),
            Some(_) => Err(ValidationError::new(field, "env: reference needs a variable name like env:OPENAI_API_KEY")),
            None => Err(ValidationError::new(
                field,
                "must be a secret reference like env:OPENAI_API_KEY; literal secrets are refused (the value was not stored)",
            )),
        }
    }

    /// Reads the secret's value now.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Self::Env(name) => std::env::var(name).map_err(|_| format!("environment variable {name} is not set")),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(n) => write!(f, "env:{n}"),
        }
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty() && !s.as_bytes()[0].is_ascii_digit() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A configuration value that is either literal or a secret reference (`env:NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConfigValue {
    /// Plain text.
    Literal(String),
    /// Resolved at use.
    Secret(SecretRef),
}

impl ConfigValue {
    fn parse(field: &str, s: &str, must_be_secret: bool) -> Result<Self, ValidationError> {
        if s.starts_with("env:") || must_be_secret {
            SecretRef::parse(field, s).map(Self::Secret)
        } else {
            Ok(Self::Literal(s.to_owned()))
        }
    }

    fn as_text(&self) -> String {
        match self {
            Self::Literal(s) => s.clone(),
            Self::Secret(r) => r.to_string(),
        }
    }
}

/// Tools of an agent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolsSpec {
    /// Built-in local tools by name.
    pub local: Vec<String>,
    /// MCP servers.
    pub mcp: Vec<McpServer>,
}

impl ToolsSpec {
    /// Display names: local tool names, then `mcp:<server>`.
    pub fn names(&self) -> Vec<String> {
        self.local.iter().cloned().chain(self.mcp.iter().map(|m| format!("mcp:{}", m.name))).collect()
    }
}

/// An MCP server an agent uses.
#[derive(Debug, Clone, PartialEq)]
pub struct McpServer {
    /// Unique within the agent; prefixes its tools.
    pub name: String,
    /// How to reach it.
    pub transport: McpTransport,
    /// Timeout of one tool call.
    pub call_timeout: Duration,
}

/// MCP transports.
#[derive(Debug, Clone, PartialEq)]
pub enum McpTransport {
    /// A child process speaking MCP on stdin/stdout.
    Stdio {
        /// Program.
        command: String,
        /// Arguments.
        args: Vec<String>,
        /// Extra environment.
        env: BTreeMap<String, ConfigValue>,
    },
    /// Streamable HTTP.
    Http {
        /// Endpoint, e.g. `http://127.0.0.1:9000/mcp`.
        url: String,
        /// Extra headers (credentials are secret references).
        headers: BTreeMap<String, ConfigValue>,
    },
}

/// Where an agent's memory lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum SessionScope {
    /// One history per agent.
    #[default]
    Agent,
    /// Fresh each run.
    Run,
    /// Shared by every agent naming the same id.
    Fixed(String),
}

impl SessionScope {
    /// Parses `agent`, `run` or `fixed:<id>`.
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        match s {
            "" | "agent" => Ok(Self::Agent),
            "run" => Ok(Self::Run),
            _ => match s.strip_prefix("fixed:") {
                Some(id) if !id.is_empty() && id.len() <= 128 => Ok(Self::Fixed(id.to_owned())),
                _ => Err(ValidationError::new(field, format!("'{s}' is not one of agent, run, fixed:<id>"))),
            },
        }
    }

    /// The memory service's session of this scope for an agent in `namespace` and a run:
    /// `agent`, `run:<run id>`, or `fixed:<id>` (stored as `fixed:<namespace>/<id>` outside
    /// `default`, so that two tenants never share it).
    pub fn session_key(&self, namespace: &crate::Namespace, run_id: &str) -> String {
        match self {
            SessionScope::Agent => "agent".to_owned(),
            SessionScope::Run => run_session(run_id),
            SessionScope::Fixed(id) => crate::namespace::fixed_session(namespace, id),
        }
    }
}

/// The session of a run's own scope, `run:<run id>`: the session scope of a `memory.session:
/// run` agent, and every run's working-memory scope.
pub fn run_session(run_id: &str) -> String {
    format!("run:{run_id}")
}

impl fmt::Display for SessionScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Agent => f.write_str("agent"),
            Self::Run => f.write_str("run"),
            Self::Fixed(id) => write!(f, "fixed:{id}"),
        }
    }
}

/// Memory behaviour of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Session scope.
    pub session: SessionScope,
    /// Recent episodic records loaded per run.
    pub recall_recent: u32,
    /// Long-term hits loaded per run.
    pub semantic_top_k: u32,
    /// Store each result as episodic memory.
    pub store_results: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { session: SessionScope::Agent, recall_recent: 10, semantic_top_k: 5, store_results: true }
    }
}

fn check_text(errs: &mut Errors, field: &str, s: &str, required: bool) {
    if required && s.trim().is_empty() {
        errs.push(field, "is required");
    } else if s.len() > MAX_TEXT {
        errs.push(field, format!("is too long ({} bytes, max {MAX_TEXT})", s.len()));
    }
}

pub(super) fn opt_duration(
    errs: &mut Errors,
    field: &str,
    d: &Option<prost_types::Duration>,
    default: Duration,
) -> Duration {
    match d.as_ref().map(duration::from_pb).transpose() {
        Ok(v) => v.unwrap_or(default),
        Err(e) => {
            errs.push(field, e);
            default
        }
    }
}

pub(super) fn check_url(errs: &mut Errors, field: &str, url: &str) {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > "http://".len()
        && !url.contains(char::is_whitespace);
    if !ok {
        errs.push(field, format!("'{url}' is not an http(s) URL"));
    }
}

fn is_credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization" || n == "proxy-authorization" || n.ends_with("-key") || n.ends_with("-token") || n == "cookie"
}

/// Where a spec being validated comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecOrigin {
    /// A request to create or change an agent: every rule applies.
    Request,
    /// The store (or the manager handing it to a worker): a spec an earlier release accepted
    /// must keep loading, so rules added since are relaxed — today one: literal MCP `env` values,
    /// refused in requests since 2026-12. Re-applying such an agent asks for `env:` references.
    Stored,
}

impl AgentSpec {
    /// Validates a proto spec from a request. This is the one validation of agent specs: the
    /// YAML manifest is converted to proto first, so both paths share it. Every error names its
    /// field.
    pub fn from_proto(p: &pb::AgentSpec) -> Result<Self, ValidationErrors> {
        Self::from_proto_as(p, SpecOrigin::Request)
    }

    /// [`AgentSpec::from_proto`] for a spec that was stored ([`SpecOrigin::Stored`]).
    pub fn from_stored_proto(p: &pb::AgentSpec) -> Result<Self, ValidationErrors> {
        Self::from_proto_as(p, SpecOrigin::Stored)
    }

    fn from_proto_as(p: &pb::AgentSpec, origin: SpecOrigin) -> Result<Self, ValidationErrors> {
        let mut errs = Errors::default();
        let name = errs.take(AgentName::parse("name", &p.name));
        let namespace = errs.take(Namespace::parse_or_default("namespace", &p.namespace));
        check_text(&mut errs, "description", &p.description, false);
        if p.labels.len() > 64 {
            errs.push("labels", "at most 64 labels");
        }
        for (k, v) in &p.labels {
            let key_ok =
                !k.is_empty() && k.len() <= 63 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
            if !key_ok {
                errs.push(format!("labels.{k}"), "label keys are 1-63 characters of [A-Za-z0-9-_./]");
            }
            if v.len() > 256 {
                errs.push(format!("labels.{k}"), "label values are at most 256 bytes");
            }
        }
        let model = ModelConfig::from_pb(&mut errs, p.model.as_ref());
        check_text(&mut errs, "system_instruction", &p.system_instruction, false);
        let query = p.task.as_ref().map(|t| t.query.clone()).unwrap_or_default();
        check_text(&mut errs, "task.query", &query, true);
        let schedule = match Schedule::from_pb(p.schedule.as_ref()) {
            Ok(s) => Some(s),
            Err(e) => {
                errs.extend(e);
                None
            }
        };
        let policy = Self::policy_from_pb(&mut errs, p.policy.as_ref());
        let tools = Self::tools_from_pb(&mut errs, p.tools.as_ref(), origin);
        let memory = Self::memory_from_pb(&mut errs, p.memory.as_ref());
        let governance = ToolPolicy::from_pb_into(&mut errs, "governance", p.governance.as_ref());
        let budget = crate::budget::Budget::from_pb_into(&mut errs, "budget", p.budget.as_ref());
        let (Some(name), Some(namespace), Some(model), Some(schedule)) = (name, namespace, model, schedule) else {
            return Err(ValidationErrors(errs.into_vec()));
        };
        errs.finish(|| Self {
            namespace,
            name,
            description: p.description.clone(),
            labels: p.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            model,
            system_instruction: p.system_instruction.clone(),
            query,
            schedule,
            policy,
            tools,
            memory,
            governance,
            budget,
        })
    }

    fn policy_from_pb(errs: &mut Errors, p: Option<&pb::RunPolicy>) -> RunPolicy {
        let d = RunPolicy::default();
        let Some(p) = p else { return d };
        let policy = RunPolicy {
            overlap: OverlapPolicy::from_pb(p.overlap()),
            max_retries: p.max_retries.unwrap_or(d.max_retries),
            retry_delay: opt_duration(errs, "policy.retry_delay", &p.retry_delay, d.retry_delay),
            backoff: Backoff::from_pb(p.backoff()),
            max_delay: opt_duration(errs, "policy.max_delay", &p.max_delay, d.max_delay),
            timeout: opt_duration(errs, "policy.timeout", &p.timeout, d.timeout),
            max_steps: p.max_steps.unwrap_or(d.max_steps),
        };
        if policy.max_retries > 100 {
            errs.push("policy.max_retries", "must be at most 100");
        }
        if policy.timeout < Duration::from_secs(1) {
            errs.push("policy.timeout", "must be at least 1s");
        }
        if policy.max_delay < policy.retry_delay {
            errs.push("policy.max_delay", "must not be shorter than retry_delay");
        }
        if !(1..=1000).contains(&policy.max_steps) {
            errs.push("policy.max_steps", "must be between 1 and 1000");
        }
        policy
    }

    fn tools_from_pb(errs: &mut Errors, t: Option<&pb::ToolsSpec>, origin: SpecOrigin) -> ToolsSpec {
        let Some(t) = t else { return ToolsSpec::default() };
        for (i, name) in t.local.iter().enumerate() {
            if !BUILTIN_LOCAL_TOOLS.contains(&name.as_str()) {
                errs.push(
                    format!("tools.local[{i}]"),
                    format!("unknown local tool '{name}' (known: {})", BUILTIN_LOCAL_TOOLS.join(", ")),
                );
            }
            if t.local[..i].contains(name) {
                errs.push(format!("tools.local[{i}]"), format!("'{name}' is listed twice"));
            }
        }
        if t.mcp.len() > MAX_MCP_SERVERS {
            errs.push("tools.mcp", format!("at most {MAX_MCP_SERVERS} MCP servers"));
        }
        let mut mcp = Vec::with_capacity(t.mcp.len().min(MAX_MCP_SERVERS));
        for (i, m) in t.mcp.iter().enumerate().take(MAX_MCP_SERVERS) {
            let f = format!("tools.mcp[{i}]");
            let (args, map) = match &m.transport {
                Some(pb::mcp_server_spec::Transport::Stdio(s)) => (s.args.as_slice(), s.env.len()),
                Some(pb::mcp_server_spec::Transport::Http(h)) => (&[][..], h.headers.len()),
                None => (&[][..], 0),
            };
            if args.len() > MAX_MCP_ENTRIES || map > MAX_MCP_ENTRIES {
                errs.push(&f, format!("at most {MAX_MCP_ENTRIES} args, env entries or headers"));
            }
            if let Some(j) = args.iter().position(|a| a.len() > MAX_MCP_ARG) {
                errs.push(format!("{f}.args[{j}]"), format!("at most {MAX_MCP_ARG} bytes"));
            }
            let name_ok = !m.name.is_empty()
                && m.name.len() <= 32
                && m.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                errs.push(format!("{f}.name"), "is required: 1-32 characters of [A-Za-z0-9_-]");
            }
            if t.mcp[..i].iter().any(|o| o.name == m.name) {
                errs.push(format!("{f}.name"), format!("'{}' is used by two MCP servers", m.name));
            }
            let call_timeout =
                opt_duration(errs, &format!("{f}.call_timeout"), &m.call_timeout, DEFAULT_MCP_CALL_TIMEOUT);
            use pb::mcp_server_spec::Transport;
            let transport = match &m.transport {
                None => {
                    errs.push(&f, "unknown tool kind: set command (stdio) or url (streamable HTTP)");
                    None
                }
                Some(Transport::Stdio(s)) => {
                    if s.command.trim().is_empty() {
                        errs.push(format!("{f}.command"), "is required");
                    }
                    let env = s
                        .env
                        .iter()
                        .filter_map(|(k, v)| {
                            if !is_env_name(k) {
                                errs.push(format!("{f}.env.{k}"), "is not a valid environment variable name");
                            }
                            // A spawned server's environment is where its credentials go: only
                            // references, so that no secret is stored or returned by GetAgent.
                            let must_be_secret = origin == SpecOrigin::Request;
                            errs.take(ConfigValue::parse(&format!("{f}.env.{k}"), v, must_be_secret))
                                .map(|v| (k.clone(), v))
                        })
                        .collect();
                    Some(McpTransport::Stdio { command: s.command.clone(), args: s.args.clone(), env })
                }
                Some(Transport::Http(h)) => {
                    check_url(errs, &format!("{f}.url"), &h.url);
                    let headers = h
                        .headers
                        .iter()
                        .filter_map(|(k, v)| {
                            let field = format!("{f}.headers.{k}");
                            errs.take(ConfigValue::parse(&field, v, is_credential_header(k))).map(|v| (k.clone(), v))
                        })
                        .collect();
                    Some(McpTransport::Http { url: h.url.clone(), headers })
                }
            };
            if let Some(transport) = transport {
                mcp.push(McpServer { name: m.name.clone(), transport, call_timeout });
            }
        }
        ToolsSpec { local: t.local.clone(), mcp }
    }

    fn memory_from_pb(errs: &mut Errors, m: Option<&pb::MemorySpec>) -> MemoryConfig {
        let d = MemoryConfig::default();
        let Some(m) = m else { return d };
        let cfg = MemoryConfig {
            session: errs.take(SessionScope::parse("memory.session", &m.session)).unwrap_or_default(),
            recall_recent: m.recall_recent.unwrap_or(d.recall_recent),
            semantic_top_k: m.semantic_top_k.unwrap_or(d.semantic_top_k),
            store_results: m.store_results.unwrap_or(d.store_results),
        };
        if cfg.recall_recent > 1000 {
            errs.push("memory.recall_recent", "must be at most 1000");
        }
        if cfg.semantic_top_k > 100 {
            errs.push("memory.semantic_top_k", "must be at most 100");
        }
        cfg
    }

    /// The proto form, normalized: every default spelled out, so that two specs that mean the
    /// same encode the same (ApplyAgent compares them to decide "unchanged").
    pub fn to_proto(&self) -> pb::AgentSpec {
        let p = &self.policy;
        pb::AgentSpec {
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            description: self.description.clone(),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            model: Some(self.model.to_pb()),
            system_instruction: self.system_instruction.clone(),
            task: Some(pb::TaskSpec { query: self.query.clone() }),
            schedule: Some(self.schedule.to_pb()),
            policy: Some(pb::RunPolicy {
                overlap: p.overlap.to_pb() as i32,
                max_retries: Some(p.max_retries),
                retry_delay: Some(duration::to_pb(p.retry_delay)),
                backoff: p.backoff.to_pb() as i32,
                max_delay: Some(duration::to_pb(p.max_delay)),
                timeout: Some(duration::to_pb(p.timeout)),
                max_steps: Some(p.max_steps),
            }),
            tools: Some(pb::ToolsSpec {
                local: self.tools.local.clone(),
                mcp: self.tools.mcp.iter().map(McpServer::to_pb).collect(),
            }),
            memory: Some(pb::MemorySpec {
                session: self.memory.session.to_string(),
                recall_recent: Some(self.memory.recall_recent),
                semantic_top_k: Some(self.memory.semantic_top_k),
                store_results: Some(self.memory.store_results),
            }),
            // None for the default: specs stored before governance existed stay unchanged.
            governance: (!self.governance.is_default()).then(|| self.governance.to_pb()),
            budget: self.budget.to_pb(),
        }
    }
}

impl McpServer {
    fn to_pb(&self) -> pb::McpServerSpec {
        use pb::mcp_server_spec::Transport;
        let text = |m: &BTreeMap<String, ConfigValue>| m.iter().map(|(k, v)| (k.clone(), v.as_text())).collect();
        pb::McpServerSpec {
            name: self.name.clone(),
            call_timeout: Some(duration::to_pb(self.call_timeout)),
            transport: Some(match &self.transport {
                McpTransport::Stdio { command, args, env } => {
                    Transport::Stdio(pb::McpStdio { command: command.clone(), args: args.clone(), env: text(env) })
                }
                McpTransport::Http { url, headers } => {
                    Transport::Http(pb::McpHttp { url: url.clone(), headers: text(headers) })
                }
            }),
        }
    }
}
