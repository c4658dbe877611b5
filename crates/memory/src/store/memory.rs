//! In-process [`MemoryStore`]: a map behind a mutex. Nothing survives a restart; meant for
//! working memory, tests and `nightshift dev`.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use nightshift_core::{Clock, SystemClock};

use crate::error::MemoryError;
use crate::store::MemoryStore;
use crate::types::{MemoryRecord, MemoryType, RecallQuery, Scope, to_millis_precision};

/// Records held in memory.
#[derive(Debug, Clone)]
pub struct InMemoryStore {
    records: Arc<Mutex<HashMap<String, MemoryRecord>>>,
    clock: Arc<dyn Clock>,
}

impl InMemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store on `clock` (TTL is judged by it).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { records: Arc::new(Mutex::new(HashMap::new())), clock }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MemoryRecord>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl MemoryStore for InMemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn put(&self, records: &[MemoryRecord]) -> Result<(), MemoryError> {
        let mut map = self.lock();
        for r in records {
            let mut r = r.clone();
            // Same precision as the other backends, so the contract holds for all of them.
            r.created_at = to_millis_precision(r.created_at);
            r.expires_at = r.expires_at.map(to_millis_precision);
            map.insert(r.id.clone(), r);
        }
        Ok(())
    }

    async fn get(&self, scope: &Scope, ids: &[String]) -> Result<Vec<MemoryRecord>, MemoryError> {
        let now = self.clock.now();
        let map = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| map.get(id))
            .filter(|r| &r.scope == scope && !r.is_expired(now))
            .cloned()
            .collect())
    }

    async fn recent(&self, q: &RecallQuery) -> Result<Vec<MemoryRecord>, MemoryError> {
        let now = self.clock.now();
        let map = self.lock();
        let mut out: Vec<MemoryRecord> = map
            .values()
            .filter(|r| {
                r.scope == q.scope
                    && r.kind == q.kind
                    && !r.is_expired(now)
                    && (q.include_archived || !r.archived)
                    && q.before.is_none_or(|b| r.created_at < b)
                    && r.matches(&q.metadata)
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        out.truncate(q.limit);
        Ok(out)
    }

    async fn delete(&self, scope: &Scope, kind: Option<MemoryType>, ids: &[String]) -> Result<u64, MemoryError> {
        let now = self.clock.now();
        let mut map = self.lock();
        let before = map.len();
        map.retain(|id, r| {
            let hit = &r.scope == scope
                && kind.is_none_or(|k| r.kind == k)
                && (ids.is_empty() || ids.contains(id))
                && !r.is_expired(now);
            !hit
        });
        Ok((before - map.len()) as u64)
    }

    async fn set_archived(&self, scope: &Scope, ids: &[String], archived: bool) -> Result<u64, MemoryError> {
        let now = self.clock.now();
        let mut map = self.lock();
        let mut n = 0;
        for id in ids {
            if let Some(r) = map.get_mut(id)
                && &r.scope == scope
                && !r.is_expired(now)
                && r.archived != archived
            {
                r.archived = archived;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn count(&self, scope: Option<&Scope>, kind: MemoryType) -> Result<u64, MemoryError> {
        let now = self.clock.now();
        let map = self.lock();
        Ok(map.values().filter(|r| r.kind == kind && scope.is_none_or(|s| &r.scope == s) && !r.is_expired(now)).count()
            as u64)
    }

    async fn scan(
        &self,
        kind: MemoryType,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>, MemoryError> {
        let now = self.clock.now();
        let map = self.lock();
        let mut out: Vec<MemoryRecord> = map
            .values()
            .filter(|r| r.kind == kind && !r.is_expired(now) && after.is_none_or(|a| r.id.as_str() > a))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.truncate(limit);
        Ok(out)
    }

    async fn purge_expired(&self) -> Result<u64, MemoryError> {
        let now = self.clock.now();
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, r| !r.is_expired(now));
        Ok((before - map.len()) as u64)
    }
}
