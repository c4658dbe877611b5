//! `nightshift dev`: every service that exists, in one process, on one gRPC port, on embedded
//! defaults (a SQLite file under the data directory).
use anyhow::Context;
use nightshift_core::AgentManifest;
use std::sync::Arc;

use nightshift_core::{AgentId, SystemClock};
use nightshift_events::{EventPublisher, EventService, PublisherOptions, SERVICE_NAME as EVENTS};
use nightshift_manager::{ManagerConfig, ManagerService, SERVICE_NAME as MANAGER, ScheduleObserver};
use nightshift_memory::{MemoryConfig, MemoryService, SERVICE_NAME as MEMORY};
use nightshift_queue::QueueOptions;
use nightshift_rpc::{GrpcServer, shutdown_signal};
use nightshift_scheduler::{SERVICE_NAME as SCHEDULER, Scheduler, SchedulerApi, SchedulerConfig};
use nightshift_store::Store;
use nightshift_telemetry::LogFormat;
use nightshift_worker::{SERVICE_NAME as WORKER, Worker, WorkerApi, WorkerConfig, publisher_fn};

use crate::agent::{documents, manifest_files};
use crate::args::DevArgs;

pub(crate) async fn run(args: DevArgs, log_format: LogFormat) -> anyhow::Result<()> {
    nightshift_telemetry::init(log_format);
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
            format!("sqlite://{}", args.data_dir.join("nightshift.db").display())
        }
    };
    let store = Store::connect(&url).await.context("opening the database")?;

    // Manifests given with --apply go through the same validation as ApplyAgent.
    for file in manifest_files(&args.apply)? {
        for doc in documents(&file)? {
            let spec = AgentManifest::from_yaml(&doc)
                .and_then(|m| m.validate())
                .map_err(|e| anyhow::anyhow!("{}: invalid agent manifest: {e}", file.display()))?;
            let (rec, outcome) = store.apply_agent(&spec).await?;
            tracing::info!(agent = %rec.spec.name, version = rec.version, ?outcome, file = %file.display(), "applied");
        }
    }

    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if let Some(addr) = &args.metrics_listen {
        nightshift_telemetry::serve_metrics(addr).await?;
    }
    // One in-process queue shared by the scheduler, the manager (manual triggers) and the worker.
    let queue_url = format!("memory://dev-{}", std::process::id());
    let queue = nightshift_queue::connect(&queue_url, &QueueOptions::default()).await?;
    let listener = GrpcServer::bind(&args.listen).await?;
    let addr = listener.local_addr()?;

    // Events: an in-process bounded log behind the EventService on this port; every service
    // publishes through the gRPC API, as in a distributed deployment.
    let event_log = nightshift_events::connect("memory://", nightshift_events::LogOptions::default()).await?;
    let events_service = EventService::new(event_log);
    let publisher =
        |source: &str| EventPublisher::connect_lazy(&format!("http://{addr}"), source, PublisherOptions::default());

    let scheduler = Scheduler::with_events(
        store.clone(),
        queue.clone(),
        Arc::new(SystemClock),
        SchedulerConfig::default(),
        Some(publisher("scheduler/dev")?),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scheduler_task = tokio::spawn(scheduler.clone().run(stop_rx));

    // The worker talks to the manager over gRPC, on this very port: the same path as in a
    // distributed deployment.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    let memory =
        MemoryService::from_config(&memory_config(&args, &url)?).await.context("starting the memory service")?;
    let worker = Worker::new(
        WorkerConfig::default(),
        channel.clone(),
        queue.clone(),
        Some(publisher_fn(publisher("worker/dev")?)),
    )
    .with_memory(channel);
    let (worker_stop_tx, mut worker_stop_rx) = tokio::sync::watch::channel(false);
    let worker_task = tokio::spawn(worker.clone().run(async move {
        let _ = worker_stop_rx.wait_for(|s| *s).await;
    }));

    let manager = ManagerService::new(store.clone(), ManagerConfig::default().default_lease_ttl)
        .with_observer(Arc::new(InProcessScheduler(scheduler.clone())))
        .with_queue(queue)
        .with_events(publisher("manager/dev")?);
    let mut server = GrpcServer::new();
    server.routes().add_service(manager.into_server());
    server.routes().add_service(SchedulerApi::new(scheduler).into_server());
    server.routes().add_service(WorkerApi::new(worker).into_server());
    server.routes().add_service(events_service.clone().into_server());
    server.routes().add_service(memory.into_server());
    server.serving(MANAGER).serving(SCHEDULER).serving(WORKER).serving(EVENTS).serving(MEMORY);
    // Printed on stdout (not the log) so scripts and tests can read the bound address.
    println!("nightshift dev listening on {addr} (database {})", nightshift_store::redact(&url));
    server
        .serve(listener, async move {
            shutdown_signal().await;
            // Open Subscribe streams would hold the server open.
            events_service.close_streams();
        })
        .await?;
    let _ = worker_stop_tx.send(true);
    let _ = stop_tx.send(true);
    let _ = worker_task.await;
    let _ = scheduler_task.await;
    store.close().await;
    nightshift_telemetry::shutdown();
    Ok(())
}

/// Memory on the dev database (working memory in this process), with semantic search on an
/// in-process index when the embedded MiniLM model is at hand: `--memory-model`, or the
/// directory `crates/memory/scripts/fetch-model.sh` fills by default.
fn memory_config(args: &DevArgs, database_url: &str) -> anyhow::Result<MemoryConfig> {
    let mut cfg = MemoryConfig::default();
    cfg.stores.working = "memory://".into();
    cfg.stores.episodic = database_url.to_owned();
    cfg.stores.long_term = database_url.to_owned();
    cfg.stores.procedural = database_url.to_owned();
    let model = match &args.memory_model {
        Some(dir) if dir.join("model.safetensors").is_file() => Some(dir.clone()),
        Some(dir) => anyhow::bail!(
            "--memory-model {}: no model.safetensors there (crates/memory/scripts/fetch-model.sh fetches it)",
            dir.display()
        ),
        None => std::env::var_os("HOME")
            .map(|h| std::path::PathBuf::from(h).join(".cache/nightshift-models/all-minilm-l6-v2-0.1.0"))
            .filter(|d| d.join("model.safetensors").is_file()),
    };
    match model {
        Some(dir) => {
            cfg.vector.url = "inprocess://".into();
            cfg.embedder.kind = "minilm".into();
            cfg.embedder.model_path = dir.display().to_string();
        }
        None => tracing::info!(
            "semantic memory search is off: no embedding model (run crates/memory/scripts/fetch-model.sh, or pass --memory-model)"
        ),
    }
    Ok(cfg)
}

/// The manager's schedule notifications, delivered to the scheduler in this process.
struct InProcessScheduler(Scheduler);

impl ScheduleObserver for InProcessScheduler {
    fn agent_changed(&self, id: &AgentId) {
        let (scheduler, id) = (self.0.clone(), id.clone());
        tokio::spawn(async move {
            if let Err(e) = scheduler.refresh(&id).await {
                tracing::warn!(error = %e, "scheduler refresh failed; it syncs from the store shortly");
            }
        });
    }

    fn agent_deleted(&self, id: &AgentId) {
        self.0.forget(id);
    }
}
