//! The `[auth]` section of every role: whether calls need a credential, where credentials are
//! verified, the keys a deployment starts with, and this process's own key.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nightshift_core::Namespaces;
use nightshift_core::auth::{Principal, Role};
use serde::{Deserialize, Serialize};

use crate::auth::{AuthFailure, Authenticator, Cached, Guard, StaticKeys, WithStaticKeys};
use crate::client::{CallChannel, ClientOptions};
use crate::oidc::{Oidc, WithOidc};

/// How long a verified credential is remembered by a process that verifies at the manager
/// (the manager remembers its own answers for [`LOCAL_CACHE`]): a revoked key stops working on
/// every replica within the sum.
pub const REMOTE_CACHE: Duration = Duration::from_secs(3);
/// How long a process with the database remembers a verified credential.
pub const LOCAL_CACHE: Duration = Duration::from_secs(2);
/// Static keys shorter than this are refused: they would be guessable.
const MIN_STATIC_KEY: usize = 32;

/// Whether calls need a credential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every call but health and reflection needs a credential.
    #[default]
    Required,
    /// No authentication: only allowed when the server listens on loopback.
    Off,
}

/// The `[auth]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthOptions {
    /// `required` (the default) or `off` (loopback only).
    pub mode: AuthMode,
    /// For a process without the database (worker, memory, events): the manager endpoint
    /// where presented credentials are verified.
    pub verify_endpoint: String,
    /// A file holding this process's own API key, sent with every call it makes.
    pub api_key_file: String,
    /// Processes with the database (manager, scheduler): a file holding the bootstrap admin key
    /// of a new deployment (from a secret; there is no default key).
    pub bootstrap_admin_key_file: String,
    /// Processes with the database: a file holding a key with the `service` role, for the
    /// services of a deployment to present to each other.
    pub service_key_file: String,
    /// Processes with the database: a file holding a key with the `worker` role.
    pub worker_key_file: String,
    /// OIDC / JWT bearer tokens (`[auth.oidc]`); set on the manager, which verifies for all.
    pub oidc: crate::oidc::OidcOptions,
}

/// Why the `[auth]` section cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A key file could not be read.
    #[error("auth.{field} {path}: {source}")]
    Read {
        /// The option.
        field: &'static str,
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A static key is too short.
    #[error("auth.{0}: the key must be at least {MIN_STATIC_KEY} characters")]
    Weak(&'static str),
    /// `mode = "off"` on an address other than loopback.
    #[error(
        "auth.mode = \"off\" on {0}: a server without authentication may only listen on loopback (configure API keys, see docs/security.md)"
    )]
    OffBeyondLoopback(String),
    /// Nothing can verify credentials.
    #[error("auth.mode = \"required\" needs auth.verify_endpoint (the manager) in a process without the database")]
    NoVerifier,
    /// `[auth.oidc]` is incomplete.
    #[error(transparent)]
    Oidc(#[from] crate::oidc::OidcConfigError),
    /// The verify endpoint is not usable.
    #[error(transparent)]
    Endpoint(#[from] crate::BadEndpoint),
}

fn read_key(field: &'static str, path: &str) -> Result<Option<String>, AuthConfigError> {
    if path.is_empty() {
        return Ok(None);
    }
    let key = std::fs::read_to_string(path)
        .map_err(|source| AuthConfigError::Read { field, path: path.to_owned(), source })?
        .trim()
        .to_owned();
    if key.len() < MIN_STATIC_KEY {
        return Err(AuthConfigError::Weak(field));
    }
    Ok(Some(key))
}

/// Whether `listen` (`HOST:PORT`) binds loopback only.
pub fn is_loopback(listen: &str) -> bool {
    match listen.parse::<SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => listen.rsplit_once(':').is_some_and(|(host, _)| host == "localhost"),
    }
}

impl AuthOptions {
    /// This process's own API key (empty when none is configured).
    pub fn api_key(&self) -> Result<String, AuthConfigError> {
        if self.api_key_file.is_empty() {
            return Ok(String::new());
        }
        let path = &self.api_key_file;
        std::fs::read_to_string(path).map(|k| k.trim().to_owned()).map_err(|source| AuthConfigError::Read {
            field: "api_key_file",
            path: path.clone(),
            source,
        })
    }

