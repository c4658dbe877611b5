//! `nightshift-scheduler`: one scheduler replica as its own process. Run as many as you like
//! against the same database and queue; they split the schedules by shard leases.
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use nightshift_core::SystemClock;
use nightshift_rpc::{GrpcServer, Role, init_process, serve_roles, shutdown_signal};
use nightshift_scheduler::{SchedulerConfig, SchedulerDeps, SchedulerRole};
use nightshift_store::Store;

#[global_allocator]
static ALLOCATOR: nightshift_rpc::Allocator = nightshift_rpc::Allocator {};

/// Runs a Nightshift scheduler replica.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file (see config/scheduler.toml). Env: NIGHTSHIFT_SCHEDULER_<KEY>.
    #[arg(long, env = "NIGHTSHIFT_SCHEDULER_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    nightshift_rpc::exit_code("nightshift-scheduler", run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: SchedulerConfig = nightshift_core::config::load(args.config.as_deref(), "NIGHTSHIFT_SCHEDULER")?;
    init_process(&cfg.server).await?;
    if cfg.queue.url.starts_with("memory:") {
        tracing::warn!("queue_url is memory://: runs only reach workers in this process");
    }
    let store = Store::connect(&cfg.database_url).await.context("database_url: connecting to the database")?;
    let server = cfg.server.clone();
    let deps = SchedulerDeps { store: store.clone(), clock: Arc::new(SystemClock) };
    let role = SchedulerRole::build(cfg, deps).await?;
    // Bound once the role is built, so that a port that answers is a role that is ready.
    let listener = GrpcServer::listen(&server, server.guard(None)?).await?;
    let roles: Vec<Box<dyn Role>> = vec![Box::new(role)];
    serve_roles(roles, listener, shutdown_signal()).await?;
    store.close().await;
    nightshift_telemetry::shutdown();
    Ok(())
}
