//! Keeping the index in step with the store: single-agent refresh and forget (RPCs), the
//! periodic change sync and the full reload.
use chrono::{DateTime, Utc};
use nightshift_core::AgentId;
use nightshift_store::StoreError;

use super::{Scheduler, shard_of};

impl Scheduler {
    /// Re-reads one agent from the store (after a create/update/pause/resume) and reschedules it.
    pub async fn refresh(&self, id: &AgentId) -> Result<(), StoreError> {
        let agent = self.inner.store.scheduled_agent(id).await?;
        {
            let mut idx = self.index();
            match agent {
                Some(a) if idx.owned.contains(&shard_of(&a.agent_id, self.inner.cfg.shard_count)) => idx.put(a),
                Some(_) => {}
                None => {
                    idx.entries.remove(id);
                }
            }
            idx.report_active();
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Forgets an agent (deleted).
    pub fn forget(&self, id: &AgentId) {
        let mut idx = self.index();
        idx.entries.remove(id);
        idx.report_active();
    }

    /// Rebuilds the index from the store for the owned shards.
    pub(super) async fn reload(&self) -> Result<(), StoreError> {
        let agents = self.inner.store.scheduled_agents().await?;
        let mut idx = self.index();
        let owned = idx.owned.clone();
        idx.entries.clear();
        idx.heap.clear();
        for a in agents.into_iter().filter(|a| owned.contains(&shard_of(&a.agent_id, self.inner.cfg.shard_count))) {
            idx.put(a);
        }
        idx.report_active();
        drop(idx);
        self.inner.wake.notify_one();
        Ok(())
    }

    pub(super) async fn sync_changes(&self, since: DateTime<Utc>) -> Result<(), StoreError> {
        let changed = self.inner.store.scheduled_agents_changed_since(since).await.inspect_err(|e| {
            tracing::warn!(error = %e, "scheduler sync failed; retrying");
        })?;
        if changed.is_empty() {
            return Ok(());
        }
        let mut idx = self.index();
        for a in changed {
            if !idx.owned.contains(&shard_of(&a.agent_id, self.inner.cfg.shard_count)) {
                continue;
            }
            // Unchanged agents keep their entry: replacing it would only repeat the same plan.
            let same = idx
                .entries
                .get(&a.agent_id)
                .is_some_and(|e| e.agent.updated_at == a.updated_at && e.agent.paused == a.paused);
            if !same {
                idx.put(a);
            }
        }
        idx.report_active();
        drop(idx);
        self.inner.wake.notify_one();
        Ok(())
    }
}
