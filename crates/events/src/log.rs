//! The [`EventLog`] abstraction every backend implements, and the logic they share.
//!
//! A backend only provides four primitives (crate-private trait `Backend`): append a batch,
//! read pages of raw entries from a position, the head position, and a bounded broadcast of
//! newly appended entries (the *live tail*). Filtering, time windows, paging and the subscription
//! state machine (catch up from history, then switch to the live tail without a gap or a
//! duplicate, or report `Lagged`) are written once, here and in `subscription.rs`, so all
//! backends behave identically.
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{Clock, SystemClock, pb};
use nightshift_events_client::EventFilter;
use tokio::sync::broadcast;

use crate::error::EventLogError;
use crate::subscription::{self, Subscription};

/// Largest number of raw entries one [`EventLog::read`] call examines, so that a selective
/// filter over a long history returns a short page (with a next position) instead of scanning
/// everything in one call.
const MAX_SCAN_PER_READ: usize = 10_000;

/// The result of appending one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The event's cursor (for a duplicate: the cursor of the event stored first, when the
    /// backend still knows it).
    pub cursor: String,
    /// The event id had been appended before (within the dedup window): nothing was stored.
    pub duplicate: bool,
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// Only events appended after the subscription was made.
    Now,
    /// The whole retained history, then live events.
    Beginning,
    /// Strictly after this cursor (no gap, no duplicate), then live events.
    After(String),
    /// Events whose `time` is at or after this instant, then live events (see [`LogOptions::clock_skew`]).
    Since(DateTime<Utc>),
}

/// A history query: one page of events, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadQuery {
    /// Start strictly after this cursor (e.g. the previous page's [`Page::next_after`]);
    /// otherwise at `since`, otherwise at the oldest retained event.
    pub after: Option<String>,
    /// Only events whose `time` is at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only events whose `time` is before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Agent / run / type filter.
    pub filter: EventFilter,
    /// Page size (at least 1).
    pub limit: usize,
}

impl Default for ReadQuery {
    fn default() -> Self {
        Self { after: None, since: None, until: None, filter: EventFilter::default(), limit: 100 }
    }
}

/// One page of history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// Matching events, oldest first, with their cursors set.
    pub events: Vec<pb::Event>,
    /// Continue after this cursor for the next page; `None` when the end of the log (as of this
    /// read) or of the time window was reached. A page may hold fewer than `limit` events and
    /// still have a next position (a selective filter over a long history).
    pub next_after: Option<String>,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscriptionItem {
    /// The next matching event.
    Event(pb::Event),
    /// The subscriber fell behind its bounded buffer. This is the last item of the subscription:
    /// subscribe again with [`StartAt::After`]`(resume_after_cursor)` to continue without a gap
    /// (the missed events are then read from the log's history).
    Lagged {
        /// Every matching event up to and including this cursor has been delivered.
        resume_after_cursor: String,
        /// How many live events the buffer discarded for this subscriber (before filtering).
        dropped: u64,
    },
}

/// Settings shared by every backend.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Names the log in its backend: the Redis stream `{<prefix>}:events` (dedup keys
    /// `{<prefix>}:eid:<id>`, one Cluster slot), the JetStream stream `<prefix>_events` on subjects
    /// `<prefix>.events.<TYPE>`. Letters, digits, `_` and `-` only; use a unique prefix per
    /// test run.
    pub prefix: String,
    /// Retention by count: the memory ring's capacity, Redis `MAXLEN ~`, JetStream `max_msgs`.
    pub max_events: u64,
    /// Retention by age (Redis `MINID ~`, JetStream `max_age`, memory eviction on append).
    pub max_age: Option<Duration>,
    /// A repeated event id within this window is stored once (memory: while the first is retained).
    pub dedup_window: Duration,
    /// How many live events a subscriber may fall behind before it gets `Lagged`. Rounded up to
    /// a power of two by the broadcast channel.
    pub subscriber_buffer: usize,
    /// Event times are set by publishers while logs are ordered by append: a time position
    /// starts scanning `clock_skew` before the instant asked for and an `until` bound stops
    /// scanning `clock_skew` after it, so events whose time differs from their append time by
    /// less than this are found.
    pub clock_skew: Duration,
    /// Raw entries read per history page while a subscription catches up.
    pub page_size: usize,
    /// "Now" for the memory backend's append times and age retention.
    pub clock: Arc<dyn Clock>,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            prefix: "nightshift".into(),
            max_events: 100_000,
            max_age: None,
            dedup_window: Duration::from_secs(120),
            subscriber_buffer: 1024,
            clock_skew: Duration::from_secs(300),
            page_size: 512,
            clock: Arc::new(SystemClock),
        }
    }
}

