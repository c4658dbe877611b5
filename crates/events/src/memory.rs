//! In-memory event log: a bounded ring buffer plus the live-tail broadcast.
//!
//! Cursors are the entry numbers in decimal (`"1"`, `"2"`, …). Nothing survives the process;
//! use it for `nightshift dev`, tests and single-process set-ups. Memory is bounded by
//! [`LogOptions::max_events`] (oldest evicted first) and [`LogOptions::max_age`]; the event-id
//! dedup index only covers retained events, so it is bounded too.
//!
//! Retained events are kept encoded (protobuf) and decoded when read: a decoded `pb::Event` —
//! eight strings and a `Struct` whose map allocates a whole B-tree node — took ≈ 1.7 KB of heap
//! where its encoding takes a few hundred bytes, so the default 100,000 retained events were
//! ≈ 170 MiB of a `nightshift dev` process (docs/benchmarks.md). Reads of the history are rare
//! (a subscriber catching up, a listing); the live tail hands out the decoded event it was given.
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use nightshift_core::pb;
use prost::Message;

use crate::error::EventLogError;
use crate::log::{Appended, Backend, Entry, LiveTail, LogOptions, Pos, RawFrom, RawReader, to_chrono_duration};

/// The in-memory [`EventLog`](crate::EventLog). Cheap to clone (clones share the log).
#[derive(Debug, Clone)]
pub struct MemoryLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    opts: LogOptions,
    state: Mutex<State>,
    live: Arc<LiveTail>,
}

/// A retained event: when it was appended, its number, the hash of its id (0 = no id) and
/// where its encoding (with `cursor` set) lies in the [`Chunks`].
#[derive(Debug)]
struct Retained {
    at: DateTime<Utc>,
    n: u64,
    id_hash: u64,
    chunk: u64,
    start: usize,
    len: usize,
}

/// Bytes of a chunk: several hundred events, so that a chunk is allocated rarely and freed as one
/// large block.
const CHUNK: usize = 256 * 1024;

/// The retained events' encodings, oldest first, appended into chunks of [`CHUNK`] bytes: one
/// allocation per chunk instead of one per event (a buffer per event, each living until 100,000
/// later events evict it, doubled `malloc`'s share of `nightshift dev`'s CPU at 2,000 agents:
/// 5.5 % of the samples instead of 2.5 %), and a chunk is freed whole once every event in it is
/// evicted.
#[derive(Debug, Default)]
struct Chunks {
    chunks: VecDeque<Vec<u8>>,
    /// Sequence number of `chunks[0]`.
    first: u64,
}

impl Chunks {
    /// Appends `event`'s encoding; returns its chunk's sequence number, start and length.
    fn push(&mut self, event: &pb::Event) -> (u64, usize, usize) {
        // Encoded apart first (a buffer freed at once, on this thread), then copied in: `encode`
        // into the chunk could only fail where a Vec cannot, and this keeps no such branch.
        let encoded = event.encode_to_vec();
        let len = encoded.len();
        let chunk = match self.chunks.back_mut() {
            Some(last) if last.capacity() - last.len() >= len => last,
            _ => {
                self.chunks.push_back(Vec::with_capacity(CHUNK.max(len)));
                let last = self.chunks.len() - 1;
                &mut self.chunks[last]
            }
        };
        let start = chunk.len();
        // Within the capacity just checked: the chunk never reallocates.
        chunk.extend_from_slice(&encoded);
        let seq = self.first + self.chunks.len() as u64 - 1;
        (seq, start, len)
    }

    fn bytes(&self, e: &Retained) -> Option<&[u8]> {
        let index = usize::try_from(e.chunk.checked_sub(self.first)?).ok()?;
        self.chunks.get(index)?.get(e.start..e.start + e.len)
    }

    /// Frees the chunks before the one numbered `keep` (the oldest retained event's, or the last
    /// chunk's when none is retained).
    fn release_before(&mut self, keep: u64) {
        while self.first < keep && self.chunks.len() > 1 {
            self.chunks.pop_front();
            self.first += 1;
        }
    }

    fn last(&self) -> u64 {
        self.first + (self.chunks.len() as u64).saturating_sub(1)
    }
}

/// The entry a retained event's encoding stands for. The bytes are this log's own encoding of a
/// `pb::Event` in a chunk it keeps; a missing chunk or a failed decoding would be a bug, and is
/// kept as a hole (as the durable backends keep an undecodable entry, and say so) rather than a
/// panic.
fn decode(n: u64, encoded: Option<&[u8]>) -> Arc<Entry> {
    let event = match encoded.map(pb::Event::decode) {
        Some(Ok(event)) => Some(event),
        Some(Err(e)) => {
            tracing::warn!(n, error = %e, "skipping an undecodable event in the in-memory log");
            None
        }
        None => {
            tracing::warn!(n, "skipping an event whose bytes the in-memory log no longer holds");
            None
        }
    };
    Arc::new(Entry { pos: Pos { ms: 0, n }, event })
}

