//! The scheduler service (the seed's SchedulerBackend, made safe for many replicas).
//!
//! - [`rules`]: pure, clock-injected planning of ticks (interval, cron with DST rules, once,
//!   jitter, misfire policies).
//! - [`engine`]: one replica, [`Scheduler`], and its loop, split into the due-time index
//!   (`index`), shard ownership (`shards`), change sync (`changes`), firing in two steps (`fire`)
//!   and queue publishing with the outbox sweep (`outbox`). Schedules are split between replicas
//!   by shard leases in the store; each tick becomes a run with the deterministic id
//!   `RunId::for_tick(agent, tick)`, recorded in the store (unique key) and published to the work
//!   queue with that id as dedup id, so a tick fired by two replicas (failover) is one run.
//! - [`service`]: the `SchedulerService` gRPC API; [`SchedulerRole`] builds and runs a replica.

pub mod config;
pub mod engine;
mod role;
pub mod rules;
pub mod service;

pub use config::SchedulerConfig;
pub use engine::Scheduler;
pub use role::{SchedulerBuildError, SchedulerDeps, SchedulerRole};
pub use service::SchedulerApi;

/// The full gRPC name of the service (for health checks).
pub const SERVICE_NAME: &str = nightshift_proto::v1::scheduler_service_server::SERVICE_NAME;
