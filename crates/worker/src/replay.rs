//! A replay's tools (ReplayRun, docs/replay.md): with frozen tools, a call is answered from the
//! original run's recording when the tool and arguments (compared as JSON values) match one of
//! its calls; any other call is refused — the model reads why — unless the replay lets
//! read-only and idempotent calls run live. Nothing in the world is touched by a recorded call.
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use nightshift_core::pb;
use nightshift_tools::ToolOutput;
use serde_json::Value;

/// How a replay runs its tools, and whether it stores an episode.
#[derive(Debug)]
pub struct Replay {
    /// The original run.
    pub of: String,
    /// Tool calls are served from the recording.
    pub frozen: bool,
    /// Frozen: calls not in the recording run live when their tool is read-only or idempotent.
    pub live_reads: bool,
    /// Store the replay's result as an episode.
    pub store_memory: bool,
    /// Recorded results by (tool, arguments), in the order the original got them.
    recording: Mutex<HashMap<(String, Value), VecDeque<ToolOutput>>>,
}

/// Arguments as a JSON value (so that spacing and key order do not matter); text that is not
/// JSON stays text.
fn key(tool: &str, arguments: &str) -> (String, Value) {
    (tool.to_owned(), serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned())))
}

impl Replay {
    /// From what StartRun handed over.
    pub fn from_pb(spec: pb::ReplaySpec) -> Self {
        let mut recording: HashMap<(String, Value), VecDeque<ToolOutput>> = HashMap::new();
        for c in spec.recording {
            let out = ToolOutput { content: c.output, is_error: c.is_error };
            recording.entry(key(&c.tool_name, &c.arguments_json)).or_default().push_back(out);
        }
        Self {
            frozen: spec.tools != pb::ReplayTools::Live as i32,
            of: spec.replay_of,
            live_reads: spec.live_reads,
            store_memory: spec.store_memory,
            recording: Mutex::new(recording),
        }
    }

    /// The recorded result of calling `tool` with `arguments`: the original's results of that
    /// call in turn, the last one again once they are used up.
    pub fn recorded(&self, tool: &str, arguments: &str) -> Option<ToolOutput> {
        let mut recording = self.recording.lock().unwrap_or_else(PoisonError::into_inner);
        let results = recording.get_mut(&key(tool, arguments))?;
        if results.len() > 1 { results.pop_front() } else { results.front().cloned() }
    }

    /// What the model reads when a frozen replay refuses a call.
    pub fn refusal(&self, tool: &str) -> String {
        format!(
            "{tool} with these arguments is not in the recording of run {}: this replay's tools are frozen, \
             so it does not call tools anew",
            self.of
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(tool: &str, args: &str, output: &str) -> pb::RecordedCall {
        pb::RecordedCall { tool_name: tool.into(), arguments_json: args.into(), output: output.into(), is_error: false }
    }

    #[test]
    fn recorded_calls_match_by_tool_and_json_value_in_order() {
        let replay = Replay::from_pb(pb::ReplaySpec {
            replay_of: "r1".into(),
            recording: vec![
                call("get", r#"{"a": 1, "b": 2}"#, "first"),
                call("get", r#"{"a":1,"b":2}"#, "second"),
                call("get", r#"{"a": 3}"#, "other"),
            ],
            ..Default::default()
        });
        assert!(replay.frozen && !replay.store_memory);
        let got = |args: &str| replay.recorded("get", args).map(|o| o.content);
        assert_eq!(got(r#"{"b":2,"a":1}"#).as_deref(), Some("first"));
        assert_eq!(got(r#"{"a":1,"b":2}"#).as_deref(), Some("second"));
        assert_eq!(got(r#"{"a":1,"b":2}"#).as_deref(), Some("second"), "the last result again");
        assert_eq!(got(r#"{"a":3}"#).as_deref(), Some("other"));
        assert_eq!(got(r#"{"a":4}"#), None);
        assert_eq!(replay.recorded("put", r#"{"a":3}"#).map(|o| o.content), None);
        assert!(replay.refusal("get").contains("not in the recording of run r1"));
    }
}
