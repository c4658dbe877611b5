//! The settings every server process has, flattened into each role's options so the file and
//! environment keys stay `listen`, `metrics_listen` and `log_format` in every role.
use nightshift_telemetry::LogFormat;
use serde::{Deserialize, Serialize};

use crate::auth::{Authenticator, Guard};
use crate::auth_options::{AuthConfigError, AuthOptions};
use crate::client::ClientOptions;
use crate::in_process::InProcess;
use crate::tls::TlsOptions;

/// Where a role listens and how it reports: flattened (`#[serde(flatten)]`) into each role's
/// options.
///
/// Deliberately without `#[serde(default)]`: a flattened section is never "missing", so serde
/// would fill it from *this* type's default (port 50051) instead of the role's (50053 for a
/// worker). `nightshift_core::config::load` starts from the role's serialized defaults, so every
/// key is present; a bare `toml::from_str` without them fails instead of picking a wrong port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOptions {
    /// gRPC listen address (`HOST:PORT`; port 0 picks a free one).
    pub listen: String,
    /// Prometheus `/metrics` listen address (empty = off).
    pub metrics_listen: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// TLS of this server and of the calls this process makes (`[tls]`).
    pub tls: TlsOptions,
    /// Who may call this server, and this process's own credential (`[auth]`).
    pub auth: AuthOptions,
    /// Calls to this process's own server made without the network: set by `nightshift dev`
    /// (whose roles share one server), never by configuration.
    #[serde(skip)]
    pub in_process: InProcess,
}

impl ServerOptions {
    /// Listening on `addr`, no metrics endpoint, text logs.
    pub fn listening_on(addr: &str) -> Self {
        Self {
            listen: addr.to_owned(),
            metrics_listen: String::new(),
            log_format: LogFormat::Text,
            tls: TlsOptions::default(),
            auth: AuthOptions::default(),
            in_process: InProcess::default(),
        }
    }

    /// How this process calls the other services: trusting `tls.ca_file`, presenting its own
    /// certificate for mutual TLS and its own API key (`auth.api_key_file`).
    pub fn client(&self) -> Result<ClientOptions, AuthConfigError> {
        Ok(ClientOptions { tls: self.tls.clone(), api_key: self.auth.api_key()?, in_process: self.in_process.clone() })
    }

    /// How this server admits calls: see [`AuthOptions::guard`].
    pub fn guard(&self, local: Option<std::sync::Arc<dyn Authenticator>>) -> Result<Guard, AuthConfigError> {
        self.auth.guard(&self.listen, local, &self.client()?)
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self::listening_on("127.0.0.1:50051")
    }
}

/// This host's name (`/etc/hostname`, as containers and Kubernetes pods set it), if it has one:
/// names scheduler members and workers, and the endpoint a worker listening on all interfaces
/// advertises.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty())
}
