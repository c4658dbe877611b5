//! `nightshift-scheduler`: one scheduler replica as its own process. Run as many as you like
//! against the same database and queue; they split the schedules by shard leases.
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use nightshift_core::SystemClock;
use nightshift_events::{EventPublisher, PublisherOptions};
use nightshift_queue::QueueOptions;
use nightshift_rpc::{GrpcServer, shutdown_signal};
use nightshift_scheduler::{SERVICE_NAME, Scheduler, SchedulerApi, SchedulerConfig};
use nightshift_store::Store;

/// Runs a Nightshift scheduler replica.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file (see config/scheduler.toml). Env: NIGHTSHIFT_SCHEDULER_<KEY>.
    #[arg(long, env = "NIGHTSHIFT_SCHEDULER_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: SchedulerConfig = nightshift_core::config::load(args.config.as_deref(), "NIGHTSHIFT_SCHEDULER")?;
    nightshift_telemetry::init(cfg.log_format.parse().map_err(anyhow::Error::msg)?);
    if cfg.queue_url.starts_with("memory:") {
        tracing::warn!("queue_url is memory://: runs only reach workers in this process");
    }
    if !cfg.metrics_listen.is_empty() {
        nightshift_telemetry::serve_metrics(&cfg.metrics_listen).await?;
    }
    let store = Store::connect(&cfg.database_url).await.context("connecting to the database")?;
    let queue = nightshift_queue::connect(
        &cfg.queue_url,
        &QueueOptions { ack_wait: cfg.queue_ack_wait, ..QueueOptions::named(cfg.queue_name.clone()) },
    )
    .await
    .context("connecting to the queue")?;
    let events = if cfg.events_endpoint.is_empty() {
        None
    } else {
        let source = format!("scheduler/{}", std::process::id());
        Some(EventPublisher::connect_lazy(&cfg.events_endpoint, source, PublisherOptions::default())?)
    };
    let scheduler = Scheduler::with_events(store.clone(), queue, Arc::new(SystemClock), cfg.clone(), events);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let engine = tokio::spawn(scheduler.clone().run(stop_rx));

    let mut server = GrpcServer::new();
    server.routes().add_service(SchedulerApi::new(scheduler).into_server());
    server.serving(SERVICE_NAME);
    let listener = GrpcServer::bind(&cfg.listen).await?;
    server.serve(listener, shutdown_signal()).await?;
    let _ = stop_tx.send(true);
    engine.await.context("scheduler task")?;
    store.close().await;
    nightshift_telemetry::shutdown();
    Ok(())
}
