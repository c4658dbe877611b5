//! Agent repository: versioned specs, state, labels.
use std::str::FromStr;

use nightshift_core::{AgentId, AgentSpec, AgentState, Namespace, pb, time};
use prost::Message;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row};

use crate::db::{Store, time_col, u64_col};
use crate::error::{StoreError, is_unique_violation};
use crate::model::{AgentFilter, AgentRecord, AgentVersion, ApplyOutcome, Page};

const AGENT_COLUMNS: &str = "id, name, version, state, spec, created_at, updated_at";

fn encode(spec: &AgentSpec) -> Vec<u8> {
    spec.to_proto().encode_to_vec()
}

pub(crate) fn decode_spec(bytes: &[u8]) -> Result<AgentSpec, StoreError> {
    let pb = pb::AgentSpec::decode(bytes).map_err(|e| StoreError::Corrupt(format!("agent spec: {e}")))?;
    // Stored specs load under the rules they were accepted with (`SpecOrigin::Stored`).
    AgentSpec::from_stored_proto(&pb)
        .map_err(|e| StoreError::Corrupt(format!("stored agent spec no longer validates: {e}")))
}

fn agent_from_row(row: &AnyRow) -> Result<AgentRecord, StoreError> {
    let state: String = row.try_get("state")?;
    let spec: Vec<u8> = row.try_get("spec")?;
    Ok(AgentRecord {
        id: AgentId::from_string(row.try_get::<String, _>("id")?),
        version: u64_col(row, "version")?,
        state: AgentState::from_str(&state).map_err(StoreError::Corrupt)?,
        spec: decode_spec(&spec)?,
        created_at: time_col(row, "created_at")?.unwrap_or_default(),
        updated_at: time_col(row, "updated_at")?.unwrap_or_default(),
    })
}

/// The agent's spec at `version`.
pub(crate) async fn spec_at<'c, E>(db: E, id: &AgentId, version: u64) -> Result<AgentSpec, StoreError>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let row = sqlx::query("SELECT spec FROM agent_versions WHERE agent_id = $1 AND version = $2")
        .bind(id.as_str())
        .bind(version as i64)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("agent {id} version {version}")))?;
    decode_spec(&row.try_get::<Vec<u8>, _>("spec")?)
}

/// Takes the agent's lock for the rest of the transaction (see the crate docs).
pub(crate) async fn lock_agent(tx: &mut AnyConnection, id: &AgentId) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE agents SET lock_seq = lock_seq + 1 WHERE id = $1")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("agent {id}")));
    }
    Ok(())
}

