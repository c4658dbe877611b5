//! `dispatch-latency` and `run-overhead`: the roles of `nightshift dev` (manager, scheduler and
//! worker, built by their `XxxRole::build` and served on one port by `serve_roles`, the worker
//! talking to the manager over gRPC) on the chosen backends, with the scripted instant LLM in a
//! child process. Runs are started with `TriggerAgent` and followed through the worker's event
//! callback.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use nightshift_core::{AgentSpec, EventType, SystemClock, pb};
use nightshift_manager::{ManagerConfig, ManagerDeps, ManagerRole};
use nightshift_rpc::{GrpcServer, Role, serve_roles};
use nightshift_scheduler::{SchedulerConfig, SchedulerDeps, SchedulerRole};
use nightshift_worker::{EventFn, WorkerConfig, WorkerDeps, WorkerRole};
use tokio::sync::{Notify, watch};

use crate::backend::{BackendKind, Backends};
use crate::llm::ScriptedLlm;
use crate::schedule::create_agents;
use crate::stats::Row;
use crate::{Scenario, sys};

type Client = pb::manager_service_client::ManagerServiceClient<nightshift_rpc::CallChannel>;

/// The trust boundary of a secure stack: TLS on the one port (a throw-away CA), and the keys of
/// the harness (admin) and of the worker, from files as a deployment's secrets provide them.
struct Secure {
    _dir: tempfile::TempDir,
    tls: nightshift_rpc::TlsOptions,
    ca_file: String,
    admin_key: String,
    admin_file: String,
    worker_file: String,
}

impl Secure {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = nightshift_testkit::tls::TestCa::new("bench CA");
        let ca_file = ca.write_cert(&dir.path().join("ca.crt")).display().to_string();
        let cert = ca.issue(dir.path(), "stack", &["localhost"]);
        let tls = nightshift_rpc::TlsOptions {
            cert_file: cert.cert_file.display().to_string(),
            key_file: cert.key_file.display().to_string(),
            ..Default::default()
        };
        let write = |name: &str| -> anyhow::Result<(String, String)> {
            let key: String = (0..4).map(|_| format!("{:016x}", rand::random::<u64>())).collect();
            let path = dir.path().join(name);
            std::fs::write(&path, &key)?;
            Ok((key, path.display().to_string()))
        };
        let (admin_key, admin_file) = write("admin.key")?;
        let (_, worker_file) = write("worker.key")?;
        Ok(Self { _dir: dir, tls, ca_file, admin_key, admin_file, worker_file })
    }

    /// The server options of a role on this stack: its TLS, authentication required, `own`
    /// key file as its credential.
    fn server(&self, own: &str) -> nightshift_rpc::ServerOptions {
        let mut s = nightshift_rpc::ServerOptions::listening_on("127.0.0.1:0");
        s.tls = nightshift_rpc::TlsOptions { ca_file: self.ca_file.clone(), ..self.tls.clone() };
        s.auth.api_key_file = own.to_owned();
        s
    }
}

/// When the worker reported a run started and ended.
#[derive(Default, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) started: Option<Instant>,
    pub(crate) completed: Option<Instant>,
    pub(crate) failed: bool,
}

#[derive(Default)]
struct Events {
    runs: Mutex<HashMap<String, Seen>>,
    completed: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    changed: Notify,
}

