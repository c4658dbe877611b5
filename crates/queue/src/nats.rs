//! NATS JetStream backend (async-nats 0.51; written against nats-server 2.9).
//!
//! ## Layout on the server
//! One stream `NAME` with **WorkQueue** retention (a message is removed when acked) and two
//! subjects, each read by its own durable pull consumer with explicit ack (a WorkQueue stream
//! allows several consumers only with disjoint filters):
//! - `NAME.ready` → consumer `NAME-workers`, shared by every [`NatsQueue`] handle: this is what
//!   [`WorkQueue::receive`] pulls;
//! - `NAME.delayed` → consumer `NAME-delayer`, read by a background task of each handle (see
//!   below).
//!
//! ## Semantics
//! - **dedup**: every publish carries `Nats-Msg-Id: <dedup id>` ([`crate::dedup_id`]); the stream's `duplicate_window`
//!   is the dedup window and the publish ack's `duplicate` flag is the `false` of `publish`.
//!   Dedup is per stream, so it covers immediate and delayed publishes alike.
//! - **ack deadline**: the consumer's `ack_wait`; an unacked message is redelivered after it and
//!   the server's delivery count (from the ack subject) is [`Delivery::delivered`].
//!   `in_progress` sends `+WPI` (`AckKind::Progress`), which restarts the `ack_wait` timer.
//! - **nack with delay**: `-NAK {"delay": ..}` (`AckKind::Nak(Some(delay))`): the server holds the
//!   message until then and counts the next delivery.
//! - Acks are sent as requests and wait for the server's reply, so `ack()` returning `Ok` means
//!   the message is gone (a plain `ack()` of async-nats does not wait).
//!
//! ## Delayed publish
//! nats-server 2.9 has no scheduled publish (and ignores per-message TTL), so a delayed request
//! is published at once to `NAME.delayed` with a `Nightshift-Due-Ms` header (unix ms, publisher
//! clock). A background task per handle long-polls the `NAME-delayer` consumer: a message not
//! yet due is Nak'ed with a delay of exactly the remaining time (the server keeps it and
//! redelivers it when due, so nothing polls); a due one is re-published to `NAME.ready` with
//! `Nats-Msg-Id: promoted-<stream seq>` (so that promoting it twice after a crash between
//! publish and ack is deduplicated) and then acked.
//!
//! Why not "publish to ready and Nak until due" on the workers' consumer: Nak'ed messages stay in
//! that consumer's ack-pending set, so many deferred runs would use up `max_ack_pending` and
//! starve ready work, and every early delivery would inflate [`Delivery::delivered`]. With the
//! separate subject the workers' consumer only ever sees due work with honest counts.
//! Costs: one extra publish per delayed request, and a delay is only as exact as the clocks of
//! publisher and promoter agree (NTP: milliseconds). If no handle is running (all
//! processes down), delayed requests simply wait in the stream.
//!
//! ## Pitfalls of 2.9 handled here
//! Every pull sets `expires` (a fetch without it can hang forever on 2.9). `receive` is one
//! `no_wait` pull with `expires = wait`, which on 2.9 waits for the first message and returns
//! with what is available (see `NatsQueue::pull`). Settings the server may silently drop are
//! read back from `cached_info().config` after create/update.
//!
//! A `receive` future dropped mid-wait (e.g. in a `select!`) leaves its pull request on the
//! server until `expires`; a message handed to it is redelivered after `ack_wait`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, PullConsumer, pull},
    message::PublishMessage,
    stream::{self, RetentionPolicy, StorageType},
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::{Acker, Delivery, QueueError, QueueOptions, RunRequest, WorkQueue};

/// Header carrying the due time (unix ms) of a delayed publish.
const DUE_HEADER: &str = "Nightshift-Due-Ms";
/// Shortest `expires` sent: `receive(.., Duration::ZERO)` still needs one (see `pull`), and the
/// server's answer takes about a millisecond anyway.
const MIN_EXPIRES: Duration = Duration::from_millis(10);
/// Longest `expires` of one pull; `receive` pulls again while time is left.
const MAX_EXPIRES: Duration = Duration::from_secs(60);
/// `ack_wait` of the delayer consumer: a promoter that dies while holding messages gives them
/// back after this.
const DELAYER_ACK_WAIT: Duration = Duration::from_secs(30);
/// How many delayed messages one promoter pull may hold.
const PROMOTE_BATCH: usize = 256;

