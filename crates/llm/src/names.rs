//! Tool-name aliases for native tool calling.
//!
//! OpenAI and Anthropic accept tool names matching `^[a-zA-Z0-9_-]{1,64}$`, while MCP tools are
//! named `server.tool` and MCP servers may use any characters. Each request gets a bijective map:
//! valid names stay as they are, others get a sanitized alias (with a numeric suffix on a clash),
//! and names in responses are mapped back, so the agent loop only ever sees its own names.
use std::collections::HashMap;

use crate::{ChatRequest, Message};

const MAX_LEN: usize = 64;

/// Original ↔ wire names of one request.
#[derive(Debug, Default)]
pub(crate) struct ToolNames {
    to_wire: HashMap<String, String>,
    to_original: HashMap<String, String>,
}

impl ToolNames {
    /// Aliases for the request's tools and every tool name in its history.
    pub(crate) fn for_request(req: &ChatRequest) -> Self {
        let mut names: Vec<&str> = req.tools.iter().map(|t| t.name.as_str()).collect();
        for m in &req.messages {
            match m {
                Message::Assistant { tool_calls, .. } => names.extend(tool_calls.iter().map(|c| c.name.as_str())),
                Message::Tool { name, .. } => names.push(name),
                Message::User { .. } => {}
            }
        }
        let mut map = Self::default();
        // Valid names first, so that they keep their spelling even if an alias would clash.
        for name in names.iter().filter(|n| is_valid(n)) {
            map.insert(name, name.to_string());
        }
        for name in names.iter().filter(|n| !is_valid(n)) {
            if map.to_wire.contains_key(*name) {
                continue;
            }
            let base = sanitize(name);
            let mut alias = base.clone();
            let mut n = 2u32;
            while map.to_original.contains_key(&alias) {
                let suffix = format!("_{n}");
                alias = format!("{}{suffix}", &base[..base.len().min(MAX_LEN - suffix.len())]);
                n += 1;
            }
            map.insert(name, alias);
        }
        map
    }

    fn insert(&mut self, original: &str, wire: String) {
        self.to_original.insert(wire.clone(), original.to_owned());
        self.to_wire.insert(original.to_owned(), wire);
    }

    /// The name sent to the provider.
    pub(crate) fn wire(&self, original: &str) -> String {
        self.to_wire.get(original).cloned().unwrap_or_else(|| sanitize(original))
    }

    /// The agent's name of a name the provider returned (unknown names pass through, so that the
    /// loop can answer "no such tool").
    pub(crate) fn original(&self, wire: &str) -> String {
        self.to_original.get(wire).cloned().unwrap_or_else(|| wire.to_owned())
    }
}

fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Invalid characters become `_`; the result is ASCII, 1..=64 bytes.
fn sanitize(name: &str) -> String {
    let mut s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(MAX_LEN).collect();
    if s.is_empty() {
        s.push_str("tool");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ToolCall, ToolSpec};
    use serde_json::json;

    #[test]
    fn aliases_are_valid_unique_and_reversible() {
        let long = "x".repeat(80);
        let tools = ["read_file", "fs.read_file", "fs_read_file", "fs/read_file", "héllo", long.as_str(), ""];
        let req = ChatRequest {
            tools: tools.iter().map(|n| ToolSpec::new(*n, "", json!({}))).collect(),
            messages: vec![Message::assistant("", vec![ToolCall::new("1", "time.now", "{}")])],
            ..ChatRequest::default()
        };
        let names = ToolNames::for_request(&req);
        let mut seen = std::collections::HashSet::new();
        for original in tools.iter().copied().chain(["time.now"]) {
            let wire = names.wire(original);
            assert!(is_valid(&wire), "{wire}");
            assert!(seen.insert(wire.clone()), "duplicate alias {wire}");
            assert_eq!(names.original(&wire), original);
        }
        assert_eq!(names.wire("read_file"), "read_file");
        // The valid name keeps its spelling; the dotted one gets a suffix.
        assert_eq!(names.wire("fs_read_file"), "fs_read_file");
        assert_eq!(names.wire("fs.read_file"), "fs_read_file_2");
        assert_eq!(names.wire("time.now"), "time_now");
        assert_eq!(names.original("unknown"), "unknown");
    }
}
