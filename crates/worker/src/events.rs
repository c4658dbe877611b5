//! The run lifecycle events a worker emits, in the seed's order:
//! `BACKGROUND_TASK_STARTED`, `BACKGROUND_AGENT_STATUS(running)`, LLM/tool calls,
//! `BACKGROUND_TASK_COMPLETED` or `BACKGROUND_TASK_ERROR`, `BACKGROUND_AGENT_STATUS(idle)`.
use std::sync::Arc;

use nightshift_core::{EventType, pb, time};

/// Where events go. Must not block or fail. In production it is
/// [`nightshift_events_client::EventPublisher::publish`] (see [`publisher_fn`]).
pub type EventFn = Arc<dyn Fn(pb::Event) + Send + Sync>;

/// An [`EventFn`] publishing through the event service.
pub fn publisher_fn(publisher: nightshift_events_client::EventPublisher) -> EventFn {
    Arc::new(move |e| publisher.publish(e))
}

/// Emits the events of one run.
#[derive(Clone)]
pub struct RunEvents {
    sink: Option<EventFn>,
    source: String,
    agent_id: String,
    agent_name: String,
    namespace: String,
    run_id: String,
}

impl RunEvents {
    /// Events of `run` (of agent `agent_name`), published by `source` (e.g. `worker/host-1`).
    pub fn new(sink: Option<EventFn>, source: String, run: &pb::Run, agent_name: String) -> Self {
        Self {
            sink,
            source,
            agent_id: run.agent_id.clone(),
            agent_name,
            namespace: run.namespace.clone(),
            run_id: run.id.clone(),
        }
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
                data: Some(nightshift_events_client::json_to_struct(data)),
                namespace: self.namespace.clone(),
            });
        }
    }
}
