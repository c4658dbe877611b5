//! The manager service: the agent registry (TaskRegistry) and the single authority that starts
//! runs (BackgroundAgentManager). It owns agent specs, run records and checkpoints in the SQL
//! store and hands out run leases fenced by the attempt number.

mod admission;
mod approvals;
mod auth_service;
mod config;
mod convert;
mod costs;
mod error;
mod publish;
mod replays;
mod request;
mod role;
mod run_end;
mod schedule_observer;
mod scope;
mod service;
mod versions;
mod watch;
mod worker_calls;

pub use auth_service::{AUTH_SERVICE_NAME, AuthApi, StoreKeys};
pub use config::ManagerConfig;
pub use error::{status_from_store, status_from_validation};
pub use role::{ManagerBuildError, ManagerDeps, ManagerRole};
pub use schedule_observer::{GrpcScheduleObserver, ScheduleObserver};
pub use service::ManagerService;

/// The full gRPC name of the service (for health checks).
pub const SERVICE_NAME: &str = nightshift_proto::v1::manager_service_server::SERVICE_NAME;
