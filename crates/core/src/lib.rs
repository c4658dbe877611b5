//! Nightshift domain model.
//!
//! Everything the services agree on lives here: newtype ids, the validated [`AgentSpec`] with its
//! [`Schedule`] and [`RunPolicy`], run states, event types, the [`Clock`] and the YAML manifest
//! form users write, and the run-lifecycle rules ([`lifecycle`]: lease expiry, overlap, retry)
//! as pure functions the store executes. Proto messages are converted *into* these types
//! through one validation function per message ([`AgentSpec::from_proto`]), which names the
//! offending field on error.

pub mod admission;
pub mod auth;
pub mod backoff;
pub mod budget;
pub mod clock;
pub mod config;
pub mod cost;
pub mod duration;
pub mod error;
pub mod event;
pub mod governance;
pub mod ids;
pub mod lifecycle;
pub mod manifest;
pub mod namespace;
pub mod operator_policy;
pub mod policy;
pub mod redact;
pub mod run;
pub mod schedule;
pub mod spec;
pub mod time;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ValidationError, ValidationErrors, one_line};
pub use event::EventType;
pub use ids::{AgentId, AgentName, RunId, WorkerId};
pub use manifest::AgentManifest;
pub use namespace::{Namespace, Namespaces};
pub use policy::{Backoff, OverlapPolicy, RunPolicy};
pub use redact::redact_url;
pub use run::{AgentState, RunOutcome, RunStatus, TriggerKind};
pub use schedule::{CronSpec, MisfirePolicy, Schedule, Trigger};
pub use spec::{
    AgentSpec, BUILTIN_LOCAL_TOOLS, ConfigValue, MAX_STOP_SEQUENCES, McpServer, McpTransport, MemoryConfig,
    ModelConfig, ModelProvider, Sampling, SecretRef, SessionScope, SpecOrigin, ToolCallMode, ToolsSpec,
};

/// The generated `nightshift.v1` proto types, re-exported for convenience.
pub use nightshift_proto::v1 as pb;
