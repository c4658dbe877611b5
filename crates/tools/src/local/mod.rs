//! The built-in local tools every worker ships. Their names are exactly
//! [`BUILTIN_LOCAL_TOOLS`](nightshift_core::BUILTIN_LOCAL_TOOLS), which agent specs are validated
//! against.
use std::sync::Arc;

use crate::{Tool, ToolDef, ToolError, ToolsConfig};

mod calculate_area;
mod format_data;
mod fs;
mod http_get;
mod system_info;

pub use calculate_area::CalculateArea;
pub use format_data::FormatData;
pub use fs::{ListDir, ReadFile};
pub use http_get::HttpGet;
pub use system_info::GetSystemInfo;

type Constructor = fn(&ToolsConfig) -> Result<Arc<dyn Tool>, String>;
type Usable = fn(&ToolsConfig) -> bool;

/// Every built-in tool: its name, how to build it from the worker's configuration, and whether
/// that configuration lets it do anything (the file tools need a `file_root`, `http_get` an
/// allow-list; without them they are registered but refuse every call).
const BUILTINS: &[(&str, Constructor, Usable)] = &[
    ("calculate_area", |_| Ok(Arc::new(CalculateArea)), |_| true),
    ("get_system_info", |_| Ok(Arc::new(GetSystemInfo)), |_| true),
    ("format_data", |_| Ok(Arc::new(FormatData)), |_| true),
    ("http_get", |c| Ok(Arc::new(HttpGet::new(c)?)), |c| !c.http_allow.is_empty()),
    ("read_file", |c| Ok(Arc::new(ReadFile::new(c))), |c| c.file_root.is_some()),
    ("list_dir", |c| Ok(Arc::new(ListDir::new(c))), |c| c.file_root.is_some()),
];

/// Names of the built-in local tools, in registration order.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|(n, _, _)| *n).collect()
}

/// Builds the built-in tool `name`; `None` if there is no such tool, `Some(Err)` if the
/// configuration does not allow building it.
pub fn builtin(name: &str, config: &ToolsConfig) -> Option<Result<Arc<dyn Tool>, String>> {
    BUILTINS.iter().find(|(n, _, _)| *n == name).map(|(_, make, _)| make(config))
}

/// The definitions of the built-in tools a worker with `config` really offers: those it can
/// build and whose configuration lets them act (what `GetWorkerStatus` reports).
pub fn offered(config: &ToolsConfig) -> Vec<ToolDef> {
    BUILTINS
        .iter()
        .filter(|(_, _, usable)| usable(config))
        .filter_map(|(_, make, _)| make(config).ok())
        .map(|tool| tool.definition())
        .collect()
}

/// Deserialises schema-valid arguments into a tool's argument struct. The schema already
/// checked them, so a failure here means schema and struct disagree; it is still reported to
/// the model instead of panicking.
pub(crate) fn parse_args<T: serde::de::DeserializeOwned>(args: serde_json::Value) -> Result<T, ToolError> {
    serde_json::from_value(args).map_err(|e| ToolError::InvalidArguments(e.to_string()))
}
