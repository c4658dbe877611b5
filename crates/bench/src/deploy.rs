//! The processes `e2e` measures, started from the release binaries next to the harness: the one
//! `nightshift dev` process, or the five binaries of a distributed deployment on the real Postgres
//! and NATS JetStream of this machine. Each is killed (and its database and streams removed) when
//! the scenario ends.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::AsyncBufReadExt;

use crate::sys;

/// What `e2e` runs (`--deployment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Deployment {
    /// `nightshift dev`: every role in one process on SQLite, the in-memory queue and events.
    Dev,
    /// `nightshift-events`, `-manager`, `-scheduler`, `-memory` and `--workers` `nightshift-worker`s
    /// as processes of their own, on Postgres (runs and memory) and NATS JetStream (queue and event
    /// log), talking gRPC on loopback.
    Distributed,
}

impl Deployment {
    pub fn label(self) -> &'static str {
        match self {
            Self::Dev => "nightshift dev",
            Self::Distributed => "five binaries on Postgres + NATS",
        }
    }
}

/// One started process.
struct Proc {
    name: String,
    pid: u32,
    /// Killed on drop.
    _child: tokio::process::Child,
}

/// A started deployment: its processes, where its manager and event service answer, and what
/// it created on the shared servers (removed by [`Deployed::close`]).
pub struct Deployed {
    procs: Vec<Proc>,
    /// The manager's endpoint (`http://…`).
    pub manager: String,
    /// The event service's endpoint (the manager's in `nightshift dev`).
    pub events: String,
    /// Whether the memory service embeds with the MiniLM model (semantic search on).
    pub semantic_memory: bool,
    /// Postgres database, queue stream and event prefix created for this run.
    created: Option<(String, String, String)>,
    /// The data directory of `nightshift dev`, the logs of the distributed processes.
    dir: Option<tempfile::TempDir>,
}

/// The directory of the release binaries: the harness's own.
pub fn binaries(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match explicit {
        Some(d) => d.to_owned(),
        None => std::env::current_exe()?.parent().context("the harness binary has no directory")?.to_owned(),
    };
    Ok(dir)
}

fn binary(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build it (cargo build --release -p nightshift-cli -p nightshift-manager \
         -p nightshift-scheduler -p nightshift-worker -p nightshift-memory -p nightshift-events)",
        path.display()
    );
    Ok(path)
}

/// The all-MiniLM-L6-v2 directory `nightshift dev` uses by default, if it was fetched.
fn minilm() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/nightshift-models/all-minilm-l6-v2-0.1.0"))
        .filter(|d| d.join("model.safetensors").is_file())
}

