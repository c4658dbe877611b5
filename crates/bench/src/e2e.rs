//! `e2e`: what a user runs. The real `nightshift dev` process (release binary, default settings:
//! SQLite, in-memory queue and events, the memory service in process), N agents at
//! `interval: 1s` with the default agent settings (memory on: `recall_recent: 10`,
//! `store_results: true`), the instant scripted LLM in a child process (not counted). The
//! harness follows the runs on the event service, as a console would, and reports completed
//! runs/s, due → start and due → end lag (a scheduled run's id names its tick), runs still queued
//! at the end, the process's CPU per completed run and RSS, and — with `--profile` — where that
//! CPU goes (`perf record` on the process for the window).
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use nightshift_core::{EventType, pb, time};
use tokio::io::AsyncBufReadExt;

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
    /// The `nightshift` binary to run (default: the one next to this binary).
    #[arg(long)]
    #[serde(skip)]
    pub nightshift: Option<PathBuf>,
}

/// The `nightshift dev` process, killed when dropped.
struct Dev {
    /// Killed on drop.
    _child: tokio::process::Child,
    pid: u32,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Dev {
    async fn start(binary: &std::path::Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(binary)
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            // `NIGHTSHIFT_BENCH_DEV_LOG` (a RUST_LOG filter) looks inside, e.g. `sqlx::query=debug`.
            .env("RUST_LOG", std::env::var("NIGHTSHIFT_BENCH_DEV_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} dev", binary.display()))?;
        let pid = child.id().context("nightshift dev has no pid")?;
        let stdout = child.stdout.take().context("nightshift dev has no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("nightshift dev did not print its address within 120 s")??
            .context("nightshift dev exited before printing its address")?;
        let addr = line
            .strip_prefix("nightshift dev listening on ")
            .and_then(|r| r.split_whitespace().next())
            .with_context(|| format!("unexpected first line of nightshift dev: {line}"))?;
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { _child: child, pid, endpoint: format!("http://{addr}"), _dir: dir })
    }

    async fn channel(&self) -> anyhow::Result<nightshift_rpc::CallChannel> {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint.clone())?.connect().await?;
        Ok(nightshift_rpc::traced(channel))
    }
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
}

pub async fn e2e(args: &E2eArgs) -> anyhow::Result<Scenario> {
    let name = format!("e2e nightshift dev, {} agents", args.agents);
    eprintln!("== {name}: {} s window after {} s warm-up", args.secs, args.warmup);
    let binary = match &args.nightshift {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("nightshift"),
    };
    anyhow::ensure!(
        binary.is_file(),
        "{} not found: build it (cargo build --release -p nightshift-cli)",
        binary.display()
    );
    let llm = ScriptedLlm::spawn().await?;
    let dev = Dev::start(&binary).await?;
    let channel = dev.channel().await?;
    let mut manager = pb::manager_service_client::ManagerServiceClient::new(channel.clone());

    // Follow the runs from now on, before any agent exists.
    let mut events = pb::event_service_client::EventServiceClient::new(channel.clone());
    let types = [EventType::BackgroundTaskStarted, EventType::BackgroundTaskCompleted, EventType::BackgroundTaskError];
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
    let base_url = llm.base_url.clone();
    futures::stream::iter(0..args.agents)
        .map(|i| {
            let mut m = manager.clone();
            let yaml = format!(
                "name: e2e-{i}\nmodel: {{provider: openai, model: scripted, base_url: '{base_url}'}}\n\
                 task: {{query: 'Report the state of the system.'}}\nschedule: {{interval: 1s}}\n"
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
    let (cpu0, t0) = (sys::cpu_time_of(dev.pid), Instant::now());
    let profile = args.profile.then(|| start_profile(dev.pid, args.secs)).transpose()?;
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let window_end = time::to_millis(chrono::Utc::now());
    let (cpu, wall) = (sys::cpu_time_of(dev.pid).saturating_sub(cpu0), t0.elapsed());
    let rss = sys::rss_mib_of_pid(dev.pid).unwrap_or(0.0);
    let backlog = count_runs(&mut manager, &[pb::RunStatus::Queued, pb::RunStatus::Running]).await?;
    let top = match profile {
        Some(p) => p.report().await?,
        None => Vec::new(),
    };
    follower.abort();

    // Runs due in the window: their lag; runs that ended in the window: the throughput.
    let seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let (mut to_start, mut to_end, mut run_time) = (Vec::new(), Vec::new(), Vec::new());
    let (mut completed, mut failed) = (0u64, 0u64);
    for (run, s) in &seen {
        if s.ended.is_some_and(|t| (window_start..window_end).contains(&t)) {
            completed += 1;
        }
        let Some(tick) = tick_of(run).filter(|t| (window_start..window_end).contains(t)) else { continue };
        failed += u64::from(s.failed);
        to_start.extend(s.started.map(|t| (t - tick) as f64));
        to_end.extend(s.ended.map(|t| (t - tick) as f64));
        run_time.extend(s.started.zip(s.ended).map(|(a, b)| (b - a) as f64));
    }
    let runs_per_s = completed as f64 / wall.as_secs_f64();
    let cpu_per_run_ms = if completed > 0 { cpu.as_secs_f64() * 1000.0 / completed as f64 } else { 0.0 };
    let mut rows = vec![
        Row::single(&name, "completed runs/s", "runs/s", runs_per_s),
        Row::new(&name, "due → start lag", "ms", "run", &to_start),
        Row::new(&name, "due → end lag", "ms", "run", &to_end),
        Row::new(&name, "start → end (the run on its worker)", "ms", "run", &run_time),
        Row::single(&name, "CPU per completed run (process)", "ms", cpu_per_run_ms),
        Row::single(&name, "process CPU", "cores", cpu.as_secs_f64() / wall.as_secs_f64()),
        Row::single(&name, "RSS at the end", "MiB", rss),
    ];
    rows.retain(|r| r.summary.is_some());
    drop(dev);
    drop(llm);
    Ok(Scenario {
        name,
        params: serde_json::to_value(args)?,
        rows,
        counters: serde_json::json!({
            // Every agent is due once a second: what the window asked for, and what of it started.
            "due_in_window": args.agents as u64 * args.secs,
            "started_of_those": to_start.len(),
            "ended_of_those": to_end.len(),
            "failed": failed,
            "queued_or_running_at_end": backlog,
            "subscriber_lagged": lagged.load(std::sync::atomic::Ordering::Relaxed),
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

fn start_profile(pid: u32, secs: u64) -> anyhow::Result<Profile> {
    let data = tempfile::NamedTempFile::new()?;
    let child = tokio::process::Command::new("perf")
        .args(["record", "-F", "499", "-g", "-p", &pid.to_string(), "-o"])
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
