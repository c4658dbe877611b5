//! Where a worker's HTTP clients (model providers, MCP servers) may connect. The operator's
//! [`OperatorPolicy`] refuses private, loopback, link-local (cloud metadata) and other
//! non-public addresses unless allowed; this crate enforces it **after DNS resolution**: the
//! clients resolve names through [`Egress::resolver`], which drops the connection when a name
//! resolves to a refused address, so a name that resolves to a public address when it is checked
//! and to 169.254.169.254 when it is used (DNS rebinding) gets nowhere. Hosts written as IP
//! addresses never reach a resolver and are checked by [`Egress::check_url`].
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use nightshift_core::operator_policy::OperatorPolicy;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a connection is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The address is not public and not allowed.
    #[error("{0}")]
    Refused(String),
    /// The URL has no host or does not parse.
    #[error("{0} is not a valid http(s) URL")]
    BadUrl(String),
    /// The name does not resolve.
    #[error("{host} does not resolve: {why}")]
    Resolve {
        /// The host.
        host: String,
        /// The resolver's error.
        why: String,
    },
}

/// The egress policy of one worker; cheap to clone.
#[derive(Debug, Clone)]
pub struct Egress {
    policy: Arc<OperatorPolicy>,
    /// The one HTTP client of every model and MCP server under this policy (built on first use).
    client: Arc<std::sync::OnceLock<reqwest::Client>>,
}

/// How long a connection may take to set up (a call's own timeout may end it sooner).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Egress {
    /// Enforces `policy`.
    pub fn new(policy: OperatorPolicy) -> Self {
        Self { policy: Arc::new(policy), client: Arc::default() }
    }

    /// Checks `url` now: an IP host against the policy, a name after resolving it (at apply time,
    /// to give the author a clear error; connections are checked again when made).
    pub async fn check_url(&self, url: &str) -> Result<(), EgressError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| EgressError::BadUrl(url.to_owned()))?;
        let host = parsed.host_str().ok_or_else(|| EgressError::BadUrl(url.to_owned()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.policy.check_address(host, ip).map_err(EgressError::Refused);
        }
        let port = parsed.port_or_known_default().unwrap_or(443);
        resolve_checked(&self.policy, host, port).await.map(|_| ())
    }

    /// Checks the host of `url` if it is an IP address (reqwest connects to those without a
    /// resolver); names are checked by [`Egress::resolver`] when connecting.
    pub fn check_literal(&self, url: &reqwest::Url) -> Result<(), EgressError> {
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => self.policy.check_address(host, ip).map_err(EgressError::Refused),
            Err(_) => Ok(()),
        }
    }

    /// The resolver for `reqwest::ClientBuilder::dns_resolver`.
    pub fn resolver(&self) -> Arc<PolicyResolver> {
        Arc::new(PolicyResolver { policy: self.policy.clone() })
    }

    /// The HTTP client of every model provider and MCP server under this policy: every
    /// connection goes through [`Self::resolver`], and it follows no redirect (a redirect to an IP
    /// literal would skip the resolver; one to another host would carry API-key headers along).
    /// One client for all: building one loads the system's root certificates and holds its own
    /// connection pool, which per agent cost milliseconds of CPU and megabytes each
    /// (`nightshift-bench e2e --profile`).
    pub fn http_client(&self) -> Result<reqwest::Client, EgressError> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let built = reqwest::Client::builder()
            .dns_resolver(self.resolver())
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EgressError::Refused(format!("HTTP client: {e}")))?;
        Ok(self.client.get_or_init(|| built).clone())
    }
}

async fn resolve_checked(policy: &OperatorPolicy, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| EgressError::Resolve { host: host.to_owned(), why: e.to_string() })?
        .collect();
    // One refused address refuses the name: a name that resolves to a public and a private
    // address at once is not one to trust with either.
    for addr in &addrs {
        policy.check_address(host, addr.ip()).map_err(EgressError::Refused)?;
    }
    Ok(addrs)
}

/// A DNS resolver that refuses names resolving to addresses the policy refuses.
#[derive(Debug)]
pub struct PolicyResolver {
    policy: Arc<OperatorPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let addrs = resolve_checked(&policy, name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}
