//! SQL [`MemoryStore`] on SQLite or Postgres through sqlx `Any` (one code path, `$N`
//! placeholders), with its own migrations (`migrations/{sqlite,postgres}`) and its own migration
//! history table, so it may share a database with nightshift-store.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use nightshift_core::{Clock, SystemClock, time};
use nightshift_sqlite::{Columns, Committers, GroupWriter, Write, Writer};
use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Row};

use crate::error::{MemoryError, redact};
use crate::store::MemoryStore;
use crate::types::{MemoryRecord, MemoryType, RecallQuery, Scope};

mod postgres;

const MIGRATIONS_TABLE: &str = "_nightshift_memory_migrations";
const COLUMNS: &str =
    "id, agent_id, session, kind, content, metadata, run_id, created_at, expires_at, summary, archived";

/// The SQL dialect behind a [`SqlStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlBackend {
    /// Embedded file database.
    Sqlite,
    /// Postgres.
    Postgres,
}

/// Records in SQL tables `memory_records` + `memory_metadata`.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    /// Where writes go, which commits the episodes of the runs ending together in one
    /// transaction. SQLite: the group writer on a connection of its own, instead of each write
    /// queuing for the file's one write lock (whose busy handler sleeps 1 to 100 ms between
    /// tries, however soon the lock is free) and committing alone. Postgres: committers on
    /// `pool`, instead of a commit (and a flush of Postgres' log) per episode.
    writer: Writer,
    backend: SqlBackend,
    clock: Arc<dyn Clock>,
}

