//! Errors of tool calls and of building a registry.
use std::time::Duration;

/// Why one tool call failed. Its `Display` text is what the model sees, so every message says
/// what went wrong in terms the model can act on (fix the arguments, try another path, give up).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// No tool of that name is registered.
    #[error("unknown tool '{name}'; available tools: {available}")]
    UnknownTool {
        /// The requested name.
        name: String,
        /// Comma-separated names of the registered tools.
        available: String,
    },
    /// The arguments are not valid JSON or do not match the tool's schema or rules.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The call was refused by policy (path outside the root, URL not on the allow-list, ...).
    #[error("denied: {0}")]
    Denied(String),
    /// The call did not finish in time.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The tool ran and reported a failure.
    #[error("{0}")]
    Failed(String),
    /// The tool's backend (an MCP server) cannot be reached right now.
    #[error("tool server '{server}' is unavailable: {message}")]
    Unavailable {
        /// MCP server name.
        server: String,
        /// Why.
        message: String,
    },
}

impl ToolError {
    /// Whether running the same call again later may succeed (a timeout or an unreachable server),
    /// as opposed to a call the model has to change.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Unavailable { .. })
    }
}

/// Why a [`ToolRegistry`](crate::ToolRegistry) could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The spec names a local tool this worker does not ship.
    #[error("unknown local tool '{name}' (known: {known})")]
    UnknownLocalTool {
        /// The requested name.
        name: String,
        /// Comma-separated built-in names.
        known: String,
    },
    /// A tool cannot be built from the worker's configuration (e.g. a bad `http_allow` entry) or
    /// its definition is malformed.
    #[error("tool '{tool}' is misconfigured: {message}")]
    InvalidConfig {
        /// Tool name.
        tool: String,
        /// What is wrong.
        message: String,
    },
    /// Two tools would be exposed under the same name.
    #[error("tool name '{0}' is registered twice")]
    DuplicateTool(String),
    /// A tool's input schema is not a valid JSON Schema.
    #[error("tool '{tool}' has an invalid input schema: {message}")]
    InvalidSchema {
        /// Tool name.
        tool: String,
        /// Compiler message.
        message: String,
    },
    /// An MCP server could not be started, initialised or asked for its tools.
    #[error("MCP server '{server}' failed to start: {message}")]
    McpStart {
        /// Server name from the spec.
        server: String,
        /// Why (never contains resolved secret values).
        message: String,
    },
}
