//! The event log contract, run against every backend: in-memory, Redis Streams on one server
//! (`nightshift_testkit::redis_url()`) and on a 3-master Redis Cluster
//! (`nightshift_testkit::redis_cluster_url()`), and NATS JetStream at `nightshift_testkit::nats_url()`. Every test
//! uses its own prefix (stream / keys), removed when the test ends, so runs never see each
//! other's events and a server that is not fresh is fine.
//!
//! No test depends on timing: waits are for a condition (an event arriving, the live tail
//! reaching a cursor) with a generous deadline that only a broken implementation hits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use nightshift_testkit::{nats_url, redis_cluster_url, redis_url};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use futures::{FutureExt, StreamExt};
use nightshift_core::{EventType, pb};
use nightshift_events::{
    EventLog, EventLogError, LogOptions, MemoryLog, NatsLog, ReadQuery, RedisLog, StartAt, Subscription,
    SubscriptionItem,
};
use nightshift_events_client::EventFilter;

const DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Redis,
    RedisCluster,
    Nats,
}

/// One test's log(s): a unique prefix, reopened at will ("restart"), removed on drop.
struct Fixture {
    kind: Kind,
    prefix: String,
    /// The memory log is not durable: "reopening" it hands out the same instance.
    memory: Option<MemoryLog>,
}

impl Fixture {
    fn new(kind: Kind) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self { kind, prefix: format!("nstest_{}", &id[..12]), memory: None }
    }

    fn options(&self) -> LogOptions {
        LogOptions::with_prefix(&self.prefix)
    }

    async fn open(&mut self) -> Arc<dyn EventLog> {
        let opts = self.options();
        self.open_with(opts).await
    }

    async fn open_with(&mut self, opts: LogOptions) -> Arc<dyn EventLog> {
        match self.kind {
            Kind::Memory => {
                let log = self.memory.get_or_insert_with(|| MemoryLog::new(opts).unwrap());
                Arc::new(log.clone())
            }
            Kind::Redis => {
                Arc::new(RedisLog::connect(&redis_url(), opts).await.expect("Redis at nightshift_testkit::redis_url()"))
            }
            Kind::RedisCluster => Arc::new(
                RedisLog::connect(&redis_cluster_url(), opts)
                    .await
                    .expect("Redis Cluster at nightshift_testkit::redis_cluster_url() (scripts/services.sh starts it)"),
            ),
            Kind::Nats => {
                Arc::new(NatsLog::connect(&nats_url(), opts).await.expect("NATS at nightshift_testkit::nats_url()"))
            }
        }
    }

    fn durable(&self) -> bool {
        self.kind != Kind::Memory
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let (kind, prefix) = (self.kind, self.prefix.clone());
        if kind == Kind::Memory {
            return;
        }
        // Drop cannot await, and may run while the test's runtime unwinds: clean up on a
        // thread with its own runtime.
        let done = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                match kind {
                    // The stream and the dedup keys (which would expire by themselves).
                    Kind::Redis => nightshift_testkit::redis_delete_prefix(&redis_url(), &prefix).await,
                    Kind::RedisCluster => nightshift_testkit::redis_delete_prefix(&redis_cluster_url(), &prefix).await,
                    Kind::Nats => {
                        if let Ok(client) = async_nats::connect(nats_url()).await {
                            let _ = async_nats::jetstream::new(client).delete_stream(format!("{prefix}_events")).await;
                        }
                    }
                    Kind::Memory => {}
                }
            });
        });
        let _ = done.join();
    }
}

fn event(id: &str, ty: EventType, agent: &str, run: &str) -> pb::Event {
    pb::Event {
        id: id.to_owned(),
        r#type: ty.to_pb() as i32,
        time: Some(nightshift_core::time::to_pb(Utc::now())),
        agent_id: agent.to_owned(),
        run_id: run.to_owned(),
        source: "contract-test".into(),
        data: Some(nightshift_events_client::json_to_struct(serde_json::json!({"id": id}))),
        ..Default::default()
    }
}

fn numbered(tag: &str, range: std::ops::Range<usize>) -> Vec<pb::Event> {
    range.map(|i| event(&format!("{tag}-{i}"), EventType::ToolCall, "a1", "r1")).collect()
}

