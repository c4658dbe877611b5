//! `nightshift-events`: the event service as its own process.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use nightshift_events::{EventService, EventsConfig, SERVICE_NAME};
use nightshift_rpc::{GrpcServer, shutdown_signal};

/// Runs the Nightshift event service (publish, subscribe, history).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file (see the nightshift-events crate docs). Env: NIGHTSHIFT_EVENTS_<KEY>.
    #[arg(long, env = "NIGHTSHIFT_EVENTS_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // async-nats links ring and reqwest aws-lc-rs: rustls needs the process default chosen
    // before a TLS connection (nats over tls://) is made.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cfg: EventsConfig = nightshift_core::config::load(args.config.as_deref(), "NIGHTSHIFT_EVENTS")?;
    nightshift_telemetry::init(cfg.log_format.parse().map_err(anyhow::Error::msg)?);
    if !cfg.metrics_listen.is_empty() {
        nightshift_telemetry::serve_metrics(&cfg.metrics_listen).await?;
    }
    let log = nightshift_events::connect(&cfg.backend_url, cfg.log_options()).await.context("opening the event log")?;
    tracing::info!(backend = log.backend(), prefix = cfg.prefix, "event log open");
    let service = EventService::new(log);
    let closer = service.clone();
    let mut server = GrpcServer::new();
    server.routes().add_service(service.into_server());
    server.serving(SERVICE_NAME);
    let listener = GrpcServer::bind(&cfg.listen).await?;
    let shutdown = async move {
        shutdown_signal().await;
        // Subscribe streams never finish by themselves; end them so the drain can complete.
        closer.close_streams();
    };
    server.serve(listener, shutdown).await?;
    nightshift_telemetry::shutdown();
    Ok(())
}
