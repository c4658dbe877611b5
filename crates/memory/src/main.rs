//! `nightshift-memory`: the memory service as its own process.
use std::path::PathBuf;

use clap::Parser;

use nightshift_memory::{MemoryConfig, MemoryService, SERVICE_NAME};
use nightshift_rpc::{GrpcServer, shutdown_signal};

/// Runs the Nightshift memory service (working, episodic, long-term and procedural memory).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file. Env: NIGHTSHIFT_MEMORY_<KEY> (nested keys joined with `__`,
    /// e.g. NIGHTSHIFT_MEMORY_STORES__EPISODIC=redis://127.0.0.1:6379).
    #[arg(long, env = "NIGHTSHIFT_MEMORY_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: MemoryConfig = nightshift_core::config::load(args.config.as_deref(), "NIGHTSHIFT_MEMORY")?;
    nightshift_telemetry::init(cfg.log_format.parse().map_err(anyhow::Error::msg)?);
    // reqwest (aws-lc-rs) and redis may link different rustls providers: pick one explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if !cfg.metrics_listen.is_empty() {
        nightshift_telemetry::serve_metrics(&cfg.metrics_listen).await?;
    }
    let service = MemoryService::from_config(&cfg).await?;
    let mut server = GrpcServer::new();
    server.routes().add_service(service.into_server());
    server.serving(SERVICE_NAME);
    let listener = GrpcServer::bind(&cfg.listen).await?;
    server.serve(listener, shutdown_signal()).await?;
    nightshift_telemetry::shutdown();
    Ok(())
}
