//! Command-line syntax.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nightshift_telemetry::LogFormat;

/// Nightshift: background LLM agents on a schedule.
#[derive(Parser, Debug)]
#[command(name = "nightshift", version, about)]
pub struct Cli {
    /// Manager endpoint.
    #[arg(long, global = true, env = "NIGHTSHIFT_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// PEM CA bundle the server's certificate must chain to, for an `https://` endpoint
    /// (default: the system's roots).
    #[arg(long, global = true, env = "NIGHTSHIFT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that requires mutual TLS (with `--tls-key`).
    #[arg(long, global = true, env = "NIGHTSHIFT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, global = true, env = "NIGHTSHIFT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// API key or bearer token sent with every call (see `nightshift auth key create`).
    #[arg(long, global = true, env = "NIGHTSHIFT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A file holding the API key (a mounted secret), when --api-key is not given.
    #[arg(long, global = true, env = "NIGHTSHIFT_API_KEY_FILE", conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,
    /// The namespace of the agents named by the command, and the only one listed; manifests
    /// without a `namespace:` are applied into it. Default: `default` for names, every
    /// namespace your credential holds for lists.
    #[arg(long, short = 'n', global = true, env = "NIGHTSHIFT_NAMESPACE")]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Log format of `nightshift dev`: text or json (default: its config's `log_format`, text).
    #[arg(long, global = true, value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable table.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every service in one process on embedded defaults (SQLite under --data-dir).
    Dev(DevArgs),
    /// Manage agents.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Inspect and cancel runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Tool calls waiting for a person: list, approve (optionally with edited arguments), deny.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// What LLM calls cost (the ledger), summed by agent, model or namespace.
    Costs {
        /// What to sum by.
        #[arg(long, value_parser = ["agent", "model", "namespace"], default_value = "agent")]
        by: String,
        /// Only calls within this long before now (`7d`, `24h`, `30m`); all when absent.
        #[arg(long)]
        since: Option<String>,
    },
    /// Read the event stream.
    #[command(subcommand)]
    Events(EventsCommand),
    /// API keys and the identity of the CLI's credential.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Models of `provider: embedded`: fetch them into the model cache, list them.
    #[command(subcommand)]
    Models(ModelsCommand),
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Create, list and revoke API keys (admin).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Who the CLI's credential is, and its role.
    Whoami,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key; it is printed once and stored only as a hash.
    Create {
        /// A name for lists and audit (letters, digits, '-', '_', '.').
        name: String,
        /// admin, operator, viewer, worker or service.
        #[arg(long)]
        role: String,
        /// Lifetime, e.g. 90d or 12h (default: no expiry).
        #[arg(long)]
        ttl: Option<String>,
        /// Namespaces it acts in, comma-separated, or '*' for all (default: all for admin,
        /// worker and service keys, `default` for operator and viewer keys).
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
    },
    /// Every key, without secrets.
    List,
    /// Revoke a key by id: every server refuses it within seconds.
    Revoke {
        /// The key's id (the 12 hex digits after `nsk_`).
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Download a model into the cache (NIGHTSHIFT_MODEL_CACHE, else
    /// ~/.cache/nightshift-models) and verify its SHA-256; a no-op when it is there.
    Pull {
        /// A catalog name (smollm2-135m-instruct), or a GGUF file to download: an https:// URL,
        /// or hf:OWNER/REPO/PATH/FILE.gguf[@REVISION] for a Hugging Face repository.
        name: String,
        /// For a URL: the file's expected SHA-256 (hex). Without it, the checksum of the first
        /// download is recorded and printed.
        #[arg(long)]
        sha256: Option<String>,
        /// For a URL: the name agents use for the model (default: the file name, lowercased,
        /// without .gguf).
        #[arg(long = "as", value_name = "NAME")]
        as_name: Option<String>,
    },
    /// The catalog models and the models pulled from URLs, and whether each is in the cache.
    List,
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Print events (oldest first); with --follow keep printing new ones.
    Tail {
        /// Only events of this agent (name; repeatable).
        #[arg(long)]
        agent: Vec<String>,
        /// Only events of this run (repeatable).
        #[arg(long)]
        run: Vec<String>,
        /// Only events of this type, e.g. BACKGROUND_TASK_ERROR (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Start strictly after this cursor (as printed by a previous tail).
        #[arg(long, conflicts_with = "since")]
        from: Option<String>,
        /// Start at this RFC 3339 instant.
        #[arg(long)]
        since: Option<String>,
        /// Keep following new events.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// TOML file with the dev options (see config/dev.toml): top-level `listen`, `data_dir`,
    /// `database_url`, `metrics_listen`, `log_format`, `memory_model`, and one section per role
    /// (`[worker]`, `[scheduler]`, `[manager]`, `[memory]`, `[events]`) with that role's options.
    /// Env: NIGHTSHIFT_DEV_<KEY> (nested keys joined with `__`). The flags below override it.
    #[arg(long, env = "NIGHTSHIFT_DEV_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address (default 127.0.0.1:50051; port 0 picks a free port; the bound
    /// address is printed).
    #[arg(long)]
    pub listen: Option<String>,
    /// Directory for the embedded database (default .nightshift).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use this database instead of the SQLite file under --data-dir.
    #[arg(long, env = "NIGHTSHIFT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Apply agent manifests (file or directory) at start-up.
    #[arg(long = "apply", short = 'f')]
    pub apply: Vec<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9090).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Directory of the all-MiniLM-L6-v2 model for semantic memory search (default: the one
    /// crates/memory/scripts/fetch-model.sh fills, if present; otherwise search is off). Env:
    /// NIGHTSHIFT_DEV_MEMORY_MODEL (a NIGHTSHIFT_MEMORY_* name would be read by nightshift-memory).
    #[arg(long)]
    pub memory_model: Option<PathBuf>,
}

impl DevArgs {
    /// Flags given on the command line override the config file and environment.
    pub(crate) fn apply_to(&self, cfg: &mut crate::dev::DevConfig, log_format: Option<LogFormat>) {
        if let Some(listen) = &self.listen {
            cfg.server.listen.clone_from(listen);
        }
        if let Some(dir) = &self.data_dir {
            cfg.data_dir.clone_from(dir);
        }
        if let Some(url) = &self.database_url {
            cfg.database_url.clone_from(url);
        }
        if let Some(addr) = &self.metrics_listen {
            cfg.server.metrics_listen.clone_from(addr);
        }
        if let Some(dir) = &self.memory_model {
            cfg.memory_model = dir.display().to_string();
        }
        if let Some(format) = log_format {
            cfg.server.log_format = format;
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Create or update agents from YAML manifests (files or directories).
    Apply {
        /// Manifest file or directory of *.yaml / *.yml (repeatable).
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// List agents.
    List {
        /// Only agents with this label (KEY=VALUE, repeatable).
        #[arg(long = "label", short = 'l', value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Only agents in this state.
        #[arg(long, value_parser = ["active", "paused"])]
        state: Option<String>,
    },
    /// Show an agent's spec.
    Get { name: String },
    /// Show an agent's run statistics.
    Status { name: String },
    /// Stop scheduling an agent.
    Pause { name: String },
    /// Resume a paused agent.
    Resume { name: String },
    /// Delete an agent with its runs.
    Delete { name: String },
    /// Start a run now.
    Trigger {
        name: String,
        /// Replace the task query for this run.
        #[arg(long)]
        query: Option<String>,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// Approval requests, newest first (pending ones unless --status says otherwise).
    List {
        /// Only these states (repeatable).
        #[arg(long, value_parser = ["pending", "approved", "denied", "expired"])]
        status: Vec<String>,
        /// Only this run's.
        #[arg(long)]
        run: Option<String>,
        /// Maximum requests shown.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Approve a pending call; the run resumes on any worker and runs exactly this call.
    Approve {
        id: String,
        /// Run the call with these arguments (a JSON object) instead of the model's.
        #[arg(long)]
        args: Option<String>,
        /// Why (recorded).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny a pending call; the model is told, with the reason.
    Deny {
        id: String,
        /// Why (told to the model).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only runs of this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only runs in this status (repeatable).
        #[arg(long, value_parser = ["queued", "running", "awaiting_approval", "awaiting_budget", "succeeded", "failed", "skipped", "cancelled", "timed_out"])]
        status: Vec<String>,
        /// Maximum runs shown.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a run with its steps.
    Get { id: String },
    /// Follow a run live: each step as it is checkpointed, its state changes, until it ends.
    Watch {
        id: String,
        /// Resume after this cursor (`-o json` prints each item's).
        #[arg(long, default_value = "")]
        cursor: String,
    },
    /// Re-run an ended run as a new run linked to it: its steps before --from-step are reused
    /// (not paid again), the rest runs with --agent-version / --model; tools are served from
    /// the original's recording (frozen, the default) or run again (live).
    Replay {
        id: String,
        /// Reuse the original's steps below this seq (0 = start over).
        #[arg(long, default_value_t = 0)]
        from_step: u32,
        /// Run this version of the agent (default: the original's).
        #[arg(long, default_value_t = 0)]
        agent_version: u64,
        /// Ask this model instead (same provider).
        #[arg(long, default_value = "")]
        model: String,
        /// frozen: tool calls answered from the original's recording, others refused; live: run them.
        #[arg(long, default_value = "frozen", value_parser = ["frozen", "live"])]
        tools: String,
        /// Frozen: let calls not in the recording run live when their tool is read-only or idempotent.
        #[arg(long)]
        live_reads: bool,
        /// Store the replay's result as an episode in the agent's memory.
        #[arg(long)]
        store_memory: bool,
        /// Follow the replay until it ends (like `runs watch`).
        #[arg(long)]
        watch: bool,
    },
    /// Compare two runs: answers, tool calls (same, changed arguments, removed, added), tokens,
    /// cost and duration. With --agent and --last N instead: replay the agent's last N ended runs
    /// (from the start, tools frozen) with --agent-version / --model, and summarize what changed.
    Diff {
        /// The first run (A).
        #[arg(required_unless_present = "agent")]
        a: Option<String>,
        /// The second run (B).
        #[arg(required_unless_present = "agent")]
        b: Option<String>,
        /// The agent whose last runs are replayed.
        #[arg(long, conflicts_with_all = ["a", "b"], requires = "last")]
        agent: Option<String>,
        /// How many of its last ended runs.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        last: Option<u32>,
        /// The version the replays run (default: each run's own).
        #[arg(long, default_value_t = 0)]
        agent_version: u64,
        /// The model the replays ask (default: the version's).
        #[arg(long, default_value = "")]
        model: String,
    },
    /// Cancel a queued or running run.
    Cancel {
        id: String,
        /// Reason recorded on the run.
        #[arg(long)]
        reason: Option<String>,
    },
}
