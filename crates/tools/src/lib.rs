//! The tools an agent can call: built-in local tools and tools of MCP servers, behind one
//! [`ToolRegistry`].
//!
//! A registry is built from an agent's [`ToolsSpec`](nightshift_core::ToolsSpec) plus the worker's
//! [`ToolsConfig`]. It hands the model [`ToolDef`]s ([`ToolRegistry::definitions`]) and executes the
//! model's calls ([`ToolRegistry::call`]): arguments are validated against the tool's JSON Schema
//! first, every call has a timeout, and every failure comes back as a [`ToolOutput`] with
//! `is_error = true` and a message the model can act on, never as a panic or a failed run.
//!
//! MCP servers (stdio child processes or streamable HTTP) are reached through the official `rmcp`
//! SDK. Their tools are listed once at start and exposed as `<server>__<tool>` (see
//! [`mcp_tool_name`]), a stdio server that dies is restarted on the next call (bounded, with
//! backoff), and [`ToolRegistry::shutdown`] stops every server and kills every child.

mod config;
mod error;
pub mod local;
mod mcp;
mod registry;
mod schema;
mod tool;

pub use config::ToolsConfig;
pub use error::{RegistryError, ToolError};
pub use mcp::{McpServerStatus, mcp_tool_name};
pub use registry::ToolRegistry;
pub use tool::{Tool, ToolDef, ToolOutput, ToolSource};
