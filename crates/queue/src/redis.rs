//! Redis Streams backend (redis crate 1.8; written against Redis 7.0).
//!
//! ## Keys (prefix `P`, wrapped in a hash tag so that a cluster keeps them in one slot, which
//! the multi-key scripts need)
//! - `{P}:stream`: the stream of ready requests, fields `r` (prost-encoded request) and `d`
//!   (deliveries before this entry, carried over by `nack`); consumer group `workers`;
//! - `{P}:delayed` (ZSET, member → due unix ms) and `{P}:delayed-data` (HASH, member →
//!   request): delayed requests; a member is `<deliveries so far>:<uuid>`;
//! - `{P}:dedup:<dedup id>`: dedup marker ([`crate::dedup_id`]) with a TTL of the dedup window.
//!
//! ## Semantics
//! - **dedup + publish** are one Lua script: `SET dedup NX PX window`, and only if that set the
//!   key, `XADD` (or `ZADD`+`HSET` for a delay). A `MULTI` could not make the XADD conditional.
//! - **delivery**: `XREADGROUP ... >` on a connection of its own whose response timeout exceeds
//!   the `BLOCK` time (redis-rs times out after 500 ms by default). A handle keeps a small pool
//!   of such connections so concurrent `receive` calls do not queue behind one another's BLOCK.
//! - **ack deadline**: an entry idle in the pending list for longer than `ack_wait` belongs to a
//!   consumer presumed dead. `receive` reclaims such entries with `XAUTOCLAIM` (looping on the
//!   cursor until `0-0` or `max` entries), at most once per `poll_interval` per handle. The
//!   reclaim runs in a Lua script that also reads each entry's delivery count (`XPENDING`), as
//!   XAUTOCLAIM does not return it.
//! - **ack**: `XACK` + `XDEL` (atomic pipeline): Redis 7 keeps acked entries in the stream
//!   otherwise (`XACKDEL` needs Redis 8).
//! - **in_progress**: `XCLAIM <self> 0 <id> JUSTID` resets the entry's idle time without
//!   counting a delivery, after a check (same script) that this consumer still owns it, so a
//!   worker that lost its lease does not steal the entry back.
//! - **delayed delivery**: delayed publishes and `nack(delay)` go to the ZSET scored by due time
//!   (Redis `TIME`, so publisher clocks do not matter); a promoter script (`TIME`,
//!   `ZRANGEBYSCORE`, `XADD`, `ZREM`) runs at the start of every `receive` poll and returns the
//!   time until the next due member, which caps the `BLOCK` so a waiting consumer promotes it on
//!   time. A nack'ed entry is copied (same script) with its delivery count and removed from the
//!   stream.
//! - **depth**: `XLEN - pending + ZCARD` (ready and delayed, not deliveries in flight).
//!
//! A `receive` future dropped while blocked (e.g. in a `select!`) may still have entries
//! delivered to this consumer by the server; they are reclaimed after `ack_wait`.
//!
//! Each handle is one consumer of the group, named by [`RedisConfig::consumer`] (a fresh UUID by
//! default). Consumers of dead processes stay listed in the group (harmless; their pending
//! entries are reclaimed); `XGROUP DELCONSUMER` is left to operators since it drops a consumer's
//! pending entries.

use std::sync::Mutex;
use std::time::Duration;

use ::redis::streams::{StreamReadOptions, StreamReadReply};
use ::redis::{AsyncCommands, Script};
use nightshift_redis::{Connection, Connector, Timeouts, key};
use tokio::time::Instant;

use crate::{Acker, Delivery, QueueError, QueueOptions, RunRequest, WorkQueue};

/// How many due delayed requests one promoter call moves.
const PROMOTE_BATCH: usize = 1000;

