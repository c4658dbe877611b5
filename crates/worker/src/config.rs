//! Worker configuration (`config/worker.toml`, env prefix `NIGHTSHIFT_WORKER`).
use std::time::Duration;

use nightshift_queue::QueueSettings;
use nightshift_rpc::ServerOptions;
use nightshift_tools::ToolsConfig;
use serde::{Deserialize, Serialize};

/// Settings of the worker role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// `listen`, `metrics_listen`, `log_format`.
    #[serde(flatten)]
    pub server: ServerOptions,
    /// The manager (`http://HOST:50051`).
    pub manager_endpoint: String,
    /// Work queue: `queue_url` (`nats://`, `redis://`, or `memory://NAME` within one
    /// process), `queue_name`, `queue_ack_wait`; the same on every service.
    #[serde(flatten)]
    pub queue: QueueSettings,
    /// Stable id of this worker (empty = hostname + random suffix).
    pub worker_id: String,
    /// Where the manager reaches this worker's WorkerService to stop a cancelled run at once
    /// (`http://HOST:PORT`; on Kubernetes the pod IP). Empty = derived from `listen` (its host,
    /// or this host's name when it listens on all interfaces). If unreachable, a cancelled run
    /// stops at its next heartbeat instead.
    pub advertise_endpoint: String,
    /// Runs executed at once (default 64). A run mostly waits — for its model, its tools, the
    /// manager's and the memory service's answers — so a slot is held far longer than the CPU
    /// it uses: with 16 slots `nightshift dev` left a third of 2 cores idle while runs queued,
    /// and 64 did 23 % more runs at 15 % less CPU each (docs/benchmarks.md, session 18).
    pub concurrency: u32,
    /// Lease asked for on StartRun; heartbeats renew it (and the delivery's ack deadline) every
    /// third of it, or of `queue_ack_wait` if that is shorter.
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
    /// How agents with `provider: embedded` run in this process: `concurrency` (generations
    /// at a time per model, default 1) and `weights` (`auto`, `dual`, `q8_0`, `stored`).
    pub embedded: nightshift_llm::embedded::EmbeddedOptions,
    /// What agents may make this worker do (`[allow]`): stdio MCP programs, `env:` secrets,
    /// private addresses. The default allows none of them.
    pub allow: nightshift_core::operator_policy::OperatorPolicy,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            server: ServerOptions::listening_on("127.0.0.1:50053"),
            manager_endpoint: "http://127.0.0.1:50051".into(),
            queue: QueueSettings::default(),
            worker_id: String::new(),
            advertise_endpoint: String::new(),
            concurrency: 64,
            lease_ttl: Duration::from_secs(30),
            drain_grace: Duration::from_secs(30),
            tools: ToolsConfig::default(),
            events_endpoint: String::new(),
            memory_endpoint: String::new(),
            embedded: Default::default(),
            allow: Default::default(),
        }
    }
}

impl WorkerConfig {
    /// The endpoint the worker gives the manager with each StartRun (see `advertise_endpoint`).
    pub fn advertised_endpoint(&self) -> String {
        if !self.advertise_endpoint.trim().is_empty() {
            return self.advertise_endpoint.trim().to_owned();
        }
        let scheme = if self.server.tls.serves_tls() { "https" } else { "http" };
        match self.server.listen.parse::<std::net::SocketAddr>() {
            Ok(addr) if addr.ip().is_unspecified() => {
                nightshift_rpc::hostname().map(|host| format!("{scheme}://{host}:{}", addr.port())).unwrap_or_default()
            }
            Ok(addr) => format!("{scheme}://{addr}"),
            Err(_) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_endpoint_is_explicit_or_follows_listen() {
        let mut cfg = WorkerConfig::default();
        assert_eq!(cfg.advertised_endpoint(), "http://127.0.0.1:50053");
        cfg.server.listen = "0.0.0.0:7000".into();
        let derived = cfg.advertised_endpoint();
        match nightshift_rpc::hostname() {
            Some(host) => assert_eq!(derived, format!("http://{host}:7000")),
            None => assert_eq!(derived, "", "no name to advertise: cancellations wait for the heartbeat"),
        }
        cfg.advertise_endpoint = " http://10.0.0.7:7000 ".into();
        assert_eq!(cfg.advertised_endpoint(), "http://10.0.0.7:7000");
        cfg.advertise_endpoint.clear();
        cfg.server.listen = "not an address".into();
        assert_eq!(cfg.advertised_endpoint(), "");
    }
}
