//! The work queue that carries [`RunRequest`]s from the scheduler (and the manager's manual
//! triggers) to workers.
//!
//! One trait, [`WorkQueue`], with one module per backend. Semantics every backend provides
//! (checked by the shared contract suite in `tests/contract.rs`):
//! - **dedup**: publishing a request whose [`dedup_id`] was published within the dedup window
//!   is a no-op that returns `false`;
//! - **at-least-once** delivery with explicit ack: an unacked delivery comes back after the ack
//!   deadline (its consumer may have died), with [`Delivery::delivered`] counting deliveries;
//! - **in-progress**: [`Delivery::in_progress`] pushes the ack deadline out while a run is alive;
//! - **delayed delivery**: `publish(.., Some(delay))` and [`Delivery::nack`] with a delay (retry
//!   backoff, deferred runs) deliver no earlier than the delay.
//!
//! Pick a backend with [`connect`] and a URL: `memory://` (private in-process queue),
//! `memory://NAME` (process-wide queue shared by every `connect` with that name),
//! `nats://host:port` ([`NatsQueue`]) or `redis://host:port[/db]` ([`RedisQueue`]).
//! [`QueueOptions`] carries the settings common to all three; each backend also has its own
//! config type for finer control.

use std::sync::Arc;
use std::time::Duration;

pub mod memory;
pub mod nats;
pub mod redis;

pub use memory::{MemoryConfig, MemoryQueue};
pub use nats::{NatsConfig, NatsQueue};
pub use redis::{RedisConfig, RedisQueue};

pub use nightshift_proto::v1::RunRequest;

/// The id a request is deduplicated by: its `run_id`, or `<run_id>/<redelivery>` for a run
/// published again on purpose (lease recovery, a buffered run woken) while its first request
/// may still be in the dedup window.
pub fn dedup_id(request: &RunRequest) -> std::borrow::Cow<'_, str> {
    if request.redelivery.is_empty() {
        std::borrow::Cow::Borrowed(request.run_id.as_str())
    } else {
        std::borrow::Cow::Owned(format!("{}/{}", request.run_id, request.redelivery))
    }
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend is unreachable or refused the operation.
    #[error("queue backend error: {0}")]
    Backend(String),
    /// A message on the queue could not be decoded (it is dropped and logged).
    #[error("undecodable message: {0}")]
    Decode(String),
    /// Invalid configuration (URL, names).
    #[error("invalid queue configuration: {0}")]
    Config(String),
}

/// Acknowledgement handle of one delivery, implemented per backend.
#[async_trait::async_trait]
pub trait Acker: Send + Sync {
    /// Done: remove the message.
    async fn ack(&self) -> Result<(), QueueError>;
    /// Not done: deliver again after `delay`.
    async fn nack(&self, delay: Duration) -> Result<(), QueueError>;
    /// Still working: extend the ack deadline.
    async fn in_progress(&self) -> Result<(), QueueError>;
}

/// One delivered request.
pub struct Delivery {
    /// The request.
    pub request: RunRequest,
    /// 1 on first delivery, +1 per redelivery.
    pub delivered: u32,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("request", &self.request).field("delivered", &self.delivered).finish()
    }
}

impl Delivery {
    /// Wraps a backend's delivery.
    pub fn new(request: RunRequest, delivered: u32, acker: Box<dyn Acker>) -> Self {
        Self { request, delivered, acker }
    }

    /// Done: remove the message.
    pub async fn ack(self) -> Result<(), QueueError> {
        self.acker.ack().await
    }

    /// Not done: deliver again after `delay`.
    pub async fn nack(self, delay: Duration) -> Result<(), QueueError> {
        self.acker.nack(delay).await
    }

    /// Still working: extend the ack deadline.
    pub async fn in_progress(&self) -> Result<(), QueueError> {
        self.acker.in_progress().await
    }
}

/// A queue of run requests shared by any number of publishers and consumers.
#[async_trait::async_trait]
pub trait WorkQueue: Send + Sync + 'static {
    /// Publishes `request`, delivered no earlier than `delay`. Returns `false` if a request with
    /// the same [`dedup_id`] was already published within the dedup window (nothing is enqueued).
    async fn publish(&self, request: &RunRequest, delay: Option<Duration>) -> Result<bool, QueueError>;

    /// Up to `max` deliveries, waiting at most `wait` for the first one.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    /// Messages waiting (ready or delayed), for metrics; `None` if the backend cannot tell cheaply.
    async fn depth(&self) -> Result<Option<u64>, QueueError>;
}

/// Default of [`QueueOptions::ack_wait`].
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Default of [`QueueOptions::dedup_window`].
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(60);
/// Default of [`QueueOptions::name`].
pub const DEFAULT_NAME: &str = "nightshift-runs";

