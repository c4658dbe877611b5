//! [`EventPublisher`]: how other services publish events without ever failing because of it.
//!
//! `emit` builds the event (id, time and source assigned at the call, so a retried publish is
//! idempotent and the time is when it happened, not when it was delivered), puts it in a
//! bounded queue and returns at once. A background task sends queued events in batches
//! (PublishStream) and retries with backoff; when the queue is full or retries are exhausted,
//! events are dropped with a warning and counted ([`EventPublisher::dropped`]). The caller's
//! operation never waits for, or fails because of, the event service.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nightshift_core::pb::event_service_client::EventServiceClient;
use nightshift_core::{AgentId, Clock, EventType, RunId, SystemClock, backoff, pb};
use nightshift_rpc::{BadEndpoint, CallChannel, ClientOptions};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;

use crate::convert::json_to_struct;

/// Longest wait between two attempts to send one batch.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// Settings of an [`EventPublisher`].
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// Events queued at most; further events are dropped until the queue drains.
    pub buffer: usize,
    /// Events sent per call.
    pub batch: usize,
    /// Attempts per batch before it is dropped.
    pub max_attempts: u32,
    /// Wait before the first retry (doubles per attempt, at most 5 s).
    pub retry_backoff: Duration,
    /// Time source for event times.
    pub clock: Arc<dyn Clock>,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self {
            buffer: 4096,
            batch: 256,
            max_attempts: 5,
            retry_backoff: Duration::from_millis(200),
            clock: Arc::new(SystemClock),
        }
    }
}

// Nearly every message is an event; boxing it to shrink the rare Flush would cost an
// allocation per event.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(pb::Event),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Default)]
struct Stats {
    published: AtomicU64,
    dropped: AtomicU64,
}

/// A fire-and-forget publisher to the event service. Cheap to clone; the background task stops
/// when the last clone is dropped (after sending what is queued).
#[derive(Clone)]
pub struct EventPublisher {
    tx: mpsc::Sender<Msg>,
    source: String,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher").field("source", &self.source).finish_non_exhaustive()
    }
}

/// An event being built by [`EventPublisher::event`]; [`EventBuilder::emit`] queues it.
#[derive(Debug)]
#[must_use = "call .emit() to publish the event"]
pub struct EventBuilder<'a> {
    publisher: &'a EventPublisher,
    event: pb::Event,
}

impl EventBuilder<'_> {
    /// Sets the agent.
    pub fn agent(mut self, id: &AgentId) -> Self {
        self.event.agent_id = id.as_str().to_owned();
        self
    }

    /// Sets the agent's name (shown by consumers).
    pub fn agent_name(mut self, name: impl Into<String>) -> Self {
        self.event.agent_name = name.into();
        self
    }

    /// Sets the agent's namespace (who may read the event).
    pub fn namespace(mut self, ns: &nightshift_core::Namespace) -> Self {
        self.event.namespace = ns.as_str().to_owned();
        self
    }

    /// Sets the run.
    pub fn run(mut self, id: &RunId) -> Self {
        self.event.run_id = id.as_str().to_owned();
        self
    }

    /// Sets the type-specific data (a JSON object; other values are wrapped as `{"value": …}`).
    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.event.data = Some(json_to_struct(data));
        self
    }

    /// Queues the event (never blocks, never fails).
    pub fn emit(self) {
        self.publisher.publish(self.event);
    }
}

impl EventPublisher {
    /// A publisher sending through `client`, stamping events with `source` (e.g.
    /// `worker/host-1`). Spawns the sending task: call inside a Tokio runtime.
    pub fn new(client: EventServiceClient<CallChannel>, source: impl Into<String>, options: PublisherOptions) -> Self {
        let (tx, rx) = mpsc::channel(options.buffer.max(1));
        let stats = Arc::new(Stats::default());
        let clock = options.clock.clone();
        tokio::spawn(run(client, rx, stats.clone(), options));
        Self { tx, source: source.into(), clock, stats }
    }

    /// A publisher to the event service at `endpoint` (`http://host:port`), connecting lazily
    /// so that a service starts even while the event service is down.
    pub fn connect_lazy(
        endpoint: &str,
        client: &ClientOptions,
        source: impl Into<String>,
        options: PublisherOptions,
    ) -> Result<Self, BadEndpoint> {
        Ok(Self::new(EventServiceClient::new(client.connect_lazy("events_endpoint", endpoint)?), source, options))
    }

