//! The scheduler service (the seed's SchedulerBackend, made safe for many replicas).
//!
//! - [`rules`]: pure, clock-injected planning of ticks (interval, cron with DST rules, once,
//!   jitter, misfire policies).
//! - [`engine`]: the due-time index and firing loop. Schedules are split between replicas by
//!   shard leases in the store; each tick becomes a run with the deterministic id
//!   `RunId::for_tick(agent, tick)`, recorded in the store (unique key) and published to the work
//!   queue with that id as dedup id, so a tick fired by two replicas (failover) is one run.
//! - [`service`]: the `SchedulerService` gRPC API.

pub mod config;
pub mod engine;
pub mod rules;
pub mod service;

pub use config::SchedulerConfig;
pub use engine::Scheduler;
pub use service::SchedulerApi;

/// The full gRPC name of the service (for health checks).
pub const SERVICE_NAME: &str = nightshift_proto::v1::scheduler_service_server::SERVICE_NAME;
