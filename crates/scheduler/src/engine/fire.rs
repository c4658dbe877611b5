//! The firing path: prepare (plan due ticks and record their runs, ahead of time) and publish
//! (at the fire time, send the prepared requests to the queue).
use std::cmp::Reverse;
use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{AgentId, EventType, OverlapPolicy, RunId, TriggerKind, time};
use nightshift_queue::RunRequest;
use nightshift_store::{TickFire, TickOutcome};
use serde_json::json;

use super::Scheduler;
use super::index::{Index, Prepared};
use super::outbox::trace_context;
use crate::rules;

/// Due agents per chunk of a firing pass (one transaction and one publish burst each).
const FIRE_CHUNK: usize = 1000;

struct Firing {
    agent_id: AgentId,
    plan: rules::Plan,
    /// When its runs are due (the tick's fire time, or now for a late tick).
    fire_time: DateTime<Utc>,
    /// The schedule progress before this firing.
    anchor: DateTime<Utc>,
    /// The agent's overlap policy (fire-time admission).
    overlap: OverlapPolicy,
}

impl Scheduler {
    /// How long before its fire time a tick is recorded: `prepare_ahead`, capped at a quarter of
    /// `republish_after` so that the outbox sweep never publishes a prepared run early.
    pub(super) fn prepare_ahead(&self) -> chrono::Duration {
        let cfg = &self.inner.cfg;
        chrono::Duration::from_std(cfg.prepare_ahead.min(cfg.republish_after / 4)).unwrap_or_default()
    }

    /// Does the work due now, in two steps.
    ///
    /// 1. **Publish** the runs prepared for this instant: only queue publishes remain on the fire
    ///    path, so even a herd of 10,000 agents due in the same millisecond goes out within
    ///    milliseconds. Runs of an agent paused since they were prepared are discarded instead.
    /// 2. **Prepare**, once the earliest tick is within half of `prepare_ahead`, every tick due
    ///    within `prepare_ahead`: plan them, record their runs and the schedules' progress (in
    ///    chunks of [`FIRE_CHUNK`] agents, one transaction each), and keep the run requests until
    ///    their fire time. Ticks already due (a late pass, a restart) are published as soon as
    ///    their chunk is recorded.
    ///
    /// Published runs are flagged in the store in batches (see [`Scheduler::defer_mark`]). A
    /// replica that dies between the steps leaves recorded runs unpublished or unflagged: the
    /// outbox sweep publishes them (late, never lost; their ids keep them single).
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
            self.defer_mark(published);
        }
        let preparation = self.index().next_preparation(self.prepare_ahead());
        if preparation.is_some_and(|at| at <= now) {
            self.prepare(now).await;
        }
        self.flush_marks(false).await;
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
                    firings.push(Firing {
                        agent_id: id,
                        plan,
                        fire_time,
                        anchor: e.agent.anchor,
                        overlap: e.agent.overlap,
                    });
                }
            }
        }
        for chunk in firings.chunks(FIRE_CHUNK) {
            let published = self.prepare_chunk(chunk, now).await;
            self.defer_mark(published);
        }
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
                overlap: f.overlap,
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
                        TickOutcome::Skipped { reason } => {
                            self.report_skipped(&idx, &f.agent_id, run_id, reason);
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
                        redelivery: String::new(),
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
                    && let Some(p) = self.inner.events.get()
                {
                    let (name, ns) = idx
                        .entries
                        .get(&f.agent_id)
                        .map(|e| (e.agent.name.clone(), e.agent.namespace.clone()))
                        .unwrap_or_default();
                    p.event(EventType::ScheduleMissed)
                        .agent(&fire.agent_id)
                        .agent_name(name)
                        .namespace(&ns)
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

    /// A tick recorded as skipped when fired (the agent's previous run still waits for a
    /// worker): counted, logged at debug (under overload this is every tick of most agents) and
    /// announced as `RUN_SKIPPED`, as StartRun's skips are.
    fn report_skipped(&self, idx: &Index, agent: &AgentId, run: &RunId, reason: &str) {
        metrics::counter!("nightshift_scheduler_skipped_total").increment(1);
        tracing::debug!(%run, %agent, reason, "tick skipped when fired");
        if let Some(p) = self.inner.events.get() {
            let (name, ns) =
                idx.entries.get(agent).map(|e| (e.agent.name.clone(), e.agent.namespace.clone())).unwrap_or_default();
            p.event(EventType::RunSkipped)
                .agent(agent)
                .agent_name(name)
                .namespace(&ns)
                .run(run)
                .data(json!({"reason": reason}))
                .emit();
        }
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
                // The name, namespace and run ids are only needed for SCHEDULE_FIRED events.
                let event = self.inner.events.get().is_some().then(|| {
                    let who = idx
                        .entries
                        .get(&p.agent_id)
                        .map(|e| (e.agent.name.clone(), e.agent.namespace.clone()))
                        .unwrap_or_default();
                    (who, p.requests.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>())
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
            if let (Some(p), Some(((name, ns), runs))) = (self.inner.events.get(), event) {
                p.event(EventType::ScheduleFired)
                    .agent(&agent)
                    .agent_name(name)
                    .namespace(&ns)
                    .data(json!({"runs": runs}))
                    .emit();
            }
        }
        published
    }
}
