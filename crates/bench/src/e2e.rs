//! `e2e`: what a user runs. The real `nightshift dev` process (release binary, default settings:
//! SQLite, in-memory queue and events, the memory service in process) — or, with
//! `--deployment distributed`, the five binaries on Postgres and NATS JetStream — N agents at
//! `interval: 1s` (each due at its own phase within the second; `--aligned` gives them one
//! `start_at`, so that all are due at the same instant) with the default agent settings (memory on: `recall_recent: 10`,
//! `store_results: true`), the instant scripted LLM in a child process (not counted). The
//! harness follows the runs on the event service, as a console would, and reports completed
//! runs/s, due → start and due → end lag (a scheduled run's id names its tick), runs still queued
//! at the end, the processes' CPU per completed run and RSS (and the Postgres and NATS servers'
//! CPU beside them), and — with `--profile` — where that CPU goes (`perf record` on the
//! processes for the window).
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use nightshift_core::{EventType, pb, time};

use crate::deploy::{Deployed, Deployment};
use crate::llm::ScriptedLlm;
use crate::stats::Row;
use crate::{Scenario, sys};

/// Parameters of `e2e`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct E2eArgs {
    /// Agents, each with `interval: 1s` and the default agent settings.
    #[arg(long, default_value_t = 500)]
    pub agents: usize,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Seconds between the last agent applied and the window.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Profile the process during the window with `perf record` and name the top costs.
    #[arg(long)]
    pub profile: bool,
    /// Give every agent the same `start_at`, so that all of them are due at the same instant
    /// (without it each interval agent sits at its own phase within the second).
    #[arg(long)]
    pub aligned: bool,
    /// `dev` (one `nightshift dev` process) or `distributed` (five binaries on Postgres + NATS).
    #[arg(long, value_enum, default_value = "dev")]
    pub deployment: Deployment,
    /// Worker processes of the distributed deployment (each at its default concurrency).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// YAML lines added to every agent's manifest, to take a part of the run path out for a
    /// diagnosis (e.g. `memory: {store_results: false}`); the figures of record use none.
    #[arg(long, default_value = "")]
    pub extra_yaml: String,
    /// Directory of the release binaries to run (default: this binary's).
    #[arg(long)]
    #[serde(skip)]
    pub bin_dir: Option<PathBuf>,
}

async fn connect(endpoint: &str) -> anyhow::Result<nightshift_rpc::CallChannel> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?.connect().await?;
    Ok(nightshift_rpc::traced(channel))
}

/// The tick (unix ms) a scheduled run is for: its id is `<agent id>@<tick ms>`.
fn tick_of(run_id: &str) -> Option<i64> {
    run_id.rsplit_once('@').and_then(|(_, t)| t.parse().ok())
}

/// When a run was seen starting and ending (event times, unix ms).
#[derive(Default, Clone, Copy)]
struct Seen {
    started: Option<i64>,
    ended: Option<i64>,
    failed: bool,
    /// Recorded as skipped (overlap `skip`: when fired, or by StartRun).
    skipped: bool,
}

pub async fn e2e(args: &E2eArgs) -> anyhow::Result<Scenario> {
    let aligned = if args.aligned { ", aligned" } else { "" };
    // A diagnosis run says what it took out, so that its rows are never read as the defaults'.
    let extra = if args.extra_yaml.is_empty() { String::new() } else { format!(", with `{}`", args.extra_yaml) };
    let name = format!("e2e {}, {} agents{aligned}{extra}", args.deployment.label(), args.agents);
    eprintln!("== {name}: {} s window after {} s warm-up", args.secs, args.warmup);
    let bin_dir = crate::deploy::binaries(args.bin_dir.as_deref())?;
    let llm = ScriptedLlm::spawn().await?;
    let deployed = Deployed::start(args.deployment, &bin_dir, args.workers).await?;
    let result = measure(args, &name, &deployed, &llm.base_url).await;
    deployed.close().await;
    drop(llm);
    result
}

