//! Scheduler configuration (`config/scheduler.toml`, env prefix `NIGHTSHIFT_SCHEDULER`).
use std::time::Duration;

use nightshift_queue::QueueSettings;
use nightshift_rpc::ServerOptions;
use serde::{Deserialize, Serialize};

/// Settings of the scheduler role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// `listen`, `metrics_listen`, `log_format`.
    #[serde(flatten)]
    pub server: ServerOptions,
    /// Shared with the manager: `sqlite://PATH` or `postgres://...`.
    pub database_url: String,
    /// Work queue: `queue_url` (`memory://` in one process only, `nats://HOST:PORT`,
    /// `redis://HOST:PORT`), `queue_name`, `queue_ack_wait`; the same on every service.
    #[serde(flatten)]
    pub queue: QueueSettings,
    /// Schedules are split into this many shards between replicas. Must be equal on all
    /// replicas; more shards than replicas balances better.
    pub shard_count: u32,
    /// A replica's hold on its shards; a dead replica's shards move after this long.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub shard_lease: Duration,
    /// How often leases are renewed and rebalanced (well under `shard_lease`).
    #[serde(with = "nightshift_core::config::duration_text")]
    pub coordination_interval: Duration,
    /// How often agent changes are picked up from the store.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub sync_interval: Duration,
    /// A tick more than this late is a misfire (misfire policy applies); later than a failover.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub misfire_grace: Duration,
    /// Queued runs older than this whose request never reached the queue are published again
    /// (outbox sweep; runs every half of this, at most every 10 s).
    #[serde(with = "nightshift_core::config::duration_text")]
    pub republish_after: Duration,
    /// Lease recovery (run by the outbox sweep): a running run whose lease expired more than
    /// this long ago — its worker vanished and no redelivery took it over — is resumed (or, after
    /// too many lost workers, failed). The margin absorbs clock skew between hosts.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub lease_recovery_grace: Duration,
    /// Ticks are recorded this long before they are due and only published at their time, so
    /// a herd of agents due at the same instant costs the fire path no database writes (capped
    /// at a quarter of `republish_after`). An agent paused in this window has its prepared runs
    /// discarded; a spec change applies from the first tick after it.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub prepare_ahead: Duration,
    /// Event service for `SCHEDULE_FIRED` / `SCHEDULE_MISSED` (`http://HOST:50055`); empty = none.
    pub events_endpoint: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            server: ServerOptions::listening_on("127.0.0.1:50052"),
            database_url: "sqlite://nightshift.db".into(),
            queue: QueueSettings::default(),
            shard_count: 64,
            shard_lease: Duration::from_secs(10),
            coordination_interval: Duration::from_secs(2),
            sync_interval: Duration::from_secs(1),
            misfire_grace: crate::rules::DEFAULT_GRACE,
            republish_after: Duration::from_secs(10),
            lease_recovery_grace: Duration::from_secs(10),
            prepare_ahead: Duration::from_secs(1),
            events_endpoint: String::new(),
        }
    }
}
