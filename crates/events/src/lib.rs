//! The Nightshift event service: the event stream of every agent and run.
//!
//! - [`EventLog`]: an append-only, totally ordered log with history reads and live
//!   subscriptions, on three backends — [`MemoryLog`] (bounded ring buffer), [`RedisLog`]
//!   (Redis Streams) and [`NatsLog`] (JetStream) — opened by URL with [`connect`].
//! - [`EventService`]: `nightshift.v1.EventService` (Publish, PublishStream, Subscribe,
//!   ListEvents) over any log; the `nightshift-events` binary serves it.
//! - [`EventsRole`]: the service plus the consumers its options turn on, which follow the log
//!   in-process: `[alerts]` (a Slack-compatible webhook POST per alert rule match on failed runs,
//!   see [`AlertRules`]; retried with backoff, deduplicated by event id) and `[sink]` (every event
//!   as one JSON line appended to a file, resuming after its last line on durable backends).
//!
//! Publishing and tailing (`EventPublisher`, `tail`), [`EventFilter`](nightshift_events_client::EventFilter)
//! and the proto/JSON conversions live in the client crate `nightshift-events-client`, which
//! services depend on instead of this one; this crate uses it and does not re-export it.
//!
//! # Semantics (checked by `tests/contract.rs` on every backend)
//! - Every event gets a **cursor**, an opaque string strictly increasing in append order:
//!   memory and NATS use the entry number (`"42"`), Redis the stream id (`"1767225600000-42"`).
//! - Publishing an event id again within the dedup window stores nothing and returns the first
//!   event's cursor.
//! - A subscription **resumes exactly after** a cursor (no gap, no duplicate) — also after a
//!   restart of the service on the durable backends — or starts at a time, the beginning, or now.
//!   It catches up from history, then follows the live tail.
//! - A subscriber that falls more than `subscriber_buffer` live events behind receives
//!   `Lagged { resume_after_cursor, dropped }` as its last item; subscribing again after that
//!   cursor continues without a gap. Resuming after a cursor whose successors were removed by
//!   retention fails with [`EventLogError::CursorExpired`] (gRPC `OUT_OF_RANGE`) instead of
//!   silently skipping events.
//!
//! # Configuration
//! `nightshift-events --config events.toml`; every key can also be set as
//! `NIGHTSHIFT_EVENTS_<KEY>` (e.g. `NIGHTSHIFT_EVENTS_BACKEND_URL=redis://127.0.0.1:6379`).
//!
//! ```toml
//! listen = "127.0.0.1:50055"
//! # memory:// (default, not durable), redis://127.0.0.1:6379/0 or nats://127.0.0.1:4222
//! backend_url = "redis://127.0.0.1:6379"
//! # Redis stream "{nightshift}:events" / JetStream stream "nightshift_events"
//! prefix = "nightshift"
//! # Retention: by count, and optionally by age ("" = none)
//! max_events = 100000
//! max_age = "7d"
//! # A repeated event id within this window is stored once
//! dedup_window = "2m"
//! # Live events a subscriber may fall behind before it gets Lagged
//! subscriber_buffer = 1024
//! # text or json
//! log_format = "text"
//!
//! # Optional: webhook alerts on failed runs (absent = off). The URL is a secret; it may come
//! # from NIGHTSHIFT_EVENTS_ALERTS__WEBHOOK_URL instead.
//! [alerts]
//! webhook_url = "https://hooks.slack.com/services/T000/B000/XXXX"
//! # every BACKGROUND_TASK_ERROR, at most one per agent per min_interval
//! on_task_error = true
//! min_interval = "5m"
//! # the N-th failed run in a row of an agent, once per streak (0 = off)
//! consecutive_failures = 3
//! on_approval_requested = true
//! # delivery: connection errors, 429 and 5xx are retried, backoff doubling up to 60 s
//! max_attempts = 4
//! retry_backoff = "500ms"
//! timeout = "10s"
//!
//! # Optional: every event as one JSON line appended to this file (absent = off). With Redis
//! # or NATS the position is kept in "<path>.cursor" and a restart continues after it.
//! [sink]
//! path = "/var/log/nightshift/events.jsonl"
//! ```
//!
//! The consumers run in every events process whose options have the section: with several
//! replicas on one durable log, configure them on one replica, or each replica alerts.

mod alert;
mod config;
mod consumer;
mod error;
mod log;
mod memory;
mod nats;
mod redis;
mod role;
mod service;
mod sink;
mod subscription;
mod validate;

use std::sync::Arc;

pub use alert::{Alert, AlertError, AlertPolicy, AlertReason, AlertRules, WebhookSender};
pub use config::{ConfigError, EventsConfig, SinkConfig};
pub use error::EventLogError;
pub use log::{Appended, EventLog, LogOptions, Page, ReadQuery, StartAt, SubscriptionItem};
pub use memory::MemoryLog;
pub use nats::NatsLog;
pub use redis::RedisLog;
pub use role::{EventsBuildError, EventsRole};
pub use service::{EventService, SubscribeStream};
pub use sink::SinkError;
pub use subscription::Subscription;

/// The full gRPC name of the service (for health checks).
pub const SERVICE_NAME: &str = nightshift_proto::v1::event_service_server::SERVICE_NAME;

/// Opens the event log at `url`: `memory://`, `redis://…` / `rediss://…`, a Redis Cluster
/// `redis+cluster://host:port[,host:port…]` / `rediss+cluster://…`, or `nats://…` / `tls://…`.
pub async fn connect(url: &str, options: LogOptions) -> Result<Arc<dyn EventLog>, EventLogError> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase()).unwrap_or_default();
    match scheme.as_str() {
        "memory" => Ok(Arc::new(MemoryLog::new(options)?)),
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => Ok(Arc::new(RedisLog::connect(url, options).await?)),
        "nats" | "tls" => Ok(Arc::new(NatsLog::connect(url, options).await?)),
        _ => Err(EventLogError::Config(format!(
            "unsupported event log URL '{}': use memory://, redis://HOST:PORT, redis+cluster://HOST:PORT[,HOST:PORT…] or nats://HOST:PORT",
            error::redact_url(url)
        ))),
    }
}
