//! The memory tables can live in the same database as nightshift-store's: each keeps its own
//! migration history, in either order, on SQLite and Postgres, and re-connecting is idempotent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use nightshift_memory::{MemoryStore, MemoryType, SqlStore};
use nightshift_testkit::Db;

async fn shares(kind: Db) {
    let (url, _guard) = nightshift_testkit::database(kind).await;
    let memory = SqlStore::connect(&url).await.expect("memory first");
    let store = nightshift_store::Store::connect(&url).await.expect("nightshift-store after memory");
    let again = SqlStore::connect(&url).await.expect("memory again");
    let store_again = nightshift_store::Store::connect(&url).await.expect("nightshift-store again");
    assert_eq!(again.count(None, MemoryType::Episodic).await.expect("count"), 0);
    store.close().await;
    store_again.close().await;
    memory.close().await;
    again.close().await;
}

#[tokio::test]
async fn shares_a_sqlite_database_with_nightshift_store() {
    shares(Db::Sqlite).await;
}

#[tokio::test]
async fn shares_a_postgres_database_with_nightshift_store() {
    shares(Db::Postgres).await;
}