/// Settings of a [`RedisQueue`].
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Key prefix (see the module docs).
    pub prefix: String,
    /// Consumer group name.
    pub group: String,
    /// This handle's consumer name in the group; must be unique among live handles.
    pub consumer: String,
    /// Lease: an entry idle in the pending list this long is reclaimed by another consumer.
    pub ack_wait: Duration,
    /// TTL of the dedup markers.
    pub dedup_window: Duration,
    /// Longest single `BLOCK` of a waiting `receive`, and the period of reclaim passes.
    /// Bounds how late a delayed request published by *another* process is noticed by a
    /// consumer that is already waiting.
    pub poll_interval: Duration,
}

impl RedisConfig {
    /// Prefix = `options.name`, group `workers`, consumer = `options.consumer_name` or a fresh
    /// UUID, poll interval 1 s.
    pub fn from_options(options: &QueueOptions) -> Result<Self, QueueError> {
        crate::validate_name(&options.name)?;
        Ok(Self {
            prefix: options.name.clone(),
            group: "workers".to_owned(),
            consumer: options.consumer_name.clone().unwrap_or_else(|| format!("consumer-{}", uuid::Uuid::new_v4())),
            ack_wait: options.ack_wait,
            dedup_window: options.dedup_window,
            poll_interval: Duration::from_secs(1),
        })
    }
}

/// `SET NX` the dedup marker; if it was set, enqueue (delay > 0: ZSET + HASH, else XADD).
/// KEYS: dedup, stream, delayed, delayed-data. ARGV: payload, window ms, delay ms, member.
const PUBLISH_LUA: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then return 0 end
local delay = tonumber(ARGV[3])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[4], ARGV[4], ARGV[1])
  redis.call('ZADD', KEYS[3], now + delay, ARGV[4])
else
  redis.call('XADD', KEYS[2], '*', 'r', ARGV[1], 'd', '0')
end
return 1
";

/// Moves due delayed requests to the stream; returns `{moved, ms until the next due or -1}`.
/// KEYS: stream, delayed, delayed-data. ARGV: batch size.
const PROMOTE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local payload = redis.call('HGET', KEYS[3], member)
  if payload then
    local d = string.match(member, '^(%d+):') or '0'
    redis.call('XADD', KEYS[1], '*', 'r', payload, 'd', d)
    redis.call('HDEL', KEYS[3], member)
  end
  redis.call('ZREM', KEYS[2], member)
end
local wait = -1
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if nxt[2] then
  wait = tonumber(nxt[2]) - now
  if wait < 0 then wait = 0 end
end
return {#due, wait}
";

/// One XAUTOCLAIM step plus each claimed entry's delivery count.
/// KEYS: stream. ARGV: group, consumer, min idle ms, cursor, count.
/// Returns `{next cursor, {{id, times delivered, payload, d}, ...}}`.
const RECLAIM_LUA: &str = r"
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, e in ipairs(r[2]) do
  local fields = e[2]
  if fields then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    local n = 1
    if p[1] then n = p[1][4] end
    local payload, d = '', 0
    for i = 1, #fields, 2 do
      if fields[i] == 'r' then payload = fields[i + 1] end
      if fields[i] == 'd' then d = tonumber(fields[i + 1]) or 0 end
    end
    out[#out + 1] = {e[1], n, payload, d}
  end
end
return {r[1], out}
";

/// Resets the idle time of an entry this consumer still owns. KEYS: stream.
/// ARGV: group, consumer, id. Returns 1 if extended.
const EXTEND_LUA: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
";

/// Removes an entry this consumer owns and re-enqueues its request after a delay, carrying the
/// delivery count. KEYS: stream, delayed, delayed-data. ARGV: group, consumer, id, delay ms,
/// uuid, deliveries so far. Returns 1 if re-enqueued.
const NACK_LUA: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if not e[1] then return 0 end
local payload = ''
local fields = e[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 'r' then payload = fields[i + 1] end
end
local delay = tonumber(ARGV[4])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local member = ARGV[6] .. ':' .. ARGV[5]
  redis.call('HSET', KEYS[3], member, payload)
  redis.call('ZADD', KEYS[2], now + delay, member)
else
  redis.call('XADD', KEYS[1], '*', 'r', payload, 'd', ARGV[6])
end
return 1
";

/// Ready + delayed. KEYS: stream, delayed. ARGV: group.
const DEPTH_LUA: &str = r"
local len = redis.call('XLEN', KEYS[1])
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])[1]
return len - pending + redis.call('ZCARD', KEYS[2])
";

/// A row of [`RECLAIM_LUA`]: entry id, times delivered in the group, payload, deliveries
/// before the entry.
type ReclaimedEntry = (String, u32, Vec<u8>, u32);

struct Scripts {
    publish: Script,
    promote: Script,
    reclaim: Script,
    extend: Script,
    nack: Script,
    depth: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            publish: Script::new(PUBLISH_LUA),
            promote: Script::new(PROMOTE_LUA),
            reclaim: Script::new(RECLAIM_LUA),
            extend: Script::new(EXTEND_LUA),
            nack: Script::new(NACK_LUA),
            depth: Script::new(DEPTH_LUA),
        }
    }
}

