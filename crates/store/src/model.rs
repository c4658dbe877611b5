//! Records returned by the store.
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{AgentId, AgentSpec, AgentState, Namespace, RunId, RunStatus, TriggerKind, WorkerId};

/// A stored agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    /// Id.
    pub id: AgentId,
    /// Spec version (1 on creation, +1 per change).
    pub version: u64,
    /// Active or paused.
    pub state: AgentState,
    /// The current spec.
    pub spec: AgentSpec,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change (spec or state).
    pub updated_at: DateTime<Utc>,
}

/// One recorded version of an agent's spec.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentVersion {
    /// Its number (1 on creation).
    pub version: u64,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// The spec as it was.
    pub spec: AgentSpec,
}

/// The runs of an agent created in one hour.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HourRuns {
    /// The start of the hour (UTC).
    pub hour: DateTime<Utc>,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed or timed out.
    pub failed: u64,
    /// Queued, running, skipped or cancelled.
    pub other: u64,
    /// Mean wall-clock duration of the succeeded ones.
    pub mean_duration: Option<Duration>,
}

/// The scheduler replicas and who holds which shard, as the database has them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerView {
    /// Each member that heartbeats, with its last heartbeat and the shards it holds a live
    /// lease on (ascending).
    pub members: Vec<(String, DateTime<Utc>, Vec<u32>)>,
    /// Shards below the shard count without a live lease.
    pub unowned: Vec<u32>,
}

/// What ApplyAgent did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A new agent.
    Created,
    /// The spec changed; the version went up.
    Updated,
    /// The spec was identical; nothing changed.
    Unchanged,
}

/// A page of results with the token of the next page.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// Items.
    pub items: Vec<T>,
    /// Token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// ListAgents filter.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    /// Only agents of these namespaces (`None` = every namespace).
    pub namespaces: Option<Vec<Namespace>>,
    /// Agents carrying all these labels.
    pub labels: BTreeMap<String, String>,
    /// Only this state.
    pub state: Option<AgentState>,
    /// Only names containing this text (names are lowercase; the text is matched lowercased).
    pub name_contains: Option<String>,
    /// Page size (1..=1000).
    pub limit: u32,
    /// Token from a previous page.
    pub page_token: Option<String>,
}

/// ListRuns filter.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs of agents in these namespaces (`None` = every namespace).
    pub namespaces: Option<Vec<Namespace>>,
    /// Only this agent.
    pub agent_id: Option<AgentId>,
    /// Only these states (empty = all).
    pub statuses: Vec<RunStatus>,
    /// Page size (1..=1000).
    pub limit: u32,
    /// Token from a previous page.
    pub page_token: Option<String>,
}

/// A run to record as queued.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Id (deterministic for schedule ticks).
    pub id: RunId,
    /// Agent.
    pub agent_id: AgentId,
    /// What created it.
    pub trigger: TriggerKind,
    /// The tick (scheduled runs).
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Replaces the task query for this run.
    pub query_override: Option<String>,
}

impl NewRun {
    /// A manually triggered run of `agent_id`, with the agent's own task.
    pub fn manual(id: RunId, agent_id: AgentId) -> Self {
        Self { id, agent_id, trigger: TriggerKind::Manual, scheduled_for: None, query_override: None }
    }
}

/// A stored run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Id.
    pub id: RunId,
    /// Agent.
    pub agent_id: AgentId,
    /// Agent name (joined).
    pub agent_name: String,
    /// The agent's namespace (joined).
    pub namespace: Namespace,
    /// Spec version it runs.
    pub agent_version: u64,
    /// State.
    pub status: RunStatus,
    /// Origin.
    pub trigger: TriggerKind,
    /// Tick.
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Query override.
    pub query_override: Option<String>,
    /// Fencing token (attempts started).
    pub attempt: u32,
    /// Failed attempts so far.
    pub retries: u32,
    /// Current/last worker.
    pub worker_id: Option<WorkerId>,
    /// Lease end while running.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Earliest start of the next attempt (retry backoff).
    pub not_before: Option<DateTime<Utc>>,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// First start.
    pub started_at: Option<DateTime<Utc>>,
    /// End.
    pub finished_at: Option<DateTime<Utc>>,
    /// Final answer.
    pub result: Option<String>,
    /// Last error.
    pub error: Option<String>,
    /// Why skipped / cancelled.
    pub reason: Option<String>,
    /// Prompt tokens over all attempts.
    pub input_tokens: u64,
    /// Completion tokens over all attempts.
    pub output_tokens: u64,
    /// Times the run lost its worker and was resumed ([`nightshift_core::lifecycle::decide_lost_lease`]).
    pub lost_leases: u32,
    /// Where the worker holding (or last holding) it listens, if it said so.
    pub worker_endpoint: Option<String>,
    /// The run this one replays (ReplayRun).
    pub replay_of: Option<RunId>,
}

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// Position (0-based).
    pub seq: u32,
    /// Attempt that wrote it.
    pub attempt: u32,
    /// `llm_response` or `tool_result`.
    pub kind: String,
    /// Encoded `nightshift.v1.RunStep`.
    pub payload: Vec<u8>,
    /// Write time.
    pub created_at: DateTime<Utc>,
}

/// Aggregates over an agent's runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentStats {
    /// Runs per status.
    pub by_status: BTreeMap<RunStatus, u64>,
    /// Total prompt tokens.
    pub input_tokens: u64,
    /// Total completion tokens.
    pub output_tokens: u64,
    /// Mean wall-clock duration of succeeded runs.
    pub mean_duration: Option<Duration>,
    /// Most recent run.
    pub last_run: Option<RunRecord>,
    /// Most recent run with an error.
    pub last_error: Option<(String, DateTime<Utc>)>,
    /// What its LLM calls cost (the ledger), micro-USD.
    pub cost_micros: u64,
}

impl AgentStats {
    /// Runs in `status`.
    pub fn count(&self, status: RunStatus) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// All runs.
    pub fn total(&self) -> u64 {
        self.by_status.values().sum()
    }
}