impl Events {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(crate) struct Stack {
    pub(crate) backends: Backends,
    pub(crate) client: Client,
    events: Arc<Events>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    llm: ScriptedLlm,
    /// Keeps the secure stack's certificate and key files.
    _secure: Option<Secure>,
}

impl Stack {
    /// The stack; with `secure`, TLS on its port and every call authenticated (the manager
    /// verifying the worker's and the harness's keys), as a production deployment runs.
    pub(crate) async fn start(kind: BackendKind, worker_concurrency: u32, secure: bool) -> anyhow::Result<Self> {
        let llm = ScriptedLlm::spawn().await?;
        let backends = Backends::open(kind).await?;
        let (stop, mut stop_rx) = watch::channel(false);
        let listener = GrpcServer::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let secure = secure.then(Secure::new).transpose()?;
        let endpoint = match &secure {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let queue = backends.queue_settings();

        let deps = SchedulerDeps { store: backends.store.clone(), clock: Arc::new(SystemClock) };
        let scheduler =
            SchedulerRole::build(SchedulerConfig { queue: queue.clone(), ..SchedulerConfig::default() }, deps).await?;

        let events = Arc::new(Events::default());
        let sink = events.clone();
        let event_fn: EventFn = Arc::new(move |e: pb::Event| {
            let ty = EventType::from_pb(e.r#type());
            let now = Instant::now();
            let mut runs = sink.lock();
            let seen = runs.entry(e.run_id).or_default();
            match ty {
                Some(EventType::BackgroundTaskStarted) => seen.started = Some(now),
                Some(EventType::BackgroundTaskCompleted) => {
                    seen.completed = Some(now);
                    sink.completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Some(EventType::BackgroundTaskError | EventType::RunSkipped) => {
                    seen.failed = true;
                    sink.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => return,
            }
            drop(runs);
            sink.changed.notify_waiters();
        });
        let wcfg = WorkerConfig {
            // The scripted LLM and MCP servers run on loopback: the harness is the operator.
            allow: nightshift_core::operator_policy::OperatorPolicy::trusting(),
            concurrency: worker_concurrency,
            queue: queue.clone(),
            manager_endpoint: endpoint.clone(),
            server: secure.as_ref().map(|s| s.server(&s.worker_file)).unwrap_or_default(),
            ..WorkerConfig::default()
        };
        let worker = WorkerRole::build(wcfg, WorkerDeps { events: Some(event_fn) }).await?;
        let deps = ManagerDeps { store: backends.store.clone(), observer: None };
        // The scripted LLM runs on loopback: the harness is the operator.
        let worker_allow = nightshift_core::operator_policy::OperatorPolicy::trusting();
        let mut mcfg = ManagerConfig { queue, worker_allow, ..ManagerConfig::default() };
        if let Some(s) = &secure {
            mcfg.server = s.server(&s.admin_file);
            mcfg.server.auth.bootstrap_admin_key_file = s.admin_file.clone();
            mcfg.server.auth.worker_key_file = s.worker_file.clone();
        }
        let manager = ManagerRole::build(mcfg, deps).await?;
        let listener = match &secure {
            Some(s) => nightshift_rpc::Listener::from(listener)
                .with_tls(nightshift_rpc::ServerTls::load(&s.tls)?)
                .with_guard(manager.guard()),
            None => nightshift_rpc::Listener::from(listener),
        };
        let roles: Vec<Box<dyn Role>> = vec![Box::new(manager), Box::new(scheduler), Box::new(worker)];
        let shutdown = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        let tasks = vec![tokio::spawn(async move {
            if let Err(e) = serve_roles(roles, listener, shutdown).await {
                eprintln!("benchmark stack failed: {e:#}");
            }
        })];
        let options = nightshift_rpc::ClientOptions {
            tls: nightshift_rpc::TlsOptions {
                ca_file: secure.as_ref().map(|s| s.ca_file.clone()).unwrap_or_default(),
                ..Default::default()
            },
            api_key: secure.as_ref().map(|s| s.admin_key.clone()).unwrap_or_default(),
            ..Default::default()
        };
        let channel = options.endpoint("endpoint", &endpoint)?.connect().await.context("connecting to the manager")?;
        let client = Client::new(options.wrap(channel));
        Ok(Self { backends, client, events, stop, tasks, llm, _secure: secure })
    }

    fn spec(&self, name: &str, overlap: &str) -> anyhow::Result<AgentSpec> {
        AgentSpec::from_yaml(&format!(
            "name: {name}\nmodel: {{provider: openai, model: scripted, base_url: '{}'}}\n\
             task: {{query: 'benchmark'}}\nschedule: {{manual: true}}\npolicy: {{overlap: {overlap}, max_retries: 0}}",
            self.llm.base_url
        ))
        .map_err(|e| anyhow::anyhow!("benchmark agent spec does not validate: {e}"))
    }

    pub(crate) async fn trigger(&self, agent: &str) -> anyhow::Result<String> {
        let req = pb::TriggerAgentRequest { agent: Some(pb::AgentRef::by_name(agent)), query_override: None };
        let run = self.client.clone().trigger_agent(req).await.context("TriggerAgent")?.into_inner().run;
        Ok(run.context("TriggerAgent returned no run")?.id)
    }

    /// Waits until the run completed (or failed), at most `limit`.
    pub(crate) async fn wait_done(&self, run: &str, limit: Duration) -> anyhow::Result<Seen> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.events.changed.notified();
            if let Some(s) = self.events.lock().get(run).copied().filter(|s| s.completed.is_some() || s.failed) {
                return Ok(s);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                anyhow::bail!("run {run} did not complete within {limit:?}");
            }
        }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
        }
        self.backends.close().await;
        drop(self.llm);
    }
}

/// Parameters of `dispatch-latency`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct DispatchArgs {
    /// Measured triggers (one at a time).
    #[arg(long, default_value_t = 300)]
    pub runs: usize,
    /// Unmeasured triggers first (connections, caches, SQLite pages).
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    #[arg(long, value_enum, default_value_t = BackendKind::Embedded)]
    pub backend: BackendKind,
    /// TLS on the stack's port and every call authenticated (the worker's and the harness's API
    /// keys verified by the manager), as a production deployment runs.
    #[arg(long)]
    pub secure: bool,
}

pub async fn dispatch_latency(args: &DispatchArgs) -> anyhow::Result<Scenario> {
    let tls = if args.secure { ", TLS + API keys" } else { "" };
    let name = format!("dispatch-latency {}{tls}", args.backend.label());
    eprintln!("== {name}: {} runs", args.runs);
    let stack = Stack::start(args.backend, WorkerConfig::default().concurrency, args.secure).await?;
    let spec = stack.spec("dispatch", "skip")?;
    create_agents(&stack.backends.store, 1, |_| Ok(spec.clone())).await?;
    let (mut rpc, mut start, mut done) = (vec![], vec![], vec![]);
    let mut failed = 0u64;
    for i in 0..args.warmup + args.runs {
        let t0 = Instant::now();
        let run = stack.trigger("dispatch").await?;
        let t_rpc = t0.elapsed();
        let seen = stack.wait_done(&run, Duration::from_secs(30)).await?;
        if i < args.warmup {
            continue;
        }
        if seen.failed {
            failed += 1;
            continue;
        }
        let ms = |t: Option<Instant>| t.map(|t| (t - t0).as_secs_f64() * 1000.0);
        rpc.push(t_rpc.as_secs_f64() * 1000.0);
        start.extend(ms(seen.started));
        done.extend(ms(seen.completed));
    }
    stack.stop().await;
    let rows = vec![
        Row::new(&name, "TriggerAgent RPC", "ms", "run", &rpc),
        Row::new(&name, "trigger → worker start (TASK_STARTED)", "ms", "run", &start),
        Row::new(&name, "trigger → completed (TASK_COMPLETED)", "ms", "run", &done),
    ];
    Ok(Scenario {
        name,
        params: serde_json::to_value(args)?,
        rows,
        counters: serde_json::json!({"failed_or_skipped": failed}),
    })
}

/// Parameters of `run-overhead`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct OverheadArgs {
    /// Manual agents the runs are spread over (overlap `allow_all`).
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Runs per round.
    #[arg(long, default_value_t = 2000)]
    pub runs: usize,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// TriggerAgent calls in flight at once.
    #[arg(long, default_value_t = 32)]
    pub inflight: usize,
    /// Worker concurrency (runs executed at once).
    #[arg(long, default_value_t = 64)]
    pub worker_concurrency: u32,
    #[arg(long, value_enum, default_value_t = BackendKind::Embedded)]
    pub backend: BackendKind,
}

