//! Redis [`MemoryStore`].
//!
//! Layout under a key prefix `P` (hash-tagged as `{P}` so a cluster keeps one store on one slot):
//! - `{P}:rec:<id>`: the record as JSON (with a physical TTL a minute past its logical expiry);
//! - `{P}:idx:<list>`: ZSET of ids scored by `created_at` ms, one per scope and type, where
//!   `<list>` is `<type>:<len(agent)>:<agent>:<session>` (the length keeps it unambiguous);
//! - `{P}:exp:<list>`: ZSET of ids scored by `expires_at` ms (records with a TTL only);
//! - `{P}:lists:<type>`: SET of the `<list>`s of a type, for counts across scopes.
//!
//! Expiry is judged by the injected clock; expired ids are pruned from the indexes before each
//! read of a list.
use std::sync::Arc;

use async_trait::async_trait;
use nightshift_core::{Clock, SystemClock, time};
use nightshift_redis::{Connection, Connector, Timeouts, key};

use crate::error::MemoryError;
use crate::store::MemoryStore;
use crate::types::{MemoryRecord, MemoryType, RecallQuery, Scope, to_millis_precision};

/// Extra physical lifetime of an expired record's key, so the clock decides visibility.
const PHYSICAL_GRACE_MS: i64 = 60_000;
/// Ids read per round trip while scanning an index for recall.
const SCAN_BATCH: usize = 128;

/// Records in Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: Connection,
    prefix: String,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// Splits `redis://host:port/db?prefix=NAME` into the client URL and the key prefix
