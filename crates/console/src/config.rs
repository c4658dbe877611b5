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
    /// The memory service: an agent's memory page (needs the operator or admin role).
    pub memory_endpoint: String,
    /// The scheduler: the schedules page (any replica answers for all).
    pub scheduler_endpoint: String,
    /// The workers whose state the workers page shows (each worker's own `listen` address).
    pub worker_endpoints: Vec<String>,
    /// Names that stand for every worker (`https://worker:50053`: a compose service scaled to N,
    /// a Kubernetes headless Service): the workers page resolves each to all its addresses at
    /// every visit and asks each address, so replicas that come and go are listed as they are.
    pub worker_discovery: Vec<String>,
    /// How long a call to a service may take.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub call_timeout: Duration,
    /// How long a sign-in lasts.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub session_ttl: Duration,
    /// Signed-in sessions kept at most (the oldest go first).
    pub max_sessions: usize,
    /// The services' Prometheus endpoints the overview reads (`http://manager:9101/metrics`, …).
    pub metrics_urls: Vec<String>,
    /// Read this process's own metrics too (`nightshift dev`, whose roles share the process).
    pub metrics_local: bool,
    /// A link to a run's trace in a tracing UI, `{run_id}` replaced by the run's id (e.g.
    /// Jaeger's search by the `run_id` attribute of the worker's `agent.run` span); empty = none.
    pub trace_url: String,
    /// `[oidc]`: signing in through an OpenID Connect provider (authorization-code flow with
    /// PKCE). Absent issuer = only API keys and pasted tokens.
    pub oidc: OidcLogin,
}

/// `[oidc]`: the provider the console sends users to. The ID token it returns is the user's
/// credential at the services, so the manager's `[auth.oidc]` must accept it (same issuer, and
/// `audience` = this `client_id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcLogin {
    /// The provider (`https://…`; its `/.well-known/openid-configuration` is read). Empty = off.
    pub issuer: String,
    /// The console's client id at the provider.
    pub client_id: String,
    /// A file holding the client secret; empty = a public client (PKCE only).
    pub client_secret_file: String,
    /// The callback registered at the provider (`https://console.example/login/oidc/callback`);
    /// empty = this console's own address as the browser reached it.
    pub redirect_url: String,
    /// Scopes asked for (`openid` is always among them).
    pub scopes: String,
    /// The sign-in button's text (`Sign in with …`).
    pub label: String,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            server: ServerOptions::listening_on("127.0.0.1:50056"),
            manager_endpoint: "http://127.0.0.1:50051".into(),
            events_endpoint: "http://127.0.0.1:50055".into(),
            scheduler_endpoint: "http://127.0.0.1:50052".into(),
            memory_endpoint: "http://127.0.0.1:50054".into(),
            worker_endpoints: Vec::new(),
            worker_discovery: Vec::new(),
            call_timeout: Duration::from_secs(10),
            session_ttl: Duration::from_secs(12 * 3600),
            max_sessions: 10_000,
            metrics_urls: Vec::new(),
            metrics_local: false,
            trace_url: String::new(),
            oidc: OidcLogin::default(),
        }
    }
}
