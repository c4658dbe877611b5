//! Runs parked by governance, released by the sweep: budget waits whose period ended, and
//! approval requests nobody decided within the agent's `approval_timeout` (expired).
//!
//! Approval expiry: The store
//! decides and records (the call denied and the run queued again, or the run failed, per the
//! agent's `on_approval_timeout`); the outbox sweep that follows publishes a queued run. Any
//! replica may expire any request: the store's conditional update makes a second try a no-op,
//! so this sweep needs no shard filter.
use nightshift_core::EventType;
use nightshift_store::{Decided, StoreError};
use serde_json::json;

use super::Scheduler;

/// Requests expired per sweep at most (the next sweep continues).
const BATCH: u32 = 500;

impl Scheduler {
    /// Queues again the runs whose budget period has ended (the outbox sweep that follows
    /// publishes them). Idempotent: any replica may do it.
    pub(super) async fn release_budget_waits(&self) -> Result<(), StoreError> {
        let n = self.inner.store.release_budget_waits().await?;
        if n > 0 {
            tracing::info!(runs = n, "runs waiting for their budget's next period queued again");
        }
        Ok(())
    }

    /// Expires the approval requests whose time ran out.
    pub(super) async fn expire_approvals(&self) -> Result<(), StoreError> {
        for id in self.inner.store.expired_approvals(BATCH).await? {
            match self.inner.store.expire_approval(&id).await {
                Ok(Some(decided)) => self.report_expired(&decided),
                Ok(None) => {} // decided first
                Err(e) => {
                    tracing::warn!(approval = %id, error = %e, "expiring an approval failed; the next sweep retries")
                }
            }
        }
        Ok(())
    }

    fn report_expired(&self, decided: &Decided) {
        let a = &decided.approval;
        let run_status = decided.run.as_ref().map(|r| r.status.to_string());
        metrics::counter!("nightshift_approvals_total", "decision" => "expired").increment(1);
        tracing::info!(approval = %a.id, run = %a.run_id, tool = %a.tool_name, on_timeout = a.on_timeout.as_str(),
            "approval request expired");
        if let Some(p) = self.inner.events.get() {
            p.event(EventType::ApprovalDecided)
                .agent(&a.agent_id)
                .agent_name(a.agent_name.clone())
                .namespace(&a.namespace)
                .run(&a.run_id)
                .data(json!({
                    "approval_id": a.id,
                    "tool": a.tool_name,
                    "decision": "expired",
                    "on_timeout": a.on_timeout.as_str(),
                    "run_status": run_status,
                }))
                .emit();
        }
    }
}
