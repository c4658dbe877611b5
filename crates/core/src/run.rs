//! Run and agent states.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::pb;

/// Lifecycle state of a run.
///
/// `queued → running → succeeded | failed | timed_out | cancelled`, `queued → skipped |
/// cancelled`, and `running → queued` when a failed attempt is retried or a worker hands the run
/// back; `running → awaiting_approval → queued | failed | cancelled` when a tool call waits for
/// a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a worker (or for its retry backoff).
    Queued,
    /// A worker holds the lease.
    Running,
    /// Finished with a final answer.
    Succeeded,
    /// Finished with an error after all retries.
    Failed,
    /// Not run (overlap policy or paused agent).
    Skipped,
    /// Stopped on request.
    Cancelled,
    /// Exceeded the policy timeout on its last attempt.
    TimedOut,
    /// Parked until a person decides on a tool call; no worker holds it.
    AwaitingApproval,
    /// Not started: its budget's period is spent; queued again when it ends.
    AwaitingBudget,
}

impl RunStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [RunStatus; 9] = [
        Self::Queued,
        Self::Running,
        Self::AwaitingApproval,
        Self::AwaitingBudget,
        Self::Succeeded,
        Self::Failed,
        Self::Skipped,
        Self::Cancelled,
        Self::TimedOut,
    ];

    /// True once the run can no longer change.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running | Self::AwaitingApproval | Self::AwaitingBudget)
    }

    /// Storage / CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::AwaitingApproval => "awaiting_approval",
            Self::AwaitingBudget => "awaiting_budget",
        }
    }

    /// To the proto enum.
    pub fn to_pb(self) -> pb::RunStatus {
        match self {
            Self::Queued => pb::RunStatus::Queued,
            Self::Running => pb::RunStatus::Running,
            Self::Succeeded => pb::RunStatus::Succeeded,
            Self::Failed => pb::RunStatus::Failed,
            Self::Skipped => pb::RunStatus::Skipped,
            Self::Cancelled => pb::RunStatus::Cancelled,
            Self::TimedOut => pb::RunStatus::TimedOut,
            Self::AwaitingApproval => pb::RunStatus::AwaitingApproval,
            Self::AwaitingBudget => pb::RunStatus::AwaitingBudget,
        }
    }

    /// From the proto enum; `None` for `UNSPECIFIED`.
    pub fn from_pb(v: pb::RunStatus) -> Option<Self> {
        Some(match v {
            pb::RunStatus::Unspecified => return None,
            pb::RunStatus::Queued => Self::Queued,
            pb::RunStatus::Running => Self::Running,
            pb::RunStatus::Succeeded => Self::Succeeded,
            pb::RunStatus::Failed => Self::Failed,
            pb::RunStatus::Skipped => Self::Skipped,
            pb::RunStatus::Cancelled => Self::Cancelled,
            pb::RunStatus::TimedOut => Self::TimedOut,
            pb::RunStatus::AwaitingApproval => Self::AwaitingApproval,
            pb::RunStatus::AwaitingBudget => Self::AwaitingBudget,
        })
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| format!("unknown run status '{s}'"))
    }
}

/// What created a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// A schedule tick.
    Schedule,
    /// TriggerAgent / `nightshift agent trigger`.
    Manual,
}

impl TriggerKind {
    /// Storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Manual => "manual",
        }
    }

    /// To the proto enum.
    pub fn to_pb(self) -> pb::TriggerKind {
        match self {
            Self::Schedule => pb::TriggerKind::Schedule,
            Self::Manual => pb::TriggerKind::Manual,
        }
    }
}

impl FromStr for TriggerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "schedule" => Ok(Self::Schedule),
            "manual" => Ok(Self::Manual),
            _ => Err(format!("unknown trigger kind '{s}'")),
        }
    }
}

/// How a worker ends an attempt (FinishRun).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunOutcome {
    /// Final answer produced.
    Succeeded,
    /// The attempt failed; retried while the policy allows.
    Failed,
    /// The attempt exceeded the timeout; retried while the policy allows.
    TimedOut,
    /// Stopped on request.
    Cancelled,
    /// Handed back without counting a failure (drain).
    Released,
}

impl RunOutcome {
    /// From the proto enum; `None` for `UNSPECIFIED`.
    pub fn from_pb(v: pb::RunOutcome) -> Option<Self> {
        Some(match v {
            pb::RunOutcome::Unspecified => return None,
            pb::RunOutcome::Succeeded => Self::Succeeded,
            pb::RunOutcome::Failed => Self::Failed,
            pb::RunOutcome::TimedOut => Self::TimedOut,
            pb::RunOutcome::Cancelled => Self::Cancelled,
            pb::RunOutcome::Released => Self::Released,
        })
    }
}

/// Whether an agent's schedule is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Scheduled and runnable.
    Active,
    /// No run starts until resumed.
    Paused,
}

impl AgentState {
    /// Storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
        }
    }

    /// To the proto enum.
    pub fn to_pb(self) -> pb::AgentState {
        match self {
            Self::Active => pb::AgentState::Active,
            Self::Paused => pb::AgentState::Paused,
        }
    }
}

impl FromStr for AgentState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Self::Active),
            "paused" => Ok(Self::Paused),
            _ => Err(format!("unknown agent state '{s}'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_strings_round_trip() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), s);
            assert_eq!(RunStatus::from_pb(s.to_pb()), Some(s));
        }
        assert!(RunStatus::Skipped.is_terminal());
        assert!(!RunStatus::Queued.is_terminal());
    }
}