    /// The publisher of a service role to its `events_endpoint` option: `None` when the option
    /// is empty (no event service), else a lazily connecting publisher whose events name
    /// `role/<process id>` as their source.
    pub fn for_role(role: &str, events_endpoint: &str, client: &ClientOptions) -> Result<Option<Self>, BadEndpoint> {
        if events_endpoint.is_empty() {
            return Ok(None);
        }
        let source = format!("{role}/{}", std::process::id());
        Self::connect_lazy(events_endpoint, client, source, PublisherOptions::default()).map(Some)
    }

    /// Starts an event of type `ty`.
    pub fn event(&self, ty: EventType) -> EventBuilder<'_> {
        EventBuilder { publisher: self, event: pb::Event { r#type: ty.to_pb() as i32, ..Default::default() } }
    }

    /// Queues an event of type `ty` for an agent and/or run with JSON `data`.
    pub fn emit(&self, ty: EventType, agent: Option<&AgentId>, run: Option<&RunId>, data: serde_json::Value) {
        let mut b = self.event(ty).data(data);
        if let Some(a) = agent {
            b = b.agent(a);
        }
        if let Some(r) = run {
            b = b.run(r);
        }
        b.emit();
    }

    /// Queues a prepared event; empty id, time and source are filled in here.
    pub fn publish(&self, mut event: pb::Event) {
        if event.id.is_empty() {
            event.id = uuid::Uuid::now_v7().to_string();
        }
        if event.time.is_none() {
            event.time = Some(nightshift_core::time::to_pb(self.clock.now()));
        }
        if event.source.is_empty() {
            event.source.clone_from(&self.source);
        }
        if let Err(e) = self.tx.try_send(Msg::Event(event)) {
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per power of two keeps a long outage from flooding the log.
            if n.is_power_of_two() {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "queue full",
                    mpsc::error::TrySendError::Closed(_) => "publisher stopped",
                };
                tracing::warn!(dropped_total = n, why, "dropping event");
            }
        }
    }

    /// Waits until every event queued before this call was sent or dropped.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Events accepted by the event service so far.
    pub fn published(&self) -> u64 {
        self.stats.published.load(Ordering::Relaxed)
    }

    /// Events dropped so far (queue full or retries exhausted).
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }
}

async fn run(
    mut client: EventServiceClient<CallChannel>,
    mut rx: mpsc::Receiver<Msg>,
    stats: Arc<Stats>,
    opts: PublisherOptions,
) {
    let batch_size = opts.batch.max(1);
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut waiters = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(e) => batch.push(e),
                Msg::Flush(w) => waiters.push(w),
            }
            if batch.len() < batch_size {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            send(&mut client, batch, &stats, &opts).await;
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

async fn send(
    client: &mut EventServiceClient<CallChannel>,
    batch: Vec<pb::Event>,
    stats: &Stats,
    opts: &PublisherOptions,
) {
    let n = batch.len() as u64;
    for attempt in 1..=opts.max_attempts.max(1) {
        let requests: Vec<pb::PublishRequest> =
            batch.iter().map(|e| pb::PublishRequest { event: Some(e.clone()) }).collect();
        let result = if requests.len() == 1 {
            client.publish(requests.into_iter().next().unwrap_or_default()).await.map(|_| ())
        } else {
            client.publish_stream(futures::stream::iter(requests)).await.map(|_| ())
        };
        match result {
            Ok(()) => {
                stats.published.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Err(s) if s.code() == Code::InvalidArgument => {
                // Retrying cannot help; send one by one so that only the bad events are lost.
                if batch.len() > 1 {
                    for e in batch {
                        match client.publish(pb::PublishRequest { event: Some(e) }).await {
                            Ok(_) => stats.published.fetch_add(1, Ordering::Relaxed),
                            Err(s) => {
                                tracing::warn!(error = %s.message(), "event refused by the event service; dropped");
                                stats.dropped.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                } else {
                    tracing::warn!(error = %s.message(), "event refused by the event service; dropped");
                    stats.dropped.fetch_add(n, Ordering::Relaxed);
                }
                return;
            }
            Err(s) => {
                tracing::warn!(attempt, events = n, code = ?s.code(), error = %s.message(), "publishing events failed");
                if attempt < opts.max_attempts {
                    tokio::time::sleep(backoff::exponential(opts.retry_backoff, attempt - 1, MAX_RETRY_BACKOFF)).await;
                }
            }
        }
    }
    tracing::warn!(events = n, attempts = opts.max_attempts, "dropping events: the event service is unavailable");
    stats.dropped.fetch_add(n, Ordering::Relaxed);
}
