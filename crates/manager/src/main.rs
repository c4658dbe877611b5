//! `nightshift-manager`: the manager role as its own process.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use nightshift_manager::{ManagerConfig, ManagerDeps, ManagerRole};
use nightshift_rpc::{GrpcServer, Role, init_process, serve_roles, shutdown_signal};
use nightshift_store::Store;

#[global_allocator]
static ALLOCATOR: nightshift_rpc::Allocator = nightshift_rpc::Allocator {};

/// Runs the Nightshift manager (agent registry and run authority).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file (see config/manager.toml). Env: NIGHTSHIFT_MANAGER_<KEY>.
    #[arg(long, env = "NIGHTSHIFT_MANAGER_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    nightshift_rpc::exit_code("nightshift-manager", run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: ManagerConfig = nightshift_core::config::load(args.config.as_deref(), "NIGHTSHIFT_MANAGER")?;
    init_process(&cfg.server).await?;
    let store = Store::connect(&cfg.database_url).await.context("database_url: connecting to the database")?;
    let server = cfg.server.clone();
    let role = ManagerRole::build(cfg, ManagerDeps { store: store.clone(), observer: None }).await?;
    // Bound once the role is built, so that a port that answers is a role that is ready.
    let mut listener = GrpcServer::listen(&server, role.guard()).await?;
    if let Some(audit) = role.audit_sink() {
        listener = listener.with_audit(audit);
    }
    let roles: Vec<Box<dyn Role>> = vec![Box::new(role)];
    serve_roles(roles, listener, shutdown_signal()).await?;
    store.close().await;
    nightshift_telemetry::shutdown();
    Ok(())
}
