//! Lease recovery of the replica's shards: runs left `running` by a worker that vanished after
//! its delivery was acked or lost. The store decides and records (resume or fail, see
//! `Store::recover_lost_lease`); this side picks the runs of owned shards, reports each one
//! (event, metric, log) and leaves publishing resumed runs to the outbox sweep that follows.
use nightshift_core::EventType;
use nightshift_store::{Recovered, StoreError};
use serde_json::json;

use super::{Scheduler, shard_of};

/// Runs recovered per sweep at most (the next sweep continues).
const BATCH: u32 = 500;

impl Scheduler {
    /// Recovers the owned shards' runs whose lease expired more than `lease_recovery_grace` ago.
    pub(super) async fn recover_lost_leases(&self) -> Result<(), StoreError> {
        let grace = chrono::Duration::from_std(self.inner.cfg.lease_recovery_grace).unwrap_or_default();
        let expired = self.inner.store.expired_leases(self.inner.clock.now() - grace, BATCH).await?;
        if expired.is_empty() {
            return Ok(());
        }
        let owned = self.index().owned.clone();
        for (run, agent) in expired {
            if !owned.contains(&shard_of(&agent, self.inner.cfg.shard_count)) {
                continue;
            }
            match self.inner.store.recover_lost_lease(&run, &agent).await {
                Ok(Some(recovered)) => self.report_recovered(&recovered),
                Ok(None) => {} // a heartbeat or a takeover came first
                Err(e) => tracing::warn!(run = %run, error = %e, "lease recovery failed; the next sweep retries"),
            }
        }
        Ok(())
    }

    fn report_recovered(&self, recovered: &Recovered) {
        let (run, outcome, event) = match recovered {
            Recovered::Resumed(r) => (r, "resumed", EventType::RunRetrying),
            Recovered::Failed(r) => (r, "failed", EventType::BackgroundTaskError),
        };
        let worker = run.worker_id.as_ref().map(ToString::to_string).unwrap_or_default();
        let error = run.error.clone().unwrap_or_default();
        metrics::counter!("nightshift_runs_lost_lease_total", "outcome" => outcome).increment(1);
        tracing::warn!(run = %run.id, agent = %run.agent_id, %worker, attempt = run.attempt,
            lost_leases = run.lost_leases, %error, "run lost its worker (lease expired): {outcome}");
        if let Some(p) = self.inner.events.get() {
            let data = match recovered {
                Recovered::Resumed(_) => json!({
                    "attempt": run.attempt,
                    "reason": "lease expired: the worker stopped renewing it",
                    "worker": worker,
                    "lost_leases": run.lost_leases,
                }),
                Recovered::Failed(_) => {
                    json!({"attempt": run.attempt, "error": error, "will_retry": false, "worker": worker})
                }
            };
            p.event(event)
                .agent(&run.agent_id)
                .agent_name(run.agent_name.clone())
                .namespace(&run.namespace)
                .run(&run.id)
                .data(data)
                .emit();
        }
    }
}
