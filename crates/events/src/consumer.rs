//! Running consumers of the event stream (the `[alerts]` webhook and the `[sink]` file) inside
//! the events role.
//!
//! A consumer follows the role's own log in-process ([`EventLog::subscribe`]) rather than over
//! gRPC at the role's listen address: the role owns the log, its listen address may be a
//! wildcard or port 0 that nobody can dial back, and the gRPC Subscribe stream is a thin wrapper
//! over the same subscription (same cursors, same `Lagged` contract), so nothing is gained by
//! the round trip. The consequence: a consumer runs where an events role runs, and every replica
//! with `[alerts]` or `[sink]` configured runs its own (see docs/operations.md).
//!
//! [`Follower`] subscribes when the role is built, so every event appended after start-up
//! reaches the consumer, and keeps the subscription's read position after every batch its
//! consumer handled (a start from "now" is pinned to the log's head at that moment). A batch the
//! consumer fails on is handed to it again, with backoff, until it succeeds. Whatever ends a
//! subscription (a `Lagged` signal, a backend error such as Redis restarting) it subscribes
//! again strictly after that position, with backoff after failures: no event is skipped or
//! handed over twice. The position counts the events the filter skipped as read, so a selective
//! consumer (the alerts) resumes near the head rather than after its last matching event. If the
//! events after the position expired meanwhile, it says so and continues with the oldest
//! retained one.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::ReadyChunks;
use nightshift_core::{backoff, pb};
use nightshift_events_client::EventFilter;
use nightshift_rpc::CancellationToken;

use crate::error::EventLogError;
use crate::log::{EventLog, ReadQuery, StartAt, SubscriptionItem};
use crate::subscription::Subscription;

/// Events handed to a consumer at once at most (what the subscription has ready).
const BATCH: usize = 256;
/// First wait after a failure; doubles per failure in a row.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest wait between two attempts.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why a consumer could not handle a batch (it is handed over again after a backoff).
pub(crate) type ConsumerError = Box<dyn std::error::Error + Send + Sync>;

/// Something the events role feeds with the events of its log.
#[async_trait::async_trait]
pub(crate) trait Consumer: Send {
    /// For logs (`alerts`, `sink`).
    fn name(&self) -> &'static str;

    /// Handles `events` (in log order, with their cursors). On an error the same events are
    /// handed over again after a backoff, so handling must tolerate a repeat of a partly handled
    /// batch.
    async fn handle(&mut self, events: &[pb::Event]) -> Result<(), ConsumerError>;
}

/// How a batch loop ended.
enum Ended {
    /// Shutdown began.
    Shutdown,
    /// The subscription ended (lagged, failed or closed); subscribe again. `failed` when it
    /// ended by a failure (subscribing again waits a backoff).
    Resubscribe { failed: bool },
}

/// A subscription to the log that resumes after what its consumer handled.
pub(crate) struct Follower {
    log: Arc<dyn EventLog>,
    filter: EventFilter,
    /// For logs: the consumer's name.
    name: &'static str,
    /// Where the next subscription starts: after the read position of the last handled batch.
    resume: StartAt,
    /// The subscription [`Follower::open`] made, until [`Follower::run`] takes it.
    first: Option<Subscription>,
}

impl Follower {
    /// Subscribes `name` to `log` from `start` now (so that nothing appended from here on is
    /// missed, however late [`Follower::run`] begins), falling back as [`Follower::subscribe`]
    /// does when `start` is an expired or foreign cursor.
    pub(crate) async fn open(
        log: Arc<dyn EventLog>,
        filter: EventFilter,
        start: StartAt,
        name: &'static str,
    ) -> Result<Self, EventLogError> {
        let mut follower = Self { log, filter, name, resume: start, first: None };
        follower.first = Some(follower.subscribe().await?);
        Ok(follower)
    }

