//! `nightshift-console`: the console role as its own process.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use nightshift_console::{ConsoleConfig, ConsoleRole};
use nightshift_rpc::{GrpcServer, Guard, Role, init_process, serve_roles, shutdown_signal};

/// Runs the Nightshift console (web UI) on the services' gRPC APIs.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file (see config/console.toml). Env: NIGHTSHIFT_CONSOLE_<KEY>.
    #[arg(long, env = "NIGHTSHIFT_CONSOLE_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    nightshift_rpc::exit_code("nightshift-console", run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: ConsoleConfig = nightshift_core::config::load(args.config.as_deref(), "NIGHTSHIFT_CONSOLE")?;
    init_process(&cfg.server).await?;
    let role = ConsoleRole::build(&cfg).context("starting the console")?;
    // Bound once the role is built, so that a port that answers is a console that is ready. Its
    // only gRPC services are health and reflection (open on every server); its pages sign
    // their users in themselves, and every call they make carries the user's credential.
    let listener = GrpcServer::listen(&cfg.server, Guard::Open).await?;
    let addr = listener.local_addr()?;
    tracing::info!(url = %format!("{}://{addr}/", if cfg.server.tls.serves_tls() { "https" } else { "http" }), "console ready");
    let roles: Vec<Box<dyn Role>> = vec![Box::new(role)];
    serve_roles(roles, listener, shutdown_signal()).await?;
    nightshift_telemetry::shutdown();
    Ok(())
}
