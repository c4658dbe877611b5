//! The contract every [`WorkQueue`] backend must meet, run against all three: in-memory, real
//! NATS JetStream (`nightshift_testkit::nats_url`) and real Redis, both one server
//! (`nightshift_testkit::redis_url`) and a 3-master Redis Cluster
//! (`nightshift_testkit::redis_cluster_url`). Every test uses its own queue name (a UUID), so runs do
//! not see each other or leftovers, and removes its stream / keys afterwards (also when it
//! fails).
//!
//! Timing: ack deadlines and delays are 2 s; "not before" checks look well before the deadline
//! and "after" checks wait several seconds past it, so a loaded 2-core machine does not make the
//! tests flaky.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

use nightshift_testkit::{nats_url, redis_cluster_url, redis_delete_prefix, redis_url};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use nightshift_queue::{Delivery, QueueOptions, RunRequest, WorkQueue, connect};

const SHORT_ACK_WAIT: Duration = Duration::from_secs(2);
const LONG_ACK_WAIT: Duration = Duration::from_secs(60);
const DELAY: Duration = Duration::from_secs(2);
/// Tolerated early arrival against a delay: server clocks have millisecond granularity.
const CLOCK_SLACK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Nats,
    Redis,
    RedisCluster,
}

/// One test's queue: backend plus a unique name.
#[derive(Debug, Clone)]
struct Env {
    backend: Backend,
    name: String,
}

impl Env {
    fn new(backend: Backend) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self { backend, name: format!("nstest-{}", &id[..16]) }
    }

    /// A new handle on this test's queue (a new connection for NATS and Redis; another handle
    /// to the same named queue for memory).
    async fn open(&self, ack_wait: Duration) -> Arc<dyn WorkQueue> {
        self.open_with(QueueOptions { ack_wait, ..QueueOptions::named(&self.name) }).await
    }

    async fn open_with(&self, options: QueueOptions) -> Arc<dyn WorkQueue> {
        let url = match self.backend {
            Backend::Memory => format!("memory://{}", self.name),
            Backend::Nats => nats_url(),
            Backend::Redis => redis_url(),
            Backend::RedisCluster => redis_cluster_url(),
        };
        connect(&url, &options).await.unwrap_or_else(|e| panic!("connect {:?} {url}: {e}", self.backend))
    }

    async fn cleanup(&self) {
        match self.backend {
            Backend::Memory => {}
            Backend::Nats => {
                let client = async_nats::connect(nats_url()).await.expect("nats connect for cleanup");
                let js = async_nats::jetstream::new(client);
                if let Err(e) = js.delete_stream(&self.name).await {
                    eprintln!("cleanup: delete stream {}: {e}", self.name);
                }
            }
            Backend::Redis => redis_delete_prefix(&redis_url(), &self.name).await,
            Backend::RedisCluster => redis_delete_prefix(&redis_cluster_url(), &self.name).await,
        }
    }
}

/// Runs `test` on a fresh queue of `backend`, cleaning up even if it panics.
async fn run<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    let env = Env::new(backend);
    let outcome = std::panic::AssertUnwindSafe(test(env.clone())).catch_unwind().await;
    env.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn request(run_id: &str) -> RunRequest {
    RunRequest {
        run_id: run_id.to_owned(),
        agent_id: "agent-1".into(),
        trigger: 1,
        scheduled_for: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
        enqueued_at: None,
        trace_context: BTreeMap::from([("traceparent".to_owned(), "00-abc-def-01".to_owned())]),
        redelivery: String::new(),
    }
}

/// Receives until `n` deliveries arrived or `within` passed.
async fn receive_n(queue: &dyn WorkQueue, n: usize, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        out.extend(queue.receive(n - out.len(), left).await.expect("receive"));
    }
    out
}

/// Asserts nothing is delivered for `period`.
async fn assert_nothing_for(queue: &dyn WorkQueue, period: Duration, what: &str) {
    let got = queue.receive(10, period).await.expect("receive");
    let ids: Vec<_> = got.iter().map(|d| (d.request.run_id.clone(), d.delivered)).collect();
    assert!(got.is_empty(), "{what}: expected no delivery, got {ids:?}");
}

async fn depth(queue: &dyn WorkQueue) -> u64 {
    queue.depth().await.expect("depth").expect("every backend reports a depth")
}

// ---------------------------------------------------------------------------------------------
// The contract.

