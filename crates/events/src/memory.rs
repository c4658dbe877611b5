//! In-memory event log: a bounded ring buffer plus the live-tail broadcast.
//!
//! Cursors are the entry numbers in decimal (`"1"`, `"2"`, …). Nothing survives the process;
//! use it for `nightshift dev`, tests and single-process set-ups. Memory is bounded by
//! [`LogOptions::max_events`] (oldest evicted first) and [`LogOptions::max_age`]; the event-id
//! dedup index only covers retained events, so it is bounded too.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use nightshift_core::pb;

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

#[derive(Debug)]
struct State {
    /// Retained entries with their append times, oldest first; numbers are contiguous.
    entries: VecDeque<(DateTime<Utc>, Arc<Entry>)>,
    /// Number of the next entry (the first is 1).
    next_n: u64,
    /// Event id → entry number, for retained entries only.
    ids: HashMap<String, u64>,
}

impl State {
    /// Number of the oldest retained entry (`next_n` when nothing is retained).
    fn first_n(&self) -> u64 {
        self.entries.front().map_or(self.next_n, |(_, e)| e.pos.n)
    }

    fn evict_front(&mut self) {
        if let Some((_, e)) = self.entries.pop_front()
            && let Some(ev) = &e.event
            && self.ids.get(&ev.id) == Some(&e.pos.n)
        {
            self.ids.remove(&ev.id);
        }
    }
}

impl MemoryLog {
    /// An empty log.
    pub fn new(opts: LogOptions) -> Result<Self, EventLogError> {
        opts.validate()?;
        let live = LiveTail::new(opts.subscriber_buffer);
        let state = State { entries: VecDeque::new(), next_n: 1, ids: HashMap::new() };
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
        let last_time = st.entries.back().map(|(t, _)| *t);
        let now = opts.clock.now().max(last_time.unwrap_or_default());
        for mut ev in events {
            if !ev.id.is_empty()
                && let Some(&n) = st.ids.get(&ev.id)
            {
                out.push(Appended { cursor: n.to_string(), duplicate: true });
                continue;
            }
            let n = st.next_n;
            st.next_n += 1;
            ev.cursor = n.to_string();
            if !ev.id.is_empty() {
                st.ids.insert(ev.id.clone(), n);
            }
            let entry = Arc::new(Entry { pos: Pos { ms: 0, n }, event: Some(ev) });
            st.entries.push_back((now, entry.clone()));
            while st.entries.len() as u64 > opts.max_events {
                st.evict_front();
            }
            // Broadcast under the lock so that subscribers see entries in number order.
            self.inner.live.publish(entry);
            out.push(Appended { cursor: n.to_string(), duplicate: false });
        }
        if let Some(age) = opts.max_age {
            let oldest = now - to_chrono_duration(age);
            while st.entries.front().is_some_and(|(t, _)| *t < oldest) {
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
            RawFrom::Time(t) => st.entries.partition_point(|(at, _)| *at < t),
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
        let page: Vec<Arc<Entry>> = st.entries.iter().skip(start).take(limit).map(|(_, e)| e.clone()).collect();
        if let Some(last) = page.last() {
            self.from = RawFrom::After(last.pos);
        } else if !matches!(self.from, RawFrom::After(_)) {
            // Nothing at or after the start yet: continue after the current head.
            self.from = RawFrom::After(Pos { ms: 0, n: st.next_n - 1 });
        }
        Ok(page)
    }
}
