//! The worker service (the seed's BackgroundOmniAgent, scaled out): stateless processes that
//! take run requests from the work queue, get a fenced lease from the manager (`StartRun`), run
//! the agent loop (LLM + local and MCP tools) with heartbeats, checkpoint every LLM response and
//! tool result, and end the attempt with `FinishRun` — retried with backoff by the manager's
//! policy, resumed from the checkpoints by whichever worker gets the run next.
//!
//! Modules:
//! - `runner` — the [`Worker`]: queue loop, `StartRun` and ack/nack per delivery, one attempt
//!   under heartbeats and the timeout, checkpoints, `FinishRun`, cancel and drain;
//! - [`agent`] — the agent loop itself (LLM → tools → …, resumed from checkpoints);
//! - [`governed`] — tool policy, approvals and budget per call; [`replay`] — a replay's frozen
//!   tools;
//! - [`memory`] — recall before a run, the episode stored after it, and the run's working-memory
//!   notes from one attempt to the next, via the memory service;
//! - [`events`] — the run lifecycle events;
//! - [`service`] — `WorkerService` (status, drain, cancel) over a [`Worker`];
//! - `role` — options → [`WorkerRole`], for the binary and `nightshift dev`;
//! - [`config`] — [`WorkerConfig`].

pub mod agent;
pub mod config;
pub mod events;
pub mod governed;
pub mod memory;
pub mod replay;
mod role;
mod runner;
pub mod service;

pub use config::WorkerConfig;
pub use events::{EventFn, publisher_fn};
pub use role::{WorkerBuildError, WorkerDeps, WorkerRole};
pub use runner::Worker;
pub use service::WorkerApi;

/// The full gRPC name of the service (for health checks).
pub const SERVICE_NAME: &str = nightshift_proto::v1::worker_service_server::SERVICE_NAME;
