//! Scheduler persistence of the replicas: heartbeats, and the shard leases that split schedules
//! between them.
use nightshift_core::time;
use sqlx::Row;

use crate::db::Store;
use crate::error::StoreError;
use crate::model::SchedulerView;

impl Store {
    /// Records that scheduler replica `member` is alive and returns how many replicas are
    /// (heartbeat within `ttl`). Stale members are removed.
    pub async fn scheduler_heartbeat(&self, member: &str, ttl: std::time::Duration) -> Result<u32, StoreError> {
        let now = self.now_ms();
        let cutoff = now - i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO scheduler_members (member_id, heartbeat_at) VALUES ($1, $2) \
             ON CONFLICT (member_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(member)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM scheduler_members WHERE heartbeat_at < $1").bind(cutoff).execute(&mut *tx).await?;
        let n: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM scheduler_members").fetch_one(&mut *tx).await?.try_get("n")?;
        tx.commit().await?;
        Ok(u32::try_from(n.max(1)).unwrap_or(u32::MAX))
    }

    /// The members that heartbeat and the live shard leases, for `shard_count` shards.
    pub async fn scheduler_view(&self, shard_count: u32) -> Result<SchedulerView, StoreError> {
        let now = self.now_ms();
        let members = sqlx::query("SELECT member_id, heartbeat_at FROM scheduler_members ORDER BY member_id")
            .fetch_all(&self.pool)
            .await?;
        let leases = sqlx::query(
            "SELECT shard, owner FROM scheduler_shards WHERE owner IS NOT NULL AND lease_expires_at >= $1 AND shard < $2 \
             ORDER BY shard",
        )
        .bind(now)
        .bind(i64::from(shard_count))
        .fetch_all(&self.pool)
        .await?;
        let mut view = SchedulerView::default();
        for m in &members {
            let at: i64 = m.try_get("heartbeat_at")?;
            view.members.push((m.try_get("member_id")?, time::from_millis(at), Vec::new()));
        }
        let mut owned = vec![false; shard_count as usize];
        for l in &leases {
            let shard = u32::try_from(l.try_get::<i64, _>("shard")?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let owner: String = l.try_get("owner")?;
            if let Some(slot) = owned.get_mut(shard as usize) {
                *slot = true;
            }
            match view.members.iter_mut().find(|(id, _, _)| *id == owner) {
                Some((_, _, shards)) => shards.push(shard),
                // A lease of a member whose heartbeat lapsed: still live until it expires.
                None => view.members.push((owner, time::from_millis(0), vec![shard])),
            }
        }
        view.unowned = (0..shard_count).filter(|s| !owned[*s as usize]).collect();
        Ok(view)
    }

    /// Removes a replica on clean shutdown and frees its shards at once.
    pub async fn scheduler_leave(&self, member: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE scheduler_shards SET owner = NULL, lease_expires_at = 0 WHERE owner = $1")
            .bind(member)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM scheduler_members WHERE member_id = $1").bind(member).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Renews `member`'s shard leases, releases shards beyond `want`, and claims free or expired
    /// shards up to `want` (compare-and-set per shard). Returns the shards now held.
    pub async fn claim_shards(
        &self,
        member: &str,
        shard_count: u32,
        want: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<u32>, StoreError> {
        let now = self.now_ms();
        let until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE scheduler_shards SET lease_expires_at = $1 WHERE owner = $2")
            .bind(until)
            .bind(member)
            .execute(&mut *tx)
            .await?;
        let existing: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM scheduler_shards").fetch_one(&mut *tx).await?.try_get("n")?;
        if existing < i64::from(shard_count) {
            for shard in 0..shard_count {
                sqlx::query("INSERT INTO scheduler_shards (shard, owner, lease_expires_at) VALUES ($1, NULL, 0) ON CONFLICT (shard) DO NOTHING")
                    .bind(i64::from(shard))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let mut owned: Vec<u32> =
            sqlx::query("SELECT shard FROM scheduler_shards WHERE owner = $1 AND shard < $2 ORDER BY shard")
                .bind(member)
                .bind(i64::from(shard_count))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<i64, _>("shard").map(|s| s as u32))
                .collect::<Result<_, _>>()?;
        while owned.len() > want as usize {
            let Some(s) = owned.pop() else { break };
            sqlx::query(
                "UPDATE scheduler_shards SET owner = NULL, lease_expires_at = 0 WHERE shard = $1 AND owner = $2",
            )
            .bind(i64::from(s))
            .bind(member)
            .execute(&mut *tx)
            .await?;
        }
        if owned.len() < want as usize {
            let free: Vec<i64> = sqlx::query(
                "SELECT shard FROM scheduler_shards WHERE shard < $1 AND (owner IS NULL OR lease_expires_at < $2) ORDER BY shard LIMIT $3",
            )
            .bind(i64::from(shard_count))
            .bind(now)
            .bind((want as usize - owned.len()) as i64)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>("shard"))
            .collect::<Result<_, _>>()?;
            for s in free {
                let done = sqlx::query(
                    "UPDATE scheduler_shards SET owner = $1, lease_expires_at = $2 \
                     WHERE shard = $3 AND (owner IS NULL OR lease_expires_at < $4)",
                )
                .bind(member)
                .bind(until)
                .bind(s)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 1 {
                    owned.push(s as u32);
                }
            }
        }
        tx.commit().await?;
        owned.sort_unstable();
        Ok(owned)
    }
}