/// The RUST_LOG of the measured processes: `NIGHTSHIFT_BENCH_DEV_LOG` (a RUST_LOG filter, e.g.
/// `sqlx::query=debug`) looks inside.
fn log_filter() -> String {
    std::env::var("NIGHTSHIFT_BENCH_DEV_LOG").unwrap_or_else(|_| "warn".into())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_port(name: &str, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{name} does not listen on {port} after 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

impl Deployed {
    pub async fn start(kind: Deployment, bin_dir: &Path, workers: usize) -> anyhow::Result<Self> {
        match kind {
            Deployment::Dev => Self::dev(bin_dir).await,
            Deployment::Distributed => Self::distributed(bin_dir, workers).await,
        }
    }

    async fn dev(bin_dir: &Path) -> anyhow::Result<Self> {
        let binary = binary(bin_dir, "nightshift")?;
        let dir = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(&binary)
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", log_filter())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} dev", binary.display()))?;
        let pid = child.id().context("nightshift dev has no pid")?;
        let stdout = child.stdout.take().context("nightshift dev has no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("nightshift dev did not print its address within 120 s")??
            .context("nightshift dev exited before printing its address")?;
        let addr = line
            .strip_prefix("nightshift dev listening on ")
            .and_then(|r| r.split_whitespace().next())
            .with_context(|| format!("unexpected first line of nightshift dev: {line}"))?;
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let endpoint = format!("http://{addr}");
        Ok(Self {
            procs: vec![Proc { name: "nightshift dev".into(), pid, _child: child }],
            manager: endpoint.clone(),
            events: endpoint,
            semantic_memory: minilm().is_some(),
            created: None,
            dir: Some(dir),
        })
    }

    /// The five binaries as `docker-compose.yml` wires them, without TLS and authentication (as
    /// `nightshift dev` on loopback): one manager, one scheduler, one event service and one
    /// memory service, `workers` workers at their default concurrency. Runs, schedules and
    /// episodic / long-term / procedural memory in one fresh Postgres database; the work queue
    /// and the event log on NATS JetStream; working memory in the memory process; semantic search
    /// with the in-process index and MiniLM when it was fetched, as `nightshift dev`.
    async fn distributed(bin_dir: &Path, workers: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let db = nightshift_testkit::postgres_url().await;
        let unique = format!("e2e-{}", uuid::Uuid::new_v4().simple());
        let (queue, prefix) = (unique.clone(), unique.replace('-', "_"));
        let nats = crate::backend::NATS_URL;
        let model = minilm();
        let (pe, pm, ps, pmem) = (free_port()?, free_port()?, free_port()?, free_port()?);
        let at = |port: u16| format!("http://127.0.0.1:{port}");
        let queue_env = |role: &str| {
            vec![
                (format!("NIGHTSHIFT_{role}_QUEUE_URL"), nats.to_owned()),
                (format!("NIGHTSHIFT_{role}_QUEUE_NAME"), queue.clone()),
                (format!("NIGHTSHIFT_{role}_EVENTS_ENDPOINT"), at(pe)),
            ]
        };
        let mut procs = Vec::new();
        let mut spawn = |name: String, bin: &str, env: Vec<(String, String)>| -> anyhow::Result<()> {
            let role = bin.trim_start_matches("nightshift-").to_uppercase();
            let log = std::fs::File::create(dir.path().join(format!("{name}.log")))?;
            let child = tokio::process::Command::new(binary(bin_dir, bin)?)
                .env("RUST_LOG", log_filter())
                .env(format!("NIGHTSHIFT_{role}_AUTH__MODE"), "off")
                .envs(env)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {bin}"))?;
            let pid = child.id().with_context(|| format!("{bin} has no pid"))?;
            procs.push(Proc { name, pid, _child: child });
            Ok(())
        };
        spawn(
            "events".into(),
            "nightshift-events",
            vec![
                ("NIGHTSHIFT_EVENTS_LISTEN".into(), format!("127.0.0.1:{pe}")),
                ("NIGHTSHIFT_EVENTS_BACKEND_URL".into(), nats.into()),
                ("NIGHTSHIFT_EVENTS_PREFIX".into(), prefix.clone()),
            ],
        )?;
        let mut memory = vec![("NIGHTSHIFT_MEMORY_LISTEN".to_owned(), format!("127.0.0.1:{pmem}"))];
        for kind in ["EPISODIC", "LONG_TERM", "PROCEDURAL"] {
            memory.push((format!("NIGHTSHIFT_MEMORY_STORES__{kind}"), db.clone()));
        }
        if let Some(model) = &model {
            memory.extend([
                ("NIGHTSHIFT_MEMORY_VECTOR__URL".into(), "inprocess://".into()),
                ("NIGHTSHIFT_MEMORY_EMBEDDER__KIND".into(), "minilm".into()),
                ("NIGHTSHIFT_MEMORY_EMBEDDER__MODEL_PATH".into(), model.display().to_string()),
            ]);
        }
        spawn("memory".into(), "nightshift-memory", memory)?;
        let mut manager = queue_env("MANAGER");
        manager.extend([
            ("NIGHTSHIFT_MANAGER_LISTEN".into(), format!("127.0.0.1:{pm}")),
            ("NIGHTSHIFT_MANAGER_DATABASE_URL".into(), db.clone()),
            ("NIGHTSHIFT_MANAGER_SCHEDULER_ENDPOINT".into(), at(ps)),
            // The instant LLM is on loopback: the operator allows private addresses.
            ("NIGHTSHIFT_MANAGER_WORKER_ALLOW__PRIVATE_EGRESS".into(), "[\"*\"]".into()),
        ]);
        spawn("manager".into(), "nightshift-manager", manager)?;
        // The manager creates the schema; the other roles that use the database start after it.
        wait_port("nightshift-manager", pm).await?;
        let mut scheduler = queue_env("SCHEDULER");
        scheduler.extend([
            ("NIGHTSHIFT_SCHEDULER_LISTEN".into(), format!("127.0.0.1:{ps}")),
            ("NIGHTSHIFT_SCHEDULER_DATABASE_URL".into(), db.clone()),
        ]);
        spawn("scheduler".into(), "nightshift-scheduler", scheduler)?;
        let mut worker_ports = Vec::new();
        for i in 0..workers {
            let port = free_port()?;
            let mut env = queue_env("WORKER");
            env.extend([
                ("NIGHTSHIFT_WORKER_LISTEN".into(), format!("127.0.0.1:{port}")),
                ("NIGHTSHIFT_WORKER_MANAGER_ENDPOINT".into(), at(pm)),
                ("NIGHTSHIFT_WORKER_MEMORY_ENDPOINT".into(), at(pmem)),
                ("NIGHTSHIFT_WORKER_WORKER_ID".into(), format!("w{i}")),
                ("NIGHTSHIFT_WORKER_ALLOW__PRIVATE_EGRESS".into(), "[\"*\"]".into()),
            ]);
            spawn(format!("worker w{i}"), "nightshift-worker", env)?;
            worker_ports.push(port);
        }
        for (name, port) in [("nightshift-events", pe), ("nightshift-memory", pmem), ("nightshift-scheduler", ps)]
            .into_iter()
            .chain(worker_ports.into_iter().map(|p| ("nightshift-worker", p)))
        {
            wait_port(name, port).await?;
        }
        if std::env::var_os("NIGHTSHIFT_BENCH_DEV_LOG").is_some() {
            eprintln!("   the processes' logs: {}", dir.path().display());
        }
        let db_name = db.rsplit_once('/').map(|(_, d)| d.to_owned()).unwrap_or_default();
        Ok(Self {
            procs,
            manager: at(pm),
            events: at(pe),
            semantic_memory: model.is_some(),
            created: Some((db_name, queue, format!("{prefix}_events"))),
            dir: Some(dir),
        })
    }

    /// CPU time used so far by each process, by name.
    pub fn cpu_by_process(&self) -> Vec<(String, Duration)> {
        self.procs.iter().map(|p| (p.name.clone(), sys::cpu_time_of(p.pid))).collect()
    }

    /// Resident memory of every process of the deployment together, in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.procs.iter().filter_map(|p| sys::rss_mib_of_pid(p.pid)).sum()
    }

    /// The Postgres database's commits and rolled-back transactions so far (`pg_stat_database`:
    /// every statement outside a transaction counts as one), or `None` for `nightshift dev`.
    pub async fn postgres_transactions(&self) -> anyhow::Result<Option<i64>> {
        use sqlx::Connection;
        let Some((db, _, _)) = &self.created else { return Ok(None) };
        let mut conn = sqlx::PgConnection::connect(&nightshift_testkit::postgres_admin_url()).await?;
        let n: i64 =
            sqlx::query_scalar("SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1")
                .bind(db)
                .fetch_one(&mut conn)
                .await?;
        Ok(Some(n))
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.pid).collect()
    }

    /// Kills the processes and removes the database and NATS streams the deployment created
    /// (and the processes' logs, unless `NIGHTSHIFT_BENCH_DEV_LOG` asked to look inside).
    pub async fn close(mut self) {
        let created = self.created.take();
        if std::env::var_os("NIGHTSHIFT_BENCH_DEV_LOG").is_some()
            && let Some(dir) = self.dir.take()
        {
            let _ = dir.keep();
        }
        drop(self);
        let Some((db, queue, events)) = created else { return };
        if let Err(e) = crate::backend::drop_database(&db).await {
            eprintln!("warning: could not drop benchmark database {db}: {e:#}");
        }
        for stream in [queue, events] {
            if let Err(e) = crate::backend::delete_stream(&stream).await {
                eprintln!("warning: could not remove the NATS stream {stream}: {e:#}");
            }
        }
    }
}