impl LogOptions {
    /// Options with `prefix` and defaults otherwise.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Self::default() }
    }

    pub(crate) fn validate(&self) -> Result<(), EventLogError> {
        let p = &self.prefix;
        if p.is_empty() || p.len() > 64 || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(EventLogError::Config(format!(
                "prefix '{p}' must be 1..=64 letters, digits, '_' or '-' (it names streams and subjects)"
            )));
        }
        if self.max_events == 0 {
            return Err(EventLogError::Config("max_events must be at least 1".into()));
        }
        if !(1..=1 << 20).contains(&self.subscriber_buffer) {
            return Err(EventLogError::Config("subscriber_buffer must be between 1 and 1048576".into()));
        }
        if !(1..=10_000).contains(&self.page_size) {
            return Err(EventLogError::Config("page_size must be between 1 and 10000".into()));
        }
        Ok(())
    }
}

/// An append-only, totally ordered log of events with history reads and live subscriptions.
///
/// Cursors are opaque strings to clients; per log they are strictly increasing in append order.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// The backend's name (`memory`, `redis`, `nats`).
    fn backend(&self) -> &'static str;

    /// Whether the log outlives the process (Redis, NATS). The memory log forgets everything
    /// with the process and numbers its cursors from 1 again, so no cursor of it is worth keeping.
    fn is_durable(&self) -> bool;

    /// Appends one event (its `cursor` field is ignored and assigned).
    async fn append(&self, event: pb::Event) -> Result<Appended, EventLogError>;

    /// Appends events in order, one result per event. A non-empty event id that was appended
    /// within the dedup window is not stored again (`duplicate: true`).
    async fn append_batch(&self, events: Vec<pb::Event>) -> Result<Vec<Appended>, EventLogError>;

    /// One page of history.
    async fn read(&self, query: &ReadQuery) -> Result<Page, EventLogError>;

    /// A live subscription from `start`, filtered by `filter`. Errors on a bad or expired
    /// cursor are returned here, not in the stream.
    async fn subscribe(&self, start: StartAt, filter: EventFilter) -> Result<Subscription, EventLogError>;

    /// The cursor of the newest event handed to live subscribers so far (`None` before the
    /// first since this log was opened). Subscriber lag is measured against it.
    fn live_cursor(&self) -> Option<String>;
}

/// A position in a log. `n` numbers entries contiguously from 1 (so a missing number is a gap);
/// `ms` is the append time for backends whose native id carries it (Redis), else 0. Positions
/// order by `(ms, n)`, which is `n` order within one stream and still puts new entries after
/// old ones if a Redis stream was lost and started again from `n = 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub ms: u64,
    pub n: u64,
}

impl Pos {
    /// Before the first entry.
    pub const ZERO: Pos = Pos { ms: 0, n: 0 };
}

/// A stored entry: its position and the event (with `cursor` set), or `None` if it could not
/// be decoded (kept as a hole so that positions still advance past it).
#[derive(Debug)]
pub(crate) struct Entry {
    pub pos: Pos,
    pub event: Option<pb::Event>,
}

/// Where a raw reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawFrom {
    /// The oldest retained entry.
    Beginning,
    /// Strictly after this position; the first page fails with `CursorExpired` if entries
    /// right after it were removed by retention.
    After(Pos),
    /// The first entry appended at or after this instant.
    Time(DateTime<Utc>),
}

/// Sequential reads of raw entries.
#[async_trait::async_trait]
pub(crate) trait RawReader: Send {
    /// Up to `limit` next entries; fewer than `limit` means the reader reached the head of the
    /// log as of this call.
    async fn next_page(&mut self, limit: usize) -> Result<Vec<Arc<Entry>>, EventLogError>;
}

/// The primitives of one backend.
#[async_trait::async_trait]
pub(crate) trait Backend: Clone + Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// See [`EventLog::is_durable`].
    fn durable(&self) -> bool;
    fn options(&self) -> &LogOptions;
    fn parse_cursor(&self, cursor: &str) -> Result<Pos, EventLogError>;
    fn format_cursor(&self, pos: Pos) -> String;
    async fn append_raw(&self, events: Vec<pb::Event>) -> Result<Vec<Appended>, EventLogError>;
    async fn open_reader(&self, from: RawFrom) -> Result<Box<dyn RawReader>, EventLogError>;
    /// The position of the newest entry (`Pos::ZERO` for an empty log).
    async fn head(&self) -> Result<Pos, EventLogError>;
    fn live(&self) -> &LiveTail;
}

