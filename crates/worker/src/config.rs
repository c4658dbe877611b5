//! Worker configuration (`config/worker.toml`, env prefix `NIGHTSHIFT_WORKER`).
use std::time::Duration;

use nightshift_tools::ToolsConfig;
use serde::{Deserialize, Serialize};

/// Settings of the worker role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// gRPC listen address (WorkerService).
    pub listen: String,
    /// The manager (`http://HOST:50051`).
    pub manager_endpoint: String,
    /// Work queue: `nats://`, `redis://`, or `memory://NAME` within one process.
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
    /// Stable id of this worker (empty = hostname + random suffix).
    pub worker_id: String,
    /// Runs executed at once.
    pub concurrency: u32,
    /// Lease asked for on StartRun; heartbeats renew it every third of it.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub lease_ttl: Duration,
    /// On SIGTERM / Drain: how long in-flight runs may finish before they are handed back.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub drain_grace: Duration,
    /// Settings of the local tools (file root, HTTP allow-list, timeouts).
    pub tools: ToolsConfig,
    /// Event service for the run lifecycle events (`http://HOST:50055`); empty = none.
    pub events_endpoint: String,
    /// Memory service (`http://HOST:50054`): recall before each run, results stored after;
    /// empty = agents run without memory (and are told so).
    pub memory_endpoint: String,
    /// `text` or `json`.
    pub log_format: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50053".into(),
            manager_endpoint: "http://127.0.0.1:50051".into(),
            queue_url: "memory://".into(),
            queue_name: nightshift_queue::DEFAULT_NAME.into(),
            queue_ack_wait: nightshift_queue::DEFAULT_ACK_WAIT,
            metrics_listen: String::new(),
            worker_id: String::new(),
            concurrency: 16,
            lease_ttl: Duration::from_secs(30),
            drain_grace: Duration::from_secs(30),
            tools: ToolsConfig::default(),
            events_endpoint: String::new(),
            memory_endpoint: String::new(),
            log_format: "text".into(),
        }
    }
}