struct Keys {
    stream: String,
    delayed: String,
    delayed_data: String,
    dedup_prefix: String,
}

/// A [`WorkQueue`] on Redis Streams; see the module docs.
pub struct RedisQueue {
    client: Connector,
    conn: Connection,
    /// Idle blocking-read connections (see the module docs).
    blocking: Mutex<Vec<Connection>>,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
    config: RedisConfig,
    last_reclaim: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue").field("config", &self.config).finish_non_exhaustive()
    }
}

fn backend(context: &str, err: impl std::fmt::Display) -> QueueError {
    QueueError::Backend(format!("redis: {context}: {err}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Ignores a poisoned lock: the guarded data (a pool, a timestamp) stays valid.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RedisQueue {
    /// Connects to `url` (`redis://host:port[/db]`) and creates the stream and consumer group
    /// if missing.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self, QueueError> {
        if config.poll_interval.is_zero() || config.ack_wait.is_zero() || config.dedup_window.is_zero() {
            return Err(QueueError::Config("redis queue: ack_wait, dedup_window and poll_interval must be > 0".into()));
        }
        let client = Connector::open(url).map_err(|e| QueueError::Config(e.to_string()))?;
        let conn = client.connection(Timeouts::COMMANDS).await.map_err(|e| QueueError::Backend(e.to_string()))?;
        let prefix = &config.prefix;
        let keys = Keys {
            stream: key(prefix, "stream"),
            delayed: key(prefix, "delayed"),
            delayed_data: key(prefix, "delayed-data"),
            dedup_prefix: key(prefix, "dedup:"),
        };
        let queue = Self {
            client,
            conn,
            blocking: Mutex::new(Vec::new()),
            keys,
            scripts: std::sync::Arc::new(Scripts::new()),
            config,
            last_reclaim: Mutex::new(None),
        };
        queue.ensure_group().await?;
        Ok(queue)
    }

    /// `XGROUP CREATE ... 0 MKSTREAM`, tolerating an existing group. Start id 0: requests
    /// published before the first consumer ever connected are delivered too.
    async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let created: Result<(), _> = conn.xgroup_create_mkstream(&self.keys.stream, &self.config.group, "0").await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(backend("create consumer group", e)),
        }
    }

    /// Runs the promoter; returns the time until the next delayed request is due.
    async fn promote(&self) -> Result<Option<Duration>, QueueError> {
        let mut conn = self.conn.clone();
        let (_moved, wait): (i64, i64) = self
            .scripts
            .promote
            .key(&self.keys.stream)
            .key(&self.keys.delayed)
            .key(&self.keys.delayed_data)
            .arg(PROMOTE_BATCH)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| backend("promote delayed", e))?;
        Ok(u64::try_from(wait).ok().map(Duration::from_millis))
    }

    /// Whether a reclaim pass is due, marking it started.
    fn reclaim_due(&self) -> bool {
        let period = self.config.poll_interval.min(self.config.ack_wait / 2);
        let now = Instant::now();
        let mut last = lock(&self.last_reclaim);
        if last.is_some_and(|at| now.duration_since(at) < period) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Claims entries idle past `ack_wait` (at most `max - out.len()`).
    async fn reclaim(&self, max: usize, out: &mut Vec<Delivery>) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let mut cursor = "0-0".to_owned();
        loop {
            let room = max.saturating_sub(out.len());
            if room == 0 {
                return Ok(());
            }
            let (next, claimed): (String, Vec<ReclaimedEntry>) = self
                .scripts
                .reclaim
                .key(&self.keys.stream)
                .arg(&self.config.group)
                .arg(&self.config.consumer)
                .arg(millis(self.config.ack_wait))
                .arg(&cursor)
                .arg(room)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| backend("reclaim", e))?;
            for (id, times, payload, before) in claimed {
                tracing::debug!(%id, times, "reclaimed an entry idle past ack_wait");
                if let Some(delivery) = self.to_delivery(id, &payload, before.saturating_add(times)).await {
                    out.push(delivery);
                }
            }
            if next == "0-0" {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// `XREADGROUP ... >` for up to `count` new entries, blocking up to `block` (not at all if
    /// zero).
    async fn read_new(&self, count: usize, block: Duration, out: &mut Vec<Delivery>) -> Result<(), QueueError> {
        let mut options = StreamReadOptions::default().group(&self.config.group, &self.config.consumer).count(count);
        // BLOCK 0 would mean forever.
        let block_ms = usize::try_from(block.as_millis()).unwrap_or(usize::MAX);
        if block_ms > 0 {
            options = options.block(block_ms);
        }
        let mut conn = if block_ms > 0 { self.blocking_connection().await? } else { self.conn.clone() };
        let result: Result<Option<StreamReadReply>, _> =
            conn.xread_options(&[&self.keys.stream], &[">"], &options).await;
        if block_ms > 0 {
            lock(&self.blocking).push(conn);
        }
        let reply = match result {
            Ok(reply) => reply,
            Err(e) if e.code() == Some("NOGROUP") => {
                // The stream or group was deleted under us (e.g. FLUSHALL): recreate, read next time.
                tracing::warn!(stream = %self.keys.stream, "consumer group missing, recreating it");
                return self.ensure_group().await;
            }
            Err(e) => return Err(backend("XREADGROUP", e)),
        };
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in stream.ids {
                let payload: Vec<u8> = entry.get("r").unwrap_or_default();
                let before: u32 = entry.get("d").unwrap_or(0);
                if let Some(delivery) = self.to_delivery(entry.id, &payload, before.saturating_add(1)).await {
                    out.push(delivery);
                }
            }
        }
        Ok(())
    }

    async fn blocking_connection(&self) -> Result<Connection, QueueError> {
        if let Some(conn) = lock(&self.blocking).pop() {
            return Ok(conn);
        }
        self.client
            .connection(Timeouts::blocking(self.config.poll_interval))
            .await
            .map_err(|e| QueueError::Backend(e.to_string()))
    }

    /// A delivery for entry `id`, or `None` (entry acked and deleted) if it does not decode.
    async fn to_delivery(&self, id: String, payload: &[u8], delivered: u32) -> Option<Delivery> {
        match crate::decode(payload) {
            Ok(request) => {
                let acker = RedisAcker {
                    conn: self.conn.clone(),
                    scripts: std::sync::Arc::clone(&self.scripts),
                    stream: self.keys.stream.clone(),
                    delayed: self.keys.delayed.clone(),
                    delayed_data: self.keys.delayed_data.clone(),
                    group: self.config.group.clone(),
                    consumer: self.config.consumer.clone(),
                    id,
                    delivered,
                };
                Some(Delivery::new(request, delivered, Box::new(acker)))
            }
            Err(e) => {
                tracing::error!(error = %e, %id, stream = %self.keys.stream, "undecodable run request, deleted");
                if let Err(e) = ack_and_delete(&self.conn, &self.keys.stream, &self.config.group, &id).await {
                    tracing::warn!(error = %e, %id, "could not delete an undecodable entry");
                }
                None
            }
        }
    }
}