#[derive(Debug)]
struct State {
    /// Retained entries, oldest first; numbers are contiguous.
    entries: VecDeque<Retained>,
    /// Their encodings.
    chunks: Chunks,
    /// Number of the next entry (the first is 1).
    next_n: u64,
    /// Hash of an event id → number of the latest retained entry with an id of that hash. A hit
    /// is confirmed against the entry's own id, so a collision of two ids' hashes costs the
    /// older one its dedup, never a new event its place.
    ids: HashMap<u64, u64>,
    hasher: std::collections::hash_map::RandomState,
}

impl State {
    /// Number of the oldest retained entry (`next_n` when nothing is retained).
    fn first_n(&self) -> u64 {
        self.entries.front().map_or(self.next_n, |e| e.n)
    }

    fn get(&self, n: u64) -> Option<&Retained> {
        let index = usize::try_from(n.checked_sub(self.first_n())?).ok()?;
        self.entries.get(index)
    }

    fn hash_id(&self, id: &str) -> u64 {
        // 0 marks "no id"; an id hashing to 0 takes 1 (its hits are confirmed anyway).
        self.hasher.hash_one(id).max(1)
    }

    /// The number of the retained event with this id, if any.
    fn find(&self, id: &str, id_hash: u64) -> Option<u64> {
        let n = *self.ids.get(&id_hash)?;
        let entry = self.get(n)?;
        decode(n, self.chunks.bytes(entry)).event.as_ref().is_some_and(|e| e.id == id).then_some(n)
    }

    fn evict_front(&mut self) {
        if let Some(e) = self.entries.pop_front()
            && e.id_hash != 0
            && self.ids.get(&e.id_hash) == Some(&e.n)
        {
            self.ids.remove(&e.id_hash);
        }
        let keep = self.entries.front().map_or(self.chunks.last(), |e| e.chunk);
        self.chunks.release_before(keep);
    }
}

impl MemoryLog {
    /// An empty log.
    pub fn new(opts: LogOptions) -> Result<Self, EventLogError> {
        opts.validate()?;
        let live = LiveTail::new(opts.subscriber_buffer);
        let state = State {
            entries: VecDeque::new(),
            chunks: Chunks::default(),
            next_n: 1,
            ids: HashMap::new(),
            hasher: Default::default(),
        };
        Ok(Self { inner: Arc::new(Inner { opts, state: Mutex::new(state), live }) })
    }

    /// Number of retained events.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no event is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Backend for MemoryLog {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn durable(&self) -> bool {
        false
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
        let opts = &self.inner.opts;
        let mut out = Vec::with_capacity(events.len());
        let mut st = self.lock();
        // Append times never go backwards, so time positions can binary-search.
        let last_time = st.entries.back().map(|e| e.at);
        let now = opts.clock.now().max(last_time.unwrap_or_default());
        for mut ev in events {
            let id_hash = if ev.id.is_empty() { 0 } else { st.hash_id(&ev.id) };
            if id_hash != 0
                && let Some(n) = st.find(&ev.id, id_hash)
            {
                out.push(Appended { cursor: n.to_string(), duplicate: true });
                continue;
            }
            let n = st.next_n;
            st.next_n += 1;
            ev.cursor = n.to_string();
            if id_hash != 0 {
                st.ids.insert(id_hash, n);
            }
            let (chunk, start, len) = st.chunks.push(&ev);
            st.entries.push_back(Retained { at: now, n, id_hash, chunk, start, len });
            while st.entries.len() as u64 > opts.max_events {
                st.evict_front();
            }
            let entry = Arc::new(Entry { pos: Pos { ms: 0, n }, event: Some(ev) });
            // Broadcast under the lock so that subscribers see entries in number order.
            self.inner.live.publish(entry);
            out.push(Appended { cursor: n.to_string(), duplicate: false });
        }
        if let Some(age) = opts.max_age {
            let oldest = now - to_chrono_duration(age);
            while st.entries.front().is_some_and(|e| e.at < oldest) {
                st.evict_front();
            }
        }
        Ok(out)
    }

    async fn open_reader(&self, from: RawFrom) -> Result<Box<dyn RawReader>, EventLogError> {
        Ok(Box::new(MemoryReader { log: self.clone(), from }))
    }

    async fn head(&self) -> Result<Pos, EventLogError> {
        Ok(Pos { ms: 0, n: self.lock().next_n - 1 })
    }

    fn live(&self) -> &LiveTail {
        &self.inner.live
    }
}

struct MemoryReader {
    log: MemoryLog,
    from: RawFrom,
}