fn ids(events: &[pb::Event]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

async fn next(sub: &mut Subscription) -> SubscriptionItem {
    match tokio::time::timeout(DEADLINE, sub.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no item within {DEADLINE:?}"),
    }
}

/// Events up to and including the one with id `marker` (a Lagged item fails the test).
async fn until_marker(sub: &mut Subscription, marker: &str) -> Vec<pb::Event> {
    let mut out = Vec::new();
    loop {
        match next(sub).await {
            SubscriptionItem::Event(e) => {
                let done = e.id == marker;
                out.push(e);
                if done {
                    return out;
                }
            }
            SubscriptionItem::Lagged { resume_after_cursor, dropped } => {
                panic!("unexpected Lagged (resume after {resume_after_cursor}, dropped {dropped})")
            }
        }
    }
}

/// Appends a marker event and reads `sub` up to it: what arrived before the marker is exactly
/// what the subscription had to deliver.
async fn drain_with_marker(log: &Arc<dyn EventLog>, sub: &mut Subscription, tag: &str) -> Vec<pb::Event> {
    let marker = format!("{tag}-marker");
    log.append(event(&marker, EventType::ToolCall, "a1", "r1")).await.unwrap();
    let mut got = until_marker(sub, &marker).await;
    got.pop();
    got
}

/// Waits until the live tail has handed out `cursor` (Redis and NATS read it asynchronously).
async fn live_reaches(log: &Arc<dyn EventLog>, cursor: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while log.live_cursor().as_deref() != Some(cursor) {
        assert!(tokio::time::Instant::now() < deadline, "live tail never reached {cursor}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn read_all(log: &Arc<dyn EventLog>, filter: EventFilter) -> Vec<pb::Event> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page =
            log.read(&ReadQuery { after, filter: filter.clone(), limit: 7, ..Default::default() }).await.unwrap();
        out.extend(page.events);
        match page.next_after {
            Some(c) => after = Some(c),
            None => return out,
        }
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Fixture::new(super::Kind::Memory)).await })*
        }
        mod redis_streams {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Fixture::new(super::Kind::Redis)).await })*
        }
        mod redis_cluster_streams {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Fixture::new(super::Kind::RedisCluster)).await })*
        }
        mod nats_jetstream {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Fixture::new(super::Kind::Nats)).await })*
        }
    };
}

contract!(
    append_and_read_in_order_with_paging,
    duplicate_ids_are_stored_once,
    filters_apply_to_reads_and_subscriptions,
    resume_after_cursor_has_no_gap_and_no_duplicate,
    resume_after_reopening_the_log,
    replay_from_time,
    live_subscribers_receive_only_new_events,
    slow_subscriber_gets_lagged_then_resumes_without_gap,
    long_replay_never_lags,
    catch_up_hands_over_to_live_without_duplicates,
    retention_is_bounded,
    bad_cursors_are_refused,
);

