//! The due-time index and the firing loop of one scheduler replica.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
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
    /// Recorded runs waiting for their fire time, by fire time (see [`Scheduler::fire_due`]).
    prepared: BTreeMap<DateTime<Utc>, Vec<Prepared>>,
}

/// The recorded, not yet published runs of one agent's firing.
struct Prepared {
    agent_id: AgentId,
    /// The schedule progress recorded with the runs, and the one before (to take them back).
    recorded: DateTime<Utc>,
    restore: DateTime<Utc>,
    requests: Vec<RunRequest>,
    /// When each run is due (its tick plus jitter): the fire lag is measured from it.
    fire_at: Vec<DateTime<Utc>>,
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

    /// The next instant with work: a prepared firing to publish, or a tick to prepare `ahead`
    /// of its time.
    fn next_due(&self, ahead: chrono::Duration) -> Option<DateTime<Utc>> {
        let prepare = self.heap.peek().map(|Reverse((at, _, _))| *at - ahead);
        let publish = self.prepared.keys().next().copied();
        match (prepare, publish) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The shard of an agent (stable across replicas and versions).
pub fn shard_of(agent: &AgentId, shard_count: u32) -> u32 {
    (rules::fnv1a(agent.as_str().as_bytes(), 0xcbf2_9ce4_8422_2325) % u64::from(shard_count.max(1))) as u32
}

struct Firing {
    agent_id: AgentId,
    plan: rules::Plan,
    /// When its runs are due (the tick's fire time, or now for a late tick).
    fire_time: DateTime<Utc>,
    /// The schedule progress before this firing.
    anchor: DateTime<Utc>,
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
        let ahead = self.prepare_ahead();
        loop {
            let sleep = match self.index().next_due(ahead) {
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
                    self.log_err("republish", self.republish_stale().await);
                    self.report_queue_depth().await;
                }
                () = tokio::time::sleep(sleep) => self.fire_due().await,
                () = self.inner.wake.notified() => {}
            }
        }
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

    /// How long before its fire time a tick is recorded: `prepare_ahead`, capped at a quarter of
    /// `republish_after` so that the outbox sweep never publishes a prepared run early.
    fn prepare_ahead(&self) -> chrono::Duration {
        let cfg = &self.inner.cfg;
        chrono::Duration::from_std(cfg.prepare_ahead.min(cfg.republish_after / 4)).unwrap_or_default()
    }

    /// Does the work due now, in two steps.
    ///
    /// 1. **Publish** the runs prepared for this instant: only queue publishes remain on the fire
    ///    path, so even a herd of 10,000 agents due in the same millisecond goes out within
    ///    milliseconds. Runs of an agent paused since they were prepared are discarded instead.
    /// 2. **Prepare** the ticks due within `prepare_ahead`: plan them, record their runs and the
    ///    schedules' progress (in chunks of [`FIRE_CHUNK`] agents, one transaction each), and
    ///    keep the run requests until their fire time. Ticks already due (a late pass, a restart)
    ///    are published as soon as their chunk is recorded.
    ///
    /// A replica that dies between the two steps leaves recorded, unpublished runs: the outbox
    /// sweep publishes them (late, never lost; their ids keep them single).
    pub async fn fire_due(&self) {
        let now = self.inner.clock.now();
        let due = {
            let mut idx = self.index();
            let later = idx.prepared.split_off(&(now + chrono::Duration::milliseconds(1)));
            std::mem::replace(&mut idx.prepared, later)
        };
        if !due.is_empty() {
            let batch: Vec<Prepared> = due.into_values().flatten().collect();
            let published = self.publish_prepared(batch).await;
            self.mark_published(&published).await;
        }
        self.prepare(now).await;
    }

    /// Step 2 of [`Scheduler::fire_due`].
    async fn prepare(&self, now: DateTime<Utc>) {
        let grace = self.inner.cfg.misfire_grace;
        let horizon = now + self.prepare_ahead();
        let mut firings = Vec::new();
        {
            let mut idx = self.index();
            let mut taken = HashSet::new();
            while let Some(Reverse((at, generation, id))) = idx.heap.peek().cloned() {
                if at > horizon {
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
                // Planned as of its fire time: that tick (and any overdue ones) fire, the next
                // one is after it.
                let fire_time = at.max(now);
                let plan = rules::plan(&e.agent.schedule, &id, e.agent.anchor, fire_time, grace);
                if plan.handled_until.is_none() {
                    idx.reschedule(&id, plan.next);
                } else {
                    firings.push(Firing { agent_id: id, plan, fire_time, anchor: e.agent.anchor });
                }
            }
        }
        let mut published = Vec::new();
        for chunk in firings.chunks(FIRE_CHUNK) {
            published.extend(self.prepare_chunk(chunk, now).await);
        }
        self.mark_published(&published).await;
    }

    /// Records one chunk of firings, reschedules their agents, publishes what is already due and
    /// keeps the rest for its fire time; returns the runs published.
    async fn prepare_chunk(&self, firings: &[Firing], now: DateTime<Utc>) -> Vec<RunId> {
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
        let mut due_now = Vec::new();
        {
            let mut idx = self.index();
            for ((f, fire), made) in firings.iter().zip(&fires).zip(&created) {
                let mut prepared = Prepared {
                    agent_id: f.agent_id.clone(),
                    recorded: fire.last_tick,
                    restore: f.anchor,
                    requests: Vec::new(),
                    fire_at: Vec::new(),
                };
                let mut gone = false;
                for ((run_id, tick), outcome) in fire.runs.iter().zip(made) {
                    match outcome {
                        TickOutcome::Created => {}
                        TickOutcome::Existed => {
                            metrics::counter!("nightshift_scheduler_deduplicated_total").increment(1)
                        }
                        TickOutcome::NoAgent => {
                            gone = true;
                            continue;
                        }
                    }
                    // Published even when the run existed: its first publisher may have died
                    // before publishing; the queue drops the duplicate by run id.
                    prepared.requests.push(RunRequest {
                        run_id: run_id.to_string(),
                        agent_id: fire.agent_id.to_string(),
                        trigger: TriggerKind::Schedule.to_pb() as i32,
                        scheduled_for: Some(time::to_pb(*tick)),
                        enqueued_at: None,
                        trace_context: Default::default(),
                    });
                    // Borrowed, not cloned: this runs per tick of every due agent.
                    let jitter = idx
                        .entries
                        .get(&f.agent_id)
                        .map(|e| rules::jitter(&e.agent.schedule, &f.agent_id, *tick))
                        .unwrap_or_default();
                    prepared.fire_at.push(*tick + chrono::Duration::from_std(jitter).unwrap_or_default());
                }
                metrics::counter!("nightshift_scheduler_missed_ticks_total").increment(fire.missed);
                if fire.missed > 0
                    && let Some(p) = &self.inner.events
                {
                    let name = idx.entries.get(&f.agent_id).map(|e| e.agent.name.clone()).unwrap_or_default();
                    p.event(EventType::ScheduleMissed)
                        .agent(&fire.agent_id)
                        .agent_name(name)
                        .data(json!({"missed": fire.missed}))
                        .emit();
                }
                if gone {
                    idx.entries.remove(&f.agent_id);
                    continue;
                }
                if let Some(e) = idx.entries.get_mut(&f.agent_id) {
                    if let Some(h) = f.plan.handled_until {
                        e.agent.anchor = h;
                    }
                    e.agent.fired += f.plan.fire.len() as u64;
                    e.agent.missed += f.plan.missed;
                }
                idx.reschedule(&f.agent_id, f.plan.next);
                if prepared.requests.is_empty() {
                    continue;
                }
                if f.fire_time <= now {
                    due_now.push(prepared);
                } else {
                    idx.prepared.entry(f.fire_time).or_default().push(prepared);
                }
            }
        }
        self.inner.wake.notify_one();
        self.publish_prepared(due_now).await
    }

    /// Publishes prepared firings (step 1 of [`Scheduler::fire_due`]); returns the runs published.
    async fn publish_prepared(&self, batch: Vec<Prepared>) -> Vec<RunId> {
        let mut requests = Vec::new();
        let mut discard = Vec::new();
        let mut fired = Vec::new();
        {
            let idx = self.index();
            for p in batch {
                // Paused since it was prepared: the tick must not run. (A deleted agent's runs are
                // gone with it; an agent whose shard moved away is still published here, as the
                // new owner starts after the recorded tick.)
                if idx.entries.get(&p.agent_id).is_some_and(|e| e.agent.paused) {
                    discard.push(p);
                    continue;
                }
                // The name and run ids are only needed for SCHEDULE_FIRED events.
                let event = self.inner.events.is_some().then(|| {
                    let name = idx.entries.get(&p.agent_id).map(|e| e.agent.name.clone()).unwrap_or_default();
                    (name, p.requests.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>())
                });
                fired.push((p.agent_id, p.fire_at, event));
                requests.extend(p.requests);
            }
        }
        self.unprepare(discard).await;
        if requests.is_empty() {
            return Vec::new();
        }
        let enqueued = time::to_pb(self.inner.clock.now());
        for r in &mut requests {
            r.enqueued_at = Some(enqueued);
            r.trace_context = trace_context(&r.run_id, &r.agent_id);
        }
        let published = self.publish(&requests).await;
        let fired_now = self.inner.clock.now();
        for (agent, fire_at, event) in fired {
            for t in &fire_at {
                let lag = (fired_now - *t).to_std().unwrap_or(Duration::ZERO);
                metrics::histogram!("nightshift_scheduler_fire_lag_seconds").record(lag.as_secs_f64());
            }
            metrics::counter!("nightshift_scheduler_fired_total").increment(fire_at.len() as u64);
            if let (Some(p), Some((name, runs))) = (&self.inner.events, event) {
                p.event(EventType::ScheduleFired).agent(&agent).agent_name(name).data(json!({"runs": runs})).emit();
            }
        }
        published
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

    /// Takes back prepared firings that must not be published (paused agent, replica stopping),
    /// newest first so that the schedule progress steps back in order.
    async fn unprepare(&self, mut batch: Vec<Prepared>) {
        batch.sort_by_key(|p| std::cmp::Reverse(p.recorded));
        for p in batch {
            let runs: Vec<RunId> = p.requests.iter().map(|r| RunId::from_string(r.run_id.clone())).collect();
            match self.inner.store.unprepare_ticks(&p.agent_id, &runs, p.recorded, p.restore).await {
                Ok(_) => {
                    if let Some(e) = self.index().entries.get_mut(&p.agent_id)
                        && e.agent.anchor == p.recorded
                    {
                        e.agent.anchor = p.restore;
                    }
                }
                // Left recorded: the outbox sweep publishes them later (StartRun skips a paused
                // agent's run).
                Err(e) => tracing::warn!(error = %e, agent = %p.agent_id, "could not take back prepared runs"),
            }
        }
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
                trace_context: trace_context(run.as_str(), agent.as_str()),
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

/// Starts the run's trace: a `scheduler.fire` span whose context travels with the request, so
/// the worker's `agent.run` span (and everything under it) joins this trace. Skipped entirely
/// when spans are not exported, as this runs for every fired tick.
fn trace_context(run: &str, agent: &str) -> BTreeMap<String, String> {
    if !nightshift_telemetry::tracing_enabled() {
        return BTreeMap::new();
    }
    let span = tracing::info_span!(
        parent: None,
        "scheduler.fire",
        otel.name = "scheduler.fire",
        otel.kind = "producer",
        run = %run,
        agent = %agent,
    );
    nightshift_telemetry::context_map(&span)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "scheduler".into())
}
