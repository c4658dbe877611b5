//! [`EventFilter`]: which events a read, subscription or tail returns.
use nightshift_core::{EventType, pb};

/// Which events a read or subscription returns. Empty lists match everything; within a list
/// any value matches (OR), across lists all must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Events of any of these agents.
    pub agent_ids: Vec<String>,
    /// Events of any of these runs.
    pub run_ids: Vec<String>,
    /// Events of any of these types.
    pub types: Vec<EventType>,
    /// Events of agents in any of these namespaces (an event about no agent has none, so a
    /// namespace filter leaves it out).
    pub namespaces: Vec<String>,
}

impl EventFilter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &pb::Event) -> bool {
        (self.agent_ids.is_empty() || self.agent_ids.contains(&event.agent_id))
            && (self.run_ids.is_empty() || self.run_ids.contains(&event.run_id))
            && (self.types.is_empty() || self.types.iter().any(|t| t.to_pb() as i32 == event.r#type))
            && (self.namespaces.is_empty() || self.namespaces.contains(&event.namespace))
    }
}
