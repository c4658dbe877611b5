//! Event types published on the event stream.
use serde::{Deserialize, Serialize};

use crate::pb;

/// The kinds of events. The first four are the seed's run lifecycle, in the order a run emits
/// them: `BACKGROUND_TASK_STARTED`, `BACKGROUND_AGENT_STATUS(running)`, … ,
/// `BACKGROUND_TASK_COMPLETED` or `BACKGROUND_TASK_ERROR`, `BACKGROUND_AGENT_STATUS(idle)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    /// A run attempt began.
    BackgroundTaskStarted,
    /// A run succeeded.
    BackgroundTaskCompleted,
    /// A run attempt failed.
    BackgroundTaskError,
    /// The agent became `running` or `idle`.
    BackgroundAgentStatus,
    /// An agent was registered.
    AgentCreated,
    /// An agent's spec changed.
    AgentUpdated,
    /// An agent was deleted.
    AgentDeleted,
    /// An agent was paused.
    AgentPaused,
    /// An agent was resumed.
    AgentResumed,
    /// A run was queued.
    RunQueued,
    /// A run was skipped by the overlap policy or because the agent is paused.
    RunSkipped,
    /// A failed attempt will be retried.
    RunRetrying,
    /// A run was cancelled.
    RunCancelled,
    /// The agent loop called the LLM.
    LlmCall,
    /// The agent loop called a tool.
    ToolCall,
    /// The scheduler fired a tick.
    ScheduleFired,
    /// The scheduler skipped ticks (misfire policy).
    ScheduleMissed,
    /// A mutating call: who (principal, role), what (method), with what result (code).
    Audit,
    /// A run parked for a person's approval of a tool call.
    ApprovalRequested,
    /// A person approved or denied a call, or its approval expired.
    ApprovalDecided,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 20] = [
        Self::BackgroundTaskStarted,
        Self::BackgroundTaskCompleted,
        Self::BackgroundTaskError,
        Self::BackgroundAgentStatus,
        Self::AgentCreated,
        Self::AgentUpdated,
        Self::AgentDeleted,
        Self::AgentPaused,
        Self::AgentResumed,
        Self::RunQueued,
        Self::RunSkipped,
        Self::RunRetrying,
        Self::RunCancelled,
        Self::LlmCall,
        Self::ToolCall,
        Self::ScheduleFired,
        Self::ScheduleMissed,
        Self::Audit,
        Self::ApprovalRequested,
        Self::ApprovalDecided,
    ];

    /// To the proto enum.
    pub fn to_pb(self) -> pb::EventType {
        use pb::EventType as P;
        match self {
            Self::BackgroundTaskStarted => P::BackgroundTaskStarted,
            Self::BackgroundTaskCompleted => P::BackgroundTaskCompleted,
            Self::BackgroundTaskError => P::BackgroundTaskError,
            Self::BackgroundAgentStatus => P::BackgroundAgentStatus,
            Self::AgentCreated => P::AgentCreated,
            Self::AgentUpdated => P::AgentUpdated,
            Self::AgentDeleted => P::AgentDeleted,
            Self::AgentPaused => P::AgentPaused,
            Self::AgentResumed => P::AgentResumed,
            Self::RunQueued => P::RunQueued,
            Self::RunSkipped => P::RunSkipped,
            Self::RunRetrying => P::RunRetrying,
            Self::RunCancelled => P::RunCancelled,
            Self::LlmCall => P::LlmCall,
            Self::ToolCall => P::ToolCall,
            Self::ScheduleFired => P::ScheduleFired,
            Self::ScheduleMissed => P::ScheduleMissed,
            Self::Audit => P::Audit,
            Self::ApprovalRequested => P::ApprovalRequested,
            Self::ApprovalDecided => P::ApprovalDecided,
        }
    }

    /// From the proto enum; `None` for `UNSPECIFIED`.
    pub fn from_pb(v: pb::EventType) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.to_pb() == v)
    }

    /// The seed's spelling, e.g. `BACKGROUND_TASK_STARTED` (the proto name without its prefix).
    pub fn as_str(self) -> &'static str {
        self.to_pb().as_str_name().trim_start_matches("EVENT_TYPE_")
    }

    /// Parses the seed's spelling (case-insensitive, `EVENT_TYPE_` prefix optional).
    pub fn parse(s: &str) -> Option<Self> {
        let up = s.trim().to_ascii_uppercase();
        let bare = up.trim_start_matches("EVENT_TYPE_");
        Self::ALL.into_iter().find(|t| t.as_str() == bare)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_names() {
        assert_eq!(EventType::BackgroundTaskStarted.as_str(), "BACKGROUND_TASK_STARTED");
        assert_eq!(EventType::parse("background_agent_status"), Some(EventType::BackgroundAgentStatus));
        for t in EventType::ALL {
            assert_eq!(EventType::from_pb(t.to_pb()), Some(t));
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
    }
}
