//! Event log on a Redis stream (Redis ≥ 7.0).
//!
//! - One stream `{<prefix>}:events` (the `nightshift_redis::key` convention; a log written
//!   before it, as `<prefix>:events`, is renamed on connect); each entry holds the
//!   prost-encoded event in field `e`.
//! - **Cursor = stream id** `<ms>-<n>`: the append script chooses the id explicitly, with `ms`
//!   the server time (never going backwards) and `n` a counter contiguous over the life of the
//!   stream. Ids therefore sort like Redis's own and a time position is an `XRANGE` from
//!   `<ms>`, and a missing `n` reveals trimmed entries, so resuming after a cursor whose
//!   successors were trimmed fails with `CursorExpired` instead of silently skipping them.
//! - Append is one Lua script per batch: dedup (`SET {<prefix>}:eid:<id> <stream id> PX window`
//!   checked before `XADD`, atomically), `XADD … MAXLEN ~ max_events`, and `XTRIM MINID ~`
//!   for `max_age`.
//! - History: `XRANGE (<cursor> + COUNT n`. Live tail: one task per opened log runs
//!   `XREAD BLOCK` on its own connection (the default 500 ms response timeout would cut a
//!   blocking read short) and feeds the shared broadcast.
use std::sync::Arc;
use std::time::Duration;

use ::redis::{Script, Value};
use nightshift_core::pb;
use nightshift_redis::{Connection, Connector, Timeouts, key};
use prost::Message;

use crate::error::EventLogError;
use crate::log::{AbortOnDrop, Appended, Backend, Entry, LiveTail, LogOptions, Pos, RawFrom, RawReader};

/// How long one `XREAD BLOCK` waits before it is issued again.
const BLOCK: Duration = Duration::from_secs(5);
/// Events per append script (a script blocks Redis while it runs).
const APPEND_CHUNK: usize = 500;
/// Entries per live-tail read.
const TAIL_COUNT: usize = 1000;

const APPEND_LUA: &str = r#"
local stream = KEYS[1]
local maxlen = tonumber(ARGV[1])
local max_age = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local last_ms, last_n = 0, 0
if redis.call('EXISTS', stream) == 1 then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local id = info[i + 1]
      local dash = string.find(id, '-', 1, true)
      last_ms = tonumber(string.sub(id, 1, dash - 1))
      last_n = tonumber(string.sub(id, dash + 1))
    end
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = math.max(now, last_ms)
local out = {}
for i = 1, count do
  local dkey = ARGV[3 + 2 * i]
  local payload = ARGV[4 + 2 * i]
  local existing = false
  if dkey ~= '' then
    existing = redis.call('GET', dkey)
  end
  if existing then
    out[i] = {existing, 1}
  else
    last_n = last_n + 1
    local id = string.format('%d-%d', ms, last_n)
    if maxlen > 0 then
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, 'e', payload)
    else
      redis.call('XADD', stream, id, 'e', payload)
    end
    if dkey ~= '' then
      redis.call('SET', dkey, id, 'PX', ttl)
    end
    out[i] = {id, 0}
  end
end
if max_age > 0 then
  redis.call('XTRIM', stream, 'MINID', '~', string.format('%d', now - max_age))
end
return out
"#;

/// A page of `XRANGE`, plus the last generated id when the page is empty (to tell "nothing
/// new" from "everything after the cursor was trimmed").
const READ_LUA: &str = r#"
local range = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local last = '0-0'
if #range == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
return {last, range}
"#;

const HEAD_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return '0-0' end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return info[i + 1] end
end
return '0-0'
"#;

/// The Redis Streams [`EventLog`](crate::EventLog). Cheap to clone (clones share connections
/// and the live-tail task, which stops when the last clone is dropped).
#[derive(Clone)]
pub struct RedisLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLog").field("stream", &self.inner.stream).finish_non_exhaustive()
    }
}

struct Inner {
    opts: LogOptions,
    conn: Connection,
    stream: String,
    append: Script,
    read: Script,
    head: Script,
    live: Arc<LiveTail>,
    _tail: AbortOnDrop,
}

