//! Helpers of the multi-process tests: the service binaries (and `nightshift dev`) as child
//! processes on loopback.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nightshift_core::pb;
use nightshift_core::pb::manager_service_client::ManagerServiceClient;
use tonic::transport::Channel;

pub mod browser;

/// The binaries these tests spawn, by package: the services, and the scripted LLM server.
const SPAWNED_BINARIES: [(&str, &str); 6] = [
    ("nightshift-manager", "nightshift-manager"),
    ("nightshift-scheduler", "nightshift-scheduler"),
    ("nightshift-worker", "nightshift-worker"),
    ("nightshift-events", "nightshift-events"),
    ("nightshift-memory", "nightshift-memory"),
    ("nightshift-testkit", "nightshift-scripted-llm"),
];

/// The path of service binary `name`, built from the current sources first (once per test
/// process): `cargo test -p nightshift-cli` alone would otherwise run whatever older binaries sit
/// in the target directory. Cargo only rebuilds what changed, so this is quick when they are fresh.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet"]).current_dir(env!("CARGO_MANIFEST_DIR"));
        for (package, binary) in SPAWNED_BINARIES {
            cmd.args(["-p", package, "--bin", binary]);
        }
        let out = cmd.output().expect("running cargo build for the service binaries");
        assert!(
            out.status.success(),
            "building the service binaries failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing after building it", path.display());
    path
}

pub use nightshift_testkit::mcp::free_port;