    /// Subscribes at `self.resume`. An expired cursor continues with the oldest retained event
    /// (logged as an error: events were lost), a cursor this log does not know (the backend
    /// changed) from now. A start from now is pinned to the head it found, so that a later
    /// subscription continues there rather than at its own "now".
    async fn subscribe(&mut self) -> Result<Subscription, EventLogError> {
        let name = self.name;
        let subscription = match self.log.subscribe(self.resume.clone(), self.filter.clone()).await {
            Err(EventLogError::CursorExpired { cursor, lost }) => {
                tracing::error!(
                    consumer = name,
                    cursor,
                    lost,
                    "events expired before this consumer saw them; continuing with the oldest retained"
                );
                self.resume = StartAt::Beginning;
                self.log.subscribe(StartAt::Beginning, self.filter.clone()).await?
            }
            Err(EventLogError::InvalidCursor(cursor)) => {
                tracing::warn!(consumer = name, cursor, "the cursor is not one of this log; starting from now");
                self.resume = StartAt::Now;
                self.log.subscribe(StartAt::Now, self.filter.clone()).await?
            }
            other => other?,
        };
        if self.resume == StartAt::Now {
            // An empty log has no head cursor: everything in it is new.
            self.resume = subscription.position().map_or(StartAt::Beginning, StartAt::After);
        }
        Ok(subscription)
    }

    /// Feeds `consumer` until `shutdown` is cancelled. Never fails: every failure is logged and
    /// retried.
    pub(crate) async fn run(&mut self, consumer: &mut dyn Consumer, shutdown: &CancellationToken) {
        let name = consumer.name();
        let mut failures: u32 = 0;
        loop {
            if failures > 0 {
                let wait = backoff::exponential(RETRY_BASE, failures - 1, RETRY_MAX);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            let subscription = match self.first.take() {
                Some(s) => s,
                None => match self.subscribe().await {
                    Ok(s) => s,
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(consumer = name, error = %e, failures, "cannot subscribe to the event log; retrying");
                        continue;
                    }
                },
            };
            match self.follow(subscription.ready_chunks(BATCH), consumer, shutdown, &mut failures).await {
                Ended::Shutdown => return,
                Ended::Resubscribe { failed: true } => failures = failures.saturating_add(1),
                Ended::Resubscribe { failed: false } => failures = 0,
            }
        }
    }