async fn publish_receive_ack(env: Env) {
    let q = env.open(LONG_ACK_WAIT).await;
    let sent = request("run-1");
    assert!(q.publish(&sent, None).await.expect("publish"));

    let got = receive_n(&*q, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request, sent, "the request survives the wire unchanged");
    assert_eq!(got[0].delivered, 1);
    for d in got {
        d.ack().await.expect("ack");
    }
    assert_eq!(depth(&*q).await, 0);
    // Acked means gone: nothing comes back, not even after an ack deadline (checked in
    // `redelivery_after_ack_wait`).
    assert_nothing_for(&*q, Duration::from_millis(500), "after ack").await;
}

async fn receive_respects_max_and_wait(env: Env) {
    let q = env.open(LONG_ACK_WAIT).await;

    // An empty queue: receive waits about `wait`, then returns nothing.
    let start = Instant::now();
    assert!(q.receive(10, Duration::from_secs(1)).await.expect("receive").is_empty());
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900), "returned after {waited:?}, before the wait");
    assert!(waited < Duration::from_secs(5), "returned after {waited:?}, far past the wait");

    for i in 0..5 {
        assert!(q.publish(&request(&format!("run-{i}")), None).await.expect("publish"));
    }
    let first = q.receive(2, Duration::from_secs(5)).await.expect("receive");
    assert_eq!(first.len(), 2, "at most max, and all of max when available");
    let rest = receive_n(&*q, 3, Duration::from_secs(10)).await;
    assert_eq!(rest.len(), 3);
    let ids: HashSet<_> = first.iter().chain(&rest).map(|d| d.request.run_id.clone()).collect();
    assert_eq!(ids.len(), 5);
    for d in first.into_iter().chain(rest) {
        d.ack().await.expect("ack");
    }
    assert!(q.receive(0, Duration::from_secs(1)).await.expect("receive 0").is_empty());
}

