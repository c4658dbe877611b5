//! The worker service (the seed's BackgroundOmniAgent, scaled out): stateless processes that
//! take run requests from the work queue, get a fenced lease from the manager (`StartRun`), run
//! the agent loop (LLM + local and MCP tools) with heartbeats, checkpoint every LLM response and
//! tool result, and end the attempt with `FinishRun` — retried with backoff by the manager's
//! policy, resumed from the checkpoints by whichever worker gets the run next.

pub mod agent;
pub mod config;
pub mod events;
pub mod memory;
pub mod service;
pub mod worker;

pub use config::WorkerConfig;
pub use events::{EventFn, publisher_fn};
pub use service::WorkerApi;
pub use worker::Worker;

/// The full gRPC name of the service (for health checks).
pub const SERVICE_NAME: &str = nightshift_proto::v1::worker_service_server::SERVICE_NAME;
