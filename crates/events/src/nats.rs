//! Event log on a NATS JetStream stream (nats-server ≥ 2.9).
//!
//! - One stream `<prefix>_events` on subjects `<prefix>.events.<TYPE>` (the type in the subject
//!   lets operators `nats sub` one kind), limits retention: `max_msgs` = `max_events`,
//!   `max_age`, discard old. Payload: the prost-encoded event.
//! - **Cursor = stream sequence** in decimal. Sequences are contiguous under limits retention,
//!   so a resume point whose successors were discarded is detected (`CursorExpired`).
//! - Idempotent publish: the event id is the `Nats-Msg-Id` header, deduplicated by the server
//!   within `duplicate_window` (the ack of a duplicate carries the original sequence).
//! - History: an ephemeral pull consumer (no acks) per reader, started by sequence or by time,
//!   fetched page by page. Live tail: one ordered consumer per opened log feeding the shared
//!   broadcast.
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use nightshift_core::{EventType, pb};
use prost::Message;

use crate::error::{EventLogError, redact_url};
use crate::log::{AbortOnDrop, Appended, Backend, Entry, LiveTail, LogOptions, Pos, RawFrom, RawReader};

/// Longest wait of one history fetch (2.9 can hang on a fetch without expiry).
const FETCH_EXPIRES: Duration = Duration::from_secs(2);
/// History consumers left behind by a crashed reader are removed by the server after this.
const READER_INACTIVE: Duration = Duration::from_secs(60);

/// The JetStream [`EventLog`](crate::EventLog). Cheap to clone (clones share the connection and
/// the live-tail task, which stops when the last clone is dropped).
#[derive(Clone)]
pub struct NatsLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLog").field("stream", &self.inner.stream_name).finish_non_exhaustive()
    }
}

struct Inner {
    opts: LogOptions,
    js: jetstream::Context,
    stream: stream::Stream,
    stream_name: String,
    subject_prefix: String,
    live: Arc<LiveTail>,
    _tail: AbortOnDrop,
}

fn nats_err(what: &str, e: impl std::fmt::Display) -> EventLogError {
    EventLogError::Backend(format!("NATS {what}: {e}"))
}

impl NatsLog {
    /// Connects to `url` (`nats://host:port`), creates or updates the stream `<prefix>_events`
    /// with the options' retention, and starts the live tail at its current end.
    pub async fn connect(url: &str, opts: LogOptions) -> Result<Self, EventLogError> {
        opts.validate()?;
        let client = async_nats::connect(url)
            .await
            .map_err(|e| EventLogError::Backend(format!("NATS at {}: {e}", redact_url(url))))?;
        let js = jetstream::new(client);
        let stream_name = format!("{}_events", opts.prefix);
        let subject_prefix = format!("{}.events", opts.prefix);
        let max_age = opts.max_age.unwrap_or_default();
        // The server refuses a duplicate window longer than max_age.
        let duplicate_window = if max_age.is_zero() { opts.dedup_window } else { opts.dedup_window.min(max_age) };
        let cfg = stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{subject_prefix}.>")],
            max_messages: i64::try_from(opts.max_events).unwrap_or(i64::MAX),
            max_age,
            duplicate_window,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        js.create_or_update_stream(cfg).await.map_err(|e| nats_err("creating the stream", e))?;
        let mut stream = js.get_stream(&stream_name).await.map_err(|e| nats_err("opening the stream", e))?;
        let head = stream.info().await.map_err(|e| nats_err("stream info", e))?.state.last_sequence;
        let live = LiveTail::new(opts.subscriber_buffer);
        let task = tokio::spawn(tail(stream.clone(), head, live.clone()));
        Ok(Self {
            inner: Arc::new(Inner { opts, js, stream, stream_name, subject_prefix, live, _tail: AbortOnDrop(task) }),
        })
    }

    /// The JetStream stream's name.
    pub fn stream_name(&self) -> &str {
        &self.inner.stream_name
    }
}

