//! `nightshift-bench`: one repeatable harness that measures Nightshift where users feel it.
//!
//! Every scenario drives the real crates (scheduler, store, queue, manager gRPC server, worker)
//! on real backends (SQLite + in-memory queue, or Postgres + NATS / Redis on their servers); only
//! the LLM is a scripted instant server, so that the platform itself is what is measured.
//! Results print as a table (median, p99, min, max over the samples each row names) with the
//! machine and the command line, and with `--json PATH` also as JSON.
// The harness reports its figures on stdout.
#![allow(clippy::print_stdout)]

mod backend;
mod console;
mod deploy;
mod dispatch;
mod e2e;
mod events;
mod governance;
mod llm;
mod llm_embedded;
mod llm_real;
mod memory;
mod schedule;
mod security;
mod stats;
mod sys;
mod watch;

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::backend::BackendKind;
use crate::stats::Row;

#[derive(Parser)]
#[command(
    name = "nightshift-bench",
    about = "Benchmarks of the Nightshift platform (scheduler, queue, worker, events, memory)"
)]
struct Cli {
    /// Also write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What users run: `nightshift dev` with N agents at 1 s, default settings (memory on), an
    /// instant LLM; completed runs/s, due → start / end lag, CPU per run, RSS, a CPU profile.
    E2e(e2e::E2eArgs),
    /// N agents at `interval: 1s`: fire lag, fired runs/s, missed/duplicates, RSS, CPU.
    ScheduleScale(schedule::ScaleArgs),
    /// Times the steps of one scheduler firing pass (plan, store transaction, publish, mark).
    FireBreakdown(schedule::BreakdownArgs),
    /// One agent triggered repeatedly: trigger → worker start and trigger → completed.
    DispatchLatency(dispatch::DispatchArgs),
    /// CPU per completed run excluding the LLM, and runs/s, with many runs in flight.
    RunOverhead(dispatch::OverheadArgs),
    /// Events/s published (`EventLog::append_batch`) and delivered to N subscribers, per event log backend.
    EventFanout(events::FanoutArgs),
    /// A real small LLM (SmolLM2, in-process or on llama.cpp): run latency and what the platform adds.
    LlmReal(llm_real::LlmRealArgs),
    /// The embedded provider vs llama.cpp on the same GGUF: first token, decode, constrained call, memory.
    LlmEmbedded(llm_embedded::LlmEmbeddedArgs),
    /// Memory vector indexes (in-process, pgvector, ChromaDB, Qdrant): Store and top-10 Search latency.
    MemorySearch(memory::MemoryArgs),
    /// The console's pages with many agents: the agents list (first page, deep page, search) and an agent's page.
    Console(console::ConsoleArgs),
    /// The trust boundary's cost: admitting a call with a cached key, and a unary call with and without TLS and auth.
    Security(security::SecurityArgs),
    /// The tool policy's cost per tool call (the worker's whole check, with realistic policies).
    Governance(governance::GovernanceArgs),
    /// Watching a run live: a watcher's cost to the run's checkpoints (0, 1, 10 watchers) and step delivery latency.
    Watch(watch::WatchArgs),
    /// Every scenario at the sizes docs/benchmarks.md reports (under 15 minutes on 2 cores).
    All(AllArgs),
    /// The instant scripted OpenAI-compatible LLM (started by the scenarios as a child process).
    #[command(hide = true)]
    ScriptedLlm {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

#[derive(clap::Args)]
struct AllArgs {
    /// Measured window of each schedule-scale run, in seconds.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Skip the distributed (Postgres + NATS / Redis) variants.
    #[arg(long)]
    embedded_only: bool,
}

/// The result of one scenario run.
#[derive(Debug, Serialize)]
pub struct Scenario {
    /// The scenario and its backend, as printed.
    pub name: String,
    /// The parameters it ran with.
    pub params: serde_json::Value,
    /// One row per measured figure.
    pub rows: Vec<Row>,
    /// Counts that qualify the figures (failed runs, redeliveries, …).
    pub counters: serde_json::Value,
}

#[derive(Serialize)]
struct Report {
    started_at: String,
    finished_at: String,
    command: String,
    machine: sys::Machine,
    scenarios: Vec<Scenario>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::ScriptedLlm { listen } = &cli.command {
        // The LLM gets its own small runtime in its own process: its CPU is not the platform's.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return rt.block_on(llm::serve(listen));
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    // Two rustls crypto providers are linked (ring via async-nats, aws-lc-rs via reqwest).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let started_at = chrono::Utc::now();
    let machine = sys::Machine::describe();
    let command = command_line();
    eprintln!("{command}");
    let mut scenarios = Vec::new();
    match cli.command {
        Command::E2e(a) => scenarios.push(e2e::e2e(&a).await?),
        Command::ScheduleScale(a) => scenarios.push(schedule::schedule_scale(&a).await?),
        Command::FireBreakdown(a) => scenarios.push(schedule::fire_breakdown(&a).await?),
        Command::DispatchLatency(a) => scenarios.push(dispatch::dispatch_latency(&a).await?),
        Command::RunOverhead(a) => scenarios.push(dispatch::run_overhead(&a).await?),
        Command::EventFanout(a) => scenarios.extend(events::event_fanout(&a).await?),
        Command::LlmReal(a) => scenarios.push(llm_real::llm_real(&a).await?),
        Command::LlmEmbedded(a) => scenarios.extend(llm_embedded::llm_embedded(&a).await?),
        Command::MemorySearch(a) => scenarios.extend(memory::memory_search(&a).await?),
        Command::Security(a) => scenarios.push(security::security(&a).await?),
        Command::Governance(a) => scenarios.push(governance::governance(&a).await?),
        Command::Console(a) => scenarios.push(console::console(&a).await?),
        Command::Watch(a) => scenarios.push(watch::watch(&a).await?),
        Command::All(a) => all(&a, &mut scenarios).await?,
        Command::ScriptedLlm { .. } => unreachable!("handled before the runtime starts"),
    }
    let report = Report {
        started_at: started_at.to_rfc3339(),
        finished_at: chrono::Utc::now().to_rfc3339(),
        command,
        machine,
        scenarios,
    };
    print_report(&report)?;
    if let Some(path) = &cli.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

fn e2e_args(agents: usize, secs: u64, deployment: deploy::Deployment) -> e2e::E2eArgs {
    e2e::E2eArgs {
        agents,
        secs,
        warmup: 5,
        profile: false,
        aligned: false,
        deployment,
        workers: 2,
        extra_yaml: String::new(),
        bin_dir: None,
    }
}

async fn all(a: &AllArgs, out: &mut Vec<Scenario>) -> anyhow::Result<()> {
    let mut backends = vec![BackendKind::Embedded];
    if !a.embedded_only {
        backends.extend([BackendKind::PostgresNats, BackendKind::PostgresRedis]);
    }
    // What users run first: the whole `nightshift dev` process.
    for agents in [100, 500, 2_000] {
        out.push(e2e::e2e(&e2e_args(agents, a.secs, deploy::Deployment::Dev)).await?);
    }
    if !a.embedded_only {
        out.push(e2e::e2e(&e2e_args(500, a.secs, deploy::Deployment::Distributed)).await?);
    }
    for &backend in &backends {
        for agents in [500, 10_000] {
            let args = schedule::ScaleArgs { agents, secs: a.secs, warmup: 5, backend, consumers: 2 };
            out.push(schedule::schedule_scale(&args).await?);
        }
    }
    for &backend in &backends[..backends.len().min(2)] {
        out.push(schedule::fire_breakdown(&schedule::BreakdownArgs { agents: 10_000, rounds: 5, backend }).await?);
    }
    for secure in [false, true] {
        let args = dispatch::DispatchArgs { runs: 300, warmup: 20, backend: BackendKind::Embedded, secure };
        out.push(dispatch::dispatch_latency(&args).await?);
    }
    for &backend in &backends[..backends.len().min(2)] {
        let args = dispatch::OverheadArgs {
            agents: 100,
            runs: 1000,
            rounds: 3,
            inflight: 32,
            worker_concurrency: 64,
            backend,
        };
        out.push(dispatch::run_overhead(&args).await?);
    }
    out.push(security::security(&security::SecurityArgs::default()).await?);
    out.push(governance::governance(&governance::GovernanceArgs::default()).await?);
    out.push(console::console(&console::ConsoleArgs::default()).await?);
    out.push(watch::watch(&watch::WatchArgs::default()).await?);
    let fanout_backend = if a.embedded_only { events::FanoutBackend::Memory } else { events::FanoutBackend::All };
    out.extend(events::event_fanout(&events::FanoutArgs { backend: fanout_backend, ..Default::default() }).await?);
    let index = if a.embedded_only { memory::IndexKind::Inprocess } else { memory::IndexKind::All };
    out.extend(memory::memory_search(&memory::MemoryArgs { index, ..Default::default() }).await?);
    // Includes llm-real on the embedded provider; then the same agent on llama.cpp.
    out.extend(llm_embedded::llm_embedded(&llm_embedded::LlmEmbeddedArgs::default()).await?);
    let on_llama = llm_real::LlmRealArgs { provider: llm_real::RealProvider::Llama, ..Default::default() };
    out.push(llm_real::llm_real(&on_llama).await?);
    Ok(())
}

/// The command line that reproduces this run.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c)) {
                a.clone()
            } else {
                format!("'{a}'")
            }
        })
        .collect();
    format!("cargo run --release -p nightshift-bench -- {}", quoted.join(" "))
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn print_report(r: &Report) -> anyhow::Result<()> {
    let m = &r.machine;
    let mut out = std::io::stdout().lock();
    writeln!(out, "machine: {} · {} cores · {:.1} GiB RAM · Linux {}", m.cpu_model, m.cores, m.ram_gib, m.kernel)?;
    if m.concurrent_rustc > 0 {
        writeln!(
            out,
            "note: {} rustc processes were running at start (machine shared with builds)",
            m.concurrent_rustc
        )?;
    }
    writeln!(out, "started {} · finished {}", r.started_at, r.finished_at)?;
    writeln!(out, "reproduce: {}", r.command)?;
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header(["scenario", "metric", "unit", "n (samples)", "median", "p99", "min", "max"]);
    for s in &r.scenarios {
        for row in &s.rows {
            let n = |f: fn(&stats::Summary) -> f64| row.summary.as_ref().map_or("-".into(), |s| fmt_num(f(s)));
            let count = row.summary.as_ref().map_or(0, |s| s.n);
            table.add_row([
                s.name.clone(),
                row.metric.clone(),
                row.unit.clone(),
                format!("{count} ({})", row.over),
                n(|s| s.median),
                n(|s| s.p99),
                n(|s| s.min),
                n(|s| s.max),
            ]);
        }
    }
    writeln!(out, "{table}")?;
    for s in &r.scenarios {
        if s.counters.as_object().is_some_and(|o| !o.is_empty()) {
            writeln!(out, "{}: {}", s.name, s.counters)?;
        }
    }
    Ok(())
}
