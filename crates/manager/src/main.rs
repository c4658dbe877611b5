//! `nightshift-manager`: the manager service as its own process.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;

use nightshift_events::{EventPublisher, PublisherOptions};
use nightshift_manager::{GrpcScheduleObserver, ManagerConfig, ManagerService, SERVICE_NAME};
use nightshift_queue::QueueOptions;
use nightshift_rpc::{GrpcServer, shutdown_signal};
use nightshift_store::Store;

/// Runs the Nightshift manager (agent registry and run authority).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file (see config/manager.toml). Env: NIGHTSHIFT_MANAGER_<KEY>.
    #[arg(long, env = "NIGHTSHIFT_MANAGER_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: ManagerConfig = nightshift_core::config::load(args.config.as_deref(), "NIGHTSHIFT_MANAGER")?;
    nightshift_telemetry::init(cfg.log_format.parse().map_err(anyhow::Error::msg)?);
    if !cfg.metrics_listen.is_empty() {
        nightshift_telemetry::serve_metrics(&cfg.metrics_listen).await?;
    }
    let store = Store::connect(&cfg.database_url).await.context("connecting to the database")?;
    let mut service = ManagerService::new(store.clone(), cfg.default_lease_ttl);
    if !cfg.scheduler_endpoint.is_empty() {
        service = service.with_observer(Arc::new(GrpcScheduleObserver::new(&cfg.scheduler_endpoint)?));
    }
    if !cfg.queue_url.is_empty() {
        let queue = nightshift_queue::connect(
            &cfg.queue_url,
            &QueueOptions { ack_wait: cfg.queue_ack_wait, ..QueueOptions::named(cfg.queue_name.clone()) },
        )
        .await
        .context("connecting to the queue")?;
        service = service.with_queue(queue);
    }
    if !cfg.events_endpoint.is_empty() {
        let source = format!("manager/{}", std::process::id());
        service = service.with_events(EventPublisher::connect_lazy(
            &cfg.events_endpoint,
            source,
            PublisherOptions::default(),
        )?);
    }
    let mut server = GrpcServer::new();
    server.routes().add_service(service.into_server());
    server.serving(SERVICE_NAME);
    let listener = GrpcServer::bind(&cfg.listen).await?;
    server.serve(listener, shutdown_signal()).await?;
    store.close().await;
    nightshift_telemetry::shutdown();
    Ok(())
}