pub async fn run_overhead(args: &OverheadArgs) -> anyhow::Result<Scenario> {
    use futures::StreamExt;
    use std::sync::atomic::Ordering;
    let name = format!("run-overhead {}", args.backend.label());
    eprintln!("== {name}: {} rounds of {} runs", args.rounds, args.runs);
    let stack = Stack::start(args.backend, args.worker_concurrency, false).await?;
    let specs: Vec<AgentSpec> =
        (0..args.agents).map(|i| stack.spec(&format!("ovh-{i:04}"), "allow_all")).collect::<anyhow::Result<_>>()?;
    create_agents(&stack.backends.store, args.agents, |i| Ok(specs[i].clone())).await?;
    let (mut cpu_us, mut runs_s, mut runs_per_core_s) = (vec![], vec![], vec![]);
    let mut failed = 0;
    for round in 0..args.rounds + 1 {
        let before = stack.events.completed.load(Ordering::Relaxed) + stack.events.failed.load(Ordering::Relaxed);
        let target = before + args.runs as u64;
        let cpu0 = sys::cpu_time();
        let t0 = Instant::now();
        let results: Vec<anyhow::Result<String>> = futures::stream::iter(0..args.runs)
            .map(|i| {
                let agent = format!("ovh-{:04}", i % args.agents);
                let stack = &stack;
                async move { stack.trigger(&agent).await }
            })
            .buffer_unordered(args.inflight)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let notified = stack.events.changed.notified();
            let done = stack.events.completed.load(Ordering::Relaxed) + stack.events.failed.load(Ordering::Relaxed);
            if done >= target {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {} runs finished within 120 s",
                done - before,
                args.runs
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = sys::cpu_time().saturating_sub(cpu0).as_secs_f64();
        // Round 0 warms up (connections, SQLite pages) and is not reported.
        if round == 0 {
            continue;
        }
        cpu_us.push(cpu * 1e6 / args.runs as f64);
        runs_s.push(args.runs as f64 / wall);
        runs_per_core_s.push(args.runs as f64 / cpu.max(1e-9));
    }
    failed += stack.events.failed.load(Ordering::Relaxed);
    stack.stop().await;
    let rows = vec![
        Row::new(&name, "CPU per completed run (LLM excluded)", "µs", "round", &cpu_us),
        Row::new(&name, "completed runs/s (wall)", "runs/s", "round", &runs_s),
        Row::new(&name, "runs/s per core (runs / CPU s)", "runs/s", "round", &runs_per_core_s),
    ];
    Ok(Scenario {
        name,
        params: serde_json::to_value(args)?,
        rows,
        counters: serde_json::json!({"failed_or_skipped": failed}),
    })
}
