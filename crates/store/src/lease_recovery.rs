//! Lease recovery: runs left `running` by a worker that vanished (crashed, killed, cut off) after
//! its queue delivery was acked or lost, so that no redelivery will ever take them over. The
//! scheduler replicas sweep them by shard ([`Store::expired_leases`]) and recover each one
//! ([`Store::recover_lost_lease`]) by the rule StartRun's takeover applies too
//! (`nightshift_core::lifecycle::decide_lost_lease`): resume it or, after too many lost
//! leases, fail it.
use chrono::{DateTime, Utc};
use nightshift_core::lifecycle::{self, LeaseState, LostLease};
use nightshift_core::{AgentId, RunId, RunStatus, time};
use sqlx::Row;

use crate::agents::lock_agent;
use crate::db::Store;
use crate::error::StoreError;
use crate::model::RunRecord;
use crate::run_lifecycle::{fail_lost_lease, read_run};

/// What lease recovery did with a run.
#[derive(Debug, Clone)]
pub enum Recovered {
    /// Back to `queued` (not counted as a retry), to be published again: the next attempt
    /// resumes from its checkpoints. The dead worker's attempt is fenced off from then on (the
    /// run is no longer running; the next grant bumps the attempt).
    Resumed(RunRecord),
    /// Failed: it lost its worker too often.
    Failed(RunRecord),
}

impl Store {
    /// Running runs whose lease expired before `expired_before`, oldest expiry first, with their
    /// agents (the sweep keeps those of its own shards).
    pub async fn expired_leases(
        &self,
        expired_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(RunId, AgentId)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, agent_id FROM runs WHERE status = 'running' AND lease_expires_at < $1 \
             ORDER BY lease_expires_at LIMIT $2",
        )
        .bind(time::to_millis(expired_before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    RunId::from_string(r.try_get::<String, _>("id")?),
                    AgentId::from_string(r.try_get::<String, _>("agent_id")?),
                ))
            })
            .collect()
    }

    /// Recovers run `id` if it is still running on an expired lease, deciding under its agent's
    /// lock (the lock StartRun takes), so a worker's heartbeat or takeover since the sweep
    /// listed it wins: then nothing is done and `None` returned. A resumed run is left
    /// unpublished (`published = 0`): the outbox sweep publishes it.
    pub async fn recover_lost_lease(&self, id: &RunId, agent: &AgentId) -> Result<Option<Recovered>, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_agent(&mut tx, agent).await?;
        let now = self.now_ms();
        let Some(run) = read_run(&mut *tx, id).await? else { return Ok(None) };
        if run.status != RunStatus::Running
            || lifecycle::lease_state(run.lease_expires_at, time::from_millis(now)) != LeaseState::Expired
        {
            return Ok(None);
        }
        let recovered = match lifecycle::decide_lost_lease(run.lost_leases) {
            LostLease::Resume { lost } => {
                sqlx::query(
                    "UPDATE runs SET status = 'queued', lease_expires_at = NULL, not_before = NULL, \
                     deferred = 0, published = 0, lost_leases = $1 WHERE id = $2",
                )
                .bind(i64::from(lost))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
                Recovered::Resumed(RunRecord {
                    status: RunStatus::Queued,
                    lease_expires_at: None,
                    not_before: None,
                    lost_leases: lost,
                    ..run
                })
            }
            LostLease::Fail { error } => Recovered::Failed(fail_lost_lease(&mut tx, run, error, now).await?),
        };
        tx.commit().await?;
        Ok(Some(recovered))
    }
}
