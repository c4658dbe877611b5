//! `nightshift-memory`: the memory service role as its own process.
use std::path::PathBuf;

use clap::Parser;
use nightshift_memory::{MemoryConfig, MemoryRole};
use nightshift_rpc::{GrpcServer, Role, init_process, serve_roles, shutdown_signal};

#[global_allocator]
static ALLOCATOR: nightshift_rpc::Allocator = nightshift_rpc::Allocator {};

/// Runs the Nightshift memory service (working, episodic, long-term and procedural memory).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file. Env: NIGHTSHIFT_MEMORY_<KEY> (nested keys joined with `__`,
    /// e.g. NIGHTSHIFT_MEMORY_STORES__EPISODIC=redis://127.0.0.1:6379).
    #[arg(long, env = "NIGHTSHIFT_MEMORY_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    nightshift_rpc::exit_code("nightshift-memory", run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: MemoryConfig = nightshift_core::config::load(args.config.as_deref(), "NIGHTSHIFT_MEMORY")?;
    init_process(&cfg.server).await?;
    let authority = cfg.server.auth.memory_authority(&cfg.server.client()?)?;
    let roles: Vec<Box<dyn Role>> = vec![Box::new(MemoryRole::build(&cfg).await?.with_authority(authority))];
    // Bound once the role is built (the model loaded, the index filled), so that a port that
    // answers is a role that is ready.
    let listener = GrpcServer::listen(&cfg.server, cfg.server.guard(None)?).await?;
    serve_roles(roles, listener, shutdown_signal()).await?;
    nightshift_telemetry::shutdown();
    Ok(())
}
