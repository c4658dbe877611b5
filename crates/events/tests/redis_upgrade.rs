//! Upgrading a Redis event log written before the `{prefix}:name` key convention: the stream
//! `prefix:events` is adopted on connect, with its history and cursors, against real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

use nightshift_core::{EventType, pb};
use nightshift_events::{EventLog, LogOptions, ReadQuery, RedisLog};
use nightshift_testkit::redis_url;

fn event(id: &str) -> pb::Event {
    pb::Event {
        id: id.into(),
        r#type: EventType::BackgroundTaskStarted.to_pb() as i32,
        time: Some(nightshift_core::time::to_pb(chrono::Utc::now())),
        source: "upgrade-test".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_log_under_the_old_key_keeps_its_history_and_cursors() {
    let prefix = format!("ns-upgrade-{}", uuid::Uuid::new_v4().simple());
    let (legacy, current) = (format!("{prefix}:events"), nightshift_redis::key(&prefix, "events"));
    let written = {
        let log = RedisLog::connect(&redis_url(), LogOptions::with_prefix(prefix.clone())).await.unwrap();
        let out = log.append_batch(vec![event("e1"), event("e2")]).await.unwrap();
        out.into_iter().map(|a| a.cursor).collect::<Vec<_>>()
    };
    // The layout of an older release: the same stream under the key without the hash tag.
    let mut conn = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("RENAME").arg(&current).arg(&legacy).query_async(&mut conn).await.unwrap();

    let log = RedisLog::connect(&redis_url(), LogOptions::with_prefix(prefix.clone())).await.unwrap();
    let page = log.read(&ReadQuery::default()).await.unwrap();
    let ids: Vec<&str> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2"], "the history survives the upgrade");
    let cursors: Vec<&str> = page.events.iter().map(|e| e.cursor.as_str()).collect();
    assert_eq!(cursors, written.iter().map(String::as_str).collect::<Vec<_>>(), "cursors are unchanged");
    let after = log.read(&ReadQuery { after: Some(written[0].clone()), ..ReadQuery::default() }).await.unwrap();
    assert_eq!(after.events.len(), 1, "resuming after an old cursor works");
    let exists: bool = redis::cmd("EXISTS").arg(&legacy).query_async(&mut conn).await.unwrap();
    assert!(!exists, "the old key is gone");

    let _: () = redis::cmd("DEL").arg(&current).query_async(&mut conn).await.unwrap();
}
