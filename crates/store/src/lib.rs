//! SQL persistence of agents (versioned), runs and run steps (checkpoints).
//!
//! One code path serves SQLite (the embedded default) and Postgres: queries go through sqlx's
//! `Any` driver with `$N` placeholders and portable SQL; only the migrations differ per backend
//! (`migrations/sqlite`, `migrations/postgres`). Instants are stored as unix milliseconds. The
//! exception is the usual case of the run path's writes on SQLite — a start, a checkpoint, an
//! end — which run on the group writer's own connection and thread (`usual_sqlite.rs`, with the
//! same statements where they are the same), falling back to the common path for every other case.
//!
//! Concurrency: every transaction that decides something about an agent's runs starts by
//! bumping `agents.lock_seq`. On Postgres that takes the agent's row lock; on SQLite it takes the
//! database write lock. Either way, decisions about one agent (overlap policy, version checks)
//! are serialized without `SELECT ... FOR UPDATE`, which SQLite lacks. (The group writer's own
//! connection holds the write lock from its `BEGIN IMMEDIATE`: its usual start needs no bump.)

mod agents;
mod api_keys;
mod approvals;
mod checkpoint;
mod costs;
mod db;
mod error;
mod fence;
mod finish;
mod group_commit;
mod lease_recovery;
mod model;
mod replays;
mod run_lifecycle;
mod runs;
mod schedules;
mod shards;
mod usual_sqlite;

pub use api_keys::{ApiKeyRecord, KEY_PREFIX, KeyRefused, parse_key};
pub use approvals::{ApprovalCall, ApprovalFilter, ApprovalRecord, Decided, ParkInput, Verdict};
pub use costs::{CostGroup, CostRow, StepCost};
pub use db::{Backend, Store, redact};
pub use error::{StoreError, status_from_store};
pub use finish::{Finished, WaitingLookup};
pub use lease_recovery::Recovered;
pub use model::{
    AgentFilter, AgentRecord, AgentStats, AgentVersion, ApplyOutcome, HourRuns, NewRun, Page, RunFilter, RunRecord,
    SchedulerView, StepRecord,
};
pub use nightshift_sqlite::GroupCommitStats;
pub use replays::NewReplay;
pub use run_lifecycle::{Fence, FinishInput, LlmCall, StartInput, StartOutcome, StepInput, WaitingRun};
pub use schedules::{ScheduledAgent, StaleRun, TickFire, TickOutcome};