/// (default `nightshift:memory`).
pub fn split_prefix(url: &str) -> (String, String) {
    match url.split_once("?prefix=") {
        Some((base, prefix)) if !prefix.is_empty() => (base.to_owned(), prefix.to_owned()),
        Some((base, _)) => (base.to_owned(), "nightshift:memory".to_owned()),
        None => (url.to_owned(), "nightshift:memory".to_owned()),
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port[/db][?prefix=NAME]`); fails if Redis does not answer.
    pub async fn connect(url: &str) -> Result<Self, MemoryError> {
        Self::connect_with_clock(url, Arc::new(SystemClock)).await
    }

    /// Like [`RedisStore::connect`] with an injected clock (TTL is judged by it).
    pub async fn connect_with_clock(url: &str, clock: Arc<dyn Clock>) -> Result<Self, MemoryError> {
        let (base, prefix) = split_prefix(url);
        let client = Connector::open(&base).map_err(|e| MemoryError::Config(e.to_string()))?;
        let mut conn = client.connection(Timeouts::COMMANDS).await.map_err(|e| MemoryError::backend("redis", e))?;
        let _: String = ::redis::cmd("PING").query_async(&mut conn).await?;
        Ok(Self { conn, prefix, clock })
    }

    fn rec_key(&self, id: &str) -> String {
        key(&self.prefix, &format!("rec:{id}"))
    }

    fn idx_key(&self, list: &str) -> String {
        key(&self.prefix, &format!("idx:{list}"))
    }

    fn exp_key(&self, list: &str) -> String {
        key(&self.prefix, &format!("exp:{list}"))
    }

    fn lists_key(&self, kind: MemoryType) -> String {
        key(&self.prefix, &format!("lists:{kind}"))
    }

    fn now_ms(&self) -> i64 {
        time::to_millis(self.clock.now())
    }

    /// Drops expired ids of `list` from its indexes (and their records); returns how many.
    async fn prune(&self, list: &str) -> Result<u64, MemoryError> {
        let mut conn = self.conn.clone();
        let exp = self.exp_key(list);
        let expired: Vec<String> =
            ::redis::cmd("ZRANGEBYSCORE").arg(&exp).arg("-inf").arg(self.now_ms()).query_async(&mut conn).await?;
        if expired.is_empty() {
            return Ok(0);
        }
        let mut pipe = ::redis::pipe();
        pipe.atomic().cmd("ZREM").arg(self.idx_key(list)).arg(&expired).ignore();
        pipe.cmd("ZREM").arg(&exp).arg(&expired).ignore();
        for id in &expired {
            pipe.cmd("DEL").arg(self.rec_key(id)).ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
        Ok(expired.len() as u64)
    }

    async fn load(&self, ids: &[String]) -> Result<Vec<Option<MemoryRecord>>, MemoryError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let keys: Vec<String> = ids.iter().map(|id| self.rec_key(id)).collect();
        let raw: Vec<Option<String>> = ::redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        raw.into_iter()
            .map(|r| {
                r.map(|json| {
                    serde_json::from_str(&json).map_err(|e| MemoryError::Corrupt(format!("redis record: {e}")))
                })
                .transpose()
            })
            .collect()
    }

    async fn lists(&self, kind: MemoryType) -> Result<Vec<String>, MemoryError> {
        let mut conn = self.conn.clone();
        Ok(::redis::cmd("SMEMBERS").arg(self.lists_key(kind)).query_async(&mut conn).await?)
    }
}

/// The list name of a scope and type.
fn list_name(scope: &Scope, kind: MemoryType) -> String {
    format!("{kind}:{}:{}:{}", scope.agent_id.len(), scope.agent_id, scope.session)
}

fn encode(r: &MemoryRecord) -> Result<String, MemoryError> {
    serde_json::to_string(r).map_err(|e| MemoryError::Invalid(format!("record {}: {e}", r.id)))
}

#[async_trait]
impl MemoryStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn put(&self, records: &[MemoryRecord]) -> Result<(), MemoryError> {
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let previous = self.load(&ids).await?;
        let now = self.now_ms();
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for (r, old) in records.iter().zip(previous) {
            let mut r = r.clone();
            r.created_at = to_millis_precision(r.created_at);
            r.expires_at = r.expires_at.map(to_millis_precision);
            let list = list_name(&r.scope, r.kind);
            // A replaced record may move to another scope or type: unlink it from the old list.
            if let Some(old) = old {
                let old_list = list_name(&old.scope, old.kind);
                if old_list != list {
                    pipe.cmd("ZREM").arg(self.idx_key(&old_list)).arg(&r.id).ignore();
                    pipe.cmd("ZREM").arg(self.exp_key(&old_list)).arg(&r.id).ignore();
                }
            }
            let key = self.rec_key(&r.id);
            match r.expires_at {
                Some(exp) => {
                    let ms = time::to_millis(exp);
                    let ttl = (ms - now).max(0) + PHYSICAL_GRACE_MS;
                    pipe.cmd("SET").arg(&key).arg(encode(&r)?).arg("PX").arg(ttl).ignore();
                    pipe.cmd("ZADD").arg(self.exp_key(&list)).arg(ms).arg(&r.id).ignore();
                }
                None => {
                    pipe.cmd("SET").arg(&key).arg(encode(&r)?).ignore();
                    pipe.cmd("ZREM").arg(self.exp_key(&list)).arg(&r.id).ignore();
                }
            }
            pipe.cmd("ZADD").arg(self.idx_key(&list)).arg(time::to_millis(r.created_at)).arg(&r.id).ignore();
            pipe.cmd("SADD").arg(self.lists_key(r.kind)).arg(&list).ignore();
        }
        let mut conn = self.conn.clone();
        let () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    async fn get(&self, scope: &Scope, ids: &[String]) -> Result<Vec<MemoryRecord>, MemoryError> {
        let now = self.clock.now();
        Ok(self.load(ids).await?.into_iter().flatten().filter(|r| &r.scope == scope && !r.is_expired(now)).collect())
    }

    async fn recent(&self, q: &RecallQuery) -> Result<Vec<MemoryRecord>, MemoryError> {
        let list = list_name(&q.scope, q.kind);
        self.prune(&list).await?;
        let idx = self.idx_key(&list);
        let max = match q.before {
            Some(b) => format!("({}", time::to_millis(b)),
            None => "+inf".to_owned(),
        };
        let now = self.clock.now();
        let mut out = Vec::new();
        let mut offset = 0usize;
        let mut conn = self.conn.clone();
        while out.len() < q.limit {
            let ids: Vec<String> = ::redis::cmd("ZREVRANGEBYSCORE")
                .arg(&idx)
                .arg(&max)
                .arg("-inf")
                .arg("LIMIT")
                .arg(offset)
                .arg(SCAN_BATCH)
                .query_async(&mut conn)
                .await?;
            if ids.is_empty() {
                break;
            }
            offset += ids.len();
            for r in self.load(&ids).await?.into_iter().flatten() {
                if r.is_expired(now) || (r.archived && !q.include_archived) || !r.matches(&q.metadata) {
                    continue;
                }
                out.push(r);
                if out.len() == q.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, scope: &Scope, kind: Option<MemoryType>, ids: &[String]) -> Result<u64, MemoryError> {
        let kinds: Vec<MemoryType> = kind.map_or_else(|| MemoryType::ALL.to_vec(), |k| vec![k]);
        let mut conn = self.conn.clone();
        let mut deleted = 0u64;
        for k in kinds {
            let list = list_name(scope, k);
            self.prune(&list).await?;
            let idx = self.idx_key(&list);
            let members: Vec<String> = if ids.is_empty() {
                ::redis::cmd("ZRANGE").arg(&idx).arg(0).arg(-1).query_async(&mut conn).await?
            } else {
                let scores: Vec<Option<f64>> =
                    ::redis::cmd("ZMSCORE").arg(&idx).arg(ids).query_async(&mut conn).await?;
                ids.iter().zip(scores).filter(|(_, s)| s.is_some()).map(|(id, _)| id.clone()).collect()
            };
            if members.is_empty() {
                continue;
            }
            let mut pipe = ::redis::pipe();
            pipe.atomic().cmd("ZREM").arg(&idx).arg(&members).ignore();
            pipe.cmd("ZREM").arg(self.exp_key(&list)).arg(&members).ignore();
            for id in &members {
                pipe.cmd("DEL").arg(self.rec_key(id)).ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
            deleted += members.len() as u64;
        }
        Ok(deleted)
    }

    async fn set_archived(&self, scope: &Scope, ids: &[String], archived: bool) -> Result<u64, MemoryError> {
        let records = self.get(scope, ids).await?;
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        let mut changed = 0;
        for mut r in records.into_iter().filter(|r| r.archived != archived) {
            r.archived = archived;
            // XX KEEPTTL: never resurrect a key that expired meanwhile, keep its physical TTL.
            pipe.cmd("SET").arg(self.rec_key(&r.id)).arg(encode(&r)?).arg("XX").arg("KEEPTTL").ignore();
            changed += 1;
        }
        if changed > 0 {
            let mut conn = self.conn.clone();
            let () = pipe.query_async(&mut conn).await?;
        }
        Ok(changed)
    }

    async fn count(&self, scope: Option<&Scope>, kind: MemoryType) -> Result<u64, MemoryError> {
        let lists = match scope {
            Some(s) => vec![list_name(s, kind)],
            None => self.lists(kind).await?,
        };
        let mut conn = self.conn.clone();
        let mut n = 0u64;
        for list in lists {
            self.prune(&list).await?;
            let c: u64 = ::redis::cmd("ZCARD").arg(self.idx_key(&list)).query_async(&mut conn).await?;
            n += c;
        }
        Ok(n)
    }

    async fn scan(
        &self,
        kind: MemoryType,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MemoryRecord>, MemoryError> {
        // Reads every id of the type per page: fine for start-up index rebuilds, not a hot path.
        let mut conn = self.conn.clone();
        let mut ids: Vec<String> = Vec::new();
        for list in self.lists(kind).await? {
            self.prune(&list).await?;
            let members: Vec<String> =
                ::redis::cmd("ZRANGE").arg(self.idx_key(&list)).arg(0).arg(-1).query_async(&mut conn).await?;
            ids.extend(members.into_iter().filter(|id| after.is_none_or(|a| id.as_str() > a)));
        }
        ids.sort();
        ids.dedup();
        let now = self.clock.now();
        let mut out = Vec::new();
        for chunk in ids.chunks(SCAN_BATCH) {
            for r in self.load(chunk).await?.into_iter().flatten() {
                if r.kind == kind && !r.is_expired(now) {
                    out.push(r);
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn purge_expired(&self) -> Result<u64, MemoryError> {
        let mut n = 0;
        for kind in MemoryType::ALL {
            for list in self.lists(kind).await? {
                n += self.prune(&list).await?;
            }
        }
        Ok(n)
    }
}