/// Settings of a [`NatsQueue`]. [`NatsConfig::from_options`] derives every name from
/// [`QueueOptions::name`].
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Stream name.
    pub stream: String,
    /// Subject of ready requests.
    pub ready_subject: String,
    /// Subject of delayed requests waiting for their due time.
    pub delayed_subject: String,
    /// Durable consumer on `ready_subject`, shared by all workers.
    pub consumer: String,
    /// Durable consumer on `delayed_subject`, shared by all promoters.
    pub delay_consumer: String,
    /// The workers' consumer `ack_wait`.
    pub ack_wait: Duration,
    /// The stream's `duplicate_window`.
    pub duplicate_window: Duration,
    /// The workers' consumer `max_ack_pending` (deliveries in flight, including Nak'ed ones
    /// waiting for their delay). The server default, 1000, is too small for thousands of
    /// agents with long runs.
    pub max_ack_pending: i64,
    /// Whether this handle runs the delayed-message promoter (see the module docs). A
    /// publish-only process may turn it off as long as some handle runs it.
    pub promote_delayed: bool,
    /// Long-poll duration of the promoter's pulls.
    pub promote_poll: Duration,
}

impl NatsConfig {
    /// Names derived from `options.name` (see [`QueueOptions::name`]), its ack wait and dedup
    /// window, `max_ack_pending` 10,000, promoter on.
    pub fn from_options(options: &QueueOptions) -> Result<Self, QueueError> {
        crate::validate_name(&options.name)?;
        let name = &options.name;
        Ok(Self {
            stream: name.clone(),
            ready_subject: format!("{name}.ready"),
            delayed_subject: format!("{name}.delayed"),
            consumer: format!("{name}-workers"),
            delay_consumer: format!("{name}-delayer"),
            ack_wait: options.ack_wait,
            duplicate_window: options.dedup_window,
            max_ack_pending: 10_000,
            promote_delayed: true,
            promote_poll: Duration::from_secs(10),
        })
    }
}

/// A [`WorkQueue`] on NATS JetStream; see the module docs.
pub struct NatsQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    consumer: PullConsumer,
    delay_consumer: PullConsumer,
    config: NatsConfig,
    promoter: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for NatsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsQueue").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Drop for NatsQueue {
    fn drop(&mut self) {
        if let Some(promoter) = self.promoter.take() {
            promoter.abort();
        }
    }
}

fn backend(context: &str, err: impl std::fmt::Display) -> QueueError {
    QueueError::Backend(format!("nats: {context}: {err}"))
}

impl NatsQueue {
    /// Connects to `url` (`nats://host:port`), creates or checks the stream and both consumers,
    /// and starts the promoter if `config.promote_delayed`.
    pub async fn connect(url: &str, config: NatsConfig) -> Result<Self, QueueError> {
        let client = async_nats::ConnectOptions::new()
            .name("nightshift-queue")
            .connect(url)
            .await
            .map_err(|e| backend(&format!("connect to {url}"), e))?;
        let js = jetstream::new(client.clone());

        let stream = ensure_stream(&js, &config).await?;
        let consumer =
            ensure_consumer(&stream, &config.consumer, &config.ready_subject, config.ack_wait, config.max_ack_pending)
                .await?;
        // Unlimited ack-pending on the delayer: every delayed request sits there Nak'ed until due,
        // and a limit would hold back short delays behind long ones.
        let delay_consumer =
            ensure_consumer(&stream, &config.delay_consumer, &config.delayed_subject, DELAYER_ACK_WAIT, -1).await?;

        let promoter = config.promote_delayed.then(|| {
            tokio::spawn(run_promoter(
                js.clone(),
                delay_consumer.clone(),
                config.ready_subject.clone(),
                config.promote_poll,
            ))
        });
        Ok(Self { client, js, consumer, delay_consumer, config, promoter })
    }

    /// One pull: waits up to `wait` for the first message, then returns at once with what is
    /// available, up to `max`. That is what a `no_wait` pull *with* `expires` does (measured on
    /// nats-server 2.9.10: it returns right after the first message, or a 408 at `expires`);
    /// a pull without `no_wait` would wait for all `max` messages or the full `expires`.
    async fn pull(&self, max: usize, wait: Duration, out: &mut Vec<Delivery>) -> Result<(), QueueError> {
        let batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .expires(wait.clamp(MIN_EXPIRES, MAX_EXPIRES))
            .messages()
            .await
            .map_err(|e| backend("pull", e))?;
        self.collect(batch, out).await
    }

