//! `DevConfig`: the options of `nightshift dev`, one section per role (the same sections the
//! role binaries read), from which the roles' options are derived. Dev decides only the
//! addresses (every role on one port, its gRPC clients to the others routed in-process) and the shared
//! embedded backends (one store, one in-process queue); everything else a distributed user can
//! configure, a dev user can too.
use std::path::{Path, PathBuf};

use nightshift_console::ConsoleConfig;
use nightshift_core::operator_policy::OperatorPolicy;
use nightshift_events::EventsConfig;
use nightshift_manager::ManagerConfig;
use nightshift_memory::MemoryConfig;
use nightshift_memory::config::EmbedderKind;
use nightshift_queue::QueueSettings;
use nightshift_rpc::{AuthMode, AuthOptions, InProcess, ServerOptions};
use nightshift_scheduler::SchedulerConfig;
use nightshift_worker::WorkerConfig;
use serde::{Deserialize, Serialize};

/// `nightshift dev --config dev.toml`; every key can also be set as `NIGHTSHIFT_DEV_<KEY>`,
/// nested keys joined with `__` (`NIGHTSHIFT_DEV_WORKER__CONCURRENCY=4`). Command-line flags
/// override both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevConfig {
    /// `listen` (the one port of every role), `metrics_listen`, `log_format`.
    #[serde(flatten)]
    pub server: ServerOptions,
    /// Directory of the embedded SQLite database.
    pub data_dir: PathBuf,
    /// A database instead of the SQLite file under `data_dir` (empty = that file).
    pub database_url: String,
    /// Directory of the all-MiniLM-L6-v2 model for semantic memory search; empty = the one
    /// `crates/memory/scripts/fetch-model.sh` fills, if present (otherwise search is off).
    pub memory_model: String,
    /// The manager's options (`default_lease_ttl`, …).
    pub manager: ManagerConfig,
    /// The scheduler's options (shards, misfire grace, prepare-ahead, …).
    pub scheduler: SchedulerConfig,
    /// The worker's options (`concurrency`, `lease_ttl`, `tools` allow-list, …).
    pub worker: WorkerConfig,
    /// The memory service's options; stores left at their defaults use the dev database.
    pub memory: MemoryConfig,
    /// The event service's options (`backend_url`, retention, the `[events.alerts]` webhook and
    /// the `[events.sink]` file, …).
    pub events: EventsConfig,
    /// The console's options (`session_ttl`, `trace_url`, …); it is served on the one port.
    pub console: ConsoleConfig,
}

impl Default for DevConfig {
    fn default() -> Self {
        Self {
            // On loopback a laptop's dev process runs without authentication (one log line says
            // so); any other address is refused unless `[auth]` is configured.
            server: ServerOptions {
                auth: AuthOptions { mode: AuthMode::Off, ..AuthOptions::default() },
                ..ServerOptions::listening_on("127.0.0.1:50051")
            },
            data_dir: PathBuf::from(".nightshift"),
            database_url: String::new(),
            memory_model: String::new(),
            manager: ManagerConfig::default(),
            scheduler: SchedulerConfig::default(),
            worker: WorkerConfig::default(),
            memory: MemoryConfig::default(),
            events: EventsConfig::default(),
            console: ConsoleConfig::default(),
        }
    }
}

/// What dev decides for every role of the process.
pub struct DevWiring {
    /// The database every role shares.
    pub database_url: String,
    /// The database of the memory stores left at their defaults ([`DevConfig::memory_database_url`]).
    pub memory_database_url: String,
    /// The in-process queue every role shares (`memory://NAME`); its name and ack wait are the
    /// `[worker]` section's, for every role (one in-process queue has one setting).
    pub queue_url: String,
    /// `http://ADDR` of this process's one port.
    pub endpoint: String,
    /// The roles' calls to `endpoint`, made in-process (the port serves everyone else).
    pub in_process: InProcess,
}

