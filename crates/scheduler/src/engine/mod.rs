//! One scheduler replica: the [`Scheduler`] handle and the loop that drives it.
//!
//! - `index`: the due-time index of the owned agents and the runs prepared ahead of their time.
//! - `shards`: which replica holds which agents ([`shard_of`], shard leases, heartbeats).
//! - `changes`: keeping the index in step with the store (refresh, forget, change sync, reload).
//! - `fire`: the firing path in two steps, prepare (record due ticks) and publish (at fire time).
//! - `outbox`: queue publishing, the `published` flag, the sweep of runs never published, and
//!   taking back prepared runs.
//! - `recovery`: lease recovery of runs whose worker vanished (resumed runs go to the outbox).
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use nightshift_core::Clock;
use nightshift_events_client::EventPublisher;
use nightshift_queue::WorkQueue;
use nightshift_store::{Store, StoreError};
use tokio::sync::{Notify, watch};

use crate::config::SchedulerConfig;

mod approvals;
mod changes;
mod fire;
mod index;
mod outbox;
mod recovery;
mod shards;

use index::{Index, Prepared};
pub use shards::shard_of;

/// How often every agent is reloaded from the store (catches deletions missed by RemoveSchedule).
const FULL_RELOAD_EVERY: Duration = Duration::from_secs(30);
/// Overlap of consecutive change polls, so that clock skew between processes loses no change.
const SYNC_OVERLAP: chrono::Duration = chrono::Duration::seconds(5);

/// One scheduler replica. Cheap to clone; all clones share the index.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    queue: Arc<dyn WorkQueue>,
    clock: Arc<dyn Clock>,
    cfg: SchedulerConfig,
    member: String,
    events: OnceLock<EventPublisher>,
    index: Mutex<Index>,
    /// Published runs waiting to be flagged (`outbox`).
    unmarked: Mutex<outbox::Unmarked>,
    wake: Notify,
}

impl Scheduler {
    /// A replica on `store` publishing to `queue`.
    pub fn new(store: Store, queue: Arc<dyn WorkQueue>, clock: Arc<dyn Clock>, cfg: SchedulerConfig) -> Self {
        let member = format!(
            "{}-{}",
            nightshift_rpc::hostname().unwrap_or_else(|| "scheduler".into()),
            uuid::Uuid::new_v4().simple()
        );
        let inner = Inner {
            store,
            queue,
            clock,
            cfg,
            member,
            events: OnceLock::new(),
            index: Mutex::new(Index::default()),
            unmarked: Mutex::default(),
            wake: Notify::new(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Also publishes `SCHEDULE_FIRED` / `SCHEDULE_MISSED` events (set once, before `run`).
    pub fn with_events(self, events: EventPublisher) -> Self {
        if self.inner.events.set(events).is_err() {
            tracing::warn!("scheduler event publisher set twice; keeping the first");
        }
        self
    }

    /// This replica's member id (as seen in the shard table).
    pub fn member_id(&self) -> &str {
        &self.inner.member
    }

    /// The number of shards the schedules are split into.
    pub fn shard_count(&self) -> u32 {
        self.inner.cfg.shard_count
    }

    /// The store it works on.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.inner.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the replica until `stop` turns true: coordination, change sync, firing, republishing.
    /// On a clean stop the replica leaves the shard table so others take over at once.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let cfg = &self.inner.cfg;
        let mut coord = tokio::time::interval(cfg.coordination_interval);
        let mut sync = tokio::time::interval(cfg.sync_interval);
        let mut reload = tokio::time::interval(FULL_RELOAD_EVERY);
        let mut republish =
            tokio::time::interval((cfg.republish_after / 2).clamp(Duration::from_secs(1), Duration::from_secs(10)));
        for t in [&mut coord, &mut sync, &mut reload, &mut republish] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut synced_at = self.inner.clock.now();
        tracing::info!(member = %self.inner.member, shards = cfg.shard_count, "scheduler started");
        let ahead = self.prepare_ahead();
        loop {
            let next = self.index().next_due(ahead);
            let next = match (next, self.marks_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = match next {
                Some(at) => (at - self.inner.clock.now()).to_std().unwrap_or(Duration::ZERO),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = stop.changed() => if *stop.borrow() { break },
                _ = coord.tick() => self.log_err("coordination", self.coordinate().await),
                _ = sync.tick() => {
                    let now = self.inner.clock.now();
                    if self.sync_changes(synced_at - SYNC_OVERLAP).await.is_ok() {
                        synced_at = now;
                    }
                }
                _ = reload.tick() => self.log_err("reload", self.reload().await),
                _ = republish.tick() => {
                    // Recovery first: the runs it resumes are published by the outbox sweep.
                    self.log_err("lease recovery", self.recover_lost_leases().await);
                    self.log_err("approval expiry", self.expire_approvals().await);
                    self.log_err("budget waits", self.release_budget_waits().await);
                    self.log_err("republish", self.republish_stale().await);
                    self.report_queue_depth().await;
                }
                () = tokio::time::sleep(sleep) => self.fire_due().await,
                () = self.inner.wake.notified() => {}
            }
        }
        self.flush_marks(true).await;
        // Ticks recorded ahead but not yet due go back to the store's schedule progress, so that
        // the replica taking these shards over fires them on time.
        let prepared: Vec<Prepared> = std::mem::take(&mut self.index().prepared).into_values().flatten().collect();
        self.unprepare(prepared).await;
        if let Err(e) = self.inner.store.scheduler_leave(&self.inner.member).await {
            tracing::warn!(error = %e, "could not leave the shard table; shards move when leases expire");
        }
        tracing::info!(member = %self.inner.member, "scheduler stopped");
    }

    fn log_err(&self, what: &str, r: Result<(), StoreError>) {
        if let Err(e) = r {
            tracing::warn!(error = %e, "scheduler {what} failed; retrying");
        }
    }

    /// `nightshift_queue_depth`: run requests waiting in the work queue (every replica reports
    /// the same queue; aggregate with `max`).
    async fn report_queue_depth(&self) {
        match self.inner.queue.depth().await {
            Ok(Some(depth)) => metrics::gauge!("nightshift_queue_depth").set(depth as f64),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "queue depth unavailable"),
        }
    }
}