async fn write_labels(tx: &mut AnyConnection, id: &AgentId, spec: &AgentSpec) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM agent_labels WHERE agent_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
    for (k, v) in &spec.labels {
        sqlx::query("INSERT INTO agent_labels (agent_id, key, value) VALUES ($1, $2, $3)")
            .bind(id.as_str())
            .bind(k.as_str())
            .bind(v.as_str())
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

async fn write_version(
    tx: &mut AnyConnection,
    id: &AgentId,
    version: u64,
    spec: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO agent_versions (agent_id, version, spec, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id.as_str())
        .bind(version as i64)
        .bind(spec.to_vec())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

impl Store {
    /// Registers a new agent at version 1. `AlreadyExists` if the name is taken.
    pub async fn create_agent(&self, spec: &AgentSpec, state: AgentState) -> Result<AgentRecord, StoreError> {
        let id = AgentId::generate();
        let now = self.now_ms();
        let bytes = encode(spec);
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO agents (id, namespace, name, version, state, spec, created_at, updated_at) \
             VALUES ($1, $6, $2, 1, $3, $4, $5, $5)",
        )
        .bind(id.as_str())
        .bind(spec.name.as_str())
        .bind(state.as_str())
        .bind(bytes.clone())
        .bind(now)
        .bind(spec.namespace.as_str())
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!(
                    "agent '{}' in namespace {}",
                    spec.name, spec.namespace
                )));
            }
            r => r?,
        };
        write_version(&mut tx, &id, 1, &bytes, now).await?;
        write_labels(&mut tx, &id, spec).await?;
        tx.commit().await?;
        Ok(AgentRecord {
            id,
            version: 1,
            state,
            spec: spec.clone(),
            created_at: time::from_millis(now),
            updated_at: time::from_millis(now),
        })
    }

    /// Creates the agent named in `spec`, or updates it if the spec differs. Idempotent.
    pub async fn apply_agent(&self, spec: &AgentSpec) -> Result<(AgentRecord, ApplyOutcome), StoreError> {
        // Two loops at most: a concurrent apply of the same new name makes the create fail with
        // AlreadyExists, after which the update path sees the row.
        for _ in 0..2 {
            match self.get_agent_by_name(&spec.namespace, spec.name.as_str()).await? {
                Some(existing) => {
                    let (rec, changed) = self.update_agent(&existing.id, spec, None).await?;
                    let outcome = if changed { ApplyOutcome::Updated } else { ApplyOutcome::Unchanged };
                    return Ok((rec, outcome));
                }
                None => match self.create_agent(spec, AgentState::Active).await {
                    Ok(rec) => return Ok((rec, ApplyOutcome::Created)),
                    Err(StoreError::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e),
                },
            }
        }
        Err(StoreError::FailedPrecondition(format!("agent '{}' changed concurrently; retry", spec.name)))
    }

    /// The agent with this id.
    pub async fn get_agent(&self, id: &AgentId) -> Result<Option<AgentRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1")))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    /// The agent with this name in `namespace`.
    pub async fn get_agent_by_name(
        &self,
        namespace: &Namespace,
        name: &str,
    ) -> Result<Option<AgentRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE namespace = $1 AND name = $2"
        )))
        .bind(namespace.as_str())
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    /// The spec an agent had at `version` (runs execute the version they were created with).
    pub async fn get_agent_version(&self, id: &AgentId, version: u64) -> Result<AgentSpec, StoreError> {
        spec_at(&self.pool, id, version).await
    }

    /// An agent's versions, newest first: at most `limit`, older than `before` when given.
    pub async fn list_agent_versions(
        &self,
        id: &AgentId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<AgentVersion>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, spec, created_at FROM agent_versions WHERE agent_id = $1 AND version < $2 \
             ORDER BY version DESC LIMIT $3",
        )
        .bind(id.as_str())
        .bind(before.map_or(i64::MAX, |v| v.min(i64::MAX as u64) as i64))
        .bind(i64::from(limit.clamp(1, 1000)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AgentVersion {
                    version: u64_col(r, "version")?,
                    created_at: time_col(r, "created_at")?.unwrap_or_default(),
                    spec: decode_spec(&r.try_get::<Vec<u8>, _>("spec")?)?,
                })
            })
            .collect()
    }

    /// Agents ordered by namespace and name, filtered by namespaces, labels and state, one page
    /// at a time.
    pub async fn list_agents(&self, filter: &AgentFilter) -> Result<Page<AgentRecord>, StoreError> {
        let limit = filter.limit.clamp(1, 1000);
        let mut sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        if let Some(after) = &filter.page_token {
            // `namespace/name` of the last agent of the previous page ('/' is in neither).
            let (ns, name) = after
                .split_once('/')
                .ok_or_else(|| StoreError::Invalid("page_token: not a token from a previous page".into()))?;
            binds.push(ns.to_owned());
            binds.push(name.to_owned());
            let (n, m) = (binds.len() - 1, binds.len());
            sql.push_str(&format!(" AND (namespace > ${n} OR (namespace = ${n} AND name > ${m}))"));
        }
        if let Some(namespaces) = &filter.namespaces {
            // A leading NULL matches nothing and keeps an empty list valid SQL (`IN ()` is not).
            let mut marks = vec!["NULL".to_owned()];
            for ns in namespaces {
                binds.push(ns.to_string());
                marks.push(format!("${}", binds.len()));
            }
            sql.push_str(&format!(" AND namespace IN ({})", marks.join(", ")));
        }
        if let Some(state) = filter.state {
            binds.push(state.as_str().to_owned());
            sql.push_str(&format!(" AND state = ${}", binds.len()));
        }
        if let Some(text) = filter.name_contains.as_deref().filter(|t| !t.is_empty()) {
            // LIKE's wildcards in the text are matched literally (the same ESCAPE on both backends).
            let escaped = text.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            binds.push(format!("%{escaped}%"));
            sql.push_str(&format!(" AND name LIKE ${} ESCAPE '\\'", binds.len()));
        }
        for (k, v) in &filter.labels {
            binds.push(k.clone());
            binds.push(v.clone());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM agent_labels l WHERE l.agent_id = agents.id AND l.key = ${} AND l.value = ${})",
                binds.len() - 1,
                binds.len()
            ));
        }
        sql.push_str(&format!(" ORDER BY namespace, name LIMIT {}", limit + 1));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in &binds {
            q = q.bind(b.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(agent_from_row).collect::<Result<Vec<_>, _>>()?;
        let next_page_token = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|a| format!("{}/{}", a.spec.namespace, a.spec.name))
        } else {
            None
        };
        Ok(Page { items, next_page_token })
    }

    /// Replaces the spec. Returns the record and whether anything changed (an identical spec
    /// keeps its version). `VersionConflict` if `expected_version` is given and stale.
    pub async fn update_agent(
        &self,
        id: &AgentId,
        spec: &AgentSpec,
        expected_version: Option<u64>,
    ) -> Result<(AgentRecord, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_agent(&mut tx, id).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1")))
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let current = agent_from_row(&row)?;
        if let Some(expected) = expected_version
            && expected != current.version
        {
            return Err(StoreError::VersionConflict(format!(
                "agent '{}' is at version {}, not {expected}",
                current.spec.name, current.version
            )));
        }
        if *spec == current.spec {
            tx.commit().await?;
            return Ok((current, false));
        }
        let bytes = encode(spec);
        let now = self.now_ms();
        let version = current.version + 1;
        let updated =
            sqlx::query("UPDATE agents SET name = $1, version = $2, spec = $3, updated_at = $4 WHERE id = $5")
                .bind(spec.name.as_str())
                .bind(version as i64)
                .bind(bytes.clone())
                .bind(now)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await;
        match updated {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!(
                    "agent '{}' in namespace {}",
                    spec.name, spec.namespace
                )));
            }
            r => r?,
        };
        write_version(&mut tx, id, version, &bytes, now).await?;
        write_labels(&mut tx, id, spec).await?;
        tx.commit().await?;
        Ok((AgentRecord { version, spec: spec.clone(), updated_at: time::from_millis(now), ..current }, true))
    }

    /// Pauses or resumes an agent. Returns the record and whether the state changed.
    ///
    /// Resuming restarts the schedule from now, in the same transaction: ticks of the paused
    /// period are neither fired nor counted as missed, whichever scheduler sees the change.
    pub async fn set_agent_state(&self, id: &AgentId, state: AgentState) -> Result<(AgentRecord, bool), StoreError> {
        let now = self.now_ms();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE agents SET state = $1, updated_at = $2 WHERE id = $3 AND state <> $1")
            .bind(state.as_str())
            .bind(now)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        if state == AgentState::Active && done.rows_affected() > 0 {
            sqlx::query(
                "INSERT INTO schedule_state (agent_id, last_tick, updated_at) VALUES ($1, $2, $2) \
                 ON CONFLICT (agent_id) DO UPDATE SET last_tick = excluded.last_tick, updated_at = excluded.updated_at",
            )
            .bind(id.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let rec = self.get_agent(id).await?.ok_or_else(|| StoreError::NotFound(format!("agent {id}")))?;
        Ok((rec, done.rows_affected() > 0))
    }

    /// Deletes an agent with its versions, runs and steps.
    pub async fn delete_agent(&self, id: &AgentId) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_agent(&mut tx, id).await?;
        // Explicit deletes: they do not rely on the connection's foreign-key setting.
        sqlx::query("DELETE FROM run_steps WHERE run_id IN (SELECT id FROM runs WHERE agent_id = $1)")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        for table in ["runs", "agent_labels", "agent_versions", "schedule_state"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE agent_id = $1")))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM agents WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
