//! `schedule-scale`: N agents with `interval: 1s`, the real scheduler, and a consumer that drains
//! and acks the queue, recording the fire lag (`receive time - scheduled_for`) of every run.
//!
//! `fire-breakdown`: the I/O steps of `Scheduler::fire_due` (record the ticks in one store
//! transaction, publish, mark published) replayed for N agents through the same public store and
//! queue calls, each timed — a coarse profile of where a firing pass spends its time.
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use futures::StreamExt;
use nightshift_core::{AgentId, AgentSpec, AgentState, RunId, SystemClock, TriggerKind, time};
use nightshift_queue::{RunRequest, WorkQueue};
use nightshift_rpc::{CancellationToken, Role};
use nightshift_scheduler::{SchedulerConfig, SchedulerDeps, SchedulerRole};
use nightshift_store::{Store, TickFire};

use crate::backend::{BackendKind, Backends};
use crate::stats::Row;
use crate::{Scenario, sys};

/// Parameters of `schedule-scale`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ScaleArgs {
    /// Agents, each with `interval: 1s`.
    #[arg(long, default_value_t = 500)]
    pub agents: usize,
    /// Length of the measured window, in seconds (one round per tick).
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Seconds between the last agent created and the measured window (ramp-up settles).
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    #[arg(long, value_enum, default_value_t = BackendKind::Embedded)]
    pub backend: BackendKind,
    /// Consumer tasks draining the queue.
    #[arg(long, default_value_t = 2)]
    pub consumers: usize,
}

/// What the consumers keep per delivered run of the measured window (16 bytes, so that the
/// harness adds little to the RSS it reports).
#[derive(Clone, Copy)]
struct Rec {
    key: u64,
    lag_ms: f32,
    redelivered: bool,
}

#[derive(Default)]
struct Shared {
    /// Ticks before this (unix ms) are ramp-up and not recorded; `i64::MAX` until known.
    window_start_ms: AtomicI64,
    window_end_ms: AtomicI64,
    recs: Mutex<Vec<Rec>>,
    in_window: AtomicU64,
    outside: AtomicU64,
    /// Deliveries (any tick) per wall-clock second of the window: the fired runs/s.
    per_second: Vec<AtomicU64>,
    stop: AtomicBool,
}

fn run_key(run_id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    run_id.hash(&mut h);
    h.finish()
}

fn ts_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

