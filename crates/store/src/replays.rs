//! Replays (ReplayRun): a new run linked to the one it re-runs, starting with that run's first
//! steps (reused, not paid again) and carrying how it runs (a protobuf `ReplaySpec`).
use nightshift_core::{AgentId, RunId};
use sqlx::Row;

use crate::db::Store;
use crate::error::StoreError;
use crate::model::RunRecord;

/// A replay to record.
#[derive(Debug, Clone)]
pub struct NewReplay {
    /// The new run's id.
    pub id: RunId,
    /// The run it replays.
    pub original: RunId,
    /// The original's agent.
    pub agent_id: AgentId,
    /// The version the replay runs.
    pub agent_version: u64,
    /// The original's query override, kept.
    pub query_override: Option<String>,
    /// The original's steps with a seq below this are copied.
    pub from_step: u32,
    /// The encoded `ReplaySpec`.
    pub spec: Vec<u8>,
}

impl Store {
    /// Records a queued replay with the original's steps before `from_step` (same seq; attempt
    /// 0 marks them as reused), in one transaction.
    pub async fn insert_replay(&self, r: &NewReplay) -> Result<RunRecord, StoreError> {
        let now = self.now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO runs (id, agent_id, agent_version, status, trigger_kind, query_override, created_at, \
             replay_of, replay) VALUES ($1, $2, $3, 'queued', 'manual', $4, $5, $6, $7)",
        )
        .bind(r.id.as_str())
        .bind(r.agent_id.as_str())
        .bind(i64::try_from(r.agent_version).unwrap_or(i64::MAX))
        .bind(r.query_override.clone())
        .bind(now)
        .bind(r.original.as_str())
        .bind(r.spec.clone())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO run_steps (run_id, seq, attempt, kind, payload, created_at) \
             SELECT $1, seq, 0, kind, payload, created_at FROM run_steps WHERE run_id = $2 AND seq < $3",
        )
        .bind(r.id.as_str())
        .bind(r.original.as_str())
        .bind(i64::from(r.from_step))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_run(&r.id).await?.ok_or_else(|| StoreError::NotFound(format!("run {}", r.id)))
    }

    /// How replay `id` runs (the encoded `ReplaySpec`); `None` for a run that is not a replay.
    pub async fn replay_spec(&self, id: &RunId) -> Result<Option<Vec<u8>>, StoreError> {
        let row =
            sqlx::query("SELECT replay FROM runs WHERE id = $1").bind(id.as_str()).fetch_optional(&self.pool).await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<Vec<u8>>, _>("replay")?,
            None => None,
        })
    }
}
