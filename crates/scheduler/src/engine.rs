//! The due-time index and the firing loop of one scheduler replica.
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{AgentId, Clock, EventType, RunId, TriggerKind, time};
use nightshift_events::EventPublisher;
use nightshift_queue::{RunRequest, WorkQueue};
use nightshift_store::{ScheduledAgent, Store, StoreError, TickFire, TickOutcome};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::config::SchedulerConfig;
use crate::rules::{self, Tick};

/// How many run requests are published concurrently.
const PUBLISH_CONCURRENCY: usize = 256;
/// Due agents per chunk of a firing pass (one transaction and one publish burst each).
const FIRE_CHUNK: usize = 1000;
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
    events: Option<EventPublisher>,
    index: Mutex<Index>,
    wake: Notify,
}

#[derive(Default)]
struct Index {
    owned: BTreeSet<u32>,
    entries: HashMap<AgentId, Entry>,
    /// Min-heap of (fire time, generation, agent); stale generations are skipped when popped.
    heap: BinaryHeap<Reverse<(DateTime<Utc>, u64, AgentId)>>,
    generation: u64,
}

struct Entry {
    agent: ScheduledAgent,
    generation: u64,
}

impl Index {
    /// Inserts or replaces an agent's entry and queues its next tick.
    fn put(&mut self, agent: ScheduledAgent) {
        self.generation += 1;
        let generation = self.generation;
        if !agent.paused
            && let Some(t) = rules::next_tick(&agent.schedule, &agent.agent_id, agent.anchor)
        {
            self.heap.push(Reverse((t.fire_at, generation, agent.agent_id.clone())));
        }
        self.entries.insert(agent.agent_id.clone(), Entry { agent, generation });
    }

    fn reschedule(&mut self, id: &AgentId, next: Option<Tick>) {
        if let (Some(e), Some(t)) = (self.entries.get(id), next) {
            self.heap.push(Reverse((t.fire_at, e.generation, id.clone())));
        }
    }

    /// Publishes the number of unpaused schedules held (O(n); called on changes, not per tick).
    fn report_active(&self) {
        let active = self.entries.values().filter(|e| !e.agent.paused).count();
        metrics::gauge!("nightshift_scheduler_active_schedules").set(active as f64);
    }

    fn next_due(&self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }
}

/// The shard of an agent (stable across replicas and versions).
pub fn shard_of(agent: &AgentId, shard_count: u32) -> u32 {
    (rules::fnv1a(agent.as_str().as_bytes(), 0xcbf2_9ce4_8422_2325) % u64::from(shard_count.max(1))) as u32
}

struct Firing {
    agent_id: AgentId,
    plan: rules::Plan,
}

impl Scheduler {
    /// A replica on `store` publishing to `queue`.
    pub fn new(store: Store, queue: Arc<dyn WorkQueue>, clock: Arc<dyn Clock>, cfg: SchedulerConfig) -> Self {
        Self::with_events(store, queue, clock, cfg, None)
    }