impl DevConfig {
    /// Keys of the role sections that dev decides itself, named so that a user who sets one
    /// learns it is ignored instead of wondering.
    pub fn ignored_keys(&self) -> Vec<String> {
        let mut ignored = Vec::new();
        let mut check = |section: &str, key: &str, differs: bool| {
            if differs {
                ignored.push(format!("{section}.{key}"));
            }
        };
        let (m, s, w) = (ManagerConfig::default(), SchedulerConfig::default(), WorkerConfig::default());
        let (mem, ev, con) = (MemoryConfig::default(), EventsConfig::default(), ConsoleConfig::default());
        for (section, server, default) in [
            ("manager", &self.manager.server, &m.server),
            ("scheduler", &self.scheduler.server, &s.server),
            ("worker", &self.worker.server, &w.server),
            ("memory", &self.memory.server, &mem.server),
            ("events", &self.events.server, &ev.server),
            ("console", &self.console.server, &con.server),
        ] {
            check(section, "listen, metrics_listen or log_format (set them at the top level)", server != default);
        }
        check("manager", "database_url", self.manager.database_url != m.database_url);
        check("scheduler", "database_url", self.scheduler.database_url != s.database_url);
        // One in-process queue: its URL is dev's, its name and ack wait the [worker] section's.
        check("manager", "queue_* (dev uses [worker]'s)", self.manager.queue != m.queue);
        check("scheduler", "queue_* (dev uses [worker]'s)", self.scheduler.queue != s.queue);
        check("worker", "queue_url", self.worker.queue.url != w.queue.url);
        check("manager", "scheduler_endpoint", self.manager.scheduler_endpoint != m.scheduler_endpoint);
        check("console", "worker_endpoints", self.console.worker_endpoints != con.worker_endpoints);
        check("manager", "worker_allow (dev uses [worker.allow])", self.manager.worker_allow != m.worker_allow);
        for (section, value, default) in [
            ("manager", &self.manager.events_endpoint, &m.events_endpoint),
            ("scheduler", &self.scheduler.events_endpoint, &s.events_endpoint),
            ("worker", &self.worker.events_endpoint, &w.events_endpoint),
            ("worker", &self.worker.manager_endpoint, &w.manager_endpoint),
            ("worker", &self.worker.memory_endpoint, &w.memory_endpoint),
            ("console", &self.console.manager_endpoint, &con.manager_endpoint),
            ("console", &self.console.events_endpoint, &con.events_endpoint),
            ("console", &self.console.scheduler_endpoint, &con.scheduler_endpoint),
            ("console", &self.console.memory_endpoint, &con.memory_endpoint),
        ] {
            check(section, "*_endpoint", value != default);
        }
        ignored
    }

    /// The worker's file root when none is configured: `<data_dir>/files`.
    pub fn dev_file_root(&self) -> PathBuf {
        self.data_dir.join("files")
    }

    /// Where the memory stores left at their defaults keep their records. With the default
    /// SQLite database, a SQLite file of their own (`memory.db`): SQLite has one write lock per
    /// file, and the memory service's writes queued behind the run store's (and the reverse)
    /// made every run wait (`nightshift-bench e2e`, 500 agents: 300 → 465 runs/s). A data
    /// directory from before keeps its memory where it is, in `nightshift.db` (checked before the
    /// database is opened). A configured `database_url` (Postgres) is shared.
    pub fn memory_database_url(&self) -> String {
        if !self.database_url.is_empty() {
            return self.database_url.clone();
        }
        let (runs, memory) = (self.data_dir.join("nightshift.db"), self.data_dir.join("memory.db"));
        if runs.exists() && !memory.exists() {
            return self.database_url();
        }
        format!("sqlite://{}", memory.display())
    }