    /// Drains a pull's messages into deliveries; undecodable messages are terminated and
    /// dropped. The pull is drained to its end: a pull request abandoned half-way would still
    /// get messages delivered, which then wait out `ack_wait` unseen.
    async fn collect(&self, mut batch: pull::Batch, out: &mut Vec<Delivery>) -> Result<(), QueueError> {
        let mut first_error = None;
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => {
                    if let Some(delivery) = self.to_delivery(message).await {
                        out.push(delivery);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            // Deliveries already taken must not be lost to an error later in the batch: they
            // would come back only after ack_wait.
            Some(e) if out.is_empty() => Err(backend("pull", e)),
            Some(e) => {
                tracing::warn!(error = %e, "error after a partial pull");
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn to_delivery(&self, message: jetstream::Message) -> Option<Delivery> {
        let delivered = match message.info() {
            Ok(info) => u32::try_from(info.delivered).unwrap_or(u32::MAX),
            Err(e) => {
                tracing::warn!(error = %e, "JetStream message without ack metadata, ignored");
                return None;
            }
        };
        let reply = message.message.reply.clone()?;
        match crate::decode(&message.payload) {
            Ok(request) => {
                let acker = NatsAcker { client: self.client.clone(), reply };
                Some(Delivery::new(request, delivered, Box::new(acker)))
            }
            Err(e) => {
                tracing::error!(error = %e, stream = %self.config.stream, "undecodable run request, terminated");
                if let Err(e) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "could not terminate an undecodable message");
                }
                None
            }
        }
    }
}

/// Creates the stream or checks an existing one (retention, subjects, duplicate window).
async fn ensure_stream(js: &jetstream::Context, config: &NatsConfig) -> Result<stream::Stream, QueueError> {
    let wanted = stream::Config {
        name: config.stream.clone(),
        subjects: vec![config.ready_subject.clone(), config.delayed_subject.clone()],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        duplicate_window: config.duplicate_window,
        ..Default::default()
    };
    let mut stream = js.get_or_create_stream(wanted).await.map_err(|e| backend("create stream", e))?;
    let current = &stream.cached_info().config;
    if current.retention != RetentionPolicy::WorkQueue {
        return Err(QueueError::Config(format!(
            "NATS stream {} exists without WorkQueue retention ({:?}); use another queue name",
            config.stream, current.retention
        )));
    }
    let missing_subject =
        [&config.ready_subject, &config.delayed_subject].into_iter().any(|s| !current.subjects.contains(s));
    if missing_subject || current.duplicate_window != config.duplicate_window {
        // Start from the server's config so settings an operator made (limits, replicas) stay.
        let mut update = current.clone();
        for subject in [&config.ready_subject, &config.delayed_subject] {
            if !update.subjects.contains(subject) {
                update.subjects.push(subject.clone());
            }
        }
        update.duplicate_window = config.duplicate_window;
        js.update_stream(&update).await.map_err(|e| backend("update stream", e))?;
        tracing::info!(stream = %config.stream, "updated NATS stream settings");
        stream.info().await.map_err(|e| backend("stream info", e))?;
    }
    let taken = stream.cached_info().config.duplicate_window;
    if taken != config.duplicate_window {
        return Err(QueueError::Config(format!(
            "NATS stream {}: duplicate_window {:?} requested but the server keeps {:?}",
            config.stream, config.duplicate_window, taken
        )));
    }
    Ok(stream)
}

/// Creates the durable pull consumer or brings an existing one to `ack_wait`/`max_ack_pending`.
async fn ensure_consumer(
    stream: &stream::Stream,
    name: &str,
    filter: &str,
    ack_wait: Duration,
    max_ack_pending: i64,
) -> Result<PullConsumer, QueueError> {
    let wanted = pull::Config {
        durable_name: Some(name.to_owned()),
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        filter_subject: filter.to_owned(),
        max_ack_pending,
        ..Default::default()
    };
    let consumer: PullConsumer =
        stream.get_or_create_consumer(name, wanted.clone()).await.map_err(|e| backend("create consumer", e))?;
    let current = &consumer.cached_info().config;
    if current.filter_subject != filter {
        return Err(QueueError::Config(format!(
            "NATS consumer {name} exists with filter {:?}, expected {filter:?}; use another queue name",
            current.filter_subject
        )));
    }
    let consumer = if current.ack_wait != ack_wait || current.max_ack_pending != max_ack_pending {
        tracing::info!(consumer = name, ?ack_wait, max_ack_pending, "updating NATS consumer settings");
        stream.update_consumer(wanted).await.map_err(|e| backend("update consumer", e))?
    } else {
        consumer
    };
    // 2.9 silently drops settings it does not know; make sure ours took.
    let taken = &consumer.cached_info().config;
    if taken.ack_wait != ack_wait || taken.max_ack_pending != max_ack_pending {
        return Err(QueueError::Config(format!(
            "NATS consumer {name}: requested ack_wait {ack_wait:?} / max_ack_pending {max_ack_pending}, \
             server has {:?} / {}",
            taken.ack_wait, taken.max_ack_pending
        )));
    }
    Ok(consumer)
}

fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Moves due messages from the delayed subject to the ready one, forever (aborted on drop).
async fn run_promoter(js: jetstream::Context, consumer: PullConsumer, ready_subject: String, poll: Duration) {
    loop {
        let mut batch =
            match consumer.batch().max_messages(PROMOTE_BATCH).expires(poll.max(MIN_EXPIRES)).messages().await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "delayed-message pull failed, retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => promote(&js, &ready_subject, message).await,
                Err(e) => tracing::warn!(error = %e, "delayed-message pull error"),
            }
        }
    }
}