/// `nightshift_events_published_total{backend}`: events stored (repeated ids not counted twice).
fn count_appended(backend: &'static str, out: &[Appended]) {
    let stored = out.iter().filter(|a| !a.duplicate).count();
    metrics::counter!("nightshift_events_published_total", "backend" => backend).increment(stored as u64);
}

#[async_trait::async_trait]
impl<B: Backend> EventLog for B {
    fn backend(&self) -> &'static str {
        self.name()
    }

    fn is_durable(&self) -> bool {
        self.durable()
    }

    async fn append(&self, event: pb::Event) -> Result<Appended, EventLogError> {
        let mut out = self.append_raw(vec![event]).await?;
        count_appended(self.name(), &out);
        out.pop().ok_or_else(|| EventLogError::Backend("append returned no result".into()))
    }

    async fn append_batch(&self, events: Vec<pb::Event>) -> Result<Vec<Appended>, EventLogError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.append_raw(events).await?;
        count_appended(self.name(), &out);
        Ok(out)
    }

    async fn read(&self, query: &ReadQuery) -> Result<Page, EventLogError> {
        read(self, query).await
    }

    async fn subscribe(&self, start: StartAt, filter: EventFilter) -> Result<Subscription, EventLogError> {
        subscription::subscribe(self.clone(), start, filter).await
    }

    fn live_cursor(&self) -> Option<String> {
        self.live().last().map(|p| self.format_cursor(p))
    }
}

/// The bounded broadcast of newly appended entries, in log order, shared by all subscribers.
#[derive(Debug)]
pub(crate) struct LiveTail {
    tx: broadcast::Sender<Arc<Entry>>,
    last: Mutex<Option<Pos>>,
}

impl LiveTail {
    pub fn new(capacity: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(capacity);
        Arc::new(Self { tx, last: Mutex::new(None) })
    }

    /// Hands `entry` to every subscriber. Callers publish in log order.
    pub fn publish(&self, entry: Arc<Entry>) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(entry.pos);
        // No receivers is fine: nobody is subscribed.
        let _ = self.tx.send(entry);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.tx.subscribe()
    }

    pub fn last(&self) -> Option<Pos> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A spawned task that is aborted when its owner drops (a backend's live-tail reader).
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn to_chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Whether `event`'s time lies in `[since, until)`; events without a time only match an
/// unbounded window.
pub(crate) fn in_window(event: &pb::Event, since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> bool {
    if since.is_none() && until.is_none() {
        return true;
    }
    let Some(t) = event.time.as_ref().and_then(nightshift_core::time::from_pb) else { return false };
    since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u)
}

async fn read<B: Backend>(b: &B, q: &ReadQuery) -> Result<Page, EventLogError> {
    let opts = b.options();
    let skew = to_chrono_duration(opts.clock_skew);
    let limit = q.limit.max(1);
    let from = match (&q.after, q.since) {
        (Some(c), _) => RawFrom::After(b.parse_cursor(c)?),
        (None, Some(s)) => RawFrom::Time(s.checked_sub_signed(skew).unwrap_or(s)),
        (None, None) => RawFrom::Beginning,
    };
    // Past this event time nothing more can be in the window (see `LogOptions::clock_skew`).
    let stop_after = q.until.map(|u| u.checked_add_signed(skew).unwrap_or(u));
    let chunk = limit.clamp(64, 1000);
    let mut reader = b.open_reader(from).await?;
    let mut events = Vec::new();
    let mut scanned = 0usize;
    loop {
        let page = reader.next_page(chunk).await?;
        let short = page.len() < chunk;
        for entry in &page {
            scanned += 1;
            let Some(ev) = &entry.event else { continue };
            if let (Some(stop), Some(t)) = (stop_after, ev.time.as_ref().and_then(nightshift_core::time::from_pb))
                && t > stop
            {
                return Ok(Page { events, next_after: None });
            }
            if q.filter.matches(ev) && in_window(ev, q.since, q.until) {
                events.push(ev.clone());
                if events.len() == limit {
                    return Ok(Page { events, next_after: Some(b.format_cursor(entry.pos)) });
                }
            }
        }
        if short {
            return Ok(Page { events, next_after: None });
        }
        if scanned >= MAX_SCAN_PER_READ {
            let last = page.last().map_or(Pos::ZERO, |e| e.pos);
            return Ok(Page { events, next_after: Some(b.format_cursor(last)) });
        }
    }
}
