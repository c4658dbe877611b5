//! `event-fanout`: events/s published to one [`EventLog`] and delivered to S concurrent
//! subscribers, on each backend (in-memory ring, Redis Streams, NATS JetStream).
//!
//! Each round opens a fresh log (unique prefix, so a unique Redis stream / JetStream stream),
//! subscribes S subscribers from the start of the log ([`StartAt::Beginning`], no filter), then
//! one publisher task appends N events with [`EventLog::append_batch`] in batches of 256 (what
//! the event service's PublishStream hands the log); a second task builds the batches ahead of
//! it, as decoding tasks would in the service. The log is opened once per round and shared
//! by the publisher and all subscribers, as the `nightshift-events` service does. A subscriber
//! counts deliveries until it has all N and checks their order (the event id carries its
//! sequence number). A subscriber told `Lagged` does what a real client must: it subscribes
//! again after `resume_after_cursor` and continues from history; every such signal is counted
//! and reported, never hidden. Afterwards the stream / keys are deleted.
//!
//! Measured per round: publish throughput (time inside `append_batch` only, building the events
//! is excluded), the fan-out rate (N / time until every subscriber has all N), delivered events/s
//! per subscriber and in aggregate, end-to-end latency (the `time` stamped on the event right
//! before its `append_batch` call → receipt by a subscriber, every k-th event), process CPU and
//! RSS. CPU and RSS are the bench process only: the Redis and NATS servers are not included.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use nightshift_core::{EventType, pb};
use nightshift_events::{EventLog, LogOptions, StartAt, SubscriptionItem};
use nightshift_events_client::EventFilter;
use serde::Serialize;

use crate::backend::{NATS_URL, REDIS_URL};
use crate::stats::Row;
use crate::{Scenario, sys};

/// Events appended per `append_batch` call: the event service's PublishStream batch.
const DEFAULT_BATCH: usize = 256;

/// Which event log backends to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FanoutBackend {
    /// `memory://`: the in-process ring buffer.
    Memory,
    /// Redis Streams at 127.0.0.1:6379.
    Redis,
    /// NATS JetStream at 127.0.0.1:4222.
    Nats,
    /// The three, one after the other.
    All,
}

/// Parameters of `event-fanout`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FanoutArgs {
    #[arg(long, value_enum, default_value_t = FanoutBackend::All)]
    pub backend: FanoutBackend,
    /// Events published per round [default: 200000 in memory, 100000 on Redis and NATS].
    #[arg(long)]
    pub events: Option<u64>,
    /// Concurrent subscribers, each from the start of the log.
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Measured rounds per backend (each on a fresh, empty log).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Events per `append_batch` call.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    /// Live events a subscriber may fall behind before it is told `Lagged`
    /// (`LogOptions::subscriber_buffer`; the service's default is 1024).
    #[arg(long, default_value_t = LogOptions::default().subscriber_buffer)]
    pub subscriber_buffer: usize,
    /// Latency is recorded for every k-th event of each subscriber (keeps the samples small).
    #[arg(long, default_value_t = 100)]
    pub sample_every: u64,
    /// Longest a round may take; subscribers still short of N then are reported as incomplete.
    #[arg(long, default_value_t = 20)]
    pub round_timeout_secs: u64,
}

impl Default for FanoutArgs {
    /// The sizes docs/benchmarks.md reports (the same as the command-line defaults).
    fn default() -> Self {
        Self {
            backend: FanoutBackend::All,
            events: None,
            subscribers: 10,
            rounds: 3,
            batch: DEFAULT_BATCH,
            subscriber_buffer: LogOptions::default().subscriber_buffer,
            sample_every: 100,
            round_timeout_secs: 20,
        }
    }
}

/// One concrete backend of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Redis,
    Nats,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::Nats => "nats",
        }
    }

    fn url(self) -> &'static str {
        match self {
            Self::Memory => "memory://",
            Self::Redis => REDIS_URL,
            Self::Nats => NATS_URL,
        }
    }

    fn default_events(self) -> u64 {
        match self {
            Self::Memory => 200_000,
            Self::Redis | Self::Nats => 100_000,
        }
    }

    /// The target for events/s published and delivered to every subscriber.
    fn target(self) -> f64 {
        match self {
            Self::Memory => 200_000.0,
            Self::Redis | Self::Nats => 50_000.0,
        }
    }
}

