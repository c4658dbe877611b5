//! What the store's contract tests share: a store on a fresh database of either backend, with a
//! manual clock at a fixed instant.
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use nightshift_core::ManualClock;
use nightshift_store::Store;
use nightshift_testkit::{Db, database};

pub struct Env {
    pub store: Store,
    pub clock: ManualClock,
    _guard: Option<nightshift_testkit::SqliteDb>,
}

pub async fn env(kind: Db) -> Env {
    let (url, guard) = database(kind).await;
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap());
    let store = Store::connect_with_clock(&url, Arc::new(clock.clone())).await.unwrap();
    Env { store, clock, _guard: guard }
}