fn entry_of(msg: &jetstream::Message) -> Result<Entry, EventLogError> {
    let info = msg.info().map_err(|e| EventLogError::Corrupt(format!("JetStream message without metadata: {e}")))?;
    let n = info.stream_sequence;
    let event = match pb::Event::decode(msg.payload.as_ref()) {
        Ok(mut ev) => {
            ev.cursor = n.to_string();
            Some(ev)
        }
        Err(e) => {
            tracing::warn!(seq = n, error = %e, "skipping undecodable event in JetStream stream");
            None
        }
    };
    Ok(Entry { pos: Pos { ms: 0, n }, event })
}

/// Silence after which the live tail checks that it is not missing stored messages.
const TAIL_WATCHDOG: Duration = Duration::from_secs(2);

/// The live tail: an ordered consumer from `last + 1`, recreated if it ever ends or stalls.
async fn tail(stream: stream::Stream, mut last: u64, live: Arc<LiveTail>) {
    loop {
        let cfg = consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: last + 1 },
            ..Default::default()
        };
        let mut messages = match stream.create_consumer(cfg).await {
            Ok(c) => match c.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "live tail: cannot read the ordered consumer; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "live tail: cannot create the ordered consumer; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            // Watchdog: after a NATS server restart the ordered consumer can stay silent
            // without ever reporting an error (seen with async-nats 0.51 and nats-server 2.9).
            // When nothing arrived for a while, ask the stream whether it holds newer messages
            // and, if so, recreate the consumer from the last one delivered.
            let msg = match tokio::time::timeout(TAIL_WATCHDOG, messages.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(_) => match stream.get_info().await {
                    Ok(info) if info.state.last_sequence > last => {
                        tracing::warn!(last, newest = info.state.last_sequence, "live tail stalled; recreating it");
                        break;
                    }
                    _ => continue,
                },
            };
            match msg {
                Ok(msg) => match entry_of(&msg) {
                    Ok(entry) if entry.pos.n > last => {
                        if last != 0 && entry.pos.n != last + 1 {
                            tracing::warn!(
                                after = last,
                                next = entry.pos.n,
                                "live tail skipped messages discarded before it read them"
                            );
                        }
                        last = entry.pos.n;
                        live.publish(Arc::new(entry));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "live tail: skipping message"),
                },
                // The ordered consumer recreates itself after errors; they are informative.
                Err(e) => tracing::debug!(error = %e, "live tail: ordered consumer error"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[async_trait::async_trait]
impl Backend for NatsLog {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn durable(&self) -> bool {
        true
    }

    fn options(&self) -> &LogOptions {
        &self.inner.opts
    }

    fn parse_cursor(&self, cursor: &str) -> Result<Pos, EventLogError> {
        cursor.parse::<u64>().map(|n| Pos { ms: 0, n }).map_err(|_| EventLogError::InvalidCursor(cursor.to_owned()))
    }

    fn format_cursor(&self, pos: Pos) -> String {
        pos.n.to_string()
    }

    async fn append_raw(&self, events: Vec<pb::Event>) -> Result<Vec<Appended>, EventLogError> {
        let inner = &self.inner;
        // Publish everything, then collect the acks: one round trip for the batch, and the
        // server assigns sequences in publish order.
        let mut acks = Vec::with_capacity(events.len());
        for mut ev in events {
            ev.cursor.clear();
            let ty = pb::EventType::try_from(ev.r#type)
                .ok()
                .and_then(EventType::from_pb)
                .map_or("UNSPECIFIED", |t| t.as_str());
            let subject = format!("{}.{ty}", inner.subject_prefix);
            let mut msg = jetstream::message::PublishMessage::build().payload(ev.encode_to_vec().into());
            if !ev.id.is_empty() {
                msg = msg.message_id(&ev.id);
            }
            acks.push(inner.js.send_publish(subject, msg).await.map_err(|e| nats_err("publish", e))?);
        }
        let mut out = Vec::with_capacity(acks.len());
        for ack in acks {
            let ack = ack.await.map_err(|e| nats_err("publish ack", e))?;
            out.push(Appended { cursor: ack.sequence.to_string(), duplicate: ack.duplicate });
        }
        Ok(out)
    }

    async fn open_reader(&self, from: RawFrom) -> Result<Box<dyn RawReader>, EventLogError> {
        Ok(Box::new(NatsReader { log: self.clone(), from, consumer: None, expect: None }))
    }

    async fn head(&self) -> Result<Pos, EventLogError> {
        let info = self.inner.stream.get_info().await.map_err(|e| nats_err("stream info", e))?;
        Ok(Pos { ms: 0, n: info.state.last_sequence })
    }

    fn live(&self) -> &LiveTail {
        &self.inner.live
    }
}

struct NatsReader {
    log: NatsLog,
    from: RawFrom,
    consumer: Option<consumer::PullConsumer>,
    /// The sequence the next message must have (sequences are contiguous).
    expect: Option<u64>,
}

impl NatsReader {
    /// Creates the history consumer once there is something to read; `false` if there is not.
    async fn start(&mut self) -> Result<bool, EventLogError> {
        let stream = &self.log.inner.stream;
        let state = stream.get_info().await.map_err(|e| nats_err("stream info", e))?.state;
        let policy = match self.from {
            RawFrom::Beginning => {
                if state.messages == 0 {
                    return Ok(false);
                }
                consumer::DeliverPolicy::All
            }
            RawFrom::After(p) => {
                if state.last_sequence <= p.n {
                    return Ok(false);
                }
                // first_sequence is last + 1 when everything was discarded.
                let first = state.first_sequence.max(1);
                if first > p.n + 1 {
                    return Err(EventLogError::CursorExpired { cursor: p.n.to_string(), lost: first - p.n - 1 });
                }
                self.expect = Some(p.n + 1);
                consumer::DeliverPolicy::ByStartSequence { start_sequence: p.n + 1 }
            }
            RawFrom::Time(t) => {
                if state.messages == 0 {
                    return Ok(false);
                }
                let nanos = i128::from(t.timestamp_nanos_opt().unwrap_or(0).max(0));
                let start_time = async_nats::datetime::from_nanos(nanos).map_err(|e| nats_err("start time", e))?;
                consumer::DeliverPolicy::ByStartTime { start_time }
            }
        };
        let cfg = consumer::pull::Config {
            deliver_policy: policy,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: READER_INACTIVE,
            ..Default::default()
        };
        let c = stream.create_consumer(cfg).await.map_err(|e| nats_err("creating a history consumer", e))?;
        self.consumer = Some(c);
        Ok(true)
    }
}

#[async_trait::async_trait]
impl RawReader for NatsReader {
    async fn next_page(&mut self, limit: usize) -> Result<Vec<Arc<Entry>>, EventLogError> {
        if self.consumer.is_none() && !self.start().await? {
            return Ok(Vec::new());
        }
        let Some(c) = self.consumer.as_ref() else { return Ok(Vec::new()) };
        let mut batch = c
            .fetch()
            .max_messages(limit)
            .expires(FETCH_EXPIRES)
            .messages()
            .await
            .map_err(|e| nats_err("fetching history", e))?;
        let mut out = Vec::with_capacity(limit);
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(|e| nats_err("fetching history", e))?;
            let entry = entry_of(&msg)?;
            if let Some(want) = self.expect
                && entry.pos.n > want
            {
                let after = want - 1;
                return Err(EventLogError::CursorExpired { cursor: after.to_string(), lost: entry.pos.n - want });
            }
            self.expect = Some(entry.pos.n + 1);
            out.push(Arc::new(entry));
        }
        Ok(out)
    }
}

impl Drop for NatsReader {
    fn drop(&mut self) {
        // Remove the history consumer now rather than when the server notices it is inactive.
        if let Some(c) = self.consumer.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let stream = self.log.inner.stream.clone();
            let name = c.cached_info().name.clone();
            rt.spawn(async move {
                if let Err(e) = stream.delete_consumer(&name).await {
                    tracing::debug!(consumer = name, error = %e, "could not delete history consumer");
                }
            });
        }
    }
}