/// Runs the scenario on the backends `args` names: one [`Scenario`] per backend.
pub async fn event_fanout(args: &FanoutArgs) -> anyhow::Result<Vec<Scenario>> {
    let kinds = match args.backend {
        FanoutBackend::Memory => vec![Kind::Memory],
        FanoutBackend::Redis => vec![Kind::Redis],
        FanoutBackend::Nats => vec![Kind::Nats],
        FanoutBackend::All => vec![Kind::Memory, Kind::Redis, Kind::Nats],
    };
    let mut out = Vec::with_capacity(kinds.len());
    for kind in kinds {
        out.push(fanout_on(kind, args).await?);
    }
    Ok(out)
}

/// What one subscriber saw, updated as it goes so that a subscriber stopped by the round
/// timeout still reports its progress.
#[derive(Default)]
struct Progress {
    delivered: AtomicU64,
    lagged: AtomicU64,
    /// Live events the broadcast buffer discarded for this subscriber (summed over its `Lagged`).
    dropped: AtomicU64,
    /// Deliveries whose sequence was not the next expected one (gap or duplicate; must be 0).
    out_of_order: AtomicU64,
}

/// A subscriber that received all N events.
struct Finished {
    done: Instant,
    latencies_ms: Vec<f64>,
}

/// The sequence number an event id of this scenario ends with (`<tag>-<seq>`).
fn seq_of(ev: &pb::Event) -> Option<u64> {
    ev.id.rsplit_once('-').and_then(|(_, s)| s.parse().ok())
}

/// Milliseconds from the event's `time` (stamped right before `append_batch`) to now.
fn latency_ms(ev: &pb::Event) -> Option<f64> {
    let t = ev.time.as_ref()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
    let sent_ns = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    Some((now.as_nanos() as i128 - sent_ns) as f64 / 1e6)
}

