//! The run lifecycle events a worker emits, in the seed's order:
//! `BACKGROUND_TASK_STARTED`, `BACKGROUND_AGENT_STATUS(running)`, LLM/tool calls,
//! `BACKGROUND_TASK_COMPLETED` or `BACKGROUND_TASK_ERROR`, `BACKGROUND_AGENT_STATUS(idle)`.
use std::sync::Arc;

use nightshift_core::{EventType, pb, time};

/// Where events go (the event service's publisher in production). Must not block or fail.
pub type EventFn = Arc<dyn Fn(pb::Event) + Send + Sync>;

/// Converts JSON to a protobuf `Struct` (objects only; other values are wrapped as `{"value": v}`).
pub fn json_struct(v: serde_json::Value) -> prost_types::Struct {
    fn value(v: serde_json::Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue { values: a.into_iter().map(value).collect() }),
            serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
                fields: o.into_iter().map(|(k, v)| (k, value(v))).collect(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }
    match v {
        serde_json::Value::Object(o) => prost_types::Struct { fields: o.into_iter().map(|(k, v)| (k, value(v))).collect() },
        other => prost_types::Struct { fields: [("value".to_owned(), value(other))].into_iter().collect() },
    }
}

/// Emits the events of one run.
#[derive(Clone)]
pub struct RunEvents {
    sink: Option<EventFn>,
    source: String,
    agent_id: String,
    agent_name: String,
    run_id: String,
}

impl RunEvents {
    /// Events of `run_id` of the agent, published by `source` (e.g. `worker/host-1`).
    pub fn new(sink: Option<EventFn>, source: String, agent_id: String, agent_name: String, run_id: String) -> Self {
        Self { sink, source, agent_id, agent_name, run_id }
    }

    /// Emits one event with `data`.
    pub fn emit(&self, ty: EventType, data: serde_json::Value) {
        tracing::debug!(event = ty.as_str(), run = %self.run_id, "event");
        if let Some(sink) = &self.sink {
            sink(pb::Event {
                cursor: String::new(),
                id: uuid::Uuid::now_v7().to_string(),
                r#type: ty.to_pb() as i32,
                time: Some(time::to_pb(chrono::Utc::now())),
                agent_id: self.agent_id.clone(),
                agent_name: self.agent_name.clone(),
                run_id: self.run_id.clone(),
                source: self.source.clone(),
                data: Some(json_struct(data)),
            });
        }
    }
}