    /// Like [`Scheduler::new`], publishing `SCHEDULE_FIRED` / `SCHEDULE_MISSED` events.
    pub fn with_events(
        store: Store,
        queue: Arc<dyn WorkQueue>,
        clock: Arc<dyn Clock>,
        cfg: SchedulerConfig,
        events: Option<EventPublisher>,
    ) -> Self {
        let member = format!("{}-{}", hostname(), uuid::Uuid::new_v4().simple());
        let inner = Inner {
            store,
            queue,
            clock,
            cfg,
            member,
            events,
            index: Mutex::new(Index::default()),
            wake: Notify::new(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// This replica's member id (as seen in the shard table).
    pub fn member_id(&self) -> &str {
        &self.inner.member
    }

    /// The store it works on.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.inner.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shards held now.
    pub fn owned_shards(&self) -> Vec<u32> {
        self.index().owned.iter().copied().collect()
    }

    /// Re-reads one agent from the store (after a create/update/pause/resume) and reschedules it.
    pub async fn refresh(&self, id: &AgentId) -> Result<(), StoreError> {
        let agent = self.inner.store.scheduled_agent(id).await?;
        {
            let mut idx = self.index();
            match agent {
                Some(a) if idx.owned.contains(&shard_of(&a.agent_id, self.inner.cfg.shard_count)) => idx.put(a),
                Some(_) => {}
                None => {
                    idx.entries.remove(id);
                }
            }
            idx.report_active();
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Forgets an agent (deleted).
    pub fn forget(&self, id: &AgentId) {
        let mut idx = self.index();
        idx.entries.remove(id);
        idx.report_active();
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
        loop {
            let sleep = match self.index().next_due() {
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
                _ = republish.tick() => self.log_err("republish", self.republish_stale().await),
                () = tokio::time::sleep(sleep) => self.fire_due().await,
                () = self.inner.wake.notified() => {}
            }
        }
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

    /// Heartbeats, takes this replica's fair share of shards, and reloads when it changed.
    pub async fn coordinate(&self) -> Result<(), StoreError> {
        let cfg = &self.inner.cfg;
        let live = self.inner.store.scheduler_heartbeat(&self.inner.member, cfg.shard_lease).await?;
        let want = cfg.shard_count.div_ceil(live);
        let owned: BTreeSet<u32> = self
            .inner
            .store
            .claim_shards(&self.inner.member, cfg.shard_count, want, cfg.shard_lease)
            .await?
            .into_iter()
            .collect();
        let changed = {
            let mut idx = self.index();
            let changed = idx.owned != owned;
            idx.owned = owned;
            changed
        };
        if changed {
            tracing::info!(member = %self.inner.member, shards = ?self.owned_shards(), live, "shard ownership changed");
            self.reload().await?;
        }
        Ok(())
    }

    /// Rebuilds the index from the store for the owned shards.
    async fn reload(&self) -> Result<(), StoreError> {
        let agents = self.inner.store.scheduled_agents().await?;
        let mut idx = self.index();
        let owned = idx.owned.clone();
        idx.entries.clear();
        idx.heap.clear();
        for a in agents.into_iter().filter(|a| owned.contains(&shard_of(&a.agent_id, self.inner.cfg.shard_count))) {
            idx.put(a);
        }
        idx.report_active();
        drop(idx);
        self.inner.wake.notify_one();
        Ok(())
    }

    async fn sync_changes(&self, since: DateTime<Utc>) -> Result<(), StoreError> {
        let changed = self.inner.store.scheduled_agents_changed_since(since).await.inspect_err(|e| {
            tracing::warn!(error = %e, "scheduler sync failed; retrying");
        })?;
        if changed.is_empty() {
            return Ok(());
        }
        let mut idx = self.index();
        for a in changed {
            if !idx.owned.contains(&shard_of(&a.agent_id, self.inner.cfg.shard_count)) {
                continue;
            }
            // Unchanged agents keep their entry: replacing it would only repeat the same plan.
            let same = idx
                .entries
                .get(&a.agent_id)
                .is_some_and(|e| e.agent.updated_at == a.updated_at && e.agent.paused == a.paused);
            if !same {
                idx.put(a);
            }
        }
        idx.report_active();
        drop(idx);
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Fires every due tick. The due agents are taken in chunks of [`FIRE_CHUNK`]; each chunk's
    /// runs and progress are recorded in one transaction and then published, so the first runs
    /// of a large herd due at the same instant reach the queue after milliseconds, not after
    /// the whole pass. The outbox flags are set once at the end, off the latency path.
    pub async fn fire_due(&self) {
        let now = self.inner.clock.now();
        let grace = self.inner.cfg.misfire_grace;
        let mut firings = Vec::new();
        {
            let mut idx = self.index();
            let mut taken = std::collections::HashSet::new();
            while let Some(Reverse((at, generation, id))) = idx.heap.peek().cloned() {
                if at > now {
                    break;
                }
                idx.heap.pop();
                let Some(e) = idx.entries.get(&id).filter(|e| e.generation == generation && !e.agent.paused) else {
                    continue;
                };
                // One firing per agent and pass (a store batch must not name an agent twice).
                if !taken.insert(id.clone()) {
                    continue;
                }
                let plan = rules::plan(&e.agent.schedule, &id, e.agent.anchor, now, grace);
                if plan.handled_until.is_none() {
                    idx.reschedule(&id, plan.next);
                } else {
                    firings.push(Firing { agent_id: id, plan });
                }
            }
        }
        let mut published = Vec::new();
        for chunk in firings.chunks(FIRE_CHUNK) {
            published.extend(self.fire_chunk(chunk, now).await);
        }
        self.mark_published(&published).await;
    }

    /// Records, publishes and reschedules one chunk of firings; returns the runs published.
    async fn fire_chunk(&self, firings: &[Firing], now: DateTime<Utc>) -> Vec<RunId> {
        let fires: Vec<TickFire> = firings
            .iter()
            .map(|f| TickFire {
                agent_id: f.agent_id.clone(),
                runs: f.plan.fire.iter().map(|t| (RunId::for_tick(&f.agent_id, time::to_millis(*t)), *t)).collect(),
                last_tick: f.plan.handled_until.unwrap_or(now),
                missed: f.plan.missed,
            })
            .collect();
        let created = match self.inner.store.fire_ticks(&fires).await {
            Ok(c) => c,
            Err(e) => {
                // Nothing was recorded: put the agents back so the ticks fire on the next pass.
                tracing::warn!(error = %e, n = fires.len(), "recording fired ticks failed; retrying in 1s");
                let retry = now + chrono::Duration::seconds(1);
                let mut idx = self.index();
                for f in firings {
                    if let Some(gen_) = idx.entries.get(&f.agent_id).map(|e| e.generation) {
                        idx.heap.push(Reverse((retry, gen_, f.agent_id.clone())));
                    }
                }
                return Vec::new();
            }
        };
        let mut requests = Vec::new();
        let mut gone = Vec::new();
        for (fire, made) in fires.iter().zip(&created) {
            for ((run_id, tick), outcome) in fire.runs.iter().zip(made) {
                match outcome {
                    TickOutcome::Created => {}
                    TickOutcome::Existed => metrics::counter!("nightshift_scheduler_deduplicated_total").increment(1),
                    TickOutcome::NoAgent => {
                        gone.push(fire.agent_id.clone());
                        continue;
                    }
                }
                // Published even when the run existed: its first publisher may have died before
                // publishing; the queue drops the duplicate by run id.
                requests.push(RunRequest {
                    run_id: run_id.to_string(),
                    agent_id: fire.agent_id.to_string(),
                    trigger: TriggerKind::Schedule.to_pb() as i32,
                    scheduled_for: Some(time::to_pb(*tick)),
                    enqueued_at: Some(time::to_pb(now)),
                    trace_context: Default::default(),
                });
            }
            metrics::counter!("nightshift_scheduler_missed_ticks_total").increment(fire.missed);
            if let Some(p) = &self.inner.events {
                if !fire.runs.is_empty() {
                    let runs: Vec<&str> = fire.runs.iter().map(|(r, _)| r.as_str()).collect();
                    p.event(EventType::ScheduleFired).agent(&fire.agent_id).data(json!({"runs": runs})).emit();
                }
                if fire.missed > 0 {
                    p.event(EventType::ScheduleMissed)
                        .agent(&fire.agent_id)
                        .data(json!({"missed": fire.missed}))
                        .emit();
                }
            }
        }
        let published = self.publish(&requests).await;
        let fired_now = self.inner.clock.now();
        let mut idx = self.index();
        for id in &gone {
            idx.entries.remove(id);
        }
        for f in firings {
            if let Some(e) = idx.entries.get_mut(&f.agent_id) {
                for t in &f.plan.fire {
                    let fire_at = *t
                        + chrono::Duration::from_std(rules::jitter(&e.agent.schedule, &f.agent_id, *t))
                            .unwrap_or_default();
                    let lag = (fired_now - fire_at).to_std().unwrap_or(Duration::ZERO);
                    metrics::histogram!("nightshift_scheduler_fire_lag_seconds").record(lag.as_secs_f64());
                }
                if let Some(h) = f.plan.handled_until {
                    e.agent.anchor = h;
                }
                e.agent.fired += f.plan.fire.len() as u64;
                e.agent.missed += f.plan.missed;
            }
            metrics::counter!("nightshift_scheduler_fired_total").increment(f.plan.fire.len() as u64);
            idx.reschedule(&f.agent_id, f.plan.next);
        }
        published
    }

    /// Publishes, returning the runs that reached the queue; the others are published again by
    /// the outbox sweep.
    async fn publish(&self, requests: &[RunRequest]) -> Vec<RunId> {
        let mut published = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(PUBLISH_CONCURRENCY) {
            let results = futures::future::join_all(chunk.iter().map(|r| self.inner.queue.publish(r, None))).await;
            for (r, res) in chunk.iter().zip(results) {
                match res {
                    Ok(_) => published.push(RunId::from_string(r.run_id.clone())),
                    Err(e) => {
                        tracing::warn!(run = %r.run_id, error = %e, "publishing a run request failed; the sweep retries")
                    }
                }
            }
        }
        published
    }

    /// Sets the outbox flag of published runs.
    async fn mark_published(&self, published: &[RunId]) {
        if let Err(e) = self.inner.store.mark_published(published).await {
            // Harmless: the sweep publishes them again and the queue drops the duplicates.
            tracing::warn!(error = %e, "marking runs as published failed");
        }
    }

    /// Publishes queued runs (of owned shards) whose request never reached the queue: the
    /// publisher died between the store commit and the publish, or the publish failed.
    async fn republish_stale(&self) -> Result<(), StoreError> {
        let cutoff =
            self.inner.clock.now() - chrono::Duration::from_std(self.inner.cfg.republish_after).unwrap_or_default();
        let stale = self.inner.store.stale_queued_runs(cutoff, 1000).await?;
        let owned = self.index().owned.clone();
        let now = self.inner.clock.now();
        let requests: Vec<RunRequest> = stale
            .into_iter()
            .filter(|(_, agent, _)| owned.contains(&shard_of(agent, self.inner.cfg.shard_count)))
            .map(|(run, agent, at)| RunRequest {
                run_id: run.to_string(),
                agent_id: agent.to_string(),
                trigger: if at.is_some() { TriggerKind::Schedule } else { TriggerKind::Manual }.to_pb() as i32,
                scheduled_for: at.map(time::to_pb),
                enqueued_at: Some(time::to_pb(now)),
                trace_context: Default::default(),
            })
            .collect();
        if !requests.is_empty() {
            tracing::info!(n = requests.len(), "publishing queued runs whose request never reached the queue");
            metrics::counter!("nightshift_scheduler_republished_total").increment(requests.len() as u64);
            let published = self.publish(&requests).await;
            self.mark_published(&published).await;
        }
        Ok(())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "scheduler".into())
}