    /// The manager's AuthService at `verify_endpoint`, called with `client`'s TLS and key.
    fn verify_channel(&self, client: &ClientOptions) -> Result<CallChannel, AuthConfigError> {
        Ok(client.channel("auth.verify_endpoint", &self.verify_endpoint, Duration::from_secs(5))?)
    }

    /// Who vouches for memory access in a process without the database: the manager at
    /// `verify_endpoint`. `None` with authentication off (nothing is checked) or without a
    /// verify endpoint (the memory service then refuses the calls it would have to check).
    pub fn memory_authority(
        &self,
        client: &ClientOptions,
    ) -> Result<Option<Arc<dyn crate::MemoryAuthority>>, AuthConfigError> {
        if self.mode == AuthMode::Off || self.verify_endpoint.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(crate::RemoteMemoryAuthority::new(self.verify_channel(client)?))))
    }

    /// The keys configured by file, with their roles.
    fn static_keys(&self) -> Result<StaticKeys, AuthConfigError> {
        let mut keys = Vec::new();
        for (field, path, role) in [
            ("bootstrap_admin_key_file", &self.bootstrap_admin_key_file, Role::Admin),
            ("service_key_file", &self.service_key_file, Role::Service),
            ("worker_key_file", &self.worker_key_file, Role::Worker),
        ] {
            if let Some(key) = read_key(field, path)? {
                let name = field.trim_end_matches("_key_file").replace('_', "-");
                keys.push((key, Principal::everywhere(format!("static:{name}"), role)));
            }
        }
        Ok(StaticKeys::new(keys))
    }

    /// How the server on `listen` admits calls. `local` verifies keys in this process (one
    /// with the database); without it, credentials are verified at `verify_endpoint` with
    /// `client`'s TLS and key.
    pub fn guard(
        &self,
        listen: &str,
        local: Option<Arc<dyn Authenticator>>,
        client: &ClientOptions,
    ) -> Result<Guard, AuthConfigError> {
        if self.mode == AuthMode::Off {
            if !is_loopback(listen) {
                return Err(AuthConfigError::OffBeyondLoopback(listen.to_owned()));
            }
            tracing::warn!(listen, "authentication is OFF: anyone who can reach this port is admin (loopback only)");
            return Ok(Guard::Open);
        }
        let keys = self.static_keys()?;
        let oidc = Oidc::new(&self.oidc)?;
        let guard: Arc<dyn Authenticator> = match local {
            Some(local) => {
                Arc::new(Cached::new(WithStaticKeys { keys, rest: WithOidc { oidc, rest: local } }, LOCAL_CACHE))
            }
            None if !self.verify_endpoint.is_empty() => {
                let channel = self.verify_channel(client)?;
                let remote =
                    Remote { client: nightshift_proto::v1::auth_service_client::AuthServiceClient::new(channel) };
                Arc::new(Cached::new(WithStaticKeys { keys, rest: WithOidc { oidc, rest: remote } }, REMOTE_CACHE))
            }
            None => return Err(AuthConfigError::NoVerifier),
        };
        Ok(Guard::Required(guard))
    }
}

/// Verifies credentials at the manager (`AuthService.VerifyCredential`).
struct Remote {
    client: nightshift_proto::v1::auth_service_client::AuthServiceClient<CallChannel>,
}

#[async_trait::async_trait]
impl Authenticator for Remote {
    async fn authenticate(&self, credential: &str) -> Result<Principal, AuthFailure> {
        let request = nightshift_proto::v1::VerifyCredentialRequest { credential: credential.to_owned() };
        match self.client.clone().verify_credential(request).await {
            Ok(reply) => {
                let p = reply.into_inner().principal.unwrap_or_default();
                let role = p.role.parse().map_err(AuthFailure::Unavailable)?;
                let namespaces = if p.namespaces.is_empty() {
                    Namespaces::none()
                } else {
                    Namespaces::parse("principal.namespaces", &p.namespaces)
                        .map_err(|e| AuthFailure::Unavailable(e.to_string()))?
                };
                Ok(Principal { name: p.name, role, namespaces })
            }
            Err(s) if s.code() == tonic::Code::Unauthenticated => Err(AuthFailure::Refused(s.message().to_owned())),
            Err(s) => Err(AuthFailure::Unavailable(format!("the manager could not verify it: {}", s.message()))),
        }
    }
}
