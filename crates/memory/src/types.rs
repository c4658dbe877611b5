//! The memory domain: types, scopes, records and queries shared by every backend.
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The four kinds of memory an agent has. What each means to a run (who writes it, in which
/// scope, when it is read, how long it lives) is in `docs/architecture.md`, "Memory around a run".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryType {
    /// Scratch of one run, in its `run:<run_id>` scope: what its earlier attempts left for the
    /// next one. The worker clears it when the run ends; `working_ttl` is the backstop.
    Working,
    /// What happened in each run (task and result), one episode per successful run, and the
    /// summaries that replace old episodes.
    Episodic,
    /// Facts worth keeping, searchable by meaning.
    LongTerm,
    /// How the agent does its job: task patterns and notes.
    Procedural,
}

impl MemoryType {
    /// Every type, in proto order.
    pub const ALL: [MemoryType; 4] = [Self::Working, Self::Episodic, Self::LongTerm, Self::Procedural];

    /// The stable name used in storage keys and config (`working`, `episodic`, `long_term`, `procedural`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Working => "working",
            Self::Episodic => "episodic",
            Self::LongTerm => "long_term",
            Self::Procedural => "procedural",
        }
    }
}

impl fmt::Display for MemoryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MemoryType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not one of working, episodic, long_term, procedural"))
    }
}

/// Where a record lives: an agent's session (`agent`, `run:<run_id>`) or a shared one
/// (`fixed:<id>`).
///
/// A `fixed:<id>` scope belongs to no agent: it is shared by every agent naming it, so its
/// `agent_id` is always empty ([`Scope::new`] drops the one given). Records, recency, search
/// filters and counts of a fixed scope are thus the same whichever agent reads or writes them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scope {
    /// Owning agent; empty for a shared `fixed:<id>` scope.
    pub agent_id: String,
    /// Session within the agent, or the shared `fixed:<id>`.
    pub session: String,
}

impl Scope {
    /// A scope of `agent_id` and `session`; for a shared `fixed:<id>` session the agent id is
    /// dropped, so that every agent naming the session gets the same scope.
    pub fn new(agent_id: impl Into<String>, session: impl Into<String>) -> Self {
        let session = session.into();
        let agent_id = if is_shared_session(&session) { String::new() } else { agent_id.into() };
        Self { agent_id, session }
    }
}

/// True for a `fixed:<id>` session.
pub fn is_shared_session(session: &str) -> bool {
    session.starts_with("fixed:")
}

/// One stored memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// Unique id (UUID v7 when assigned by the service).
    pub id: String,
    /// Kind of memory.
    pub kind: MemoryType,
    /// Owner.
    pub scope: Scope,
    /// The text.
    pub content: String,
    /// Free-form labels, usable as filters.
    pub metadata: BTreeMap<String, String>,
    /// Run that produced the record (may be empty).
    pub run_id: String,
    /// Creation instant; backends keep millisecond precision.
    pub created_at: DateTime<Utc>,
    /// Hidden from every read from this instant on (and deleted lazily).
    pub expires_at: Option<DateTime<Utc>>,
    /// True for a summary that replaced older records.
    pub summary: bool,
    /// Archived by a summary: excluded from recall, still readable by id.
    pub archived: bool,
}

impl MemoryRecord {
    /// True if the record is expired at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    /// True if every `filter` pair is in the metadata.
    pub fn matches(&self, filter: &BTreeMap<String, String>) -> bool {
        filter.iter().all(|(k, v)| self.metadata.get(k) == Some(v))
    }
}

/// What [`crate::MemoryStore::recent`] returns: newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct RecallQuery {
    /// Scope to read.
    pub scope: Scope,
    /// Type to read.
    pub kind: MemoryType,
    /// At most this many records.
    pub limit: usize,
    /// Only records created strictly before this instant (paging backwards).
    pub before: Option<DateTime<Utc>>,
    /// Only records carrying every pair.
    pub metadata: BTreeMap<String, String>,
    /// Include records archived by a summary.
    pub include_archived: bool,
}

impl RecallQuery {
    /// The newest `limit` unarchived records of `kind` in `scope`.
    pub fn new(scope: Scope, kind: MemoryType, limit: usize) -> Self {
        Self { scope, kind, limit, before: None, metadata: BTreeMap::new(), include_archived: false }
    }
}

/// Truncates an instant to milliseconds, the precision every backend keeps.
pub fn to_millis_precision(t: DateTime<Utc>) -> DateTime<Utc> {
    nightshift_core::time::from_millis(t.timestamp_millis())
}