async fn append_and_read_in_order_with_paging(mut fx: Fixture) {
    let log = fx.open().await;
    let mut cursors = Vec::new();
    for e in numbered("p", 0..5) {
        let a = log.append(e).await.unwrap();
        assert!(!a.duplicate);
        cursors.push(a.cursor);
    }
    let batch = log.append_batch(numbered("p", 5..25)).await.unwrap();
    assert_eq!(batch.len(), 20);
    cursors.extend(batch.into_iter().map(|a| a.cursor));
    let mut unique = cursors.clone();
    unique.dedup();
    assert_eq!(unique.len(), 25, "cursors are distinct: {cursors:?}");

    let q = |after: Option<String>| ReadQuery { after, limit: 10, ..Default::default() };
    let p1 = log.read(&q(None)).await.unwrap();
    assert_eq!(ids(&p1.events), ids(&numbered("p", 0..10)));
    assert_eq!(p1.events.iter().map(|e| e.cursor.clone()).collect::<Vec<_>>(), cursors[..10]);
    assert_eq!(p1.next_after.as_deref(), Some(cursors[9].as_str()));
    let p2 = log.read(&q(p1.next_after)).await.unwrap();
    assert_eq!(ids(&p2.events), ids(&numbered("p", 10..20)));
    let p3 = log.read(&q(p2.next_after)).await.unwrap();
    assert_eq!(ids(&p3.events), ids(&numbered("p", 20..25)));
    assert_eq!(p3.next_after, None, "the last page says so");
    // Stored events come back whole.
    let first = &p1.events[0];
    assert_eq!((first.agent_id.as_str(), first.run_id.as_str(), first.source.as_str()), ("a1", "r1", "contract-test"));
    assert_eq!(first.r#type, EventType::ToolCall.to_pb() as i32);
    assert_eq!(
        nightshift_events_client::struct_to_json(first.data.as_ref().unwrap()),
        serde_json::json!({"id": "p-0"})
    );
    // After the last cursor: nothing, and no next page.
    let end = log.read(&q(Some(cursors[24].clone()))).await.unwrap();
    assert!(end.events.is_empty() && end.next_after.is_none());
    // Reading after any cursor continues with the next event: cursors are totally ordered.
    for i in [0, 7, 23] {
        let p = log.read(&ReadQuery { after: Some(cursors[i].clone()), limit: 1, ..Default::default() }).await.unwrap();
        assert_eq!(p.events[0].cursor, cursors[i + 1]);
    }
}

async fn duplicate_ids_are_stored_once(mut fx: Fixture) {
    let log = fx.open().await;
    let x = log.append(event("x", EventType::RunQueued, "a1", "r1")).await.unwrap();
    let again = log.append(event("x", EventType::RunQueued, "a1", "r1")).await.unwrap();
    assert_eq!(again, nightshift_events::Appended { cursor: x.cursor.clone(), duplicate: true });
    let batch = log
        .append_batch(vec![
            event("y", EventType::RunQueued, "a1", "r1"),
            event("x", EventType::RunQueued, "a1", "r1"),
            event("y", EventType::RunQueued, "a1", "r1"),
        ])
        .await
        .unwrap();
    assert!(!batch[0].duplicate);
    assert!(batch[1].duplicate && batch[1].cursor == x.cursor);
    assert!(batch[2].duplicate && batch[2].cursor == batch[0].cursor);
    assert_eq!(ids(&read_all(&log, EventFilter::default()).await), ["x", "y"]);
}

async fn filters_apply_to_reads_and_subscriptions(mut fx: Fixture) {
    use EventType::*;
    let log = fx.open().await;
    let all = vec![
        event("f0", BackgroundTaskStarted, "a1", "r1"),
        event("f1", BackgroundTaskError, "a1", "r1"),
        event("f2", BackgroundTaskStarted, "a2", "r2"),
        event("f3", AgentCreated, "a2", ""),
        event("f4", BackgroundTaskCompleted, "a3", "r3"),
        event("f5", BackgroundTaskError, "a3", "r4"),
    ];
    log.append_batch(all).await.unwrap();
    let f = |agents: &[&str], runs: &[&str], types: &[EventType]| EventFilter {
        agent_ids: agents.iter().map(|s| s.to_string()).collect(),
        run_ids: runs.iter().map(|s| s.to_string()).collect(),
        types: types.to_vec(),
        namespaces: vec![],
    };
    let cases = [
        (f(&["a1"], &[], &[]), vec!["f0", "f1"]),
        (f(&["a1", "a3"], &[], &[]), vec!["f0", "f1", "f4", "f5"]),
        (f(&[], &["r2", "r4"], &[]), vec!["f2", "f5"]),
        (f(&[], &[], &[BackgroundTaskError]), vec!["f1", "f5"]),
        (f(&[], &[], &[AgentCreated, BackgroundTaskCompleted]), vec!["f3", "f4"]),
        (f(&["a3"], &[], &[BackgroundTaskError]), vec!["f5"]),
        (f(&["a2"], &["r9"], &[]), vec![]),
        (EventFilter::default(), vec!["f0", "f1", "f2", "f3", "f4", "f5"]),
    ];
    for (filter, want) in &cases {
        assert_eq!(ids(&read_all(&log, filter.clone()).await), *want, "read with {filter:?}");
    }
    // Subscriptions apply the same filter to history and to live events.
    let filter = f(&[], &[], &[BackgroundTaskError]);
    let mut sub = log.subscribe(StartAt::Beginning, filter).await.unwrap();
    log.append_batch(vec![event("f6", AgentDeleted, "a1", ""), event("f7", BackgroundTaskError, "a9", "r9")])
        .await
        .unwrap();
    let got = until_marker(&mut sub, "f7").await;
    assert_eq!(ids(&got), ["f1", "f5", "f7"]);
}

async fn resume_after_cursor_has_no_gap_and_no_duplicate(mut fx: Fixture) {
    let log = fx.open().await;
    let events = numbered("r", 0..30);
    let cursors: Vec<String> = log.append_batch(events.clone()).await.unwrap().into_iter().map(|a| a.cursor).collect();
    // Markers of earlier rounds follow the 30 events in the log.
    let mut markers: Vec<String> = Vec::new();
    for k in [0usize, 1, 15, 28, 29] {
        let mut sub = log.subscribe(StartAt::After(cursors[k].clone()), EventFilter::default()).await.unwrap();
        let got = drain_with_marker(&log, &mut sub, &format!("r{k}")).await;
        let want: Vec<String> = ids(&events[k + 1..]).into_iter().chain(markers.iter().cloned()).collect();
        assert_eq!(ids(&got), want, "resuming after event {k}");
        let got_cursors: Vec<&str> = got.iter().take(29 - k).map(|e| e.cursor.as_str()).collect();
        assert_eq!(got_cursors, cursors[k + 1..].iter().map(String::as_str).collect::<Vec<_>>());
        markers.push(format!("r{k}-marker"));
    }
    // From the beginning: everything, once.
    let mut sub = log.subscribe(StartAt::Beginning, EventFilter::default()).await.unwrap();
    let got = until_marker(&mut sub, "r29-marker").await;
    assert_eq!(got.len(), 30 + 5, "30 events and the 5 markers, once each");
}

async fn resume_after_reopening_the_log(mut fx: Fixture) {
    let first = fx.open().await;
    let before = numbered("s", 0..10);
    let cursors: Vec<String> =
        first.append_batch(before.clone()).await.unwrap().into_iter().map(|a| a.cursor).collect();
    let resume = cursors[4].clone();
    drop(first);
    // "Restart": a new connection and live tail on the same stream. (The memory log is not
    // durable; the same instance stands in for it.)
    let log = fx.open().await;
    let mut sub = log.subscribe(StartAt::After(resume), EventFilter::default()).await.unwrap();
    let after = numbered("s", 10..13);
    let new_cursors: Vec<String> =
        log.append_batch(after.clone()).await.unwrap().into_iter().map(|a| a.cursor).collect();
    let got = until_marker(&mut sub, "s-12").await;
    let want: Vec<String> = ids(&before[5..]).into_iter().chain(ids(&after)).collect();
    assert_eq!(ids(&got), want);
    // Cursors keep increasing across the restart: reading after the last old one yields the new ones.
    let p = log.read(&ReadQuery { after: Some(cursors[9].clone()), ..Default::default() }).await.unwrap();
    assert_eq!(p.events.iter().map(|e| e.cursor.clone()).collect::<Vec<_>>(), new_cursors);
    // Dedup survives the restart on the durable backends.
    let dup = log.append(before[0].clone()).await.unwrap();
    assert!(dup.duplicate, "{:?} after reopening (durable: {})", dup, fx.durable());
    assert_eq!(dup.cursor, cursors[0]);
}

async fn replay_from_time(mut fx: Fixture) {
    let log = fx.open().await;
    let base: DateTime<Utc> = Utc::now().trunc_subsecs(3);
    let events: Vec<pb::Event> = (0..10)
        .map(|i| {
            let mut e = event(&format!("t-{i}"), EventType::LlmCall, "a1", "r1");
            e.time = Some(nightshift_core::time::to_pb(base + chrono::Duration::seconds(i)));
            e
        })
        .collect();
    log.append_batch(events.clone()).await.unwrap();
    let since = base + chrono::Duration::seconds(5);
    let mut sub = log.subscribe(StartAt::Since(since), EventFilter::default()).await.unwrap();
    let mut marker = event("t-marker", EventType::LlmCall, "a1", "r1");
    marker.time = Some(nightshift_core::time::to_pb(base + chrono::Duration::seconds(20)));
    log.append(marker).await.unwrap();
    let got = until_marker(&mut sub, "t-marker").await;
    assert_eq!(ids(&got[..got.len() - 1]), ids(&events[5..]));
    // A window in ListEvents: [base+5s, base+8s).
    let page = log
        .read(&ReadQuery { since: Some(since), until: Some(base + chrono::Duration::seconds(8)), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["t-5", "t-6", "t-7"]);
    assert_eq!(page.next_after, None);
}

async fn live_subscribers_receive_only_new_events(mut fx: Fixture) {
    let log = fx.open().await;
    log.append_batch(numbered("old", 0..3)).await.unwrap();
    let mut everything = log.subscribe(StartAt::Now, EventFilter::default()).await.unwrap();
    let errors_only = EventFilter { types: vec![EventType::BackgroundTaskError], ..Default::default() };
    let mut errors = log.subscribe(StartAt::Now, errors_only).await.unwrap();
    let new = vec![
        event("n0", EventType::BackgroundTaskStarted, "a1", "r1"),
        event("n1", EventType::BackgroundTaskError, "a1", "r1"),
        event("n2", EventType::BackgroundTaskStarted, "a1", "r2"),
        event("n3", EventType::BackgroundTaskError, "a1", "r2"),
    ];
    for e in new.clone() {
        log.append(e).await.unwrap();
    }
    assert_eq!(ids(&until_marker(&mut everything, "n3").await), ids(&new));
    assert_eq!(ids(&until_marker(&mut errors, "n3").await), ["n1", "n3"]);
}

async fn slow_subscriber_gets_lagged_then_resumes_without_gap(mut fx: Fixture) {
    let opts = LogOptions { subscriber_buffer: 4, ..fx.options() };
    let log = fx.open_with(opts).await;
    let mut slow = log.subscribe(StartAt::Now, EventFilter::default()).await.unwrap();
    let first = log.append(event("l-first", EventType::ToolCall, "a1", "r1")).await.unwrap();
    assert_eq!(ids(&until_marker(&mut slow, "l-first").await), ["l-first"]);
    // One poll with nothing to deliver leaves the subscription waiting on the live tail.
    assert!(slow.next().now_or_never().is_none());
    // 20 events while the subscriber does not read; its buffer holds 4.
    let burst = numbered("l", 0..20);
    let cursors: Vec<String> = log.append_batch(burst.clone()).await.unwrap().into_iter().map(|a| a.cursor).collect();
    live_reaches(&log, &cursors[19]).await;
    match next(&mut slow).await {
        SubscriptionItem::Lagged { resume_after_cursor, dropped } => {
            assert_eq!(resume_after_cursor, first.cursor, "resume right after the last delivered event");
            assert_eq!(dropped, 16, "20 events through a buffer of 4");
        }
        other => panic!("expected Lagged, got {other:?}"),
    }
    assert!(tokio::time::timeout(DEADLINE, slow.next()).await.unwrap().is_none(), "Lagged ends the subscription");
    // Resuming from the signal's cursor replays the burst from history: no gap, no duplicate.
    let mut resumed = log.subscribe(StartAt::After(first.cursor.clone()), EventFilter::default()).await.unwrap();
    let got = drain_with_marker(&log, &mut resumed, "l").await;
    assert_eq!(ids(&got), ids(&burst));
}

async fn long_replay_never_lags(mut fx: Fixture) {
    // Catch-up reads history at the subscriber's pace; live events that overflow the buffer
    // meanwhile are re-read from history, so a replay is never cut short by Lagged.
    let opts = LogOptions { subscriber_buffer: 4, page_size: 64, ..fx.options() };
    let log = fx.open_with(opts).await;
    let history = numbered("h", 0..300);
    log.append_batch(history.clone()).await.unwrap();
    let mut sub = log.subscribe(StartAt::Beginning, EventFilter::default()).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..100 {
        match next(&mut sub).await {
            SubscriptionItem::Event(e) => got.push(e),
            other => panic!("unexpected {other:?}"),
        }
    }
    let more = numbered("h", 300..350);
    let cursors = log.append_batch(more.clone()).await.unwrap();
    live_reaches(&log, &cursors[49].cursor).await;
    got.extend(drain_with_marker(&log, &mut sub, "h").await);
    let want: Vec<String> = ids(&history).into_iter().chain(ids(&more)).collect();
    assert_eq!(ids(&got), want);
    // The overflowed live buffer is noticed when catch-up ends; it is re-read from history and
    // the subscription goes on.
    log.append(event("h-after", EventType::ToolCall, "a1", "r1")).await.unwrap();
    assert_eq!(ids(&until_marker(&mut sub, "h-after").await), ["h-after"]);
}

async fn catch_up_hands_over_to_live_without_duplicates(mut fx: Fixture) {
    // Events appended while a subscription reads history are both in history and in its live
    // buffer: each must be delivered once.
    let opts = LogOptions { page_size: 8, ..fx.options() };
    let log = fx.open_with(opts).await;
    let old = numbered("d", 0..20);
    log.append_batch(old.clone()).await.unwrap();
    let mut sub = log.subscribe(StartAt::Beginning, EventFilter::default()).await.unwrap();
    let new = numbered("d", 20..30);
    let appended = log.append_batch(new.clone()).await.unwrap();
    live_reaches(&log, &appended[9].cursor).await;
    let got = drain_with_marker(&log, &mut sub, "d").await;
    let want: Vec<String> = ids(&old).into_iter().chain(ids(&new)).collect();
    assert_eq!(ids(&got), want);
    log.append(event("d-last", EventType::ToolCall, "a1", "r1")).await.unwrap();
    assert_eq!(ids(&until_marker(&mut sub, "d-last").await), ["d-last"]);
}

async fn retention_is_bounded(mut fx: Fixture) {
    let opts = LogOptions { max_events: 10, ..fx.options() };
    let log = fx.open_with(opts).await;
    let mut cursors = Vec::new();
    for chunk in 0..5 {
        let appended = log.append_batch(numbered("k", chunk * 50..(chunk + 1) * 50)).await.unwrap();
        cursors.extend(appended.into_iter().map(|a| a.cursor));
    }
    let retained = read_all(&log, EventFilter::default()).await;
    // Memory and JetStream trim exactly; Redis `MAXLEN ~` trims whole stream nodes (≤ 100 entries).
    let bound = if matches!(fx.kind, Kind::Redis | Kind::RedisCluster) { 10 + 100 } else { 10 };
    assert!(retained.len() >= 10 && retained.len() <= bound, "retained {} events, bound {bound}", retained.len());
    assert_eq!(retained.last().map(|e| e.cursor.as_str()), Some(cursors[249].as_str()), "the newest are kept");
    // Resuming where events were trimmed away is refused, not silently gapped.
    match log.subscribe(StartAt::After(cursors[0].clone()), EventFilter::default()).await {
        Err(EventLogError::CursorExpired { lost, .. }) => assert!(lost > 0),
        other => panic!("expected CursorExpired, got {other:?}"),
    }
    let page = log.read(&ReadQuery { after: Some(cursors[0].clone()), ..Default::default() }).await;
    assert!(matches!(page, Err(EventLogError::CursorExpired { .. })), "{page:?}");
    // Resuming at the retained edge still works.
    let edge = retained[0].cursor.clone();
    let page = log.read(&ReadQuery { after: Some(edge), limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(page.events.len(), retained.len() - 1);
}

async fn bad_cursors_are_refused(mut fx: Fixture) {
    let log = fx.open().await;
    log.append(event("b0", EventType::ToolCall, "a1", "r1")).await.unwrap();
    for bad in ["", "not-a-cursor", "12x", "-1"] {
        let r = log.subscribe(StartAt::After(bad.into()), EventFilter::default()).await;
        assert!(matches!(r, Err(EventLogError::InvalidCursor(_))), "{bad:?}: {r:?}");
        let r = log.read(&ReadQuery { after: Some(bad.into()), ..Default::default() }).await;
        assert!(matches!(r, Err(EventLogError::InvalidCursor(_))), "{bad:?}: {r:?}");
    }
}

/// Memory-only: age retention with an injected clock, and the dedup index shrinking with it.
#[tokio::test]
async fn memory_age_retention_uses_the_injected_clock() {
    let clock = nightshift_core::ManualClock::new(Utc::now());
    let opts =
        LogOptions { max_age: Some(Duration::from_secs(60)), clock: Arc::new(clock.clone()), ..LogOptions::default() };
    let log = MemoryLog::new(opts).unwrap();
    log.append_batch(numbered("age", 0..5)).await.unwrap();
    clock.advance(chrono::Duration::seconds(61));
    log.append(event("age-new", EventType::ToolCall, "a1", "r1")).await.unwrap();
    assert_eq!(log.len(), 1);
    // The evicted id is forgotten with its event (bounded index): it is stored again.
    let again = log.append(numbered("age", 0..1).remove(0)).await.unwrap();
    assert!(!again.duplicate);
    assert_eq!(log.len(), 2);
}
