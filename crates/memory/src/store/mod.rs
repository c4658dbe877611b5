//! The [`MemoryStore`] trait (records, recency, filters, TTL), its backends, and [`connect`],
//! which opens one by URL.
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::MemoryError;
use crate::types::{MemoryRecord, MemoryType, RecallQuery, Scope};

pub mod memory;
pub mod redis;
pub mod sql;

/// Storage of memory records.
///
/// Every backend behaves the same (see `tests/store_contract.rs`): ids are unique across scopes,
/// `put` replaces a record with the same id, expired records (`expires_at <= clock.now()`) are
/// invisible to every read and count, and instants keep millisecond precision.
#[async_trait]
pub trait MemoryStore: Send + Sync + std::fmt::Debug {
    /// Backend name for stats and logs (`memory`, `redis`, `sql`).
    fn backend(&self) -> &'static str;

    /// Inserts or replaces records.
    async fn put(&self, records: &[MemoryRecord]) -> Result<(), MemoryError>;

    /// Records of `scope` with these ids (archived ones included; unknown or expired ids are
    /// skipped), in the order of `ids`.
    async fn get(&self, scope: &Scope, ids: &[String]) -> Result<Vec<MemoryRecord>, MemoryError>;

    /// The newest records matching `query`, newest first (ties: higher id first).
    async fn recent(&self, query: &RecallQuery) -> Result<Vec<MemoryRecord>, MemoryError>;

    /// What [`recent`](Self::recent) answers for each of `queries`, in their order. A backend
    /// that can answer several in one read says so here (SQLite: a run's episodes and
    /// procedural notes in one statement); the default asks one after the other.
    async fn recent_each(&self, queries: &[RecallQuery]) -> Result<Vec<Vec<MemoryRecord>>, MemoryError> {
        let mut found = Vec::with_capacity(queries.len());
        for q in queries {
            found.push(self.recent(q).await?);
        }
        Ok(found)
    }

    /// Deletes the records of `scope` of `kind` (every type if `None`); only `ids` if not empty.
    /// Returns how many were deleted.
    async fn delete(&self, scope: &Scope, kind: Option<MemoryType>, ids: &[String]) -> Result<u64, MemoryError>;

    /// Marks records of `scope` archived (or not); returns how many changed.
    async fn set_archived(&self, scope: &Scope, ids: &[String], archived: bool) -> Result<u64, MemoryError>;

    /// Live records of `kind`, in `scope` or in every scope; archived records count.
    async fn count(&self, scope: Option<&Scope>, kind: MemoryType) -> Result<u64, MemoryError>;

    /// Live records of `kind` in every scope with ids greater than `after`, in id order, at most
    /// `limit` (archived included): pages through a whole type, e.g. to rebuild a vector index.
    async fn scan(&self, kind: MemoryType, after: Option<&str>, limit: usize)
    -> Result<Vec<MemoryRecord>, MemoryError>;

    /// Physically removes expired records; returns how many.
    async fn purge_expired(&self) -> Result<u64, MemoryError>;
}

/// Opens the store at `url`: `memory://`, `redis://…` / `rediss://…`, a Redis Cluster
/// `redis+cluster://host:port[,host:port…]` / `rediss+cluster://…`, `sqlite:…` or
/// `postgres://…` / `postgresql://…`. A Redis URL may end in `?prefix=NAME`.
pub async fn connect(url: &str) -> Result<Arc<dyn MemoryStore>, MemoryError> {
    if url.is_empty() {
        return Err(MemoryError::Config("is empty: name a store (memory://, redis://, sqlite://, postgres://)".into()));
    }
    if url == "memory://" {
        Ok(Arc::new(memory::InMemoryStore::new()))
    } else if nightshift_redis::is_redis_url(url) {
        Ok(Arc::new(redis::RedisStore::connect(url).await?))
    } else if url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(sql::SqlStore::connect(url).await?))
    } else {
        Err(MemoryError::Config(
            "unsupported store URL: use memory://, redis://, redis+cluster://, sqlite:// or postgres://".into(),
        ))
    }
}