#[async_trait::async_trait]
impl RawReader for MemoryReader {
    async fn next_page(&mut self, limit: usize) -> Result<Vec<Arc<Entry>>, EventLogError> {
        let st = self.log.lock();
        let first_n = st.first_n();
        let start = match self.from {
            RawFrom::Beginning => 0,
            RawFrom::Time(t) => st.entries.partition_point(|e| e.at < t),
            RawFrom::After(p) => {
                if p.n.saturating_add(1) < first_n {
                    // Entries after `p` were evicted (before the first read, or while this
                    // reader was paused between pages): resuming would skip them.
                    let cursor = self.log.format_cursor(p);
                    let lost = first_n - p.n - 1;
                    return Err(EventLogError::CursorExpired { cursor, lost });
                }
                // Numbers are contiguous, so the index is arithmetic.
                usize::try_from(p.n.saturating_add(1) - first_n).unwrap_or(usize::MAX).min(st.entries.len())
            }
        };
        // The page's encodings are copied out under the lock and decoded after it.
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        for e in st.entries.range(start..).take(limit) {
            let span = st.chunks.bytes(e).map(|b| {
                bytes.extend_from_slice(b);
                bytes.len() - b.len()..bytes.len()
            });
            spans.push((e.n, span));
        }
        if let Some((n, _)) = spans.last() {
            self.from = RawFrom::After(Pos { ms: 0, n: *n });
        } else if !matches!(self.from, RawFrom::After(_)) {
            // Nothing at or after the start yet: continue after the current head.
            self.from = RawFrom::After(Pos { ms: 0, n: st.next_n - 1 });
        }
        drop(st);
        Ok(spans.into_iter().map(|(n, span)| decode(n, span.and_then(|s| bytes.get(s)))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> pb::Event {
        let data = prost_types::Struct {
            fields: [("status".to_owned(), prost_types::Value::from("running".to_owned()))].into_iter().collect(),
        };
        pb::Event {
            id: id.into(),
            r#type: pb::EventType::BackgroundAgentStatus as i32,
            time: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
            agent_id: "agent-1".into(),
            agent_name: "nightly".into(),
            run_id: "agent-1@1700000000000".into(),
            source: "worker/w1".into(),
            data: Some(data),
            namespace: "default".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_retained_event_reads_back_as_it_was_appended() {
        let log = MemoryLog::new(LogOptions::default()).unwrap();
        log.append_raw(vec![event("e1"), event("e2")]).await.unwrap();
        let mut reader = log.open_reader(RawFrom::Beginning).await.unwrap();
        let page = reader.next_page(10).await.unwrap();
        let read: Vec<_> = page.iter().map(|e| (e.pos.n, e.event.clone())).collect();
        let expected = |n: u64, id: &str| (n, Some(pb::Event { cursor: n.to_string(), ..event(id) }));
        assert_eq!(read, [expected(1, "e1"), expected(2, "e2")]);
        assert!(reader.next_page(10).await.unwrap().is_empty(), "the reader continues after the last");
    }

    #[tokio::test]
    async fn an_id_hash_hit_is_a_duplicate_only_when_the_ids_match() {
        let log = MemoryLog::new(LogOptions::default()).unwrap();
        log.append_raw(vec![event("x")]).await.unwrap();
        let st = log.lock();
        let hash = st.hash_id("x");
        assert_eq!(st.find("x", hash), Some(1));
        // Another id with the same hash (a collision, forced here) is not taken for "x".
        assert_eq!(st.find("y", hash), None);
        assert_eq!(st.find("x", hash.wrapping_add(1)), None, "no entry under another hash");
    }

    #[tokio::test]
    async fn a_chunk_is_freed_once_its_events_are_evicted() {
        let log = MemoryLog::new(LogOptions { max_events: 3, ..LogOptions::default() }).unwrap();
        // A little over a third of a chunk each: two events to a chunk.
        let sized = |i: usize, bytes: usize| pb::Event { agent_name: "x".repeat(bytes), ..event(&format!("e{i}")) };
        for i in 0..12 {
            log.append_raw(vec![sized(i, CHUNK / 3)]).await.unwrap();
        }
        assert_eq!(log.lock().chunks.chunks.len(), 2, "e9 shares its chunk with the evicted e8; e10 and e11 fill one");
        // An event larger than a chunk gets one of its own.
        log.append_raw(vec![sized(12, 2 * CHUNK)]).await.unwrap();
        let mut reader = log.open_reader(RawFrom::Beginning).await.unwrap();
        let read: Vec<_> = reader.next_page(10).await.unwrap().iter().map(|e| e.event.clone()).collect();
        let expected: Vec<_> = [(10, CHUNK / 3), (11, CHUNK / 3), (12, 2 * CHUNK)]
            .map(|(i, bytes)| Some(pb::Event { cursor: (i + 1).to_string(), ..sized(i, bytes) }))
            .into();
        assert_eq!(read, expected);
        assert_eq!(log.lock().chunks.chunks.len(), 2, "e10 and e11's chunk, e12's");
    }
}