async fn waiting_receive_wakes_on_publish(env: Env) {
    let q = env.open(LONG_ACK_WAIT).await;
    let publisher = env.open(LONG_ACK_WAIT).await;
    let waiter = {
        let q = Arc::clone(&q);
        tokio::spawn(async move {
            let start = Instant::now();
            let got = q.receive(10, Duration::from_secs(20)).await.expect("receive");
            (got, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(publisher.publish(&request("run-wake"), None).await.expect("publish"));
    let (got, waited) = waiter.await.expect("join");
    assert_eq!(got.len(), 1);
    assert!(waited < Duration::from_secs(5), "a waiting receive took {waited:?} to see a publish");
    for d in got {
        d.ack().await.expect("ack");
    }
}

async fn dedup_by_run_id(env: Env) {
    let q = env.open(LONG_ACK_WAIT).await;
    assert!(q.publish(&request("run-a"), None).await.expect("publish"));
    assert!(!q.publish(&request("run-a"), None).await.expect("publish"), "same run_id again is a duplicate");
    assert!(!q.publish(&request("run-a"), Some(DELAY)).await.expect("publish"), "a delayed duplicate too");
    // Through another connection (another scheduler replica) as well.
    let other = env.open(LONG_ACK_WAIT).await;
    assert!(!other.publish(&request("run-a"), None).await.expect("publish"));
    assert!(q.publish(&request("run-b"), None).await.expect("publish"), "another run_id is not");

    let got = receive_n(&*q, 2, Duration::from_secs(10)).await;
    let mut ids: Vec<_> = got.iter().map(|d| d.request.run_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["run-a", "run-b"]);
    for d in got {
        d.ack().await.expect("ack");
    }
    // Longer than DELAY: the duplicate delayed publish must not show up either.
    assert_nothing_for(&*q, DELAY + Duration::from_secs(2), "duplicates").await;
}

/// Lease recovery (or the end of the run a buffered run waited for) publishes a run again inside
/// the dedup window of its first request: its `redelivery` makes it a new message, itself
/// deduplicated.
async fn a_redelivery_is_not_a_duplicate(env: Env) {
    let q = env.open(LONG_ACK_WAIT).await;
    assert!(q.publish(&request("run-r"), None).await.expect("publish"));
    let recovered = RunRequest { redelivery: "attempt-1".into(), ..request("run-r") };
    assert!(q.publish(&recovered, None).await.expect("publish"), "a redelivery is a new request");
    assert!(!q.publish(&recovered, None).await.expect("publish"), "published twice by two replicas");
    let again = RunRequest { redelivery: "attempt-2".into(), ..request("run-r") };
    assert!(q.publish(&again, None).await.expect("publish"), "another redelivery is new again");

    let got = receive_n(&*q, 3, Duration::from_secs(10)).await;
    let mut attempts: Vec<_> = got.iter().map(|d| d.request.redelivery.clone()).collect();
    attempts.sort();
    assert_eq!(attempts, ["", "attempt-1", "attempt-2"]);
    for d in got {
        d.ack().await.expect("ack");
    }
    assert_nothing_for(&*q, Duration::from_secs(1), "duplicates").await;
}

async fn dedup_window_expires(env: Env) {
    let window = Duration::from_secs(1);
    let q = env.open_with(QueueOptions { dedup_window: window, ..QueueOptions::named(&env.name) }).await;
    assert!(q.publish(&request("run-w"), None).await.expect("publish"));
    assert!(!q.publish(&request("run-w"), None).await.expect("publish"), "within the window");
    // NATS purges its dedup map on a timer of the window's length: allow up to 2 windows + slack.
    tokio::time::sleep(window * 3).await;
    assert!(q.publish(&request("run-w"), None).await.expect("publish"), "after the window: a new request");
    let got = receive_n(&*q, 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "both publishes were enqueued");
    for d in got {
        d.ack().await.expect("ack");
    }
}

async fn redelivery_after_ack_wait(env: Env) {
    let q = env.open(SHORT_ACK_WAIT).await;
    assert!(q.publish(&request("run-r"), None).await.expect("publish"));
    let first = receive_n(&*q, 1, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].delivered, 1);
    let delivered_at = Instant::now();
    drop(first); // the worker "dies": no ack

    assert_nothing_for(&*q, SHORT_ACK_WAIT / 2, "before the ack deadline").await;
    let again = receive_n(&*q, 1, SHORT_ACK_WAIT + Duration::from_secs(8)).await;
    assert_eq!(again.len(), 1, "an unacked delivery comes back after the ack deadline");
    assert!(delivered_at.elapsed() >= SHORT_ACK_WAIT - CLOCK_SLACK, "redelivered before the deadline");
    assert_eq!(again[0].request.run_id, "run-r");
    assert_eq!(again[0].delivered, 2);
    for d in again {
        d.ack().await.expect("ack");
    }
    // Acked: not delivered a third time.
    assert_nothing_for(&*q, SHORT_ACK_WAIT + Duration::from_secs(2), "after the ack").await;
}

async fn in_progress_extends_deadline(env: Env) {
    let worker = env.open(SHORT_ACK_WAIT).await;
    let other = env.open(SHORT_ACK_WAIT).await;
    assert!(worker.publish(&request("run-p"), None).await.expect("publish"));
    let got = receive_n(&*worker, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let delivery = got.into_iter().next().expect("one delivery");

    // 2.5 ack deadlines with a heartbeat every ~0.5 s: nobody else gets it.
    let start = Instant::now();
    while start.elapsed() < SHORT_ACK_WAIT * 5 / 2 {
        delivery.in_progress().await.expect("in_progress");
        assert_nothing_for(&*other, Duration::from_millis(500), "while in progress").await;
    }
    // Heartbeats stop (the worker hangs): it is redelivered after the deadline.
    let again = receive_n(&*other, 1, SHORT_ACK_WAIT + Duration::from_secs(8)).await;
    assert_eq!(again.len(), 1, "redelivered once the heartbeats stopped");
    assert_eq!(again[0].delivered, 2);
    for d in again {
        d.ack().await.expect("ack");
    }
    drop(delivery);
}

async fn nack_with_delay(env: Env) {
    let q = env.open(LONG_ACK_WAIT).await;
    assert!(q.publish(&request("run-n"), None).await.expect("publish"));
    let got = receive_n(&*q, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let nacked_at = Instant::now();
    for d in got {
        d.nack(DELAY).await.expect("nack");
    }
    assert_nothing_for(&*q, DELAY / 2, "before the nack delay").await;
    let again = receive_n(&*q, 1, DELAY + Duration::from_secs(8)).await;
    assert_eq!(again.len(), 1, "delivered again after the nack delay");
    assert!(
        nacked_at.elapsed() >= DELAY - CLOCK_SLACK,
        "delivered {:?} after a nack of {DELAY:?}",
        nacked_at.elapsed()
    );
    assert_eq!(again[0].request.run_id, "run-n");
    assert_eq!(again[0].delivered, 2);
    for d in again {
        d.ack().await.expect("ack");
    }
    assert_eq!(depth(&*q).await, 0);
}

async fn publish_with_delay(env: Env) {
    let q = env.open(LONG_ACK_WAIT).await;
    let published_at = Instant::now();
    assert!(q.publish(&request("run-d"), Some(DELAY)).await.expect("publish"));
    assert!(q.publish(&request("run-now"), None).await.expect("publish"));

    let now = receive_n(&*q, 1, Duration::from_secs(10)).await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].request.run_id, "run-now", "the undelayed request comes first");
    for d in now {
        d.ack().await.expect("ack");
    }
    assert_nothing_for(&*q, DELAY / 4, "before the publish delay").await;
    let later = receive_n(&*q, 1, DELAY + Duration::from_secs(8)).await;
    assert_eq!(later.len(), 1, "delivered after the publish delay");
    assert!(
        published_at.elapsed() >= DELAY - CLOCK_SLACK,
        "delivered {:?} after a publish delayed by {DELAY:?}",
        published_at.elapsed()
    );
    assert_eq!(later[0].request.run_id, "run-d");
    assert_eq!(later[0].delivered, 1, "waiting for the due time is not a delivery");
    for d in later {
        d.ack().await.expect("ack");
    }
    assert_eq!(depth(&*q).await, 0);
}

async fn two_consumers_share_work(env: Env) {
    const N: usize = 200;
    let a = env.open(LONG_ACK_WAIT).await;
    let b = env.open(LONG_ACK_WAIT).await;
    for i in 0..N {
        assert!(a.publish(&request(&format!("run-{i:03}")), None).await.expect("publish"));
    }
    let done = Arc::new(AtomicUsize::new(0));
    let consume = |q: Arc<dyn WorkQueue>| {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while done.load(Ordering::SeqCst) < N && Instant::now() < deadline {
                for d in q.receive(16, Duration::from_millis(500)).await.expect("receive") {
                    assert_eq!(d.delivered, 1, "no redelivery with a long ack deadline");
                    seen.push(d.request.run_id.clone());
                    // A little work per run, so that both consumers get a share.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    d.ack().await.expect("ack");
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
            seen
        })
    };
    let (seen_a, seen_b) = (consume(Arc::clone(&a)), consume(Arc::clone(&b)));
    let (seen_a, seen_b) = (seen_a.await.expect("join a"), seen_b.await.expect("join b"));

    let all: Vec<_> = seen_a.iter().chain(&seen_b).cloned().collect();
    let unique: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), N, "every request delivered exactly once (a: {}, b: {})", seen_a.len(), seen_b.len());
    assert_eq!(unique.len(), N, "no duplicates");
    assert!(!seen_a.is_empty() && !seen_b.is_empty(), "both consumers got work: {} / {}", seen_a.len(), seen_b.len());
    assert_eq!(depth(&*a).await, 0);
    assert_nothing_for(&*b, Duration::from_millis(500), "after all acked").await;
}

async fn depth_counts_ready_and_delayed(env: Env) {
    let q = env.open(LONG_ACK_WAIT).await;
    assert_eq!(depth(&*q).await, 0);
    for i in 0..3 {
        assert!(q.publish(&request(&format!("ready-{i}")), None).await.expect("publish"));
    }
    for i in 0..2 {
        assert!(q.publish(&request(&format!("later-{i}")), Some(Duration::from_secs(4))).await.expect("publish"));
    }
    assert_eq!(depth(&*q).await, 5);

    let ready = receive_n(&*q, 3, Duration::from_secs(10)).await;
    assert_eq!(ready.len(), 3);
    assert!(ready.iter().all(|d| d.request.run_id.starts_with("ready-")));
    for d in ready {
        d.ack().await.expect("ack");
    }
    assert_eq!(depth(&*q).await, 2, "the delayed ones still wait");

    let later = receive_n(&*q, 2, Duration::from_secs(15)).await;
    assert_eq!(later.len(), 2);
    for d in later {
        d.ack().await.expect("ack");
    }
    assert_eq!(depth(&*q).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Every contract test, once per backend.

macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run(super::Backend::Memory, super::$test).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run(super::Backend::Nats, super::$test).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run(super::Backend::Redis, super::$test).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run(super::Backend::RedisCluster, super::$test).await;
                }
            )*
        }
    };
}

contract!(
    publish_receive_ack,
    receive_respects_max_and_wait,
    waiting_receive_wakes_on_publish,
    dedup_by_run_id,
    a_redelivery_is_not_a_duplicate,
    dedup_window_expires,
    redelivery_after_ack_wait,
    in_progress_extends_deadline,
    nack_with_delay,
    publish_with_delay,
    two_consumers_share_work,
    depth_counts_ready_and_delayed,
);