/// A `nightshift dev` process, killed on drop, with its data and log in a temporary directory.
pub struct Dev {
    child: Child,
    /// `http://ADDR` of its gRPC services.
    pub endpoint: String,
    /// Holds `data/`, `dev.log` (its stderr) and `dev.toml` (its config file, if any).
    pub dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dev {
    /// Starts `nightshift dev` on a free port (with `config` as its `--config` file, if given)
    /// and reads the bound address from the banner it prints.
    pub fn start(config: Option<&str>) -> Dev {
        Dev::start_with(config, &[])
    }

    /// [`Dev::start`] with more arguments for `nightshift dev` (e.g. `-f examples/agents`).
    pub fn start_with(config: Option<&str>, args: &[&str]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nightshift"));
        cmd.args(["dev", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path().join("data")).args(args);
        if let Some(text) = config {
            let path = dir.path().join("dev.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd.env("RUST_LOG", "info").stdout(Stdio::piped()).stderr(log).spawn().unwrap();
        let mut banner = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut banner).unwrap();
        let endpoint = banner.split_whitespace().nth(4).map(|addr| format!("http://{addr}")).unwrap_or_default();
        // Built before checking, so that a failed start still kills the process.
        let dev = Dev { child, endpoint, dir };
        if dev.endpoint.is_empty() {
            let log = std::fs::read_to_string(dev.dir.path().join("dev.log")).unwrap_or_default();
            panic!("unexpected banner {banner:?}; log:\n{log}");
        }
        dev
    }
}

pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(name: &str, binary: &str, env: &[(String, String)]) -> Proc {
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("ns-dist-{}-{name}.log", std::process::id()))).unwrap();
    let mut cmd = Command::new(bin(binary));
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).env("RUST_LOG", "info");
    // These deployments test other things than authentication, on loopback: they run with it
    // off unless the test configures it (tests/security.rs does).
    let role = binary.trim_start_matches("nightshift-").to_uppercase();
    let mode = format!("NIGHTSHIFT_{role}_AUTH__MODE");
    if !env.iter().any(|(k, _)| k.starts_with(&format!("NIGHTSHIFT_{role}_AUTH__"))) {
        cmd.env(mode, "off");
    }
    // The scripted LLM and MCP servers run on loopback, and the tests are the operator: their
    // workers (and the manager's check at apply) allow every program, secret and address unless
    // the test sets the policy itself.
    let allow = match role.as_str() {
        "WORKER" => "NIGHTSHIFT_WORKER_ALLOW__",
        "MANAGER" => "NIGHTSHIFT_MANAGER_WORKER_ALLOW__",
        _ => "",
    };
    if !allow.is_empty() && !env.iter().any(|(k, _)| k.starts_with(allow)) {
        for key in ["MCP_COMMANDS", "SECRETS", "PRIVATE_EGRESS"] {
            cmd.env(format!("{allow}{key}"), "[\"*\"]");
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc { name: name.to_owned(), child: cmd.spawn().unwrap() }
}

pub async fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn by_name(name: &str) -> Option<pb::AgentRef> {
    Some(pb::AgentRef::by_name(name))
}

pub async fn runs_of(m: &mut ManagerServiceClient<Channel>, agent: &str) -> Vec<pb::Run> {
    m.list_runs(pb::ListRunsRequest { agent: by_name(agent), page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .runs
}

/// One run of a new manual agent `slow` (scripted LLM at `llm`, one tool call), with the scripted
/// server's second turns made to hang: returns the run and the worker holding it once the run
/// has checkpointed its first LLM turn and tool result and is waiting in its second LLM call.
pub async fn start_hanging_run(
    m: &mut ManagerServiceClient<Channel>,
    llm: &str,
    script: &nightshift_testkit::llm::Script,
) -> (pb::Run, String) {
    start_hanging_run_of(m, "slow", llm, script).await
}

/// [`start_hanging_run`] of an agent named `name`.
pub async fn start_hanging_run_of(
    m: &mut ManagerServiceClient<Channel>,
    name: &str,
    llm: &str,
    script: &nightshift_testkit::llm::Script,
) -> (pb::Run, String) {
    use std::sync::atomic::Ordering;
    script.hang_second_turn.store(true, Ordering::SeqCst);
    let second_turns_before = script.second_turns.load(Ordering::SeqCst);
    let slow = format!(
        "name: {name}\nmodel: {{provider: openai, model: scripted, base_url: '{llm}'}}\ntask: {{query: slow}}\n\
         schedule: {{manual: true}}\npolicy: {{max_retries: 0}}\ntools: {{local: [calculate_area]}}"
    );
    m.apply_agent(pb::ApplyAgentRequest { spec: None, manifest_yaml: slow }).await.unwrap();
    let run = m
        .trigger_agent(pb::TriggerAgentRequest { agent: by_name(name), query_override: None })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    for _ in 0..200 {
        let r = m.get_run(pb::GetRunRequest { run_id: run.id.clone() }).await.unwrap().into_inner().run.unwrap();
        if r.steps.len() == 2 && script.second_turns.load(Ordering::SeqCst) > second_turns_before {
            return (run, r.worker_id);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the slow run never reached its second LLM turn");
}

/// Waits (up to 30 s) until the run has `status`.
pub async fn wait_status(m: &mut ManagerServiceClient<Channel>, run_id: &str, status: pb::RunStatus) -> pb::Run {
    let mut last = None;
    for _ in 0..300 {
        let r = m.get_run(pb::GetRunRequest { run_id: run_id.to_owned() }).await.unwrap().into_inner().run.unwrap();
        if r.status() == status {
            return r;
        }
        last = Some(r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("run {run_id} is not {status:?} within 30 s (last {last:?})");
}

/// Waits (up to 30 s) until the run succeeded.
pub async fn wait_succeeded(m: &mut ManagerServiceClient<Channel>, run_id: &str) -> pb::Run {
    wait_status(m, run_id, pb::RunStatus::Succeeded).await
}

/// `n` worker processes `w0`, `w1`, … on the manager at `manager_port`, with the role's shared
/// settings `base` and `extra` (e.g. a shorter drain grace).
pub fn spawn_workers(n: usize, base: &[(String, String)], manager_port: u16, extra: &[(&str, &str)]) -> Vec<Proc> {
    (0..n)
        .map(|i| {
            let mut e = base.to_vec();
            e.extend([
                ("NIGHTSHIFT_WORKER_LISTEN".into(), format!("127.0.0.1:{}", free_port())),
                ("NIGHTSHIFT_WORKER_MANAGER_ENDPOINT".into(), format!("http://127.0.0.1:{manager_port}")),
                ("NIGHTSHIFT_WORKER_WORKER_ID".into(), format!("w{i}")),
                ("NIGHTSHIFT_WORKER_LEASE_TTL".into(), "3s".into()),
            ]);
            e.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
            spawn(&format!("w{i}"), "nightshift-worker", &e)
        })
        .collect()
}

/// What the roles of one multi-process test deployment share: the Postgres database, the work
/// queue and the event service.
pub struct Deployment {
    pub db: String,
    pub queue_url: String,
    pub queue_name: String,
    /// `queue_ack_wait`, e.g. `4s`.
    pub ack_wait: String,
    /// The event service's endpoint.
    pub events: String,
}

/// A deployment's manager (on `port`), scheduler and workers, as [`Deployment::start`] left them.
pub struct Started {
    pub port: u16,
    pub manager: ManagerServiceClient<Channel>,
    /// The manager and the scheduler.
    pub roles: Vec<Proc>,
    pub workers: Vec<Proc>,
}

impl Deployment {
    /// A fresh Postgres database and a Redis queue named `{prefix}-…` (redelivery after 4 s, soon
    /// after a killed worker's 3 s lease), without an event service.
    pub async fn on_postgres_and_redis(prefix: &str) -> Self {
        Self {
            db: nightshift_testkit::postgres_url().await,
            queue_url: nightshift_testkit::redis_url(),
            queue_name: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            ack_wait: "4s".into(),
            events: String::new(),
        }
    }

    /// A manager, a scheduler and `workers` workers (with `extra` settings); returns once the
    /// manager answers.
    pub async fn start(&self, workers: usize, extra: &[(&str, &str)]) -> Started {
        let (port, scheduler_port) = (free_port(), free_port());
        let roles =
            vec![self.spawn_manager(port, scheduler_port), self.spawn_scheduler("scheduler", scheduler_port, &[])];
        let workers = spawn_workers(workers, &self.role_env("WORKER"), port, extra);
        wait_port(port).await;
        let manager = ManagerServiceClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
        Started { port, manager, roles, workers }
    }

    /// The shared settings as `role`'s environment (`MANAGER`, `SCHEDULER`, `WORKER`).
    pub fn role_env(&self, role: &str) -> Vec<(String, String)> {
        let p = format!("NIGHTSHIFT_{role}_");
        vec![
            (format!("{p}QUEUE_URL"), self.queue_url.clone()),
            (format!("{p}QUEUE_NAME"), self.queue_name.clone()),
            (format!("{p}QUEUE_ACK_WAIT"), self.ack_wait.clone()),
            (format!("{p}EVENTS_ENDPOINT"), self.events.clone()),
        ]
    }

    /// A manager on `port` that tells the scheduler on `scheduler_port` about agent changes.
    pub fn spawn_manager(&self, port: u16, scheduler_port: u16) -> Proc {
        let mut env = self.role_env("MANAGER");
        env.extend([
            ("NIGHTSHIFT_MANAGER_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("NIGHTSHIFT_MANAGER_DATABASE_URL".into(), self.db.clone()),
            ("NIGHTSHIFT_MANAGER_SCHEDULER_ENDPOINT".into(), format!("http://127.0.0.1:{scheduler_port}")),
        ]);
        spawn("manager", "nightshift-manager", &env)
    }

    /// A scheduler replica `name` on `port`, with `extra` settings.
    pub fn spawn_scheduler(&self, name: &str, port: u16, extra: &[(&str, &str)]) -> Proc {
        let mut env = self.role_env("SCHEDULER");
        env.extend([
            ("NIGHTSHIFT_SCHEDULER_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("NIGHTSHIFT_SCHEDULER_DATABASE_URL".into(), self.db.clone()),
        ]);
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        spawn(name, "nightshift-scheduler", &env)
    }
}
