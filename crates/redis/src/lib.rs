//! How every Nightshift backend on Redis connects and names its keys: the work queue
//! (`nightshift-queue`), the event log (`nightshift-events`) and the memory store
//! (`nightshift-memory`).
//!
//! - [`Connector::open`] parses the URL once (the password never appears in an error):
//!   - `redis://[:password@]host:port[/db]` (also `rediss://`): one server (or a proxy);
//!   - `redis+cluster://[:password@]host:port[,host:port…]` (also `rediss+cluster://`): a Redis
//!     Cluster, discovered from any of the listed nodes (one is enough; list more so that start-up
//!     survives one being down). A cluster has only database 0.
//!
//!   [`Connector::connection`] opens a [`Connection`] with explicit [`Timeouts`]: a reconnecting
//!   `ConnectionManager` for one server, a slot-routing `ClusterConnection` for a cluster (it
//!   follows `MOVED`/`ASK` redirections and reloads the slot map when the cluster changes).
//!   Blocking reads (`XREADGROUP BLOCK`, `XREAD BLOCK`) need their own connection with
//!   [`Timeouts::blocking`], since the redis crate's default 500 ms response timeout would cut
//!   them short.
//! - [`key`] names every key `{prefix}:name`: the braces are a Redis Cluster hash tag, so all keys
//!   of one prefix live on one slot, and the backends' multi-key scripts, pipelines and
//!   transactions work on a cluster unchanged (one queue, event log or memory store lives on one
//!   node; several prefixes spread over the cluster).
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

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

/// The URL schemes of a Redis Cluster.
const CLUSTER_SCHEMES: [(&str, &str); 2] = [("redis+cluster", "redis"), ("rediss+cluster", "rediss")];

/// Whether `url` names a Redis backend: `redis://`, `rediss://`, `redis+cluster://` or
/// `rediss+cluster://`.
pub fn is_redis_url(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        matches!(scheme, "redis" | "rediss") || CLUSTER_SCHEMES.iter().any(|(cluster, _)| *cluster == scheme)
    })
}

/// A parsed Redis URL that opens connections.
#[derive(Debug, Clone)]
pub struct Connector {
    target: Target,
    redacted: String,
}

#[derive(Debug, Clone)]
enum Target {
    Single(redis::Client),
    /// One `redis://` URL per seed node, each with the cluster URL's credentials.
    Cluster(Vec<String>),
}

impl Connector {
    /// Parses `url` (see the crate docs). TLS (`rediss://`) is where a TLS-enabled redis client
    /// would be configured; it is the one place connections are made.
    pub fn open(url: &str) -> Result<Self, ConnectError> {
        let redacted = nightshift_core::redact_url(url);
        let bad = |reason: String| ConnectError::Url { url: redacted.clone(), reason };
        let target = match cluster_nodes(url) {
            Some(nodes) => {
                let nodes = nodes.map_err(bad)?;
                // Parses every node URL now, so a bad one fails at start-up, not at first use.
                ClusterClientBuilder::new(nodes.clone()).build().map_err(|e| bad(e.to_string()))?;
                Target::Cluster(nodes)
            }
            None => Target::Single(redis::Client::open(url).map_err(|e| bad(e.to_string()))?),
        };
        Ok(Self { target, redacted })
    }

    /// Whether this URL names a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// A connection with `timeouts`. Fails when the server (or no seed node of the cluster)
    /// answers now.
    pub async fn connection(&self, timeouts: Timeouts) -> Result<Connection, ConnectError> {
        let unreachable =
            |e: redis::RedisError| ConnectError::Unreachable { url: self.redacted.clone(), reason: e.to_string() };
        match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_response_timeout(Some(timeouts.response))
                    .set_number_of_retries(timeouts.retries);
                Ok(Connection::Single(client.get_connection_manager_with_config(config).await.map_err(unreachable)?))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(timeouts.connect)
                    .response_timeout(timeouts.response)
                    .retries(u32::try_from(timeouts.retries).unwrap_or(u32::MAX))
                    .build()
                    .map_err(unreachable)?;
                Ok(Connection::Cluster(client.get_async_connection().await.map_err(unreachable)?))
            }
        }
    }
}

/// The seed node URLs of a cluster URL; `None` when `url` is not a cluster URL.
fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, String>> {
    let (scheme, rest) = url.split_once("://")?;
    let (_, node_scheme) = CLUSTER_SCHEMES.iter().find(|(cluster, _)| *cluster == scheme)?;
    let (authority, tail) = rest.find(['/', '?']).map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
    if !matches!(tail, "" | "/" | "/0") {
        return Some(Err(format!(
            "a Redis Cluster URL names only nodes (a cluster has only database 0), not {tail:?}"
        )));
    }
    let (userinfo, hosts) = authority.rsplit_once('@').map_or(("", authority), |(u, h)| (u, h));
    let credentials = if userinfo.is_empty() { String::new() } else { format!("{userinfo}@") };
    let nodes: Vec<String> =
        hosts.split(',').map(|host| format!("{node_scheme}://{credentials}{}", host.trim())).collect();
    if hosts.split(',').any(|host| host.trim().is_empty()) {
        return Some(Err("a Redis Cluster URL lists nodes as host:port[,host:port…], none empty".into()));
    }
    Some(Ok(nodes))
}

/// A connection to one Redis server or to a Redis Cluster. Cheap to clone (both kinds multiplex
/// one set of sockets); commands, pipelines and scripts run on it as on either kind.
#[derive(Clone)]
pub enum Connection {
    /// One server, reconnecting.
    Single(ConnectionManager),
    /// A cluster, routing each command by the slot of its keys.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
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
    fn cluster_urls_name_their_seed_nodes() {
        let nodes = cluster_nodes("redis+cluster://:pw@10.0.0.1:7001,10.0.0.2:7002/").unwrap().unwrap();
        assert_eq!(nodes, ["redis://:pw@10.0.0.1:7001", "redis://:pw@10.0.0.2:7002"]);
        assert_eq!(cluster_nodes("rediss+cluster://h:7001").unwrap().unwrap(), ["rediss://h:7001"]);
        assert!(cluster_nodes("redis://h:6379").is_none());
        assert!(Connector::open("redis+cluster://h:7001,h:7002").unwrap().is_cluster());
        assert!(!Connector::open("redis://h:6379").unwrap().is_cluster());
    }

    #[test]
    fn cluster_urls_refuse_databases_and_empty_nodes() {
        let err = Connector::open("redis+cluster://:s3cret@h:7001/2").unwrap_err().to_string();
        assert!(err.contains("database 0") && !err.contains("s3cret"), "{err}");
        let err = Connector::open("redis+cluster://h:7001,,h:7003").unwrap_err().to_string();
        assert!(err.contains("none empty"), "{err}");
    }

    #[test]
    fn redis_urls_are_recognised_by_scheme() {
        for url in ["redis://h", "rediss://h", "redis+cluster://h:1,h:2", "rediss+cluster://h:1"] {
            assert!(is_redis_url(url), "{url}");
        }
        for url in ["nats://h", "redis:/h", "memory://", "redis+sentinel://h"] {
            assert!(!is_redis_url(url), "{url}");
        }
    }

    #[test]
    fn blocking_reads_outlast_their_block() {
        assert_eq!(Timeouts::blocking(Duration::from_secs(5)).response, Duration::from_secs(15));
        assert_eq!(Timeouts::blocking(Duration::from_secs(5)).connect, Timeouts::COMMANDS.connect);
    }
}
