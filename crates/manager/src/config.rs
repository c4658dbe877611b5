//! Manager configuration (`config/manager.toml`, env prefix `NIGHTSHIFT_MANAGER`).
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the manager role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// gRPC listen address.
    pub listen: String,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`.
    pub database_url: String,
    /// Lease granted when StartRun does not ask for one.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub default_lease_ttl: Duration,
    /// Scheduler to notify of schedule changes (`http://HOST:50052`); empty = none (the
    /// scheduler still picks changes up from the store within its sync interval).
    pub scheduler_endpoint: String,
    /// Work queue for manually triggered runs (`nats://`, `redis://`); empty = none (the
    /// scheduler's sweep publishes them, after `republish_after`).
    pub queue_url: String,
    /// Name of the queue on the server (NATS stream / Redis key prefix); the same for every
    /// service of one deployment.
    pub queue_name: String,
    /// How long a delivered request may go unacknowledged before the queue delivers it again
    /// (a dead worker's run moves after this). Equal on every service (NATS keeps one value).
    #[serde(with = "nightshift_core::config::duration_text")]
    pub queue_ack_wait: std::time::Duration,
    /// Prometheus `/metrics` listen address (empty = off).
    pub metrics_listen: String,
    /// Event service to publish agent lifecycle events to (`http://HOST:50055`); empty = none.
    pub events_endpoint: String,
    /// `text` or `json`.
    pub log_format: String,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            database_url: "sqlite://nightshift.db".into(),
            default_lease_ttl: Duration::from_secs(30),
            scheduler_endpoint: String::new(),
            queue_url: String::new(),
            queue_name: nightshift_queue::DEFAULT_NAME.into(),
            queue_ack_wait: nightshift_queue::DEFAULT_ACK_WAIT,
            events_endpoint: String::new(),
            metrics_listen: String::new(),
            log_format: "text".into(),
        }
    }
}