async fn consume(queue: Arc<dyn WorkQueue>, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut local = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let batch = queue.receive(1000, Duration::from_millis(100)).await.context("receiving from the queue")?;
        let now = Utc::now();
        let now_us = now.timestamp_micros();
        let (start, end) =
            (shared.window_start_ms.load(Ordering::Relaxed), shared.window_end_ms.load(Ordering::Relaxed));
        if now.timestamp_millis() >= start
            && let Some(slot) =
                usize::try_from((now.timestamp_millis() - start) / 1000).ok().and_then(|i| shared.per_second.get(i))
        {
            slot.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        for d in &batch {
            let Some(at) = d.request.scheduled_for.as_ref().map(ts_ms) else { continue };
            if at >= start && at < end {
                local.push(Rec {
                    key: run_key(&d.request.run_id),
                    lag_ms: ((now_us - at * 1000) as f64 / 1000.0) as f32,
                    redelivered: d.delivered > 1,
                });
                shared.in_window.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.outside.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Acks concurrently: on NATS / Redis each is a round trip or a send.
        let acks = futures::future::join_all(batch.into_iter().map(|d| d.ack())).await;
        if let Some(e) = acks.into_iter().find_map(Result::err) {
            tracing::warn!(error = %e, "ack failed");
        }
        if !local.is_empty() {
            shared.recs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).append(&mut local);
        }
    }
    Ok(())
}

/// A 1 s interval agent whose runs the firing benchmarks never start: overlap `allow_all`, so
/// that fire-time admission (`skip`: a tick fired while the previous run still waits for a
/// worker is recorded as skipped, not queued) does not turn its ticks into skipped records.
pub fn interval_spec(name: &str) -> anyhow::Result<AgentSpec> {
    AgentSpec::from_yaml(&format!(
        "name: {name}\nmodel: {{provider: openai, model: scripted, base_url: 'http://127.0.0.1:9/v1'}}\n\
         task: {{query: 'benchmark'}}\nschedule: {{interval: 1s}}\npolicy: {{overlap: allow_all}}"
    ))
    .map_err(|e| anyhow::anyhow!("benchmark agent spec does not validate: {e}"))
}

/// Creates `n` agents from `spec(i)` with a few writers at once; returns the elapsed time.
pub async fn create_agents(
    store: &Store,
    n: usize,
    spec: impl Fn(usize) -> anyhow::Result<AgentSpec>,
) -> anyhow::Result<(Vec<AgentId>, Duration)> {
    let specs: Vec<AgentSpec> = (0..n).map(&spec).collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let ids = futures::stream::iter(specs)
        .map(|s| async move { store.create_agent(&s, AgentState::Active).await.map(|r| r.id) })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("creating benchmark agents")?;
    Ok((ids, started.elapsed()))
}

fn next_whole_second_ms(at_ms: i64) -> i64 {
    (at_ms / 1000 + 1) * 1000
}

pub async fn schedule_scale(args: &ScaleArgs) -> anyhow::Result<Scenario> {
    let name = format!("schedule-scale {} agents {}", args.agents, args.backend.label());
    eprintln!("== {name}: {} s window", args.secs);
    sys::reset_peak_rss();
    let backends = Backends::open(args.backend).await?;
    let shared = Arc::new(Shared {
        window_start_ms: AtomicI64::new(i64::MAX),
        window_end_ms: AtomicI64::new(i64::MAX),
        per_second: (0..args.secs).map(|_| AtomicU64::new(0)).collect(),
        ..Shared::default()
    });
    let mut consumers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let q = backends.queue().await?;
        consumers.push(tokio::spawn(consume(q, shared.clone())));
    }
    let cfg = SchedulerConfig { queue: backends.queue_settings(), ..SchedulerConfig::default() };
    let deps = SchedulerDeps { store: backends.store.clone(), clock: Arc::new(SystemClock) };
    let scheduler = Box::new(SchedulerRole::build(cfg, deps).await?);
    let stop = CancellationToken::new();
    // The scheduler runs while agents are created (it picks them up by its 1 s change sync), so
    // that no agent starts with a backlog of late ticks from before the scheduler existed.
    let sched_task = tokio::spawn(scheduler.run(stop.clone()));
    let (_, created_in) =
        create_agents(&backends.store, args.agents, |i| interval_spec(&format!("bench-{i:06}"))).await?;
    eprintln!("   created {} agents in {:.1} s", args.agents, created_in.as_secs_f64());

    let start_ms = next_whole_second_ms(Utc::now().timestamp_millis() + args.warmup as i64 * 1000);
    let end_ms = start_ms + args.secs as i64 * 1000;
    shared.window_start_ms.store(start_ms, Ordering::Relaxed);
    shared.window_end_ms.store(end_ms, Ordering::Relaxed);
    sleep_until_ms(start_ms).await;
    let cpu0 = sys::cpu_time();
    let wall0 = Instant::now();
    let rustc_seen = sys::count_rustc();
    let mut rss_samples = Vec::new();
    let mut rustc_max = rustc_seen;
    while Utc::now().timestamp_millis() < end_ms {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_samples.push(sys::rss_mib().0);
        rustc_max = rustc_max.max(sys::count_rustc());
    }
    let cpu = sys::cpu_time().saturating_sub(cpu0);
    let wall = wall0.elapsed();
    // Drain: wait for the window's last ticks (bounded, so a stuck pipeline still reports).
    let expected = (args.agents as u64) * args.secs;
    let drain_deadline = Instant::now() + Duration::from_secs(20);
    while shared.in_window.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (rss_now, rss_peak) = sys::rss_mib();
    stop.cancel();
    let _ = sched_task.await;
    shared.stop.store(true, Ordering::Relaxed);
    for c in consumers {
        c.await.context("consumer task panicked")??;
    }
    let recorded_missed: u64 = backends.store.scheduled_agents().await?.iter().map(|a| a.missed).sum();
    backends.close().await;

    let recs = std::mem::take(&mut *shared.recs.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let mut seen = HashSet::with_capacity(recs.len());
    let mut duplicates = 0u64;
    let mut redelivered = 0u64;
    let mut lags = Vec::with_capacity(recs.len());
    for r in &recs {
        if !seen.insert(r.key) {
            duplicates += 1;
            continue;
        }
        redelivered += u64::from(r.redelivered);
        lags.push(f64::from(r.lag_ms));
    }
    let per_second: Vec<f64> = shared.per_second.iter().map(|c| c.load(Ordering::Relaxed) as f64).collect();
    let unique = seen.len() as u64;
    let missed = expected.saturating_sub(unique);
    let secs = wall.as_secs_f64();
    let rows = vec![
        Row::new(&name, "fire lag (receive - scheduled_for)", "ms", "delivered run", &lags),
        Row::new(&name, "runs delivered per second (any tick)", "runs/s", "1 s of the window", &per_second),
        Row::single(&name, "window ticks delivered / window length", "runs/s", unique as f64 / args.secs as f64),
        Row::single(&name, "CPU (process, window)", "% of one core", cpu.as_secs_f64() / secs * 100.0),
        Row::new(&name, "RSS (sampled every 0.5 s)", "MiB", "sample", &rss_samples),
        Row::single(&name, "RSS peak (VmHWM)", "MiB", rss_peak),
        Row::single(&name, "agent creation", "agents/s", args.agents as f64 / created_in.as_secs_f64()),
    ];
    let counters = serde_json::json!({
        "expected_runs": expected,
        "delivered_unique": unique,
        "not_delivered_within_window_plus_20s": missed,
        "duplicates": duplicates,
        "redelivered": redelivered,
        "scheduler_recorded_missed_ticks": recorded_missed,
        "deliveries_outside_window": shared.outside.load(Ordering::Relaxed),
        "rss_end_mib": rss_now,
        "cpu_seconds": cpu.as_secs_f64(),
        "window_seconds": secs,
        "rustc_processes_max": rustc_max,
    });
    Ok(Scenario { name, params: serde_json::to_value(args)?, rows, counters })
}

async fn sleep_until_ms(at_ms: i64) {
    let wait = at_ms - Utc::now().timestamp_millis();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

/// Parameters of `fire-breakdown`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct BreakdownArgs {
    /// Agents firing in one pass.
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// Passes (one tick each).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    #[arg(long, value_enum, default_value_t = BackendKind::Embedded)]
    pub backend: BackendKind,
}

/// Replays the steps of `Scheduler::fire_due` for `agents` due agents and times each: planning
/// (`rules::plan`), `Store::fire_ticks` (one transaction), publishing (256 at once, as the
/// scheduler does), `Store::mark_published`.
pub async fn fire_breakdown(args: &BreakdownArgs) -> anyhow::Result<Scenario> {
    let name = format!("fire-breakdown {} agents {}", args.agents, args.backend.label());
    eprintln!("== {name}");
    let backends = Backends::open(args.backend).await?;
    let queue = backends.queue().await?;
    let drain_queue = backends.queue().await?;
    // Active agents, but no scheduler runs here: this pass is the only writer.
    create_agents(&backends.store, args.agents, |i| interval_spec(&format!("fb-{i:06}"))).await?;
    let agents = backends.store.scheduled_agents().await?;
    let (mut plan_ms, mut record_ms, mut publish_ms, mut mark_ms, mut total_ms) =
        (vec![], vec![], vec![], vec![], vec![]);
    let base = next_whole_second_ms(Utc::now().timestamp_millis());
    for round in 0..args.rounds {
        let tick = time::from_millis(base + round as i64 * 1000);
        let now = tick + chrono::Duration::milliseconds(1);
        let t0 = Instant::now();
        let plans: Vec<_> = agents
            .iter()
            .map(|a| {
                nightshift_scheduler::rules::plan(
                    &a.schedule,
                    &a.agent_id,
                    tick - chrono::Duration::seconds(1),
                    now,
                    nightshift_scheduler::rules::DEFAULT_GRACE,
                )
            })
            .collect();
        let fires: Vec<TickFire> = agents
            .iter()
            .zip(&plans)
            .map(|(a, p)| TickFire {
                agent_id: a.agent_id.clone(),
                runs: p.fire.iter().map(|t| (RunId::for_tick(&a.agent_id, time::to_millis(*t)), *t)).collect(),
                last_tick: p.handled_until.unwrap_or(now),
                missed: p.missed,
                overlap: a.overlap,
            })
            .collect();
        let t1 = Instant::now();
        backends.store.fire_ticks(&fires).await.context("fire_ticks")?;
        let t2 = Instant::now();
        let requests: Vec<RunRequest> = fires
            .iter()
            .flat_map(|f| {
                f.runs.iter().map(|(run, at)| RunRequest {
                    run_id: run.to_string(),
                    agent_id: f.agent_id.to_string(),
                    trigger: TriggerKind::Schedule.to_pb() as i32,
                    scheduled_for: Some(time::to_pb(*at)),
                    enqueued_at: Some(time::to_pb(now)),
                    trace_context: Default::default(),
                    redelivery: String::new(),
                })
            })
            .collect();
        let mut published = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(256) {
            for (r, res) in
                chunk.iter().zip(futures::future::join_all(chunk.iter().map(|r| queue.publish(r, None))).await)
            {
                res.context("publish")?;
                published.push(RunId::from_string(r.run_id.clone()));
            }
        }
        let t3 = Instant::now();
        backends.store.mark_published(&published).await.context("mark_published")?;
        let t4 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
        plan_ms.push(ms(t0, t1));
        record_ms.push(ms(t1, t2));
        publish_ms.push(ms(t2, t3));
        mark_ms.push(ms(t3, t4));
        total_ms.push(ms(t0, t4));
        // Empty the queue between rounds (not timed).
        let mut left = published.len();
        while left > 0 {
            let batch = drain_queue.receive(1000, Duration::from_secs(2)).await?;
            if batch.is_empty() {
                break;
            }
            left = left.saturating_sub(batch.len());
            futures::future::join_all(batch.into_iter().map(|d| d.ack())).await;
        }
    }
    backends.close().await;
    let rows = vec![
        Row::new(&name, "plan ticks (rules::plan)", "ms", "pass", &plan_ms),
        Row::new(&name, "Store::fire_ticks (1 transaction)", "ms", "pass", &record_ms),
        Row::new(&name, "publish (256 concurrent)", "ms", "pass", &publish_ms),
        Row::new(&name, "Store::mark_published", "ms", "pass", &mark_ms),
        Row::new(&name, "whole pass", "ms", "pass", &total_ms),
    ];
    Ok(Scenario { name, params: serde_json::to_value(args)?, rows, counters: serde_json::json!({}) })
}
