//! The work queue that carries [`RunRequest`]s from the scheduler (and the manager's manual
//! triggers) to workers.
//!
//! One trait, [`WorkQueue`], with one module per backend. Semantics every backend provides
//! (checked by the shared contract suite in `tests/contract.rs`):
//! - **dedup**: publishing a request whose `run_id` was published within the dedup window is a
//!   no-op that returns `false`;
//! - **at-least-once** delivery with explicit ack: an unacked delivery comes back after the ack
//!   deadline (its consumer may have died), with [`Delivery::delivered`] counting deliveries;
//! - **in-progress**: [`Delivery::in_progress`] pushes the ack deadline out while a run is alive;
//! - **delayed delivery**: `publish(.., Some(delay))` and [`Delivery::nack`] with a delay (retry
//!   backoff, deferred runs) deliver no earlier than the delay.

use std::time::Duration;

pub use nightshift_proto::v1::RunRequest;

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
    /// the same `run_id` was already published within the dedup window (nothing is enqueued).
    async fn publish(&self, request: &RunRequest, delay: Option<Duration>) -> Result<bool, QueueError>;

    /// Up to `max` deliveries, waiting at most `wait` for the first one.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    /// Messages waiting (ready or delayed), for metrics; `None` if the backend cannot tell cheaply.
    async fn depth(&self) -> Result<Option<u64>, QueueError>;
}