    /// The database URL: `database_url`, or the SQLite file under `data_dir`.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("nightshift.db").display())
        } else {
            self.database_url.clone()
        }
    }

    fn server(&self, w: &DevWiring) -> ServerOptions {
        // The roles are mounted on the process's server; their own listeners are not opened.
        // They call each other in-process, through the server's auth layer: with
        // authentication on, with the bootstrap admin key (they are one process, trusted alike).
        let mut server = ServerOptions { in_process: w.in_process.clone(), ..self.server.clone() };
        if server.auth.mode == AuthMode::Required {
            server.auth.api_key_file = server.auth.bootstrap_admin_key_file.clone();
        }
        server
    }

    /// What agents may make the worker do: `[worker.allow]` as configured; left at its default
    /// on a loopback process without authentication, everything (the person at the keyboard is
    /// the operator: their agents may run their MCP servers, read their API keys and reach their
    /// local LLM server).
    pub fn worker_allow(&self) -> OperatorPolicy {
        let open = self.server.auth.mode == AuthMode::Off && nightshift_rpc::is_loopback(&self.server.listen);
        if open && self.worker.allow == OperatorPolicy::default() {
            OperatorPolicy::trusting()
        } else {
            self.worker.allow.clone()
        }
    }

    /// The queue every role uses.
    fn queue(&self, w: &DevWiring) -> QueueSettings {
        QueueSettings { url: w.queue_url.clone(), ..self.worker.queue.clone() }
    }

    /// The manager's options: the shared database and queue; schedule changes go to the
    /// scheduler in this process directly, events to this port.
    pub fn manager_options(&self, w: &DevWiring) -> ManagerConfig {
        ManagerConfig {
            server: self.server(w),
            database_url: w.database_url.clone(),
            queue: self.queue(w),
            scheduler_endpoint: String::new(),
            events_endpoint: w.endpoint.clone(),
            worker_allow: self.worker_allow(),
            ..self.manager.clone()
        }
    }

    /// The scheduler's options: the shared database and queue, events to this port.
    pub fn scheduler_options(&self, w: &DevWiring) -> SchedulerConfig {
        SchedulerConfig {
            server: self.server(w),
            database_url: w.database_url.clone(),
            queue: self.queue(w),
            events_endpoint: w.endpoint.clone(),
            ..self.scheduler.clone()
        }
    }

    /// The worker's options: the shared queue; manager, memory, events and its own service on
    /// this port.
    pub fn worker_options(&self, w: &DevWiring) -> WorkerConfig {
        let mut tools = self.worker.tools.clone();
        // File tools work out of the box, confined to a directory of the dev data dir.
        tools.file_root.get_or_insert_with(|| self.dev_file_root());
        WorkerConfig {
            tools,
            server: self.server(w),
            queue: self.queue(w),
            manager_endpoint: w.endpoint.clone(),
            memory_endpoint: w.endpoint.clone(),
            events_endpoint: w.endpoint.clone(),
            // The worker's service is mounted on this port too.
            advertise_endpoint: w.endpoint.clone(),
            allow: self.worker_allow(),
            ..self.worker.clone()
        }
    }

    /// The console's options: the manager and the event service on this port.
    pub fn console_options(&self, w: &DevWiring) -> ConsoleConfig {
        ConsoleConfig {
            server: self.server(w),
            manager_endpoint: w.endpoint.clone(),
            events_endpoint: w.endpoint.clone(),
            scheduler_endpoint: w.endpoint.clone(),
            memory_endpoint: w.endpoint.clone(),
            worker_endpoints: vec![w.endpoint.clone()],
            // Every role shares this process's recorder.
            metrics_local: true,
            ..self.console.clone()
        }
    }

    /// The event service's options as configured (in-memory log by default), with its
    /// `[events.alerts]` and `[events.sink]` consumers if set.
    pub fn events_options(&self, w: &DevWiring) -> EventsConfig {
        EventsConfig { server: self.server(w), ..self.events.clone() }
    }

    /// The memory service's options: each store left at its default keeps episodic, long-term and
    /// procedural memory in the dev memory database (working memory in the process); with no vector
    /// index and no embedder configured, semantic search uses an in-process index and the
    /// embedded MiniLM model when its files are at hand (`model`), and is off otherwise.
    pub fn memory_options(&self, w: &DevWiring, model: Option<&Path>) -> MemoryConfig {
        let mut cfg = MemoryConfig { server: self.server(w), ..self.memory.clone() };
        let defaults = MemoryConfig::default().stores;
        for (store, default, dev) in [
            (&mut cfg.stores.working, &defaults.working, "memory://"),
            (&mut cfg.stores.episodic, &defaults.episodic, w.memory_database_url.as_str()),
            (&mut cfg.stores.long_term, &defaults.long_term, w.memory_database_url.as_str()),
            (&mut cfg.stores.procedural, &defaults.procedural, w.memory_database_url.as_str()),
        ] {
            if store == default {
                dev.clone_into(store);
            }
        }
        if cfg.vector.url.is_empty()
            && cfg.embedder.kind == EmbedderKind::None
            && let Some(dir) = model
        {
            cfg.vector.url = "inprocess://".into();
            cfg.embedder.kind = EmbedderKind::MiniLm;
            cfg.embedder.model_path = dir.display().to_string();
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `text` as `nightshift dev --config` does (defaults, then the file).
    fn load(text: &str) -> DevConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.toml");
        std::fs::write(&path, text).unwrap();
        nightshift_core::config::load(Some(&path), "NIGHTSHIFT_DEV_TEST_UNSET").unwrap()
    }

    fn wiring() -> DevWiring {
        DevWiring {
            database_url: "sqlite://d/nightshift.db".into(),
            memory_database_url: "sqlite://d/memory.db".into(),
            queue_url: "memory://dev-1".into(),
            endpoint: "http://127.0.0.1:5".into(),
            in_process: InProcess::to("http://127.0.0.1:5"),
        }
    }

    #[test]
    fn role_options_keep_what_the_user_set_and_take_devs_addresses() {
        let text = r#"
            listen = "127.0.0.1:0"
            [worker]
            concurrency = 3
            queue_url = "nats://elsewhere:4222"
            [worker.tools]
            local = ["get_system_info"]
            [scheduler]
            shard_count = 8
            [manager]
            default_lease_ttl = "45s"
        "#;
        let cfg = load(text);
        let w = wiring();
        let worker = cfg.worker_options(&w);
        assert_eq!(worker.concurrency, 3);
        let mut with_root = cfg.worker.tools.clone();
        with_root.file_root = Some(PathBuf::from(".nightshift/files"));
        assert_eq!(worker.tools, with_root, "the user's tool settings, file tools confined to the dev data dir");
        assert_eq!(worker.queue.url, "memory://dev-1");
        assert_eq!(worker.manager_endpoint, "http://127.0.0.1:5");
        assert_eq!(worker.memory_endpoint, "http://127.0.0.1:5");
        assert_eq!(cfg.scheduler_options(&w).shard_count, 8);
        let manager = cfg.manager_options(&w);
        assert_eq!(manager.default_lease_ttl, std::time::Duration::from_secs(45));
        assert_eq!(manager.database_url, "sqlite://d/nightshift.db");
        assert_eq!(cfg.ignored_keys(), vec!["worker.queue_url".to_owned()]);
        assert_eq!(manager.queue, worker.queue, "one in-process queue, one setting");
    }

    #[test]
    fn memory_uses_the_dev_database_unless_configured() {
        let w = wiring();
        let dir = PathBuf::from("/models/minilm");
        let mem = DevConfig::default().memory_options(&w, Some(&dir));
        assert_eq!(mem.stores.episodic, w.memory_database_url);
        assert_eq!(mem.stores.working, "memory://");
        assert_eq!(mem.vector.url, "inprocess://");
        assert_eq!(mem.embedder.kind, EmbedderKind::MiniLm);
        let off = DevConfig::default().memory_options(&w, None);
        assert_eq!(off.vector.url, "");
        let mut own = DevConfig::default();
        own.memory.embedder.kind = EmbedderKind::OpenAi;
        assert_eq!(
            own.memory_options(&w, Some(&dir)).embedder.kind,
            EmbedderKind::OpenAi,
            "a configured embedder stays"
        );

        let mut cfg = DevConfig::default();
        cfg.memory.stores.episodic = "redis://127.0.0.1:6379".into();
        cfg.memory.vector.url = "qdrant://127.0.0.1:6334/c".into();
        let mem = cfg.memory_options(&w, Some(&dir));
        assert_eq!(mem.stores.episodic, "redis://127.0.0.1:6379");
        assert_eq!(mem.stores.long_term, w.memory_database_url);
        assert_eq!(mem.vector.url, "qdrant://127.0.0.1:6334/c");
    }

    #[test]
    fn memory_gets_its_own_sqlite_file_except_in_a_data_directory_from_before() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DevConfig { data_dir: dir.path().to_owned(), ..DevConfig::default() };
        let own = format!("sqlite://{}", dir.path().join("memory.db").display());
        assert_eq!(cfg.memory_database_url(), own, "a new data directory");
        std::fs::write(dir.path().join("nightshift.db"), b"").unwrap();
        assert_eq!(cfg.memory_database_url(), cfg.database_url(), "memory stays where an earlier release kept it");
        std::fs::write(dir.path().join("memory.db"), b"").unwrap();
        assert_eq!(cfg.memory_database_url(), own);
        let pg = DevConfig { database_url: "postgres://db/x".into(), ..DevConfig::default() };
        assert_eq!(pg.memory_database_url(), "postgres://db/x", "a configured database is shared");
    }

    #[test]
    fn event_consumers_pass_through() {
        let text = r#"
            [events.alerts]
            webhook_url = "http://127.0.0.1:9/hook"
            consecutive_failures = 2
            [events.sink]
            path = "/tmp/ns-events.jsonl"
        "#;
        let cfg = load(text);
        let events = cfg.events_options(&wiring());
        let expected = nightshift_events::AlertPolicy {
            webhook_url: "http://127.0.0.1:9/hook".into(),
            consecutive_failures: 2,
            ..nightshift_events::AlertPolicy::default()
        };
        assert_eq!(events.alerts, Some(expected), "[events.alerts] reaches the events role, unset keys defaulted");
        assert_eq!(events.sink.map(|s| s.path), Some(PathBuf::from("/tmp/ns-events.jsonl")));
        assert!(cfg.ignored_keys().is_empty(), "{:?}", cfg.ignored_keys());
        let off = DevConfig::default().events_options(&wiring());
        assert_eq!((off.alerts, off.sink), (None, None), "off unless configured");
    }

    #[test]
    fn sections_keep_their_roles_defaults() {
        let cfg = load("[worker]\nconcurrency = 2\n[manager]\ndefault_lease_ttl = \"45s\"");
        assert_eq!(cfg.worker.server, WorkerConfig::default().server);
        assert_eq!(cfg.manager.queue, ManagerConfig::default().queue, "the manager has no queue by default");
        assert!(cfg.ignored_keys().is_empty(), "{:?}", cfg.ignored_keys());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.toml");
        // A typo in a role section, at the top level, and in a flattened section's keys.
        for (text, key) in [
            ("[worker]\nconcurency = 3", "concurency"),
            ("lisen = 'x'", "lisen"),
            ("[worker]\nqueue_nam = 'x'", "queue_nam"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = nightshift_core::config::load::<DevConfig>(Some(&path), "NIGHTSHIFT_DEV_TEST_UNSET")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