async fn promote(js: &jetstream::Context, ready_subject: &str, message: jetstream::Message) {
    let due_ms = message
        .headers
        .as_ref()
        .and_then(|h| h.get(DUE_HEADER))
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .unwrap_or(0);
    let now_ms = unix_ms_now();
    if due_ms > now_ms {
        // The server redelivers it at the due time: no polling in between.
        let remaining = Duration::from_millis(due_ms - now_ms);
        if let Err(e) = message.ack_with(AckKind::Nak(Some(remaining))).await {
            tracing::warn!(error = %e, "could not defer a delayed message");
        }
        return;
    }
    let sequence = match message.info() {
        Ok(info) => info.stream_sequence,
        Err(e) => {
            tracing::warn!(error = %e, "delayed message without ack metadata, ignored");
            return;
        }
    };
    // The id makes a second promotion of the same message (crash before the ack below) a
    // duplicate within the window.
    let publish = PublishMessage::build().payload(message.payload.clone()).message_id(format!("promoted-{sequence}"));
    let published = match js.send_publish(ready_subject.to_owned(), publish).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let kind = match published {
        Ok(()) => AckKind::Ack,
        Err(e) => {
            tracing::warn!(error = %e, "could not promote a delayed message, retrying in 1 s");
            AckKind::Nak(Some(Duration::from_secs(1)))
        }
    };
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "could not ack a promoted message (it will be promoted again, deduplicated)");
    }
}

#[async_trait::async_trait]
impl WorkQueue for NatsQueue {
    async fn publish(&self, request: &RunRequest, delay: Option<Duration>) -> Result<bool, QueueError> {
        let payload = Bytes::from(crate::encode(request));
        let message = PublishMessage::build().payload(payload).message_id(crate::dedup_id(request).as_ref());
        let (subject, message) = match delay.filter(|d| !d.is_zero()) {
            None => (&self.config.ready_subject, message),
            Some(delay) => {
                let due = unix_ms_now().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                (&self.config.delayed_subject, message.header(DUE_HEADER, due.to_string()))
            }
        };
        let ack = self
            .js
            .send_publish(subject.clone(), message)
            .await
            .map_err(|e| backend("publish", e))?
            .await
            .map_err(|e| backend("publish ack", e))?;
        Ok(!ack.duplicate)
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let deadline = crate::deadline_after(wait);
        loop {
            self.pull(max, deadline.saturating_duration_since(tokio::time::Instant::now()), &mut out).await?;
            // Pull again only if a pull ended without a delivery (an undecodable message was
            // dropped, or `wait` exceeds MAX_EXPIRES) and time is left.
            if !out.is_empty() || deadline.saturating_duration_since(tokio::time::Instant::now()) < MIN_EXPIRES {
                return Ok(out);
            }
        }
    }

    async fn depth(&self) -> Result<Option<u64>, QueueError> {
        let ready = self.consumer.get_info().await.map_err(|e| backend("consumer info", e))?;
        let delayed = self.delay_consumer.get_info().await.map_err(|e| backend("consumer info", e))?;
        // Not yet delivered ready messages, plus every delayed one (undelivered or held Nak'ed by
        // a promoter). Deliveries in flight and Nak'ed retries on the workers' consumer are not
        // counted: the server does not tell them apart.
        Ok(Some(ready.num_pending + delayed.num_pending + delayed.num_ack_pending as u64))
    }
}

/// Acks one delivery through its reply subject, waiting for the server's confirmation.
struct NatsAcker {
    client: async_nats::Client,
    reply: async_nats::Subject,
}

impl NatsAcker {
    async fn send(&self, kind: AckKind) -> Result<(), QueueError> {
        self.client.request(self.reply.clone(), Bytes::from(kind)).await.map_err(|e| backend("ack", e))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Acker for NatsAcker {
    async fn ack(&self) -> Result<(), QueueError> {
        self.send(AckKind::Ack).await
    }

    async fn nack(&self, delay: Duration) -> Result<(), QueueError> {
        // A zero delay is a plain Nak: redeliver now.
        self.send(AckKind::Nak((!delay.is_zero()).then_some(delay))).await
    }

    async fn in_progress(&self) -> Result<(), QueueError> {
        self.send(AckKind::Progress).await
    }
}