impl SqlStore {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`), creating a SQLite file if needed,
    /// and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, MemoryError> {
        Self::connect_with_clock(url, Arc::new(SystemClock)).await
    }

    /// Like [`SqlStore::connect`] with an injected clock (TTL is judged by it).
    pub async fn connect_with_clock(url: &str, clock: Arc<dyn Clock>) -> Result<Self, MemoryError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("sqlite:") {
            let url = if url.contains('?') { url.to_owned() } else { format!("{url}?mode=rwc") };
            (SqlBackend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (SqlBackend::Postgres, url.to_owned())
        } else {
            return Err(MemoryError::Config(format!(
                "unsupported database URL '{}': use sqlite://PATH or postgres://...",
                redact(url)
            )));
        };
        let connect = |max| {
            let url = url.clone();
            async move {
                pool_options(backend, max)
                    .connect(&url)
                    .await
                    .map_err(|e| MemoryError::backend("sql", format!("cannot connect to {}: {e}", redact(&url))))
            }
        };
        let pool = connect(if backend == SqlBackend::Sqlite { 4 } else { 8 }).await?;
        let mut migrator = match backend {
            SqlBackend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            SqlBackend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        // Our own history table: sharing `_sqlx_migrations` with nightshift-store would make
        // each migrator reject the other's applied versions as missing.
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator.run(&pool).await?;
        let writer = match backend {
            SqlBackend::Sqlite => Writer::Sqlite(
                GroupWriter::start(connect(1).await?, nightshift_sqlite::open(&url, &[])?, "ns-memory-write")
                    .map_err(|e| MemoryError::backend("sql", format!("cannot start the writer: {e}")))?,
            ),
            SqlBackend::Postgres => Writer::Postgres(Committers::start(pool.clone())),
        };
        tracing::info!(backend = ?backend, "memory SQL store ready");
        Ok(Self { pool, writer, backend, clock })
    }

    /// The dialect in use.
    pub fn dialect(&self) -> SqlBackend {
        self.backend
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    /// Runs `write` in the writer's next batch, in one transaction with the other writes queued
    /// meanwhile.
    async fn transaction<T: Send + 'static>(&self, write: Write<T, MemoryError>) -> Result<T, MemoryError> {
        self.writer.write(write).await
    }

    fn now_ms(&self) -> i64 {
        time::to_millis(self.clock.now())
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> MemoryError {
    MemoryError::Corrupt(format!("{what}: {e}"))
}

/// A column that may not be NULL.
fn required<T>(value: Option<T>, col: &str) -> Result<T, MemoryError> {
    value.ok_or_else(|| corrupt(col, "NULL"))
}

/// A record from a row of [`COLUMNS`], read by either lane (sqlx's pool or the group writer's
/// own connection).
fn record_from_row(row: &impl Columns) -> Result<MemoryRecord, MemoryError> {
    let text = |col: &str| -> Result<String, MemoryError> { required(row.text(col)?, col) };
    let int = |col: &str| -> Result<i64, MemoryError> { required(row.int(col)?, col) };
    let kind = text("kind")?;
    let metadata = text("metadata")?;
    Ok(MemoryRecord {
        id: text("id")?,
        kind: kind.parse().map_err(|e| corrupt("memory_records.kind", e))?,
        scope: Scope { agent_id: text("agent_id")?, session: text("session")? },
        content: text("content")?,
        metadata: serde_json::from_str::<BTreeMap<String, String>>(&metadata)
            .map_err(|e| corrupt("memory_records.metadata", e))?,
        run_id: text("run_id")?,
        created_at: time::from_millis(int("created_at")?),
        expires_at: row.int("expires_at")?.map(time::from_millis),
        summary: int("summary")? != 0,
        archived: int("archived")? != 0,
    })
}

/// `$start, $start+1, ...` for `n` values.
fn placeholders(start: usize, n: usize) -> String {
    (start..start + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// `sql` with the scope as `$1`, `$2`, `now` as `$3` and `values` after them.
fn scoped<'q>(sql: &str, scope: &'q Scope, now: i64, values: &'q [String]) -> Query<'q, Any, AnyArguments> {
    let q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(scope.agent_id.as_str()).bind(scope.session.as_str());
    bind_all(q.bind(now), values)
}

fn bind_all<'q>(mut q: Query<'q, Any, AnyArguments>, values: &'q [String]) -> Query<'q, Any, AnyArguments> {
    for v in values {
        q = q.bind(v.as_str());
    }
    q
}

/// A value bound to a statement built at run time.
enum Bound {
    Text(String),
    Int(i64),
}

fn bind_values<'q>(mut q: Query<'q, Any, AnyArguments>, values: &'q [Bound]) -> Query<'q, Any, AnyArguments> {
    for v in values {
        q = match v {
            Bound::Text(t) => q.bind(t.as_str()),
            Bound::Int(n) => q.bind(*n),
        };
    }
    q
}

/// The `SELECT` of `q` (the newest records of its scope and type, newest first) with its values
/// in order (`$1`, `$2`, …). The usual recall's text (no paging, no metadata filter) is built
/// once: both lanes find their prepared statement by its text, every run.
fn recent_sql(q: &RecallQuery, now: i64) -> (Cow<'static, str>, Vec<Bound>) {
    static USUAL: LazyLock<[String; 2]> =
        LazyLock::new(|| [false, true].map(|archived| recent_text(archived, false, 0, 1)));
    let sql = match q.before.is_none() && q.metadata.is_empty() {
        true => Cow::Borrowed(USUAL[usize::from(q.include_archived)].as_str()),
        false => Cow::Owned(recent_text(q.include_archived, q.before.is_some(), q.metadata.len(), 1)),
    };
    (sql, recent_values(q, now))
}

/// The values of `q`'s `SELECT` ([`recent_text`]), in their placeholders' order.
fn recent_values(q: &RecallQuery, now: i64) -> Vec<Bound> {
    let mut values = vec![
        Bound::Text(q.scope.agent_id.clone()),
        Bound::Text(q.scope.session.clone()),
        Bound::Text(q.kind.as_str().to_owned()),
        Bound::Int(now),
    ];
    values.extend(q.before.map(|b| Bound::Int(time::to_millis(b))));
    for (k, v) in &q.metadata {
        values.push(Bound::Text(k.clone()));
        values.push(Bound::Text(v.clone()));
    }
    values.push(Bound::Int(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    values
}

/// [`recent_sql`]'s text for a query of that shape: with or without archived records, paged or
/// not, with `metadata` pairs to match; its placeholders numbered from `$first` (Postgres puts
/// several queries in one statement, [`postgres::recent_together`]).
fn recent_text(include_archived: bool, before: bool, metadata: usize, first: usize) -> String {
    let at = |k: usize| first + k - 1;
    let mut sql = format!(
        "SELECT {COLUMNS} FROM memory_records r WHERE agent_id = ${} AND session = ${} AND kind = ${} \
         AND (expires_at IS NULL OR expires_at > ${})",
        at(1),
        at(2),
        at(3),
        at(4)
    );
    if !include_archived {
        sql.push_str(" AND archived = 0");
    }
    let mut n = at(5);
    if before {
        sql.push_str(&format!(" AND created_at < ${n}"));
        n += 1;
    }
    for _ in 0..metadata {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM memory_metadata m WHERE m.record_id = r.id AND m.key = ${n} AND m.value = ${})",
            n + 1
        ));
        n += 2;
    }
    sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT ${n}"));
    sql
}

/// Metadata keys per INSERT: a record may carry any number of them, a statement at most 32,766
/// parameters on SQLite (and sqlx binds each by a scan of the statement's parameter list).
const METADATA_ROWS: usize = 64;

/// A pool of at most `max` connections; SQLite's set up for concurrent use.
fn pool_options(backend: SqlBackend, max: u32) -> AnyPoolOptions {
    let options = AnyPoolOptions::new().max_connections(max).acquire_timeout(Duration::from_secs(10));
    match backend {
        SqlBackend::Sqlite => nightshift_sqlite::configure(options, &[]),
        SqlBackend::Postgres => options,
    }
}

/// Binds a record's eleven columns as `$1`–`$11` (id first) of the insert and the update.
fn bind_record<'q>(
    query: Query<'q, Any, AnyArguments>,
    r: &'q MemoryRecord,
    metadata: &'q str,
) -> Query<'q, Any, AnyArguments> {
    query
        .bind(r.id.as_str())
        .bind(r.scope.agent_id.as_str())
        .bind(r.scope.session.as_str())
        .bind(r.kind.as_str())
        .bind(r.content.as_str())
        .bind(metadata)
        .bind(r.run_id.as_str())
        .bind(time::to_millis(r.created_at))
        .bind(r.expires_at.map(time::to_millis))
        .bind(i64::from(r.summary))
        .bind(i64::from(r.archived))
}

/// The upsert of a record (`$1`–`$11`, [`bind_record`]'s order) on SQLite.
const UPSERT_SQLITE: &str = "INSERT INTO memory_records (id, agent_id, session, kind, content, metadata, run_id, \
     created_at, expires_at, summary, archived) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
     ON CONFLICT (id) DO UPDATE SET agent_id = excluded.agent_id, session = excluded.session, \
     kind = excluded.kind, content = excluded.content, metadata = excluded.metadata, run_id = excluded.run_id, \
     created_at = excluded.created_at, expires_at = excluded.expires_at, summary = excluded.summary, \
     archived = excluded.archived";

/// SQLite: `records` (each with its metadata as JSON) on the group writer's own connection and
/// thread, inside its transaction — each record upserted, its old metadata rows removed (none for
/// a new record: an index probe), the new ones inserted. Statements prepared once, each a call
/// rather than a round trip to sqlx's connection thread.
fn put_on_writer(conn: &rusqlite::Connection, records: &[(MemoryRecord, String)]) -> Result<(), MemoryError> {
    let sqlite = |e| MemoryError::from(nightshift_sqlite::db_error(e));
    let mut upsert = conn.prepare_cached(UPSERT_SQLITE).map_err(sqlite)?;
    let mut forget = conn.prepare_cached("DELETE FROM memory_metadata WHERE record_id = $1").map_err(sqlite)?;
    let mut pair = conn
        .prepare_cached("INSERT INTO memory_metadata (record_id, key, value) VALUES ($1, $2, $3)")
        .map_err(sqlite)?;
    for (r, metadata) in records {
        let (created, expires) = (time::to_millis(r.created_at), r.expires_at.map(time::to_millis));
        let (summary, archived) = (i64::from(r.summary), i64::from(r.archived));
        let values: [&dyn rusqlite::ToSql; 11] = [
            &r.id.as_str(),
            &r.scope.agent_id.as_str(),
            &r.scope.session.as_str(),
            &r.kind.as_str(),
            &r.content.as_str(),
            &metadata.as_str(),
            &r.run_id.as_str(),
            &created,
            &expires,
            &summary,
            &archived,
        ];
        nightshift_sqlite::bind_numbered(&mut upsert, &values).map_err(sqlite)?;
        upsert.raw_execute().map_err(sqlite)?;
        forget.execute([r.id.as_str()]).map_err(sqlite)?;
        for (k, v) in &r.metadata {
            pair.execute([r.id.as_str(), k.as_str(), v.as_str()]).map_err(sqlite)?;
        }
    }
    Ok(())
}

/// SQLite: the newest records of each query ([`recent_sql`]), on the group writer's own
/// connection and thread; statements prepared once per query shape.
fn recent_on_writer(
    conn: &rusqlite::Connection,
    queries: &[RecallQuery],
    now: i64,
) -> Result<Vec<Vec<MemoryRecord>>, MemoryError> {
    let sqlite = |e| MemoryError::from(nightshift_sqlite::db_error(e));
    queries
        .iter()
        .map(|q| {
            let (sql, values) = recent_sql(q, now);
            let mut stmt = conn.prepare_cached(&sql).map_err(sqlite)?;
            let values: Vec<&dyn rusqlite::ToSql> = values
                .iter()
                .map(|v| match v {
                    Bound::Text(t) => t as &dyn rusqlite::ToSql,
                    Bound::Int(n) => n as &dyn rusqlite::ToSql,
                })
                .collect();
            nightshift_sqlite::bind_numbered(&mut stmt, &values).map_err(sqlite)?;
            let mut rows = stmt.raw_query();
            let mut found = Vec::with_capacity(q.limit.min(64));
            while let Some(row) = rows.next().map_err(sqlite)? {
                found.push(record_from_row(row)?);
            }
            Ok(found)
        })
        .collect()
}

#[async_trait]
impl MemoryStore for SqlStore {
    fn backend(&self) -> &'static str {
        "sql"
    }

    async fn put(&self, records: &[MemoryRecord]) -> Result<(), MemoryError> {
        let records = records
            .iter()
            .map(|r| {
                let metadata = serde_json::to_string(&r.metadata).map_err(|e| MemoryError::Invalid(e.to_string()))?;
                Ok((r.clone(), metadata))
            })
            .collect::<Result<Vec<_>, MemoryError>>()?;
        if let Some(group) = self.writer.group() {
            return group.write_direct(Box::new(move |conn: &_| put_on_writer(conn, &records))).await;
        }
        let records = Arc::new(records);
        self.transaction(Box::new(move |conn| {
            let records = records.clone();
            Box::pin(async move { postgres::put_records(conn, &records).await })
        }))
        .await
    }

    async fn get(&self, scope: &Scope, ids: &[String]) -> Result<Vec<MemoryRecord>, MemoryError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM memory_records WHERE agent_id = $1 AND session = $2 \
             AND (expires_at IS NULL OR expires_at > $3) AND id IN ({})",
            placeholders(4, ids.len())
        );
        let q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(scope.agent_id.as_str())
            .bind(scope.session.as_str())
            .bind(self.now_ms());
        let rows = bind_all(q, ids).fetch_all(&self.pool).await?;
        let mut found: Vec<MemoryRecord> = rows.iter().map(record_from_row).collect::<Result<_, _>>()?;
        // Keep the caller's order (the IN list does not).
        found.sort_by_key(|r| ids.iter().position(|id| id == &r.id));
        Ok(found)
    }

    async fn recent(&self, q: &RecallQuery) -> Result<Vec<MemoryRecord>, MemoryError> {
        let (sql, values) = recent_sql(q, self.now_ms());
        let rows = bind_values(sqlx::query(sqlx::AssertSqlSafe(&*sql)), &values).fetch_all(&self.pool).await?;
        rows.iter().map(record_from_row).collect()
    }

    /// On SQLite on the group writer's own connection and thread (`recent_on_writer`): a run's
    /// episodes and procedural notes are one hand-off, not one per statement, and that
    /// connection's page cache is still valid (it is the file's one writer). On Postgres one
    /// statement for them all: one round trip on one pool connection.
    async fn recent_each(&self, queries: &[RecallQuery]) -> Result<Vec<Vec<MemoryRecord>>, MemoryError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let Some(group) = self.writer.group() else {
            return postgres::recent_together(&self.pool, queries, self.now_ms()).await;
        };
        let now = self.now_ms();
        let queries = queries.to_vec();
        group.read_direct(Box::new(move |conn: &_| recent_on_writer(conn, &queries, now))).await
    }

    async fn delete(&self, scope: &Scope, kind: Option<MemoryType>, ids: &[String]) -> Result<u64, MemoryError> {
        // Selection shared by both statements: $1 agent, $2 session, $3 now, then kind, then ids.
        let mut cond = "agent_id = $1 AND session = $2 AND (expires_at IS NULL OR expires_at > $3)".to_owned();
        let mut values = Vec::new();
        let mut n = 4;
        if let Some(k) = kind {
            cond.push_str(&format!(" AND kind = ${n}"));
            values.push(k.as_str().to_owned());
            n += 1;
        }
        if !ids.is_empty() {
            cond.push_str(&format!(" AND id IN ({})", placeholders(n, ids.len())));
            values.extend(ids.iter().cloned());
        }
        let now = self.now_ms();
        let meta_sql =
            format!("DELETE FROM memory_metadata WHERE record_id IN (SELECT id FROM memory_records WHERE {cond})");
        let rec_sql = format!("DELETE FROM memory_records WHERE {cond}");
        let scope = scope.clone();
        let shared = Arc::new((meta_sql, rec_sql, scope, values));
        self.transaction(Box::new(move |conn| {
            let shared = shared.clone();
            Box::pin(async move {
                let (meta_sql, rec_sql, scope, values) = &*shared;
                scoped(meta_sql, scope, now, values).execute(&mut *conn).await?;
                Ok(scoped(rec_sql, scope, now, values).execute(&mut *conn).await?.rows_affected())
            })
        }))
        .await
    }

    async fn set_archived(&self, scope: &Scope, ids: &[String], archived: bool) -> Result<u64, MemoryError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "UPDATE memory_records SET archived = $1 WHERE agent_id = $2 AND session = $3 AND archived <> $4 \
             AND (expires_at IS NULL OR expires_at > $5) AND id IN ({})",
            placeholders(6, ids.len())
        );
        let now = self.now_ms();
        let shared = Arc::new((sql, scope.clone(), ids.to_vec()));
        self.transaction(Box::new(move |conn| {
            let shared = shared.clone();
            Box::pin(async move {
                let (sql, scope, ids) = &*shared;
                let q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(i64::from(archived))
                    .bind(scope.agent_id.as_str())
                    .bind(scope.session.as_str())
                    .bind(i64::from(archived))
                    .bind(now);
                Ok(bind_all(q, ids).execute(&mut *conn).await?.rows_affected())
            })
        }))
        .await
    }

    async fn count(&self, scope: Option<&Scope>, kind: MemoryType) -> Result<u64, MemoryError> {
        let row = match scope {
            Some(s) => {
                sqlx::query(
                    "SELECT COUNT(*) AS n FROM memory_records WHERE kind = $1 AND agent_id = $2 AND session = $3 \
                     AND (expires_at IS NULL OR expires_at > $4)",
                )
                .bind(kind.as_str())
                .bind(s.agent_id.as_str())
                .bind(s.session.as_str())
                .bind(self.now_ms())
                .fetch_one(&self.pool)
                .await?
            }
            None => sqlx::query(
                "SELECT COUNT(*) AS n FROM memory_records WHERE kind = $1 AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(kind.as_str())
            .bind(self.now_ms())
            .fetch_one(&self.pool)
            .await?,
        };
        let n: i64 = row.try_get("n")?;
        u64::try_from(n).map_err(|e| corrupt("count", e))
    }

    async fn scan(
        &self,
        kind: MemoryType,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>, MemoryError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM memory_records WHERE kind = $1 AND (expires_at IS NULL OR expires_at > $2) \
             AND id > $3 ORDER BY id LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind.as_str())
            .bind(self.now_ms())
            .bind(after.unwrap_or(""))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    async fn purge_expired(&self) -> Result<u64, MemoryError> {
        let now = self.now_ms();
        self.transaction(Box::new(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "DELETE FROM memory_metadata WHERE record_id IN \
                     (SELECT id FROM memory_records WHERE expires_at IS NOT NULL AND expires_at <= $1)",
                )
                .bind(now)
                .execute(&mut *conn)
                .await?;
                let done = sqlx::query("DELETE FROM memory_records WHERE expires_at IS NOT NULL AND expires_at <= $1")
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected())
            })
        }))
        .await
    }
}