async fn ack_and_delete(conn: &Connection, stream: &str, group: &str, id: &str) -> Result<(), QueueError> {
    let mut conn = conn.clone();
    let _: () = ::redis::pipe()
        .atomic()
        .xack(stream, group, &[id])
        .ignore()
        .xdel(stream, &[id])
        .ignore()
        .query_async(&mut conn)
        .await
        .map_err(|e| backend("ack", e))?;
    Ok(())
}

#[async_trait::async_trait]
impl WorkQueue for RedisQueue {
    async fn publish(&self, request: &RunRequest, delay: Option<Duration>) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let delay_ms = delay.map_or(0, millis);
        let member = format!("0:{}", uuid::Uuid::new_v4());
        let published: i64 = self
            .scripts
            .publish
            .key(format!("{}{}", self.keys.dedup_prefix, crate::dedup_id(request)))
            .key(&self.keys.stream)
            .key(&self.keys.delayed)
            .key(&self.keys.delayed_data)
            .arg(crate::encode(request))
            .arg(millis(self.config.dedup_window).max(1))
            .arg(delay_ms)
            .arg(member)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| backend("publish", e))?;
        Ok(published == 1)
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let deadline = crate::deadline_after(wait);
        loop {
            let next_due = self.promote().await?;
            if self.reclaim_due() {
                self.reclaim(max, &mut out).await?;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let block = if out.is_empty() {
                let mut block = remaining.min(self.config.poll_interval);
                if let Some(due) = next_due {
                    block = block.min(due);
                }
                block
            } else {
                Duration::ZERO
            };
            self.read_new(max - out.len(), block, &mut out).await?;
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
        }
    }

    async fn depth(&self) -> Result<Option<u64>, QueueError> {
        let mut conn = self.conn.clone();
        let depth: i64 = self
            .scripts
            .depth
            .key(&self.keys.stream)
            .key(&self.keys.delayed)
            .arg(&self.config.group)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| backend("depth", e))?;
        Ok(Some(u64::try_from(depth).unwrap_or(0)))
    }
}

