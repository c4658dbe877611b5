//! The built-in local tools every worker ships. Their names are exactly
//! [`BUILTIN_LOCAL_TOOLS`](nightshift_core::BUILTIN_LOCAL_TOOLS), which agent specs are validated
//! against.
use std::sync::Arc;

use crate::{Tool, ToolError, ToolsConfig};

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

/// Every built-in tool: its name and how to build it from the worker's configuration.
const BUILTINS: &[(&str, Constructor)] = &[
    ("calculate_area", |_| Ok(Arc::new(CalculateArea))),
    ("get_system_info", |_| Ok(Arc::new(GetSystemInfo))),
    ("format_data", |_| Ok(Arc::new(FormatData))),
    ("http_get", |c| Ok(Arc::new(HttpGet::new(c)?))),
    ("read_file", |c| Ok(Arc::new(ReadFile::new(c)))),
    ("list_dir", |c| Ok(Arc::new(ListDir::new(c)))),
];

/// Names of the built-in local tools, in registration order.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|(n, _)| *n).collect()
}

/// Builds the built-in tool `name`; `None` if there is no such tool, `Some(Err)` if the
/// configuration does not allow building it.
pub fn builtin(name: &str, config: &ToolsConfig) -> Option<Result<Arc<dyn Tool>, String>> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, make)| make(config))
}

/// Deserialises schema-valid arguments into a tool's argument struct. The schema already
/// checked them, so a failure here means schema and struct disagree; it is still reported to
/// the model instead of panicking.
pub(crate) fn parse_args<T: serde::de::DeserializeOwned>(args: serde_json::Value) -> Result<T, ToolError> {
    serde_json::from_value(args).map_err(|e| ToolError::InvalidArguments(e.to_string()))
}
