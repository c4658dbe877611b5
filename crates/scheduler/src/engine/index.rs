//! The due-time index of one replica: its owned agents, the min-heap of their next fire times,
//! and the runs recorded ahead of their fire time.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use chrono::{DateTime, Utc};
use nightshift_core::AgentId;
use nightshift_queue::RunRequest;
use nightshift_store::ScheduledAgent;

use crate::rules::{self, Tick};

#[derive(Default)]
pub(super) struct Index {
    pub(super) owned: BTreeSet<u32>,
    pub(super) entries: HashMap<AgentId, Entry>,
    /// Min-heap of (fire time, generation, agent); stale generations are skipped when popped.
    pub(super) heap: BinaryHeap<Reverse<(DateTime<Utc>, u64, AgentId)>>,
    generation: u64,
    /// Recorded runs waiting for their fire time, by fire time (see [`Scheduler::fire_due`](super::Scheduler::fire_due)).
    pub(super) prepared: BTreeMap<DateTime<Utc>, Vec<Prepared>>,
}

/// The recorded, not yet published runs of one agent's firing.
pub(super) struct Prepared {
    pub(super) agent_id: AgentId,
    /// The schedule progress recorded with the runs, and the one before (to take them back).
    pub(super) recorded: DateTime<Utc>,
    pub(super) restore: DateTime<Utc>,
    pub(super) requests: Vec<RunRequest>,
    /// When each run is due (its tick plus jitter): the fire lag is measured from it.
    pub(super) fire_at: Vec<DateTime<Utc>>,
}

pub(super) struct Entry {
    pub(super) agent: ScheduledAgent,
    pub(super) generation: u64,
}

impl Index {
    /// Inserts or replaces an agent's entry and queues its next tick.
    pub(super) fn put(&mut self, agent: ScheduledAgent) {
        self.generation += 1;
        let generation = self.generation;
        if !agent.paused
            && let Some(t) = rules::next_tick(&agent.schedule, &agent.agent_id, agent.anchor)
        {
            self.heap.push(Reverse((t.fire_at, generation, agent.agent_id.clone())));
        }
        self.entries.insert(agent.agent_id.clone(), Entry { agent, generation });
    }

    pub(super) fn reschedule(&mut self, id: &AgentId, next: Option<Tick>) {
        if let (Some(e), Some(t)) = (self.entries.get(id), next) {
            self.heap.push(Reverse((t.fire_at, e.generation, id.clone())));
        }
    }

    /// Publishes the number of unpaused schedules held (O(n); called on changes, not per tick).
    pub(super) fn report_active(&self) {
        let active = self.entries.values().filter(|e| !e.agent.paused).count();
        metrics::gauge!("nightshift_scheduler_active_schedules").set(active as f64);
    }

    /// When the next preparation pass is due: once the earliest tick is within half of `ahead`,
    /// so that a pass (which takes every tick within `ahead`) covers at least half of `ahead`'s
    /// worth of ticks. Agents whose ticks are spread over the interval are then recorded a few
    /// times a second in one transaction per pass, not each at its own instant.
    pub(super) fn next_preparation(&self, ahead: chrono::Duration) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse((at, _, _))| *at - ahead / 2)
    }

    /// The next instant with work: a prepared firing to publish, or a preparation pass.
    pub(super) fn next_due(&self, ahead: chrono::Duration) -> Option<DateTime<Utc>> {
        let prepare = self.next_preparation(ahead);
        let publish = self.prepared.keys().next().copied();
        match (prepare, publish) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