async fn measure(args: &E2eArgs, name: &str, deployed: &Deployed, llm: &str) -> anyhow::Result<Scenario> {
    let mut manager = pb::manager_service_client::ManagerServiceClient::new(connect(&deployed.manager).await?);

    // Follow the runs from now on, before any agent exists.
    let mut events = pb::event_service_client::EventServiceClient::new(connect(&deployed.events).await?);
    let types = [
        EventType::BackgroundTaskStarted,
        EventType::BackgroundTaskCompleted,
        EventType::BackgroundTaskError,
        EventType::RunSkipped,
    ];
    let filter = pb::EventFilter { types: types.iter().map(|t| t.to_pb() as i32).collect(), ..Default::default() };
    let first = events
        .subscribe(pb::SubscribeRequest { filter: Some(filter.clone()), from: None })
        .await
        .context("subscribing to the run events")?
        .into_inner();
    let seen: std::sync::Arc<std::sync::Mutex<HashMap<String, Seen>>> = Default::default();
    let lagged = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let follower = {
        let (seen, lagged) = (seen.clone(), lagged.clone());
        tokio::spawn(async move {
            let mut stream = first;
            // A subscriber that falls behind is told where to resume; it resubscribes there, so
            // no run is missed however busy the process is.
            loop {
                let mut resume = None;
                while let Some(Ok(item)) = stream.next().await {
                    let e = match item.item {
                        Some(pb::subscribe_response::Item::Event(e)) => e,
                        Some(pb::subscribe_response::Item::Lagged(l)) => {
                            lagged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            resume = Some(l.resume_after_cursor);
                            break;
                        }
                        None => continue,
                    };
                    let at = e.time.as_ref().and_then(time::from_pb).map(time::to_millis).unwrap_or_default();
                    let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let s = seen.entry(e.run_id.clone()).or_default();
                    match EventType::from_pb(e.r#type()) {
                        Some(EventType::BackgroundTaskStarted) => s.started = Some(at),
                        Some(EventType::BackgroundTaskCompleted) => s.ended = Some(at),
                        Some(EventType::BackgroundTaskError) => s.failed = true,
                        Some(EventType::RunSkipped) => s.skipped = true,
                        _ => {}
                    }
                }
                let Some(cursor) = resume else { return };
                let from = Some(pb::subscribe_request::From::AfterCursor(cursor));
                match events.subscribe(pb::SubscribeRequest { filter: Some(filter.clone()), from }).await {
                    Ok(s) => stream = s.into_inner(),
                    Err(_) => return,
                }
            }
        })
    };

    // N agents at 1 s, default settings (memory on), applied 32 at a time.
    let t_apply = Instant::now();
    let base_url = llm.to_owned();
    let start_at = if args.aligned { ", start_at: '2026-01-01T00:00:00Z'" } else { "" };
    let extra = &args.extra_yaml;
    futures::stream::iter(0..args.agents)
        .map(|i| {
            let mut m = manager.clone();
            let yaml = format!(
                "name: e2e-{i}\nmodel: {{provider: openai, model: scripted, base_url: '{base_url}'}}\n\
                 task: {{query: 'Report the state of the system.'}}\nschedule: {{interval: 1s{start_at}}}\n{extra}\n"
            );
            async move { m.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: yaml }).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("applying the agents")?;
    eprintln!("   {} agents applied in {:.1} s", args.agents, t_apply.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;

    let window_start = time::to_millis(chrono::Utc::now());
    let servers = ["postgres", "nats-server"];
    let (by_process0, servers0) = (deployed.cpu_by_process(), servers.map(sys::cpu_time_of_named));
    let pg_tx0 = deployed.postgres_transactions().await?;
    let t0 = Instant::now();
    let profile = args.profile.then(|| start_profile(&deployed.pids(), args.secs)).transpose()?;
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let window_end = time::to_millis(chrono::Utc::now());
    let (by_process1, wall) = (deployed.cpu_by_process(), t0.elapsed());
    let per_core = |d: Duration| d.as_secs_f64() / wall.as_secs_f64();
    // Each process's CPU in the window; the deployment's is their sum.
    let used: Vec<(String, Duration)> = by_process1
        .into_iter()
        .zip(by_process0)
        .map(|((name, now), (_, before))| (name, now.saturating_sub(before)))
        .collect();
    let cpu: Duration = used.iter().map(|(_, d)| *d).sum();
    let by_process: serde_json::Map<String, serde_json::Value> =
        used.into_iter().map(|(name, d)| (name, format!("{:.2} cores", per_core(d)).into())).collect();
    let server_cpu: Vec<Duration> =
        servers.iter().zip(servers0).map(|(s, before)| sys::cpu_time_of_named(s).saturating_sub(before)).collect();
    let rss = deployed.rss_mib();
    let pg_tx = deployed.postgres_transactions().await?.zip(pg_tx0).map(|(b, a)| b - a);
    let backlog = count_runs(&mut manager, &[pb::RunStatus::Queued, pb::RunStatus::Running]).await?;
    let top = match profile {
        Some(p) => p.report().await?,
        None => Vec::new(),
    };
    follower.abort();

    // Runs due in the window: their lag; runs that ended in the window: the throughput.
    let seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let (mut to_start, mut to_end, mut run_time) = (Vec::new(), Vec::new(), Vec::new());
    let (mut completed, mut failed, mut skipped) = (0u64, 0u64, 0u64);
    for (run, s) in &seen {
        if s.ended.is_some_and(|t| (window_start..window_end).contains(&t)) {
            completed += 1;
        }
        let Some(tick) = tick_of(run).filter(|t| (window_start..window_end).contains(t)) else { continue };
        failed += u64::from(s.failed);
        skipped += u64::from(s.skipped);
        to_start.extend(s.started.map(|t| (t - tick) as f64));
        to_end.extend(s.ended.map(|t| (t - tick) as f64));
        run_time.extend(s.started.zip(s.ended).map(|(a, b)| (b - a) as f64));
    }
    let runs_per_s = completed as f64 / wall.as_secs_f64();
    let cpu_per_run_ms = if completed > 0 { cpu.as_secs_f64() * 1000.0 / completed as f64 } else { 0.0 };
    let mut rows = vec![
        Row::single(name, "completed runs/s", "runs/s", runs_per_s),
        Row::new(name, "due → start lag", "ms", "run", &to_start),
        Row::new(name, "due → end lag", "ms", "run", &to_end),
        Row::new(name, "start → end (the run on its worker)", "ms", "run", &run_time),
        Row::single(name, "CPU per completed run (Nightshift processes)", "ms", cpu_per_run_ms),
        Row::single(name, "Nightshift processes' CPU", "cores", per_core(cpu)),
        Row::single(name, "RSS at the end (Nightshift processes)", "MiB", rss),
    ];
    if args.deployment == Deployment::Distributed {
        let ms_per_run = |d: Duration| if completed > 0 { d.as_secs_f64() * 1000.0 / completed as f64 } else { 0.0 };
        rows.push(Row::single(name, "Postgres CPU per completed run", "ms", ms_per_run(server_cpu[0])));
        rows.push(Row::single(name, "NATS CPU per completed run", "ms", ms_per_run(server_cpu[1])));
        if let Some(n) = pg_tx.filter(|_| completed > 0) {
            rows.push(Row::single(name, "Postgres transactions per completed run", "tx", n as f64 / completed as f64));
        }
    }
    rows.retain(|r| r.summary.is_some());
    Ok(Scenario {
        name: name.to_owned(),
        params: serde_json::to_value(args)?,
        rows,
        counters: serde_json::json!({
            // Every agent is due once a second: what the window asked for, and what of it started.
            "due_in_window": args.agents as u64 * args.secs,
            "started_of_those": to_start.len(),
            "ended_of_those": to_end.len(),
            "failed": failed,
            // Ticks of the window recorded as skipped (`overlap: skip`: the agent's previous run
            // still waited for a worker when the tick fired, or still ran when it started).
            "skipped_of_those": skipped,
            "queued_or_running_at_end": backlog,
            "subscriber_lagged": lagged.load(std::sync::atomic::Ordering::Relaxed),
            "semantic_memory": deployed.semantic_memory,
            "cpu_by_process": by_process,
            "postgres_cores": per_core(server_cpu[0]),
            "nats_cores": per_core(server_cpu[1]),
            "profile_top": top,
        }),
    })
}

/// Queued or running runs now, counted page by page.
async fn count_runs(
    manager: &mut pb::manager_service_client::ManagerServiceClient<nightshift_rpc::CallChannel>,
    statuses: &[pb::RunStatus],
) -> anyhow::Result<u64> {
    let mut n = 0u64;
    let mut page_token = String::new();
    loop {
        let req = pb::ListRunsRequest {
            statuses: statuses.iter().map(|s| *s as i32).collect(),
            page_size: 1000,
            page_token,
            ..Default::default()
        };
        let page = manager.list_runs(req).await.context("ListRuns")?.into_inner();
        n += page.runs.len() as u64;
        if page.next_page_token.is_empty() {
            return Ok(n);
        }
        page_token = page.next_page_token;
    }
}

/// A `perf record` of one process over the window.
struct Profile {
    child: tokio::process::Child,
    data: tempfile::NamedTempFile,
}

fn start_profile(pids: &[u32], secs: u64) -> anyhow::Result<Profile> {
    let data = tempfile::NamedTempFile::new()?;
    let pids = pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let child = tokio::process::Command::new("perf")
        .args(["record", "-F", "499", "-g", "-p", &pids, "-o"])
        .arg(data.path())
        .args(["--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf (install linux-perf / linux-tools)")?;
    Ok(Profile { child, data })
}

impl Profile {
    /// The five symbols with the most samples of their own, as "12.3% symbol".
    async fn report(mut self) -> anyhow::Result<Vec<String>> {
        self.child.wait().await.context("perf record")?;
        let out = tokio::process::Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "symbol",
                "-g",
                "none",
                "--percent-limit",
                "0.5",
                "-i",
            ])
            .arg(self.data.path())
            .output()
            .await
            .context("perf report")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && l.contains('%'))
            .take(5)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect())
    }
}
