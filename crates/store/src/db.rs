//! Connecting, migrating, and the row decoding shared by the repositories.
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use nightshift_core::{AgentId, Clock, Namespace, RunId, RunStatus, SystemClock, TriggerKind, WorkerId, time};
use nightshift_sqlite::Columns;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::error::StoreError;
use crate::model::{RunRecord, StepRecord};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The SQL backend behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded file database.
    Sqlite,
    /// Production database.
    Postgres,
}

/// Handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    /// The committer of the run path's writes, which commits them in batches (group_commit.rs).
    pub(crate) writer: nightshift_sqlite::Writer,
    pub(crate) backend: Backend,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`), creating a SQLite file if
    /// needed, and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_clock(url, Arc::new(SystemClock)).await
    }

    /// Like [`Store::connect`] with an injected clock (tests).
    pub async fn connect_with_clock(url: &str, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("sqlite:") {
            let url = if url.contains('?') { url.to_owned() } else { format!("{url}?mode=rwc") };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::Invalid(format!(
                "unsupported database URL '{}': use sqlite://PATH or postgres://...",
                redact(url)
            )));
        };
        let pool = pool_options(backend, if backend == Backend::Sqlite { 4 } else { 16 }).connect(&url).await?;
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        // SQLite's run-path writes go through one connection of their own (group_commit.rs);
        // Postgres locks rows, so a few committers proceed side by side on the pool.
        let writer = match backend {
            Backend::Sqlite => {
                let own = nightshift_sqlite::open(&url, SQLITE_PRAGMAS)?;
                let pooled = pool_options(backend, 1).connect(&url).await?;
                nightshift_sqlite::Writer::Sqlite(
                    nightshift_sqlite::GroupWriter::start(pooled, own, "ns-run-writer")
                        .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?,
                )
            }
            Backend::Postgres => {
                nightshift_sqlite::Writer::Postgres(nightshift_sqlite::Committers::start(pool.clone()))
            }
        };
        tracing::info!(backend = ?backend, "store ready");
        Ok(Self { pool, writer, backend, clock })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks that the database answers (readiness probes).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    pub(crate) fn now_ms(&self) -> i64 {
        time::to_millis(self.clock.now())
    }
}

/// Every SQLite connection's own settings, after `nightshift_sqlite`'s.
const SQLITE_PRAGMAS: &[&str] = &["PRAGMA foreign_keys = ON"];

/// A pool of at most `max` connections; SQLite's set up for concurrent use.
fn pool_options(backend: Backend, max: u32) -> AnyPoolOptions {
    let options = AnyPoolOptions::new().max_connections(max).acquire_timeout(Duration::from_secs(30));
    match backend {
        Backend::Sqlite => nightshift_sqlite::configure(options, SQLITE_PRAGMAS),
        Backend::Postgres => options,
    }
}

/// Hides the password of a database URL in messages.
pub use nightshift_core::redact_url as redact;

pub(crate) const RUN_COLUMNS: &str = "r.id, r.agent_id, a.name AS agent_name, a.namespace AS agent_namespace, r.agent_version, r.status, \
    r.trigger_kind, r.scheduled_for, r.query_override, r.attempt, r.retries, r.worker_id, \
    r.lease_expires_at, r.not_before, r.created_at, r.started_at, r.finished_at, r.result, \
    r.error, r.reason, r.input_tokens, r.output_tokens, r.lost_leases, r.worker_endpoint, r.replay_of";

/// [`RUN_COLUMNS`] as an `UPDATE runs … RETURNING` gives them (the agent's name and namespace
/// by subqueries: RETURNING sees only the updated table, on both backends).
pub(crate) const RUN_RETURNING: &str = "id, agent_id, \
    (SELECT name FROM agents WHERE agents.id = runs.agent_id) AS agent_name, \
    (SELECT namespace FROM agents WHERE agents.id = runs.agent_id) AS agent_namespace, agent_version, status, \
    trigger_kind, scheduled_for, query_override, attempt, retries, worker_id, \
    lease_expires_at, not_before, created_at, started_at, finished_at, result, \
    error, reason, input_tokens, output_tokens, lost_leases, worker_endpoint, replay_of";

pub(crate) const STEPS_SQL: &str =
    "SELECT seq, attempt, kind, payload, created_at FROM run_steps WHERE run_id = $1 ORDER BY seq";

pub(crate) fn step_from_row(r: &AnyRow) -> Result<StepRecord, StoreError> {
    Ok(StepRecord {
        seq: u32_col(r, "seq")?,
        attempt: u32_col(r, "attempt")?,
        kind: r.try_get("kind")?,
        payload: r.try_get("payload")?,
        created_at: time::from_millis(r.try_get("created_at")?),
    })
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// A column that may not be NULL.
fn required<T>(value: Option<T>, col: &str) -> Result<T, StoreError> {
    value.ok_or_else(|| corrupt(col, "NULL"))
}

pub(crate) fn int_col(row: &impl Columns, col: &str) -> Result<i64, StoreError> {
    required(row.int(col)?, col)
}

fn text_col(row: &impl Columns, col: &str) -> Result<String, StoreError> {
    required(row.text(col)?, col)
}

pub(crate) fn u32_col(row: &impl Columns, col: &str) -> Result<u32, StoreError> {
    u32::try_from(int_col(row, col)?).map_err(|e| corrupt(col, e))
}

pub(crate) fn u64_col(row: &impl Columns, col: &str) -> Result<u64, StoreError> {
    u64::try_from(int_col(row, col)?).map_err(|e| corrupt(col, e))
}

pub(crate) fn time_col(row: &impl Columns, col: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
    Ok(row.int(col)?.map(time::from_millis))
}

pub(crate) fn run_from_row(row: &impl Columns) -> Result<RunRecord, StoreError> {
    let status = text_col(row, "status")?;
    let trigger = text_col(row, "trigger_kind")?;
    Ok(RunRecord {
        id: RunId::from_string(text_col(row, "id")?),
        agent_id: AgentId::from_string(text_col(row, "agent_id")?),
        agent_name: text_col(row, "agent_name")?,
        namespace: Namespace::from_stored(text_col(row, "agent_namespace")?),
        agent_version: u64_col(row, "agent_version")?,
        status: RunStatus::from_str(&status).map_err(|e| corrupt("runs.status", e))?,
        trigger: TriggerKind::from_str(&trigger).map_err(|e| corrupt("runs.trigger_kind", e))?,
        scheduled_for: time_col(row, "scheduled_for")?,
        query_override: row.text("query_override")?,
        attempt: u32_col(row, "attempt")?,
        retries: u32_col(row, "retries")?,
        worker_id: row.text("worker_id")?.map(WorkerId::from_string),
        lease_expires_at: time_col(row, "lease_expires_at")?,
        not_before: time_col(row, "not_before")?,
        created_at: time_col(row, "created_at")?.unwrap_or_default(),
        started_at: time_col(row, "started_at")?,
        finished_at: time_col(row, "finished_at")?,
        result: row.text("result")?,
        error: row.text("error")?,
        reason: row.text("reason")?,
        input_tokens: u64_col(row, "input_tokens")?,
        output_tokens: u64_col(row, "output_tokens")?,
        lost_leases: u32_col(row, "lost_leases")?,
        worker_endpoint: row.text("worker_endpoint")?,
        replay_of: row.text("replay_of")?.map(RunId::from_string),
    })
}
