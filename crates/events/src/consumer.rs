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
//! reaches the consumer, and keeps the cursor of the last event its consumer handled. A batch
//! the consumer fails on is handed to it again, with backoff, until it succeeds. Whatever ends a
//! subscription (a `Lagged` signal, a backend error such as Redis restarting) it subscribes
//! again strictly after that cursor, with backoff after failures: no event is skipped or handed
//! over twice. If the events after that cursor expired meanwhile, it says so and continues with
//! the oldest retained one.
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use nightshift_core::{backoff, pb};
use nightshift_events_client::EventFilter;
use nightshift_rpc::CancellationToken;

use crate::error::EventLogError;
use crate::log::{EventLog, StartAt, SubscriptionItem};
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

/// A subscription to the log that resumes after the last handled event.
pub(crate) struct Follower {
    log: Arc<dyn EventLog>,
    filter: EventFilter,
    /// Where to subscribe again while nothing was handled yet.
    start: StartAt,
    first: Option<Subscription>,
}

impl Follower {
    /// Subscribes to `log` from `start` now (so that nothing appended from here on is missed,
    /// however late [`Follower::run`] begins).
    pub(crate) async fn open(
        log: Arc<dyn EventLog>,
        filter: EventFilter,
        start: StartAt,
    ) -> Result<Self, EventLogError> {
        // "Now" means a different position at every subscription: should this one end before an
        // event arrives, the next starts at the time of this one instead (event times are set
        // when events are published, so those appended since are found).
        let again = match &start {
            StartAt::Now => StartAt::Since(Utc::now()),
            other => other.clone(),
        };
        let first = log.subscribe(start, filter.clone()).await?;
        Ok(Self { log, filter, start: again, first: Some(first) })
    }

    /// Feeds `consumer` until `shutdown` is cancelled. Never fails: every failure is logged and
    /// retried.
    pub(crate) async fn run(mut self, consumer: &mut dyn Consumer, shutdown: &CancellationToken) {
        let name = consumer.name();
        let mut last: Option<String> = None;
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
                None => {
                    let start = last.clone().map_or_else(|| self.start.clone(), StartAt::After);
                    match self.log.subscribe(start, self.filter.clone()).await {
                        Ok(s) => s,
                        Err(EventLogError::CursorExpired { cursor, lost }) => {
                            tracing::error!(
                                consumer = name,
                                cursor,
                                lost,
                                "events expired before this consumer saw them; continuing with the oldest retained"
                            );
                            last = None;
                            self.start = StartAt::Beginning;
                            continue;
                        }
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            tracing::warn!(consumer = name, error = %e, failures, "cannot subscribe to the event log; retrying");
                            continue;
                        }
                    }
                }
            };
            let mut batches = subscription.ready_chunks(BATCH);
            loop {
                let items = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    items = batches.next() => items,
                };
                let Some(items) = items else {
                    failures = failures.saturating_add(1);
                    tracing::warn!(consumer = name, "event subscription ended; subscribing again");
                    break;
                };
                let mut events = Vec::with_capacity(items.len());
                let mut end = None;
                for item in items {
                    match item {
                        Ok(SubscriptionItem::Event(e)) => events.push(e),
                        Ok(SubscriptionItem::Lagged { resume_after_cursor, dropped }) => {
                            end = Some(Ok(resume_after_cursor));
                            tracing::info!(consumer = name, dropped, "consumer fell behind the live events; resuming");
                        }
                        Err(e) => end = Some(Err(e)),
                    }
                }
                if let Some(newest) = events.last().map(|e| e.cursor.clone()) {
                    if !handle_until_done(consumer, &events, shutdown).await {
                        return;
                    }
                    last = Some(newest);
                    failures = 0;
                }
                match end {
                    None => {}
                    // Every matching event up to the resume cursor was delivered above.
                    Some(Ok(resume)) => {
                        last = Some(resume);
                        break;
                    }
                    Some(Err(e)) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(consumer = name, error = %e, failures, "event subscription failed; subscribing again");
                        break;
                    }
                }
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

    use nightshift_core::EventType;

    use super::*;
    use crate::log::LogOptions;
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

    /// Runs `consumer` on `log` while `n` events are appended, until it has seen `n` events.
    async fn follow(log: MemoryLog, mut consumer: Recorder, n: usize) -> Vec<String> {
        let log: Arc<dyn EventLog> = Arc::new(log);
        let seen = consumer.seen.clone();
        let follower = Follower::open(log.clone(), EventFilter::default(), StartAt::Now).await.unwrap();
        let stop = CancellationToken::new();
        let running = {
            let stop = stop.clone();
            tokio::spawn(async move { follower.run(&mut consumer, &stop).await })
        };
        for i in 0..n {
            log.append(ev(i)).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while seen.lock().unwrap().len() < n {
            assert!(tokio::time::Instant::now() < deadline, "seen {:?}", seen.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), running).await.unwrap().unwrap();
        seen.lock().unwrap().clone()
    }

    fn expected(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("e{i}")).collect()
    }

    #[tokio::test]
    async fn a_failed_batch_is_handed_over_again() {
        let log = MemoryLog::new(LogOptions::default()).unwrap();
        let consumer = Recorder { seen: Arc::default(), fail: 2, delay: Duration::ZERO };
        assert_eq!(follow(log, consumer, 20).await, expected(20));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_consumer_resumes_after_lagging_without_gap_or_duplicate() {
        // A one-entry live buffer: a consumer sleeping per batch falls behind at once.
        let log = MemoryLog::new(LogOptions { subscriber_buffer: 1, ..LogOptions::default() }).unwrap();
        let consumer = Recorder { seen: Arc::default(), fail: 0, delay: Duration::from_millis(2) };
        assert_eq!(follow(log, consumer, 300).await, expected(300));
    }
}