async fn subscriber(
    log: Arc<dyn EventLog>,
    mut sub: nightshift_events::Subscription,
    n: u64,
    sample_every: u64,
    progress: Arc<Progress>,
) -> anyhow::Result<Finished> {
    let mut latencies_ms = Vec::with_capacity((n / sample_every.max(1)) as usize + 1);
    let mut delivered = 0u64;
    let mut next_seq = 0u64;
    loop {
        let resume = loop {
            let Some(item) = sub.next().await else {
                anyhow::bail!("the subscription ended after {delivered} of {n} events");
            };
            match item.context("subscription failed")? {
                SubscriptionItem::Event(ev) => {
                    delivered += 1;
                    progress.delivered.store(delivered, Ordering::Relaxed);
                    let seq = seq_of(&ev).unwrap_or(u64::MAX);
                    if seq != next_seq {
                        progress.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    next_seq = seq.wrapping_add(1);
                    if seq.is_multiple_of(sample_every.max(1))
                        && let Some(ms) = latency_ms(&ev)
                    {
                        latencies_ms.push(ms);
                    }
                    if delivered == n {
                        return Ok(Finished { done: Instant::now(), latencies_ms });
                    }
                }
                SubscriptionItem::Lagged { resume_after_cursor, dropped } => {
                    progress.lagged.fetch_add(1, Ordering::Relaxed);
                    progress.dropped.fetch_add(dropped, Ordering::Relaxed);
                    break resume_after_cursor;
                }
            }
        };
        // What the contract asks of a client that lagged: resume after the cursor (the missed
        // events come from the log's history), so delivery stays complete and ordered.
        sub = log
            .subscribe(StartAt::After(resume.clone()), EventFilter::default())
            .await
            .with_context(|| format!("subscribing again after {resume}"))?;
    }
}

/// Builds the N events in batches, ahead of the publisher: in a service, events arrive decoded
/// by other tasks, so building them here must not be serial work on the publishing path.
async fn build_batches(tag: String, n: u64, batch: usize, tx: tokio::sync::mpsc::Sender<Vec<pb::Event>>) {
    let data = nightshift_events_client::json_to_struct(serde_json::json!({"attempt": 1, "status": "running"}));
    // A pool of agents, as a busy deployment has: the ids have the real (UUID) length.
    let agents: Vec<String> = (0..100).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    // Run ids of UUID length too, but derived rather than random: a `getrandom` call per event
    // would be harness CPU competing with the log for the two cores.
    let run_base = uuid::Uuid::now_v7().as_u64_pair().0;
    let mut seq = 0u64;
    while seq < n {
        let len = (batch as u64).min(n - seq);
        let events: Vec<pb::Event> = (seq..seq + len)
            .map(|i| pb::Event {
                id: format!("{tag}-{i}"),
                r#type: EventType::BackgroundTaskStarted.to_pb() as i32,
                agent_id: agents[(i % 100) as usize].clone(),
                run_id: uuid::Uuid::from_u64_pair(run_base, i).to_string(),
                source: "nightshift-bench".into(),
                data: Some(data.clone()),
                ..Default::default()
            })
            .collect();
        if tx.send(events).await.is_err() {
            return; // the publisher stopped (error)
        }
        seq += len;
    }
}

/// The publisher: appends the built batches in order, each stamped with the time right before
/// its `append_batch` call; returns the time spent inside `append_batch`.
async fn publisher(log: Arc<dyn EventLog>, tag: String, n: u64, batch: usize) -> anyhow::Result<PublishOutcome> {
    // A few batches of look-ahead are enough to keep the publisher from waiting.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let builder = tokio::spawn(build_batches(tag, n, batch, tx));
    let mut in_append = Duration::ZERO;
    let mut duplicates = 0u64;
    let mut published = 0u64;
    let started = Instant::now();
    while let Some(mut events) = rx.recv().await {
        let now = Some(nightshift_core::time::to_pb(chrono::Utc::now()));
        for ev in &mut events {
            ev.time = now;
        }
        let len = events.len() as u64;
        let t = Instant::now();
        let appended = log.append_batch(events).await.context("append_batch")?;
        in_append += t.elapsed();
        duplicates += appended.iter().filter(|a| a.duplicate).count() as u64;
        published += len;
    }
    let wall = started.elapsed();
    builder.await.context("the event builder panicked")?;
    anyhow::ensure!(published == n, "published {published} of {n} events");
    Ok(PublishOutcome { in_append, wall, duplicates })
}

struct PublishOutcome {
    in_append: Duration,
    wall: Duration,
    duplicates: u64,
}

/// The figures of one round.
#[derive(Default)]
struct RoundResult {
    publish_eps: f64,
    publish_loop_eps: f64,
    fanout_eps: Option<f64>,
    aggregate_eps: Option<f64>,
    per_subscriber_eps: Vec<f64>,
    latencies_ms: Vec<f64>,
    lagged_per_subscriber: Vec<f64>,
    dropped: u64,
    out_of_order: u64,
    incomplete: usize,
    errors: usize,
    duplicates_on_publish: u64,
    cpu_pct: f64,
    cpu_us_per_delivery: f64,
    rss_samples: Vec<f64>,
    rustc_max: usize,
}

async fn fanout_on(kind: Kind, args: &FanoutArgs) -> anyhow::Result<Scenario> {
    let n = args.events.unwrap_or_else(|| kind.default_events()).max(1);
    let subs = args.subscribers.max(1);
    let name = format!("event-fanout {} {n} events → {subs} subscribers", kind.label());
    eprintln!("== {name}: {} rounds, batch {}, subscriber buffer {}", args.rounds, args.batch, args.subscriber_buffer);
    sys::reset_peak_rss();
    let mut rounds = Vec::new();
    for round in 0..args.rounds.max(1) {
        let r = round_on(kind, args, n, subs).await.with_context(|| format!("{name}, round {}", round + 1))?;
        eprintln!(
            "   round {}: publish {:.0} ev/s, fan-out {} ev/s, lagged {}, incomplete {}",
            round + 1,
            r.publish_eps,
            r.fanout_eps.map_or("-".into(), |v| format!("{v:.0}")),
            r.lagged_per_subscriber.iter().sum::<f64>(),
            r.incomplete
        );
        rounds.push(r);
    }
    let (_, rss_peak) = sys::rss_mib();
    let all = |f: fn(&RoundResult) -> Vec<f64>| rounds.iter().flat_map(f).collect::<Vec<f64>>();
    let publish = all(|r| vec![r.publish_eps]);
    let fanout = all(|r| r.fanout_eps.into_iter().collect());
    let total = |f: fn(&RoundResult) -> u64| rounds.iter().map(f).sum::<u64>();
    let lagged_total: f64 = rounds.iter().flat_map(|r| &r.lagged_per_subscriber).sum();
    let incomplete: usize = rounds.iter().map(|r| r.incomplete).sum();
    let median = |v: &[f64]| crate::stats::Summary::of(v).map(|s| s.median);
    let target = kind.target();
    let worst = match (median(&publish), median(&fanout)) {
        (Some(p), Some(f)) if incomplete == 0 => Some(p.min(f)),
        _ => None,
    };
    let sample_label = format!("sampled delivery (every {}th event)", args.sample_every);
    let per_subscriber = all(|r| r.per_subscriber_eps.clone());
    let aggregate = all(|r| r.aggregate_eps.into_iter().collect());
    let latencies = all(|r| r.latencies_ms.clone());
    let lagged = all(|r| r.lagged_per_subscriber.clone());
    let (cpu_pct, cpu_us) = (all(|r| vec![r.cpu_pct]), all(|r| vec![r.cpu_us_per_delivery]));
    let per_sub_round = "subscriber × round";
    let rows = vec![
        Row::new(&name, "publish (append_batch time only)", "events/s", "round", &publish),
        Row::new(&name, "published and delivered to every subscriber", "events/s", "round", &fanout),
        Row::new(&name, "delivered per subscriber", "events/s", per_sub_round, &per_subscriber),
        Row::new(&name, "delivered, all subscribers together", "events/s", "round", &aggregate),
        Row::new(&name, "end-to-end latency (append_batch call → delivery)", "ms", &sample_label, &latencies),
        Row::new(&name, "Lagged signals (resubscribed after cursor)", "count", per_sub_round, &lagged),
        Row::new(&name, "CPU (process, publish start → last delivery)", "% of one core", "round", &cpu_pct),
        Row::new(&name, "CPU per delivered event", "µs", "round", &cpu_us),
        Row::new(&name, "RSS (sampled every 0.5 s)", "MiB", "sample", &all(|r| r.rss_samples.clone())),
        Row::single(&name, "RSS peak (VmHWM)", "MiB", rss_peak),
    ];
    let counters = serde_json::json!({
        "events_per_round": n,
        "subscribers": subs,
        "rounds": rounds.len(),
        "batch": args.batch,
        "subscriber_buffer": args.subscriber_buffer,
        "lagged_total": lagged_total,
        "dropped_by_buffers_total": total(|r| r.dropped),
        "out_of_order_deliveries": total(|r| r.out_of_order),
        "incomplete_subscribers": incomplete,
        "subscriber_errors": rounds.iter().map(|r| r.errors).sum::<usize>(),
        "duplicates_on_publish": total(|r| r.duplicates_on_publish),
        "publish_loop_events_per_s": all(|r| vec![r.publish_loop_eps]),
        "target_events_per_s": target,
        "target_met": worst.is_some_and(|w| w >= target),
        "rustc_processes_max": rounds.iter().map(|r| r.rustc_max).max().unwrap_or(0),
    });
    let params = serde_json::json!({
        "backend": kind.label(),
        "events": n,
        "subscribers": subs,
        "rounds": args.rounds,
        "batch": args.batch,
        "subscriber_buffer": args.subscriber_buffer,
        "sample_every": args.sample_every,
        "round_timeout_secs": args.round_timeout_secs,
    });
    Ok(Scenario { name, params, rows, counters })
}

async fn round_on(kind: Kind, args: &FanoutArgs, n: u64, subs: usize) -> anyhow::Result<RoundResult> {
    let prefix = format!("bench-ef-{}", uuid::Uuid::new_v4().simple());
    let options = LogOptions {
        // Retention never trims inside a round: a subscriber that lagged resumes from history.
        max_events: n,
        subscriber_buffer: args.subscriber_buffer,
        ..LogOptions::with_prefix(prefix.clone())
    };
    let log = nightshift_events::connect(kind.url(), options)
        .await
        .with_context(|| format!("opening the {} event log at {}", kind.label(), kind.url()))?;
    let result = measure_round(&log, args, n, subs, &prefix).await;
    drop(log);
    if let Err(e) = cleanup(kind, &prefix).await {
        eprintln!("warning: could not remove the benchmark log {prefix}: {e:#}");
    }
    result
}

async fn measure_round(
    log: &Arc<dyn EventLog>,
    args: &FanoutArgs,
    n: u64,
    subs: usize,
    prefix: &str,
) -> anyhow::Result<RoundResult> {
    // Every subscription exists before the first publish, so the round measures the live
    // fan-out (catch-up from history only happens after a `Lagged`).
    let mut progress = Vec::with_capacity(subs);
    let mut tasks = Vec::with_capacity(subs);
    for _ in 0..subs {
        let sub = log.subscribe(StartAt::Beginning, EventFilter::default()).await.context("subscribing")?;
        let p = Arc::new(Progress::default());
        progress.push(p.clone());
        tasks.push(tokio::spawn(subscriber(log.clone(), sub, n, args.sample_every, p)));
    }
    let deadline = Instant::now() + Duration::from_secs(args.round_timeout_secs);
    let cpu0 = sys::cpu_time();
    let t0 = Instant::now();
    // A task of its own, like a service's publishing path (not the runtime's block_on thread).
    let publish = tokio::spawn(publisher(log.clone(), prefix.to_owned(), n, args.batch.max(1)));
    let mut rss_samples = Vec::new();
    let mut rustc_max = 0;
    let mut next_sample = Instant::now();
    // Completion is checked often (cheap); RSS and rustc only every 0.5 s, because reading
    // /proc costs CPU that would be taken from the subscribers. The subscribers stamp their own
    // completion time, so this polling does not affect the rates.
    while !(publish.is_finished() && tasks.iter().all(|t| t.is_finished())) && Instant::now() < deadline {
        if Instant::now() >= next_sample {
            rss_samples.push(sys::rss_mib().0);
            rustc_max = rustc_max.max(sys::count_rustc());
            next_sample += Duration::from_millis(500);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = sys::cpu_time().saturating_sub(cpu0);
    let wall = t0.elapsed();
    if !publish.is_finished() {
        publish.abort();
        anyhow::bail!("publishing {n} events did not finish within {} s", args.round_timeout_secs);
    }
    let published = publish.await.context("publisher panicked")??;
    let mut r = RoundResult {
        publish_eps: n as f64 / published.in_append.as_secs_f64(),
        publish_loop_eps: n as f64 / published.wall.as_secs_f64(),
        duplicates_on_publish: published.duplicates,
        rss_samples,
        rustc_max,
        ..RoundResult::default()
    };
    let mut last_done = None::<Instant>;
    for (task, p) in tasks.into_iter().zip(&progress) {
        r.lagged_per_subscriber.push(p.lagged.load(Ordering::Relaxed) as f64);
        r.dropped += p.dropped.load(Ordering::Relaxed);
        r.out_of_order += p.out_of_order.load(Ordering::Relaxed);
        if !task.is_finished() {
            task.abort();
            r.incomplete += 1;
            eprintln!(
                "warning: a subscriber had {} of {n} events after {} s",
                p.delivered.load(Ordering::Relaxed),
                args.round_timeout_secs
            );
            continue;
        }
        match task.await {
            Ok(Ok(f)) => {
                r.per_subscriber_eps.push(n as f64 / (f.done - t0).as_secs_f64());
                r.latencies_ms.extend(f.latencies_ms);
                last_done = last_done.max(Some(f.done));
            }
            Ok(Err(e)) => {
                eprintln!("warning: a subscriber failed: {e:#}");
                r.errors += 1;
                r.incomplete += 1;
            }
            Err(e) => anyhow::bail!("a subscriber panicked: {e}"),
        }
    }
    if r.incomplete == 0
        && let Some(done) = last_done
    {
        let secs = (done - t0).as_secs_f64();
        r.fanout_eps = Some(n as f64 / secs);
        r.aggregate_eps = Some((n * subs as u64) as f64 / secs);
    }
    r.cpu_pct = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    r.cpu_us_per_delivery = cpu.as_secs_f64() * 1e6 / (n * subs as u64) as f64;
    Ok(r)
}

/// Removes what a round created: the JetStream stream, or the Redis stream and dedup keys.
async fn cleanup(kind: Kind, prefix: &str) -> anyhow::Result<()> {
    match kind {
        Kind::Memory => Ok(()),
        Kind::Nats => {
            let client = async_nats::connect(NATS_URL).await?;
            async_nats::jetstream::new(client).delete_stream(format!("{prefix}_events")).await?;
            Ok(())
        }
        Kind::Redis => {
            // `{<prefix>}:events` and one `{<prefix>}:eid:<id>` per event (they would also expire
            // after the dedup window). SCAN + UNLINK so that Redis is never blocked for long.
            let client = redis::Client::open(REDIS_URL)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{{{prefix}}}:*"))
                    .arg("COUNT")
                    .arg(5000)
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    let _: () = redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await?;
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        }
    }
}
