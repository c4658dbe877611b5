//! `nightshift-worker`: one worker process. Add as many as you like behind the queue.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use nightshift_events::{EventPublisher, PublisherOptions};
use nightshift_queue::QueueOptions;
use nightshift_rpc::{GrpcServer, shutdown_signal};
use nightshift_worker::{SERVICE_NAME, Worker, WorkerApi, WorkerConfig, publisher_fn};

/// Runs a Nightshift worker.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file (see config/worker.toml). Env: NIGHTSHIFT_WORKER_<KEY>.
    #[arg(long, env = "NIGHTSHIFT_WORKER_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: WorkerConfig = nightshift_core::config::load(args.config.as_deref(), "NIGHTSHIFT_WORKER")?;
    nightshift_telemetry::init(cfg.log_format.parse().map_err(anyhow::Error::msg)?);
    // reqwest (LLM, MCP over HTTP) and the NATS client link different rustls providers.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if !cfg.metrics_listen.is_empty() {
        nightshift_telemetry::serve_metrics(&cfg.metrics_listen).await?;
    }
    let queue = nightshift_queue::connect(
        &cfg.queue_url,
        &QueueOptions { ack_wait: cfg.queue_ack_wait, ..QueueOptions::named(cfg.queue_name.clone()) },
    )
    .await
    .context("connecting to the queue")?;
    let manager = tonic::transport::Endpoint::from_shared(cfg.manager_endpoint.clone())?
        .timeout(std::time::Duration::from_secs(30))
        .connect_lazy();
    let events = if cfg.events_endpoint.is_empty() {
        None
    } else {
        let source = format!("worker/{}", std::process::id());
        Some(publisher_fn(EventPublisher::connect_lazy(&cfg.events_endpoint, source, PublisherOptions::default())?))
    };
    let mut worker = Worker::new(cfg.clone(), manager, queue, events);
    if !cfg.memory_endpoint.is_empty() {
        let memory = tonic::transport::Endpoint::from_shared(cfg.memory_endpoint.clone())
            .context("memory_endpoint")?
            .timeout(std::time::Duration::from_secs(30))
            .connect_lazy();
        worker = worker.with_memory(memory);
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(worker.clone().run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));

    let mut server = GrpcServer::new();
    server.routes().add_service(WorkerApi::new(worker).into_server());
    server.serving(SERVICE_NAME);
    let listener = GrpcServer::bind(&cfg.listen).await?;
    // SIGTERM: stop serving, drain (in-flight runs finish or are handed back), then exit.
    server.serve(listener, shutdown_signal()).await?;
    let _ = stop_tx.send(true);
    runner.await.context("worker task")?;
    nightshift_telemetry::shutdown();
    Ok(())
}
