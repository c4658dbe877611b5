//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use nightshift_memory::{MemoryRecord, MemoryType, Scope};

/// The Redis test server (`NIGHTSHIFT_TEST_REDIS`, default `redis://127.0.0.1:6379`).
pub use nightshift_testkit::redis_url;

/// A key prefix no other test run uses.
pub fn unique_prefix() -> String {
    format!("ns_test_mem_{}", uuid::Uuid::new_v4().simple())
}

/// Deletes every Redis key under `prefix` (as laid out by RedisStore: `{prefix}:*`).
pub async fn redis_cleanup(prefix: &str) {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis connection");
    let pattern = format!("{{{prefix}}}:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("scan");
        if !keys.is_empty() {
            let _: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.expect("del");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// 2026-01-01T00:00:00Z.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid instant")
}

/// A record created `offset_ms` after [`t0`].
pub fn record(id: &str, kind: MemoryType, scope: &Scope, offset_ms: i64, content: &str) -> MemoryRecord {
    MemoryRecord {
        id: id.into(),
        kind,
        scope: scope.clone(),
        content: content.into(),
        metadata: BTreeMap::new(),
        run_id: "run-1".into(),
        created_at: t0() + Duration::milliseconds(offset_ms),
        expires_at: None,
        summary: false,
        archived: false,
    }
}

/// A metadata map.
pub fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}
