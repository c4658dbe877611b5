//! Configuration of the console (env prefix `NIGHTSHIFT_CONSOLE`).
use std::time::Duration;

use nightshift_rpc::ServerOptions;
use serde::{Deserialize, Serialize};

/// Settings of the console role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `listen` (HTTP and gRPC health on one port), `metrics_listen`, `log_format`, `[tls]`
    /// (HTTPS, and how the console reaches the services). `[auth]` is not used: the pages sign
    /// users in with the services' own credentials, and the console serves no other gRPC.
    #[serde(flatten)]
    pub server: ServerOptions,
    /// The manager (`http://` or `https://`): agents, runs, and signing in (`WhoAmI`).
    pub manager_endpoint: String,
    /// The event service: the live event tail and live run timelines.
    pub events_endpoint: String,
    /// How long a call to a service may take.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub call_timeout: Duration,
    /// How long a sign-in lasts.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub session_ttl: Duration,
    /// Signed-in sessions kept at most (the oldest go first).
    pub max_sessions: usize,
    /// A link to a run's trace in a tracing UI, `{run_id}` replaced by the run's id (e.g.
    /// Jaeger's search by the `run_id` attribute of the worker's `agent.run` span); empty = none.
    pub trace_url: String,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            server: ServerOptions::listening_on("127.0.0.1:50056"),
            manager_endpoint: "http://127.0.0.1:50051".into(),
            events_endpoint: "http://127.0.0.1:50055".into(),
            call_timeout: Duration::from_secs(10),
            session_ttl: Duration::from_secs(12 * 3600),
            max_sessions: 10_000,
            trace_url: String::new(),
        }
    }
}