/// Acks one stream entry read by this handle's consumer.
struct RedisAcker {
    conn: Connection,
    scripts: std::sync::Arc<Scripts>,
    stream: String,
    delayed: String,
    delayed_data: String,
    group: String,
    consumer: String,
    id: String,
    delivered: u32,
}

#[async_trait::async_trait]
impl Acker for RedisAcker {
    async fn ack(&self) -> Result<(), QueueError> {
        // Acks even if another consumer reclaimed the entry meanwhile: the work is done.
        ack_and_delete(&self.conn, &self.stream, &self.group, &self.id).await
    }

    async fn nack(&self, delay: Duration) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let requeued: i64 = self
            .scripts
            .nack
            .key(&self.stream)
            .key(&self.delayed)
            .key(&self.delayed_data)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(&self.id)
            .arg(millis(delay))
            .arg(uuid::Uuid::new_v4().to_string())
            .arg(self.delivered)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| backend("nack", e))?;
        if requeued == 0 {
            tracing::debug!(id = %self.id, "nack of an entry this consumer no longer owns, ignored");
        }
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let extended: i64 = self
            .scripts
            .extend
            .key(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(&self.id)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| backend("in_progress", e))?;
        if extended == 0 {
            tracing::debug!(id = %self.id, "in_progress of an entry this consumer no longer owns, ignored");
        }
        Ok(())
    }
}
