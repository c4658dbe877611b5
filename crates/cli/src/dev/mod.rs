//! `nightshift dev`: every role, in one process, on one gRPC port, on embedded defaults (a
//! SQLite file under the data directory, an in-process queue and event log). The roles are
//! built exactly as their own binaries build them ([`config::DevConfig`] derives each role's
//! options), and call each other through their gRPC clients and this server's auth layer, as
//! in a distributed deployment — in-process ([`InProcess`]), without the network.
mod config;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use nightshift_console::ConsoleRole;
use nightshift_core::{AgentId, AgentManifest, SystemClock};
use nightshift_events::EventsRole;
use nightshift_manager::{ManagerDeps, ManagerRole, ScheduleObserver};
use nightshift_memory::MemoryRole;
use nightshift_rpc::{
    AuthMode, GrpcServer, InProcess, Listener, Role, ServerTls, init_process, serve_roles, shutdown_signal,
};
use nightshift_scheduler::{Scheduler, SchedulerDeps, SchedulerRole};
use nightshift_store::Store;
use nightshift_telemetry::LogFormat;
use nightshift_worker::{WorkerDeps, WorkerRole};

pub use config::{DevConfig, DevWiring};

use crate::agent::{documents, manifest_files};
use crate::args::DevArgs;

pub(crate) async fn run(args: DevArgs, log_format: Option<LogFormat>) -> anyhow::Result<()> {
    let mut cfg: DevConfig = nightshift_core::config::load(args.config.as_deref(), "NIGHTSHIFT_DEV")?;
    args.apply_to(&mut cfg, log_format);
    init_process(&cfg.server).await?;
    if cfg.server.auth.mode == AuthMode::Required && cfg.server.auth.bootstrap_admin_key_file.is_empty() {
        anyhow::bail!(
            "nightshift dev with auth.mode = \"required\" needs auth.bootstrap_admin_key_file (the admin key its roles and you use)"
        );
    }
    for key in cfg.ignored_keys() {
        tracing::warn!(key, "ignored by nightshift dev: every role shares its address, database and queue");
    }
    if cfg.database_url.is_empty() {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    }
    if cfg.worker.tools.file_root.is_none() {
        let root = cfg.dev_file_root();
        std::fs::create_dir_all(&root).with_context(|| format!("creating the file tools' root {}", root.display()))?;
    }
    let database_url = cfg.database_url();
    // Decided before the database file exists: a new data directory gets memory.db.
    let memory_database_url = cfg.memory_database_url();
    let store = Store::connect(&database_url).await.context("opening the database")?;

    // Manifests given with --apply go through the same validation as ApplyAgent.
    let mut embedded_models = std::collections::BTreeSet::new();
    for file in manifest_files(&args.apply)? {
        for doc in documents(&file)? {
            let spec = AgentManifest::from_yaml(&doc)
                .and_then(|m| m.validate())
                .map_err(|e| anyhow::anyhow!("{}: invalid agent manifest: {e}", file.display()))?;
            if spec.model.provider == nightshift_core::ModelProvider::Embedded {
                embedded_models.insert(spec.model.model.clone());
            }
            let (rec, outcome) = store.apply_agent(&spec).await?;
            tracing::info!(agent = %rec.spec.name, version = rec.version, ?outcome, file = %file.display(), "applied");
        }
    }

    let summarizer = &cfg.memory.summarizer;
    if summarizer.provider == nightshift_memory::SummarizerProvider::Embedded {
        embedded_models.insert(summarizer.model.clone());
    }
    // The first start fetches the catalog models the agents and the summarizer name (once;
    // then from the cache), and checks that the others' files are there, so that their first
    // calls find them.
    let cache = nightshift_llm::embedded::catalog::cache_dir();
    for name in &embedded_models {
        let path =
            crate::models::pull(name, &cache).await.with_context(|| format!("fetching the embedded model {name}"))?;
        tracing::info!(model = %name, path = %path.display(), "embedded model ready");
    }

    // The in-process queue starts empty: runs an earlier `nightshift dev` handed to its queue
    // and nobody started go to this one (the scheduler's outbox sweep publishes them).
    let requeued = store.unpublish_queued().await.context("re-queueing runs of an earlier start")?;
    if requeued > 0 {
        tracing::info!(runs = requeued, "runs queued before this start are handed to the queue again");
    }

    let tcp = GrpcServer::bind(&cfg.server.listen).await?;
    let addr = tcp.local_addr()?;
    let endpoint = format!("{}://{addr}", if cfg.server.tls.serves_tls() { "https" } else { "http" });
    let wiring = DevWiring {
        database_url: database_url.clone(),
        memory_database_url,
        // One in-process queue shared by the scheduler, the manager (manual triggers) and the worker.
        queue_url: format!("memory://dev-{}", std::process::id()),
        endpoint: endpoint.clone(),
        in_process: InProcess::to(&endpoint),
    };
    let model = memory_model(&cfg)?;
    if cfg.memory.vector.url.is_empty() && model.is_none() {
        tracing::info!(
            "semantic memory search is off: no embedding model (run crates/memory/scripts/fetch-model.sh, or pass --memory-model)"
        );
    }

    let events = EventsRole::build(cfg.events_options(&wiring)).await.context("starting the event service")?;
    let deps = SchedulerDeps { store: store.clone(), clock: Arc::new(SystemClock) };
    let scheduler = SchedulerRole::build(cfg.scheduler_options(&wiring), deps).await?;
    let observer = Arc::new(InProcessScheduler(scheduler.scheduler()));
    let deps = ManagerDeps { store: store.clone(), observer: Some(observer) };
    let manager = ManagerRole::build(cfg.manager_options(&wiring), deps).await?;
    let worker = WorkerRole::build(cfg.worker_options(&wiring), WorkerDeps::default()).await?;
    let memory = MemoryRole::build(&cfg.memory_options(&wiring, model.as_deref()))
        .await
        .context("starting the memory service")?
        .with_authority(Some(manager.memory_authority()));
    let console = ConsoleRole::build(&cfg.console_options(&wiring)).context("starting the console")?;
    let mut listener = Listener::from(tcp)
        .with_tls(ServerTls::load(&cfg.server.tls)?)
        .with_guard(manager.guard())
        .with_in_process(wiring.in_process.clone());
    if let Some(audit) = manager.audit_sink() {
        listener = listener.with_audit(audit);
    }
    let roles: Vec<Box<dyn Role>> = vec![
        Box::new(manager),
        Box::new(scheduler),
        Box::new(worker),
        Box::new(events),
        Box::new(memory),
        Box::new(console),
    ];

    // Printed on stdout (not the log) so scripts and tests can read the bound address. A reader
    // that stops after the first line (tests do) must not make the second write kill the process.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ =
            writeln!(out, "nightshift dev listening on {addr} (database {})", nightshift_store::redact(&database_url));
        let _ = writeln!(out, "console: {}/", wiring.endpoint);
        let _ = out.flush();
    }
    serve_roles(roles, listener, shutdown_signal()).await?;
    store.close().await;
    nightshift_telemetry::shutdown();
    Ok(())
}

/// The embedded MiniLM model's directory: `memory_model` (which must hold the model), or the
/// directory `crates/memory/scripts/fetch-model.sh` fills, if it does.
fn memory_model(cfg: &DevConfig) -> anyhow::Result<Option<PathBuf>> {
    match cfg.memory_model.as_str() {
        "" => Ok(std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/nightshift-models/all-minilm-l6-v2-0.1.0"))
            .filter(|d| d.join("model.safetensors").is_file())),
        dir if PathBuf::from(dir).join("model.safetensors").is_file() => Ok(Some(PathBuf::from(dir))),
        dir => anyhow::bail!(
            "--memory-model {dir}: no model.safetensors there (crates/memory/scripts/fetch-model.sh fetches it)"
        ),
    }
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
