//! `nightshift-events`: the event service role as its own process.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use nightshift_events::{EventsConfig, EventsRole};
use nightshift_rpc::{GrpcServer, Role, init_process, serve_roles, shutdown_signal};

#[global_allocator]
static ALLOCATOR: nightshift_rpc::Allocator = nightshift_rpc::Allocator {};

/// Runs the Nightshift event service (publish, subscribe, history).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file (see the nightshift-events crate docs). Env: NIGHTSHIFT_EVENTS_<KEY>.
    #[arg(long, env = "NIGHTSHIFT_EVENTS_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    nightshift_rpc::exit_code("nightshift-events", run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: EventsConfig = nightshift_core::config::load(args.config.as_deref(), "NIGHTSHIFT_EVENTS")?;
    init_process(&cfg.server).await?;
    let server = cfg.server.clone();
    let role = EventsRole::build(cfg).await.context("starting the event service")?;
    // Bound once the role is built, so that a port that answers is a role that is ready.
    let listener = GrpcServer::listen(&server, server.guard(None)?).await?;
    let roles: Vec<Box<dyn Role>> = vec![Box::new(role)];
    serve_roles(roles, listener, shutdown_signal()).await?;
    nightshift_telemetry::shutdown();
    Ok(())
}
