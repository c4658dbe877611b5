//! The subscription state machine shared by all backends.
//!
//! A subscription first takes a receiver on the log's live tail, then reads history from its
//! start position until it reaches the head (*catch-up*, pulled page by page only as fast as the
//! subscriber consumes, so replaying a long history never lags), then drains what the live tail
//! buffered meanwhile (*sync*) and follows it (*live*). Every entry carries a contiguous number:
//! entries at or below the last processed position are duplicates of what history already
//! delivered and are skipped. Because the receiver exists before the history read ends, every
//! entry is either in the history read or in the receiver: no gap.
//!
//! If the receiver overflowed during catch-up or sync, the subscription quietly reads history
//! again from its position (the subscriber was not at fault). If it overflows while live, the
//! subscriber is slower than the log: it receives `Lagged { resume_after_cursor, dropped }` and
//! the subscription ends, so a slow consumer costs at most the shared live buffer, never
//! unbounded memory. Resuming after that cursor replays the missed events from history.
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use futures::Stream;
use nightshift_core::pb;
use nightshift_events_client::EventFilter;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::error::EventLogError;
use crate::log::{Backend, Entry, Pos, RawFrom, RawReader, StartAt, SubscriptionItem, in_window};

/// A live subscription: a stream of [`SubscriptionItem`]s. It ends after a `Lagged` item, when
/// the log is closed, or after an error.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Result<SubscriptionItem, EventLogError>> + Send>>,
    /// Shared with the stream's state: see [`Subscription::position`].
    read: Arc<Mutex<Pos>>,
    format: Box<dyn Fn(Pos) -> String + Send + Sync>,
}

impl Subscription {
    /// The cursor this subscription has read the log up to: every matching event up to and
    /// including it has been yielded, and the entries the filter skipped count as read too.
    /// Subscribing again with [`StartAt::After`] this cursor continues without a gap or a repeat,
    /// however selective the filter (the cursor of the last *matching* event may lie far behind,
    /// even before the retained history). `None` while nothing was read yet from a start at the
    /// beginning or at a time; a subscription from [`StartAt::Now`] starts at the log's head.
    pub fn position(&self) -> Option<String> {
        let pos = *self.read.lock().unwrap_or_else(PoisonError::into_inner);
        (pos != Pos::ZERO).then(|| (self.format)(pos))
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Result<SubscriptionItem, EventLogError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    CatchUp,
    Sync,
    Live,
    Done,
}

struct State<B: Backend> {
    backend: B,
    filter: EventFilter,
    since: Option<DateTime<Utc>>,
    rx: broadcast::Receiver<Arc<Entry>>,
    reader: Option<Box<dyn RawReader>>,
    /// The head when the subscription was made: catch-up covers at least up to it.
    head_at_start: Pos,
    /// Last processed position: every matching event up to here was delivered or queued.
    pos: Pos,
    /// Every matching event up to here was yielded ([`Subscription::position`]): `pos`, or while
    /// events are queued, the position of the last one yielded.
    read: Arc<Mutex<Pos>>,
    mode: Mode,
    pending: VecDeque<(Pos, pb::Event)>,
}

pub(crate) async fn subscribe<B: Backend>(
    backend: B,
    start: StartAt,
    filter: EventFilter,
) -> Result<Subscription, EventLogError> {
    let opts = backend.options();
    // The receiver first: whatever is appended from now on reaches it.
    let rx = backend.live().subscribe();
    let head = backend.head().await?;
    let skew = crate::log::to_chrono_duration(opts.clock_skew);
    let (from, pos, since) = match start {
        StartAt::Now => (None, head, None),
        StartAt::Beginning => (Some(RawFrom::Beginning), Pos::ZERO, None),
        StartAt::After(c) => {
            let p = backend.parse_cursor(&c)?;
            (Some(RawFrom::After(p)), p, None)
        }
        StartAt::Since(t) => (Some(RawFrom::Time(t.checked_sub_signed(skew).unwrap_or(t))), Pos::ZERO, Some(t)),
    };
    let read = Arc::new(Mutex::new(pos));
    let format = {
        let backend = backend.clone();
        Box::new(move |p| backend.format_cursor(p))
    };
    let mut state = State {
        backend,
        filter,
        since,
        rx,
        reader: None,
        head_at_start: head,
        pos,
        read: read.clone(),
        mode: Mode::Sync,
        pending: VecDeque::new(),
    };
    if let Some(from) = from {
        state.reader = Some(state.backend.open_reader(from).await?);
        state.mode = Mode::CatchUp;
        // The first page now, so that a bad or expired cursor fails the call itself.
        state.catch_up_page().await?;
    }
    let stream = futures::stream::unfold(state, |mut st| async move { st.next_item().await.map(|item| (item, st)) });
    Ok(Subscription { inner: Box::pin(stream), read, format })
}

impl<B: Backend> State<B> {
    fn accept(&mut self, entry: &Entry) {
        if entry.pos <= self.pos {
            // Already delivered from history (or before the start position).
            return;
        }
        self.pos = entry.pos;
        if let Some(ev) = &entry.event
            && self.filter.matches(ev)
            && in_window(ev, self.since, None)
        {
            self.pending.push_back((entry.pos, ev.clone()));
        }
        self.mark_read();
    }

