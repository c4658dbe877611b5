//! Shard ownership: which agents this replica schedules, and the heartbeat and leases that
//! split the shards fairly between the live replicas.
use std::collections::BTreeSet;

use nightshift_core::AgentId;
use nightshift_store::StoreError;

use super::Scheduler;
use crate::rules;

/// The shard of an agent (stable across replicas and versions).
pub fn shard_of(agent: &AgentId, shard_count: u32) -> u32 {
    (rules::fnv1a(agent.as_str().as_bytes(), 0xcbf2_9ce4_8422_2325) % u64::from(shard_count.max(1))) as u32
}

impl Scheduler {
    /// Shards held now.
    pub fn owned_shards(&self) -> Vec<u32> {
        self.index().owned.iter().copied().collect()
    }

    /// Heartbeats, takes this replica's fair share of shards, and reloads when it changed.
    pub async fn coordinate(&self) -> Result<(), StoreError> {
        let cfg = &self.inner.cfg;
        let live = self.inner.store.scheduler_heartbeat(&self.inner.member, cfg.shard_lease).await?;
        let want = cfg.shard_count.div_ceil(live);
        let owned: BTreeSet<u32> = self
            .inner
            .store
            .claim_shards(&self.inner.member, cfg.shard_count, want, cfg.shard_lease)
            .await?
            .into_iter()
            .collect();
        let changed = {
            let mut idx = self.index();
            let changed = idx.owned != owned;
            idx.owned = owned;
            changed
        };
        if changed {
            tracing::info!(member = %self.inner.member, shards = ?self.owned_shards(), live, "shard ownership changed");
            self.reload().await?;
        }
        Ok(())
    }
}