    /// Hands the batches of one subscription to `consumer` until it ends, moving the resume
    /// position past each handled batch. A handled batch resets `failures`.
    async fn follow(
        &mut self,
        mut batches: ReadyChunks<Subscription>,
        consumer: &mut dyn Consumer,
        shutdown: &CancellationToken,
        failures: &mut u32,
    ) -> Ended {
        let name = consumer.name();
        loop {
            let items = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ended::Shutdown,
                items = batches.next() => items,
            };
            let Some(items) = items else {
                tracing::warn!(consumer = name, "event subscription ended; subscribing again");
                return Ended::Resubscribe { failed: true };
            };
            let mut events = Vec::with_capacity(items.len());
            let mut end = None;
            for item in items {
                match item {
                    Ok(SubscriptionItem::Event(e)) => events.push(e),
                    Ok(SubscriptionItem::Lagged { dropped, .. }) => {
                        // Its resume cursor is the subscription's position, taken below.
                        tracing::info!(consumer = name, dropped, "consumer fell behind the live events; resuming");
                        end = Some(Ended::Resubscribe { failed: false });
                    }
                    Err(e) => {
                        tracing::warn!(consumer = name, error = %e, "event subscription failed; subscribing again");
                        end = Some(Ended::Resubscribe { failed: true });
                    }
                }
            }
            if !events.is_empty() {
                if !handle_until_done(consumer, &events, shutdown).await {
                    return Ended::Shutdown;
                }
                *failures = 0;
            }
            // Everything the subscription yielded so far was in this batch and is handled.
            if let Some(read) = batches.get_ref().position() {
                self.resume = StartAt::After(read);
            }
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// Hands `consumer` the events stored after the resume position, up to the log's head as
    /// of the last page read: at shutdown, what arrived while the live subscription was being
    /// wound down (e.g. failures stored while other roles drain). The caller bounds the time.
    pub(crate) async fn drain(&mut self, consumer: &mut dyn Consumer) -> Result<(), ConsumerError> {
        let mut query = ReadQuery { filter: self.filter.clone(), limit: BATCH, ..ReadQuery::default() };
        match &self.resume {
            StartAt::After(cursor) => query.after = Some(cursor.clone()),
            StartAt::Since(t) => query.since = Some(*t),
            StartAt::Beginning => {}
            // Never left unresolved by `subscribe`; "now" at shutdown has nothing to drain.
            StartAt::Now => return Ok(()),
        }
        loop {
            let page = self.log.read(&query).await?;
            if let Some(last) = page.events.last() {
                consumer.handle(&page.events).await?;
                self.resume = StartAt::After(last.cursor.clone());
            }
            match page.next_after {
                Some(next) => query.after = Some(next),
                None => return Ok(()),
            }
        }
    }
}

/// Hands `events` to `consumer` until it takes them (waiting with backoff between attempts,
/// while the subscription waits: a consumer that stays down long enough makes it lag, which is
/// resumed from the cursor afterwards). False if `shutdown` came first.
async fn handle_until_done(consumer: &mut dyn Consumer, events: &[pb::Event], shutdown: &CancellationToken) -> bool {
    let mut failures = 0u32;
    loop {
        match consumer.handle(events).await {
            Ok(()) => return true,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::error!(consumer = consumer.name(), error = %e, failures, "consumer failed; retrying its events");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(backoff::exponential(RETRY_BASE, failures - 1, RETRY_MAX)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;
    use nightshift_core::EventType;

    use super::*;
    use crate::log::{Appended, LogOptions, Page};
    use crate::memory::MemoryLog;

    /// Records the ids it handles; fails its first `fail` batches and sleeps `delay` per batch.
    struct Recorder {
        seen: Arc<Mutex<Vec<String>>>,
        fail: u32,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl Consumer for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }

        async fn handle(&mut self, events: &[pb::Event]) -> Result<(), ConsumerError> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err("refused".into());
            }
            tokio::time::sleep(self.delay).await;
            self.seen.lock().unwrap().extend(events.iter().map(|e| e.id.clone()));
            Ok(())
        }
    }

    fn ev(i: usize) -> pb::Event {
        pb::Event { id: format!("e{i}"), r#type: EventType::ToolCall.to_pb() as i32, ..Default::default() }
    }

    /// A log that counts the subscriptions made on it (a second one means a resubscription).
    struct Counting {
        log: MemoryLog,
        subscriptions: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl EventLog for Counting {
        fn backend(&self) -> &'static str {
            self.log.backend()
        }
        fn is_durable(&self) -> bool {
            self.log.is_durable()
        }
        async fn append(&self, event: pb::Event) -> Result<Appended, EventLogError> {
            self.log.append(event).await
        }
        async fn append_batch(&self, events: Vec<pb::Event>) -> Result<Vec<Appended>, EventLogError> {
            self.log.append_batch(events).await
        }
        async fn read(&self, query: &ReadQuery) -> Result<Page, EventLogError> {
            self.log.read(query).await
        }
        async fn subscribe(&self, start: StartAt, filter: EventFilter) -> Result<Subscription, EventLogError> {
            self.subscriptions.fetch_add(1, Ordering::SeqCst);
            self.log.subscribe(start, filter).await
        }
        fn live_cursor(&self) -> Option<String> {
            self.log.live_cursor()
        }
    }

    /// Runs `consumer` on `log` while `n` events are appended, until it has seen `n` events.
    /// Returns what it saw and how many subscriptions were made.
    async fn follow(log: MemoryLog, mut consumer: Recorder, n: usize) -> (Vec<String>, usize) {
        let log = Arc::new(Counting { log, subscriptions: AtomicUsize::new(0) });
        let seen = consumer.seen.clone();
        let mut follower = Follower::open(log.clone(), EventFilter::default(), StartAt::Now, "test").await.unwrap();
        let stop = CancellationToken::new();
        let running = {
            let stop = stop.clone();
            tokio::spawn(async move { follower.run(&mut consumer, &stop).await })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let seen_at_least = |k: usize| {
            let seen = seen.clone();
            async move {
                while seen.lock().unwrap().len() < k {
                    assert!(tokio::time::Instant::now() < deadline, "seen {:?}", seen.lock().unwrap());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        // The first event alone, so that the rest arrives while the subscription is live (a
        // burst before it went live would be read from history, never lagging).
        log.append(ev(0)).await.unwrap();
        seen_at_least(1).await;
        for i in 1..n {
            log.append(ev(i)).await.unwrap();
        }
        while seen.lock().unwrap().len() < n {
            assert!(tokio::time::Instant::now() < deadline, "seen {:?}", seen.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), running).await.unwrap().unwrap();
        let seen = seen.lock().unwrap().clone();
        (seen, log.subscriptions.load(Ordering::SeqCst))
    }

    fn expected(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("e{i}")).collect()
    }

    #[tokio::test]
    async fn a_failed_batch_is_handed_over_again() {
        let log = MemoryLog::new(LogOptions::default()).unwrap();
        let consumer = Recorder { seen: Arc::default(), fail: 2, delay: Duration::ZERO };
        let (seen, subscriptions) = follow(log, consumer, 20).await;
        assert_eq!(seen, expected(20));
        assert_eq!(subscriptions, 1, "a failed batch is retried on the same subscription");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_consumer_resumes_after_lagging_without_gap_or_duplicate() {
        // A one-entry live buffer: a consumer sleeping per batch falls behind at once.
        let log = MemoryLog::new(LogOptions { subscriber_buffer: 1, ..LogOptions::default() }).unwrap();
        let consumer = Recorder { seen: Arc::default(), fail: 0, delay: Duration::from_millis(2) };
        let (seen, subscriptions) = follow(log, consumer, 300).await;
        assert_eq!(seen, expected(300));
        // The memory log never fails: every resubscription followed a `Lagged`.
        assert!(subscriptions > 1, "the consumer never lagged: the test shows nothing");
    }

    #[tokio::test]
    async fn a_filtered_subscription_resumes_after_what_it_read_not_after_its_last_match() {
        // Retention keeps 4 events: the one failure is long gone once 10 others followed it.
        let log = MemoryLog::new(LogOptions { max_events: 4, ..LogOptions::default() }).unwrap();
        let failure = pb::Event { id: "f".into(), r#type: EventType::BackgroundTaskError.to_pb() as i32, ..ev(0) };
        let filter = EventFilter { types: vec![EventType::BackgroundTaskError], ..EventFilter::default() };
        let mut sub = log.subscribe(StartAt::Now, filter.clone()).await.unwrap();
        assert_eq!(sub.position(), None, "an empty log has no head");
        let matched = log.append(failure).await.unwrap().cursor;
        let Some(Ok(SubscriptionItem::Event(e))) = sub.next().await else { panic!("no event") };
        assert_eq!((e.id.as_str(), sub.position()), ("f", Some(matched.clone())));
        let mut head = String::new();
        for i in 1..=10 {
            head = log.append(ev(i)).await.unwrap().cursor;
        }
        // One poll processes what the live tail holds; nothing matches.
        assert!(sub.next().now_or_never().is_none());
        assert_eq!(sub.position(), Some(head.clone()), "the skipped events count as read");
        assert!(matches!(
            log.subscribe(StartAt::After(matched), filter.clone()).await,
            Err(EventLogError::CursorExpired { .. })
        ));
        log.subscribe(StartAt::After(head), filter).await.expect("resuming after the read position loses nothing");
    }

    #[tokio::test]
    async fn a_drain_hands_over_what_was_stored_up_to_the_head() {
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(LogOptions::default()).unwrap());
        log.append(ev(0)).await.unwrap(); // before the follower: not its business
        let mut follower = Follower::open(log.clone(), EventFilter::default(), StartAt::Now, "test").await.unwrap();
        for i in 1..=3 {
            log.append(ev(i)).await.unwrap();
        }
        // Shutdown came before `run` handled anything; the drain still hands the events over.
        let mut consumer = Recorder { seen: Arc::default(), fail: 0, delay: Duration::ZERO };
        follower.drain(&mut consumer).await.unwrap();
        assert_eq!(*consumer.seen.lock().unwrap(), ["e1", "e2", "e3"]);
    }
}
