//! The tool abstraction shared by local tools and MCP tools.
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use nightshift_core::governance::Hints;

use crate::ToolError;

/// Where a tool runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToolSource {
    /// In the worker process.
    Local,
    /// On an MCP server of the agent's spec.
    Mcp {
        /// Server name from the spec.
        server: String,
        /// The tool's own name on that server (the exposed name is prefixed and sanitised).
        tool: String,
    },
}

/// What the model is told about a tool, and what the runtime needs to know about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    /// Name the model calls it by; only `[A-Za-z0-9_-]`, at most 64 characters (the
    /// OpenAI function-name rule, which Anthropic's is a superset of).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub input_schema: Value,
    /// Where it runs.
    pub source: ToolSource,
    /// Its annotations (MCP `ToolAnnotations`; local tools declare theirs). They imply its
    /// effect class (a durable run may repeat an interrupted read or idempotent call; an
    /// irreversible one is reported as of unknown outcome instead) and rules of the agent's tool
    /// policy may select by them.
    #[serde(skip)]
    pub hints: Hints,
}

/// The result of a call, as it goes back to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// Text for the model (the result, or the error message).
    pub content: String,
    /// Whether the call failed.
    pub is_error: bool,
}

impl ToolOutput {
    /// A successful result.
    pub fn ok(content: impl Into<String>) -> Self {
        Self { content: content.into(), is_error: false }
    }

    /// A failed call, with a message for the model.
    pub fn error(content: impl Into<String>) -> Self {
        Self { content: content.into(), is_error: true }
    }
}

impl From<Result<String, ToolError>> for ToolOutput {
    fn from(r: Result<String, ToolError>) -> Self {
        match r {
            Ok(s) => Self::ok(s),
            Err(e) => Self::error(e.to_string()),
        }
    }
}

/// A tool implemented in the worker process.
///
/// The registry validates the arguments against [`ToolDef::input_schema`] before `call`, and
/// applies the timeout, so an implementation only checks what a schema cannot express.
#[async_trait]
pub trait Tool: Send + Sync {
    /// Name, description, schema and flags. Called once, when the tool is registered.
    fn definition(&self) -> ToolDef;

    /// Runs the tool with schema-valid arguments and returns the text for the model.
    async fn call(&self, args: Value) -> Result<String, ToolError>;
}