impl RedisLog {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`) and starts the live tail at the
    /// current end of the stream `{<prefix>}:events`.
    pub async fn connect(url: &str, opts: LogOptions) -> Result<Self, EventLogError> {
        opts.validate()?;
        let client = Connector::open(url).map_err(|e| EventLogError::Config(e.to_string()))?;
        // Appends of large batches and history pages may take longer than a plain command.
        let timeouts = Timeouts { response: Duration::from_secs(10), ..Timeouts::COMMANDS };
        let conn = client.connection(timeouts).await.map_err(|e| EventLogError::Backend(e.to_string()))?;
        // Blocking reads get their own connection, with a timeout longer than the block.
        let tail_conn =
            client.connection(Timeouts::blocking(BLOCK)).await.map_err(|e| EventLogError::Backend(e.to_string()))?;
        let stream = key(&opts.prefix, "events");
        adopt_legacy_stream(&mut conn.clone(), &format!("{}:events", opts.prefix), &stream).await?;
        let head_script = Script::new(HEAD_LUA);
        let head = head_of(&head_script, &mut conn.clone(), &stream).await?;
        let live = LiveTail::new(opts.subscriber_buffer);
        let task = tokio::spawn(tail(tail_conn, stream.clone(), head, live.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                opts,
                conn,
                stream,
                append: Script::new(APPEND_LUA),
                read: Script::new(READ_LUA),
                head: head_script,
                live,
                _tail: AbortOnDrop(task),
            }),
        })
    }

    /// The Redis key of the stream.
    pub fn stream_key(&self) -> &str {
        &self.inner.stream
    }
}

/// Renames a log written before the `{prefix}:name` key convention (`prefix:events`) to its
/// current key, once, so that an upgrade keeps the history and every cursor (stream ids do not
/// change). Only when the new key does not exist yet; on a Redis Cluster, where the two keys may
/// live on different slots, the rename is refused and the error says what to do. The two keys
/// are checked by two commands, not one pipeline, because a cluster refuses a pipeline across
/// slots.
async fn adopt_legacy_stream(conn: &mut Connection, legacy: &str, stream: &str) -> Result<(), EventLogError> {
    let legacy_exists: bool = ::redis::cmd("EXISTS").arg(legacy).query_async(conn).await.map_err(redis_err)?;
    if !legacy_exists {
        return Ok(());
    }
    let exists: bool = ::redis::cmd("EXISTS").arg(stream).query_async(conn).await.map_err(redis_err)?;
    if exists {
        return Ok(());
    }
    let renamed: bool = ::redis::cmd("RENAMENX").arg(legacy).arg(stream).query_async(conn).await.map_err(|e| {
        EventLogError::Backend(format!(
            "the event log moved from key {legacy} to {stream} and could not be renamed ({e}); \
             rename it by hand (RENAME {legacy} {stream}; on a Redis Cluster, where the keys may \
             live on different slots: DUMP {legacy}, RESTORE {stream} 0 <dump>, DEL {legacy}) \
             or start with a new prefix"
        ))
    })?;
    if renamed {
        tracing::info!(from = legacy, to = stream, "event log renamed to the current key convention");
    }
    Ok(())
}

fn redis_err(e: ::redis::RedisError) -> EventLogError {
    EventLogError::Backend(format!("Redis: {e}"))
}

fn id_of(pos: Pos) -> String {
    format!("{}-{}", pos.ms, pos.n)
}

fn parse_id(s: &str) -> Option<Pos> {
    let (ms, n) = s.split_once('-')?;
    Some(Pos { ms: ms.parse().ok()?, n: n.parse().ok()? })
}

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text_str(v: &Value) -> Option<&str> {
    text(v).and_then(|b| std::str::from_utf8(b).ok())
}

fn corrupt(what: &str, v: &Value) -> EventLogError {
    EventLogError::Corrupt(format!("unexpected Redis reply for {what}: {v:?}"))
}

/// One `XRANGE`/`XREAD` entry: `[id, [field, value, …]]`.
fn parse_entry(v: &Value) -> Result<Entry, EventLogError> {
    let Value::Array(parts) = v else { return Err(corrupt("stream entry", v)) };
    let [id, fields] = parts.as_slice() else { return Err(corrupt("stream entry", v)) };
    let id = text_str(id).ok_or_else(|| corrupt("stream entry id", v))?;
    let pos = parse_id(id).ok_or_else(|| corrupt("stream entry id", v))?;
    let payload = match fields {
        Value::Array(kv) => kv.chunks(2).find(|c| c.len() == 2 && text(&c[0]) == Some(b"e")).and_then(|c| text(&c[1])),
        _ => None,
    };
    let event = match payload.map(pb::Event::decode) {
        Some(Ok(mut ev)) => {
            ev.cursor = id.to_owned();
            Some(ev)
        }
        Some(Err(e)) => {
            tracing::warn!(id, error = %e, "skipping undecodable event in Redis stream");
            None
        }
        None => {
            tracing::warn!(id, "skipping Redis stream entry without an event");
            None
        }
    };
    Ok(Entry { pos, event })
}

async fn head_of(script: &Script, conn: &mut Connection, stream: &str) -> Result<Pos, EventLogError> {
    let v: Value = script.key(stream).invoke_async(conn).await.map_err(redis_err)?;
    text_str(&v).and_then(parse_id).ok_or_else(|| corrupt("stream head", &v))
}

/// The live tail: follows the stream from `last` and broadcasts every entry in order.
async fn tail(mut conn: Connection, stream: String, mut last: Pos, live: Arc<LiveTail>) {
    let block_ms = u64::try_from(BLOCK.as_millis()).unwrap_or(5000);
    loop {
        let reply: Result<Value, _> = ::redis::cmd("XREAD")
            .arg("COUNT")
            .arg(TAIL_COUNT)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&stream)
            .arg(id_of(last))
            .query_async(&mut conn)
            .await;
        let entries = match reply {
            Ok(Value::Nil) => continue,
            Ok(Value::Array(keys)) => keys,
            Ok(other) => {
                tracing::warn!(stream, reply = ?other, "unexpected XREAD reply");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(stream, error = %e, "live tail read failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // [[key, [entry, …]]] for the single stream read.
        for key in &entries {
            let Value::Array(kv) = key else { continue };
            let Some(Value::Array(items)) = kv.get(1) else { continue };
            for item in items {
                match parse_entry(item) {
                    Ok(entry) => {
                        if last.n != 0 && entry.pos.n != last.n + 1 {
                            tracing::warn!(stream, after = %id_of(last), next = %id_of(entry.pos),
                                "live tail skipped entries trimmed before it read them");
                        }
                        last = entry.pos;
                        live.publish(Arc::new(entry));
                    }
                    Err(e) => tracing::warn!(stream, error = %e, "skipping malformed stream entry"),
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Backend for RedisLog {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn durable(&self) -> bool {
        true
    }

    fn options(&self) -> &LogOptions {
        &self.inner.opts
    }

    fn parse_cursor(&self, cursor: &str) -> Result<Pos, EventLogError> {
        parse_id(cursor).ok_or_else(|| EventLogError::InvalidCursor(cursor.to_owned()))
    }

    fn format_cursor(&self, pos: Pos) -> String {
        id_of(pos)
    }

    async fn append_raw(&self, events: Vec<pb::Event>) -> Result<Vec<Appended>, EventLogError> {
        let opts = &self.inner.opts;
        let ttl_ms = u64::try_from(opts.dedup_window.as_millis()).unwrap_or(u64::MAX).max(1);
        let max_age_ms = opts.max_age.map_or(0, |a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX).max(1));
        let mut out = Vec::with_capacity(events.len());
        let mut conn = self.inner.conn.clone();
        for chunk in events.chunks(APPEND_CHUNK) {
            let mut inv = self.inner.append.key(&self.inner.stream);
            inv.arg(opts.max_events).arg(max_age_ms).arg(ttl_ms).arg(chunk.len());
            for ev in chunk {
                let dkey = if ev.id.is_empty() { String::new() } else { key(&opts.prefix, &format!("eid:{}", ev.id)) };
                let mut stored = ev.clone();
                stored.cursor.clear();
                inv.arg(dkey).arg(stored.encode_to_vec());
            }
            let v: Value = inv.invoke_async(&mut conn).await.map_err(redis_err)?;
            let Value::Array(items) = &v else { return Err(corrupt("append", &v)) };
            if items.len() != chunk.len() {
                return Err(corrupt("append", &v));
            }
            for item in items {
                let Value::Array(pair) = item else { return Err(corrupt("append", &v)) };
                let (Some(id), Some(Value::Int(dup))) = (pair.first().and_then(text_str), pair.get(1)) else {
                    return Err(corrupt("append", &v));
                };
                out.push(Appended { cursor: id.to_owned(), duplicate: *dup != 0 });
            }
        }
        Ok(out)
    }

    async fn open_reader(&self, from: RawFrom) -> Result<Box<dyn RawReader>, EventLogError> {
        Ok(Box::new(RedisReader { log: self.clone(), from }))
    }

    async fn head(&self) -> Result<Pos, EventLogError> {
        head_of(&self.inner.head, &mut self.inner.conn.clone(), &self.inner.stream).await
    }

    fn live(&self) -> &LiveTail {
        &self.inner.live
    }
}

struct RedisReader {
    log: RedisLog,
    from: RawFrom,
}

#[async_trait::async_trait]
impl RawReader for RedisReader {
    async fn next_page(&mut self, limit: usize) -> Result<Vec<Arc<Entry>>, EventLogError> {
        let start = match self.from {
            RawFrom::Beginning => "-".to_owned(),
            RawFrom::After(p) => format!("({}", id_of(p)),
            RawFrom::Time(t) => t.timestamp_millis().max(0).to_string(),
        };
        let inner = &self.log.inner;
        let v: Value = inner
            .read
            .key(&inner.stream)
            .arg(start)
            .arg(limit)
            .invoke_async(&mut inner.conn.clone())
            .await
            .map_err(redis_err)?;
        let Value::Array(parts) = &v else { return Err(corrupt("read", &v)) };
        let [last, range] = parts.as_slice() else { return Err(corrupt("read", &v)) };
        let last_generated = text_str(last).and_then(parse_id).ok_or_else(|| corrupt("read", &v))?;
        let entries = match range {
            Value::Array(items) => items.iter().map(parse_entry).collect::<Result<Vec<_>, _>>()?,
            _ => return Err(corrupt("read", &v)),
        };
        if let RawFrom::After(p) = self.from {
            // Numbers are contiguous: the next entry must be p.n + 1, else it was trimmed.
            let next = entries.first().map_or(last_generated.n, |e| e.pos.n - 1);
            if next > p.n {
                let lost = next - p.n;
                return Err(EventLogError::CursorExpired { cursor: id_of(p), lost });
            }
        }
        if let Some(last) = entries.last() {
            self.from = RawFrom::After(last.pos);
        }
        Ok(entries.into_iter().map(Arc::new).collect())
    }
}