    /// With nothing queued, everything up to `pos` has been yielded.
    fn mark_read(&self) {
        if self.pending.is_empty() {
            self.set_read(self.pos);
        }
    }

    fn set_read(&self, pos: Pos) {
        *self.read.lock().unwrap_or_else(PoisonError::into_inner) = pos;
    }

    async fn catch_up_page(&mut self) -> Result<(), EventLogError> {
        let size = self.backend.options().page_size;
        let Some(reader) = self.reader.as_mut() else {
            self.mode = Mode::Sync;
            return Ok(());
        };
        let page = reader.next_page(size).await?;
        let caught_up = page.len() < size;
        for entry in &page {
            self.accept(entry);
        }
        if caught_up {
            self.reader = None;
            if self.head_at_start > self.pos {
                // Everything up to the head at subscription time was read (or lies before a
                // time start position): live entries up to there are not new.
                self.pos = self.head_at_start;
                self.mark_read();
            }
            self.mode = Mode::Sync;
        }
        Ok(())
    }

    async fn next_item(&mut self) -> Option<Result<SubscriptionItem, EventLogError>> {
        loop {
            if let Some((at, ev)) = self.pending.pop_front() {
                self.set_read(if self.pending.is_empty() { self.pos } else { at });
                return Some(Ok(SubscriptionItem::Event(ev)));
            }
            match self.mode {
                Mode::Done => return None,
                Mode::CatchUp => {
                    if let Err(e) = self.catch_up_page().await {
                        self.mode = Mode::Done;
                        return Some(Err(e));
                    }
                }
                Mode::Sync => match self.rx.try_recv() {
                    Ok(entry) => self.accept(&entry),
                    Err(TryRecvError::Empty) => self.mode = Mode::Live,
                    Err(TryRecvError::Lagged(_)) => {
                        // The live buffer overflowed while history was being read: read the
                        // missed part from history again (not the subscriber's fault).
                        match self.backend.open_reader(RawFrom::After(self.pos)).await {
                            Ok(r) => {
                                self.reader = Some(r);
                                self.mode = Mode::CatchUp;
                            }
                            Err(e) => {
                                self.mode = Mode::Done;
                                return Some(Err(e));
                            }
                        }
                    }
                    Err(TryRecvError::Closed) => {
                        self.mode = Mode::Done;
                        return Some(Err(EventLogError::Closed));
                    }
                },
                Mode::Live => match self.rx.recv().await {
                    Ok(entry) => self.accept(&entry),
                    Err(RecvError::Lagged(dropped)) => {
                        metrics::counter!("nightshift_events_subscriber_lagged_total").increment(1);
                        metrics::counter!("nightshift_events_subscriber_dropped_total").increment(dropped);
                        self.mode = Mode::Done;
                        return Some(Ok(SubscriptionItem::Lagged {
                            resume_after_cursor: self.backend.format_cursor(self.pos),
                            dropped,
                        }));
                    }
                    Err(RecvError::Closed) => {
                        self.mode = Mode::Done;
                        return Some(Err(EventLogError::Closed));
                    }
                },
            }
        }
    }
}