/// Settings shared by every backend; see [`connect`].
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Names the queue on the server: the NATS stream (subjects `NAME.ready` / `NAME.delayed`,
    /// consumers `NAME-workers` / `NAME-delayer`) or the Redis key prefix (`{NAME}:...`).
    /// Letters, digits, `-` and `_` only. Ignored by `memory://` (the URL names the queue).
    /// Default `nightshift-runs`; tests use a unique one per run.
    pub name: String,
    /// How long a delivery may stay unacked (without [`Delivery::in_progress`]) before it is
    /// delivered again. Default 30 s. On NATS this is the shared consumer's `ack_wait`, so the
    /// last handle to connect with a different value changes it for everyone.
    pub ack_wait: Duration,
    /// How long a `run_id` is remembered for dedup. Default 60 s. Costs memory on the server
    /// (NATS: the stream's `duplicate_window`; Redis: one key per run id) proportional to the
    /// publish rate times the window.
    pub dedup_window: Duration,
    /// Identity of this consumer on Redis (the consumer-group member name; it owns the
    /// deliveries it reads). Default: a fresh UUID per handle. NATS shares one durable consumer
    /// and the memory queue needs no name, so both ignore it.
    pub consumer_name: Option<String>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            ack_wait: DEFAULT_ACK_WAIT,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            consumer_name: None,
        }
    }
}

impl QueueOptions {
    /// Options with this `name` and the other defaults.
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into(), ..Self::default() }
    }
}

/// The `queue_url`, `queue_name` and `queue_ack_wait` keys of a role's options: flattened
/// (`#[serde(flatten)]`) into the manager's, scheduler's and worker's options, which must agree
/// on them within one deployment. No `#[serde(default)]`, for the reason given on
/// `nightshift_rpc::ServerOptions`: the defaults are the role's (the manager's `queue_url` is
/// empty), supplied by `nightshift_core::config::load`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// `memory://[NAME]`, `nats://HOST:PORT` or `redis://HOST:PORT[/DB]`; see [`connect`].
    /// The manager treats empty as "no queue".
    #[serde(rename = "queue_url")]
    pub url: String,
    /// [`QueueOptions::name`].
    #[serde(rename = "queue_name")]
    pub name: String,
    /// [`QueueOptions::ack_wait`] (a dead worker's run moves after this); equal on every
    /// service (NATS keeps one value).
    #[serde(rename = "queue_ack_wait", with = "ack_wait_text")]
    pub ack_wait: Duration,
}

/// `queue_ack_wait` as humantime text, with an error that names the key (serde cannot, inside a
/// flattened section).
mod ack_wait_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        nightshift_core::config::duration_text::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        nightshift_core::config::duration_text::parse(&text)
            .map_err(|e| serde::de::Error::custom(format!("queue_ack_wait: {e}")))
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self { url: "memory://".to_owned(), name: DEFAULT_NAME.to_owned(), ack_wait: DEFAULT_ACK_WAIT }
    }
}

impl QueueSettings {
    /// The same settings on another URL.
    pub fn at(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }

    /// The runtime options these settings give (other options at their defaults).
    pub fn options(&self) -> QueueOptions {
        QueueOptions { ack_wait: self.ack_wait, ..QueueOptions::named(self.name.clone()) }
    }

    /// Opens the queue ([`connect`]).
    pub async fn connect(&self) -> Result<Arc<dyn WorkQueue>, QueueError> {
        connect(&self.url, &self.options()).await
    }
}

/// Opens the queue at `url`, choosing the backend by scheme: `memory://` or `memory://NAME`,
/// `nats://host:port` (also `tls://`), `redis://host:port[/db]` (also `rediss://`), or a Redis Cluster
/// `redis+cluster://host:port[,host:port…]` (also `rediss+cluster://`). NATS and Redis create their
/// stream / consumer group on first use.
pub async fn connect(url: &str, options: &QueueOptions) -> Result<Arc<dyn WorkQueue>, QueueError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(QueueError::Config(format!("queue URL has no scheme (memory://, nats://, redis://): {url}")));
    };
    match scheme {
        "memory" => {
            let config = MemoryConfig { ack_wait: options.ack_wait, dedup_window: options.dedup_window };
            let name = rest.trim_end_matches('/');
            Ok(Arc::new(if name.is_empty() { MemoryQueue::new(config) } else { MemoryQueue::named(name, config) }))
        }
        "nats" | "tls" => Ok(Arc::new(NatsQueue::connect(url, NatsConfig::from_options(options)?).await?)),
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => {
            Ok(Arc::new(RedisQueue::connect(url, RedisConfig::from_options(options)?).await?))
        }
        other => {
            Err(QueueError::Config(format!("unknown queue URL scheme {other:?} (memory, nats, redis, redis+cluster)")))
        }
    }
}

/// Checks a queue name used in server-side names: NATS stream names and subjects forbid `.`,
/// `*`, `>`, whitespace and path separators; Redis would accept anything, but one rule for both
/// keeps configuration portable.
fn validate_name(name: &str) -> Result<(), QueueError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(QueueError::Config(format!(
            "queue name {name:?} must be non-empty and use only letters, digits, '-' and '_'"
        )));
    }
    Ok(())
}

/// `now + wait`, saturating (a caller may pass `Duration::MAX` for "wait forever").
fn deadline_after(wait: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(wait).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// The wire format of a request: its prost encoding.
fn encode(request: &RunRequest) -> Vec<u8> {
    prost::Message::encode_to_vec(request)
}

fn decode(bytes: &[u8]) -> Result<RunRequest, QueueError> {
    <RunRequest as prost::Message>::decode(bytes).map_err(|e| QueueError::Decode(e.to_string()))
}
