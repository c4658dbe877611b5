//! `nightshift-worker`: one worker process. Add as many as you like behind the queue.
use std::path::PathBuf;

use clap::Parser;
use nightshift_rpc::{GrpcServer, Role, init_process, serve_roles, shutdown_signal};
use nightshift_worker::{WorkerConfig, WorkerDeps, WorkerRole};

#[global_allocator]
static ALLOCATOR: nightshift_rpc::Allocator = nightshift_rpc::Allocator {};

/// Runs a Nightshift worker.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file (see config/worker.toml). Env: NIGHTSHIFT_WORKER_<KEY>.
    #[arg(long, env = "NIGHTSHIFT_WORKER_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    nightshift_rpc::exit_code("nightshift-worker", run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: WorkerConfig = nightshift_core::config::load(args.config.as_deref(), "NIGHTSHIFT_WORKER")?;
    init_process(&cfg.server).await?;
    let server = cfg.server.clone();
    let roles: Vec<Box<dyn Role>> = vec![Box::new(WorkerRole::build(cfg, WorkerDeps::default()).await?)];
    // Bound once the role is built, so that a port that answers is a role that is ready.
    let listener = GrpcServer::listen(&server, server.guard(None)?).await?;
    // SIGTERM: drain (in-flight runs finish or are handed back), then stop serving and exit.
    serve_roles(roles, listener, shutdown_signal()).await?;
    nightshift_telemetry::shutdown();
    Ok(())
}
