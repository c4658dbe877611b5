//! How every Nightshift backend on Redis connects and names its keys: the work queue
//! (`nightshift-queue`), the event log (`nightshift-events`) and the memory store
//! (`nightshift-memory`).
//!
//! - [`Connector::open`] parses the URL once (`redis://[:password@]host:port[/db]`; the
//!   password never appears in an error); [`Connector::connection`] opens a reconnecting
//!   `ConnectionManager` with explicit [`Timeouts`]. Blocking reads (`XREADGROUP BLOCK`,
//!   `XREAD BLOCK`) need their own connection with [`Timeouts::blocking`], since the redis
//!   crate's default 500 ms response timeout would cut them short.
//! - [`key`] names every key `{prefix}:name`: the braces are a Redis Cluster hash tag, so all keys
//!   of one prefix live on one slot and multi-key scripts work on a cluster.
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Why a Redis connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL does not parse.
    #[error("bad Redis URL '{url}': {reason}")]
    Url {
        /// The URL with its password removed.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server did not answer.
    #[error("cannot connect to Redis at {url}: {reason}")]
    Unreachable {
        /// The URL with its password removed.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Timeouts of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the TCP connection.
    pub connect: Duration,
    /// One command's answer.
    pub response: Duration,
    /// Reconnection attempts before a command fails.
    pub retries: usize,
}

impl Timeouts {
    /// For ordinary commands: 5 s to connect, 5 s per answer, 3 reconnection attempts.
    pub const COMMANDS: Timeouts =
        Timeouts { connect: Duration::from_secs(5), response: Duration::from_secs(5), retries: 3 };

    /// For commands that block up to `block` on the server: the answer may take that long, plus
    /// a 10 s margin for the network.
    pub fn blocking(block: Duration) -> Timeouts {
        Timeouts { response: block.saturating_add(Duration::from_secs(10)), ..Timeouts::COMMANDS }
    }
}

/// A parsed Redis URL that opens connections.
#[derive(Debug, Clone)]
pub struct Connector {
    client: redis::Client,
    redacted: String,
}

impl Connector {
    /// Parses `url`. TLS (`rediss://`) is where a TLS-enabled redis client would be configured;
    /// it is the one place connections are made.
    pub fn open(url: &str) -> Result<Self, ConnectError> {
        let redacted = nightshift_core::redact_url(url);
        let client =
            redis::Client::open(url).map_err(|e| ConnectError::Url { url: redacted.clone(), reason: e.to_string() })?;
        Ok(Self { client, redacted })
    }

    /// A reconnecting connection with `timeouts`. Fails when the server does not answer now.
    pub async fn connection(&self, timeouts: Timeouts) -> Result<ConnectionManager, ConnectError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response))
            .set_number_of_retries(timeouts.retries);
        self.client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| ConnectError::Unreachable { url: self.redacted.clone(), reason: e.to_string() })
    }
}

/// The key `name` under `prefix`: `{prefix}:name` (see the crate docs).
pub fn key(prefix: &str, name: &str) -> String {
    format!("{{{prefix}}}:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        assert_eq!(key("nightshift-runs", "stream"), "{nightshift-runs}:stream");
    }

    #[test]
    fn passwords_never_reach_messages() {
        let err = Connector::open("redis://:s3cret@[bad").unwrap_err().to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn blocking_reads_outlast_their_block() {
        assert_eq!(Timeouts::blocking(Duration::from_secs(5)).response, Duration::from_secs(15));
        assert_eq!(Timeouts::blocking(Duration::from_secs(5)).connect, Timeouts::COMMANDS.connect);
    }
}
