//! In-memory backend: the embedded default of `nightshift dev` (one process, no server).
//!
//! Everything lives behind one `std::sync::Mutex` that is never held across an `.await`:
//! - `entries`: every unacked message by a private id, with its state (ready, delayed, in flight)
//!   and a *generation* that changes on every state change;
//! - `ready`: FIFO of ids ready to deliver;
//! - `timers`: one min-heap for both delayed deliveries and ack deadlines. Entries are never
//!   removed from the heap: a timer whose generation no longer matches its message is stale and
//!   skipped when popped (lazy deletion), so `in_progress`, `nack` and `ack` are O(log n);
//! - `dedup`: run ids seen within the window, expired in publish order from a FIFO (the window is
//!   constant, so expiry order is publish order).
//!
//! A `receive` call pops due timers, then takes up to `max` ready ids: O(k log n) for k
//! deliveries, no scan of the queue. Idle receivers sleep on a [`Notify`] with a timeout equal to
//! the earliest timer, so nothing polls. Any operation that adds work or an earlier timer wakes
//! them.
//!
//! `depth` counts ready and delayed messages (including nacked ones waiting for their delay),
//! not deliveries in flight.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{Acker, Delivery, QueueError, RunRequest, WorkQueue};

/// Settings of an in-memory queue.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// How long a delivery may stay unacked before it is delivered again.
    pub ack_wait: Duration,
    /// How long a published `run_id` is remembered for deduplication.
    pub dedup_window: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { ack_wait: crate::DEFAULT_ACK_WAIT, dedup_window: crate::DEFAULT_DEDUP_WINDOW }
    }
}

/// An in-process [`WorkQueue`]. Cloning gives another handle to the same queue.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryQueue").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

struct Inner {
    config: MemoryConfig,
    state: Mutex<State>,
    /// Wakes idle receivers when work or an earlier timer arrives.
    notify: Notify,
}

#[derive(Default)]
struct State {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    ready: VecDeque<u64>,
    /// Entries in [`Phase::Ready`]: `ready` may also hold ids of entries acked meanwhile
    /// (skipped when popped), so its length is not the count.
    ready_live: usize,
    /// `(due, id, generation)`; see the module docs for the lazy deletion.
    timers: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    /// Number of entries in [`Phase::Delayed`], so that `depth` is O(1).
    delayed: usize,
    dedup: HashMap<String, Instant>,
    /// `(expires, run_id)` in publish order.
    dedup_order: VecDeque<(Instant, String)>,
}

struct Entry {
    request: RunRequest,
    delivered: u32,
    phase: Phase,
    generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ready,
    Delayed,
    InFlight,
}

impl MemoryQueue {
    /// A new, empty queue private to this handle and its clones.
    pub fn new(config: MemoryConfig) -> Self {
        Self { inner: Arc::new(Inner { config, state: Mutex::new(State::default()), notify: Notify::new() }) }
    }

    /// The process-wide queue called `name`, created with `config` on first use. Later calls
    /// return the same queue (and ignore their `config`) while any handle to it is alive; this is
    /// what `memory://NAME` URLs resolve to.
    pub fn named(name: &str, config: MemoryConfig) -> Self {
        static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<Inner>>>> = OnceLock::new();
        let registry = REGISTRY.get_or_init(Default::default);
        let mut registry = registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(inner) = registry.get(name).and_then(Weak::upgrade) {
            return Self { inner };
        }
        // Drop entries of queues that no longer exist, so the registry does not grow forever.
        registry.retain(|_, queue| queue.strong_count() > 0);
        let queue = Self::new(config);
        registry.insert(name.to_owned(), Arc::downgrade(&queue.inner));
        queue
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // breaks later operations more than losing the queue would, so keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Schedules a timer; returns true if it is now the earliest one (sleeping receivers must
    /// recompute their timeout).
    fn push_timer(&mut self, due: Instant, id: u64, generation: u64) -> bool {
        let earliest = self.timers.peek().is_none_or(|Reverse((first, _, _))| due < *first);
        self.timers.push(Reverse((due, id, generation)));
        earliest
    }

    /// Moves every message whose timer has passed back to `ready`.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((due, id, generation))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(entry) = self.entries.get_mut(&id) else { continue };
            if entry.generation != generation {
                continue;
            }
            match entry.phase {
                Phase::Delayed => self.delayed -= 1,
                Phase::InFlight => tracing::debug!(run_id = %entry.request.run_id, "ack deadline passed, redelivering"),
                Phase::Ready => continue,
            }
            entry.phase = Phase::Ready;
            entry.generation += 1;
            self.ready.push_back(id);
            self.ready_live += 1;
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((due, _, _))| *due)
    }

    fn expire_dedup(&mut self, now: Instant) {
        while let Some((expires, _)) = self.dedup_order.front() {
            if *expires > now {
                break;
            }
            if let Some((expires, run_id)) = self.dedup_order.pop_front() {
                // The run id may have been published again after it expired: keep the newer one.
                if self.dedup.get(&run_id) == Some(&expires) {
                    self.dedup.remove(&run_id);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl WorkQueue for MemoryQueue {
    async fn publish(&self, request: &RunRequest, delay: Option<Duration>) -> Result<bool, QueueError> {
        let inner = &self.inner;
        let now = Instant::now();
        let wake = {
            let mut state = inner.lock();
            state.expire_dedup(now);
            let dedup_id = crate::dedup_id(request).into_owned();
            if state.dedup.contains_key(&dedup_id) {
                return Ok(false);
            }
            let expires = now + inner.config.dedup_window;
            state.dedup.insert(dedup_id.clone(), expires);
            state.dedup_order.push_back((expires, dedup_id));

            let id = state.next_id;
            state.next_id += 1;
            let delay = delay.filter(|d| !d.is_zero());
            let phase = if delay.is_some() { Phase::Delayed } else { Phase::Ready };
            state.entries.insert(id, Entry { request: request.clone(), delivered: 0, phase, generation: 0 });
            match delay {
                Some(delay) => {
                    state.delayed += 1;
                    state.push_timer(now + delay, id, 0)
                }
                None => {
                    state.ready.push_back(id);
                    state.ready_live += 1;
                    true
                }
            }
        };
        if wake {
            inner.notify.notify_waiters();
        }
        Ok(true)
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let deadline = crate::deadline_after(wait);
        loop {
            // Register for wake-ups before looking at the state, so a publish between the look
            // and the sleep is not missed.
            let notified = inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let now = Instant::now();
            let (deliveries, wake_at, wake_others) = {
                let mut state = inner.lock();
                state.fire_timers(now);
                let mut deliveries = Vec::new();
                let mut wake_others = false;
                while deliveries.len() < max {
                    let Some(id) = state.ready.pop_front() else { break };
                    let Some(entry) = state.entries.get_mut(&id) else { continue };
                    entry.phase = Phase::InFlight;
                    entry.generation += 1;
                    entry.delivered = entry.delivered.saturating_add(1);
                    let (generation, delivered, request) = (entry.generation, entry.delivered, entry.request.clone());
                    state.ready_live -= 1;
                    wake_others |= state.push_timer(now + inner.config.ack_wait, id, generation);
                    let acker = MemoryAcker { inner: Arc::clone(inner), id, delivery: delivered };
                    deliveries.push(Delivery::new(request, delivered, Box::new(acker)));
                }
                (deliveries, state.next_timer(), wake_others)
            };
            if wake_others {
                inner.notify.notify_waiters();
            }
            if !deliveries.is_empty() || now >= deadline {
                return Ok(deliveries);
            }
            let until = wake_at.map_or(deadline, |at| at.min(deadline));
            // Either outcome means "look again": a notification or a timer/deadline.
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    async fn depth(&self) -> Result<Option<u64>, QueueError> {
        let state = self.inner.lock();
        Ok(Some((state.ready_live + state.delayed) as u64))
    }
}

/// Acks one delivery. `delivery` (the delivery count when it was handed out) identifies it:
/// once the message was redelivered, `nack` and `in_progress` of the old delivery are no-ops.
/// `ack` removes the message whoever holds it: the work is done.
struct MemoryAcker {
    inner: Arc<Inner>,
    id: u64,
    delivery: u32,
}

impl MemoryAcker {
    /// The entry if this delivery still holds it.
    fn current<'a>(&self, state: &'a mut State) -> Option<&'a mut Entry> {
        let entry = state.entries.get_mut(&self.id)?;
        if entry.phase == Phase::InFlight && entry.delivered == self.delivery {
            Some(entry)
        } else {
            tracing::debug!(run_id = %entry.request.run_id, "delivery is no longer current, ignored");
            None
        }
    }
}

#[async_trait::async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), QueueError> {
        let mut state = self.inner.lock();
        if let Some(entry) = state.entries.remove(&self.id) {
            // An id left in `ready` or `timers` is skipped later (entry gone); the counters
            // must drop it now.
            match entry.phase {
                Phase::Ready => state.ready_live -= 1,
                Phase::Delayed => state.delayed -= 1,
                Phase::InFlight => {}
            }
        }
        Ok(())
    }

    async fn nack(&self, delay: Duration) -> Result<(), QueueError> {
        let now = Instant::now();
        let wake = {
            let mut state = self.inner.lock();
            let Some(entry) = self.current(&mut state) else { return Ok(()) };
            // The new generation retires the ack-deadline timer.
            entry.generation += 1;
            let generation = entry.generation;
            if delay.is_zero() {
                entry.phase = Phase::Ready;
                state.ready.push_back(self.id);
                state.ready_live += 1;
                true
            } else {
                entry.phase = Phase::Delayed;
                state.delayed += 1;
                state.push_timer(now + delay, self.id, generation)
            }
        };
        if wake {
            self.inner.notify.notify_waiters();
        }
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), QueueError> {
        let deadline = Instant::now() + self.inner.config.ack_wait;
        let mut state = self.inner.lock();
        let Some(entry) = self.current(&mut state) else { return Ok(()) };
        // The new generation retires the previous deadline's timer. That timer is still in the
        // heap and earlier than the new one, so sleeping receivers need no wake-up.
        entry.generation += 1;
        let generation = entry.generation;
        state.push_timer(deadline, self.id, generation);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(run_id: &str) -> RunRequest {
        RunRequest { run_id: run_id.to_owned(), ..Default::default() }
    }

    fn queue() -> MemoryQueue {
        MemoryQueue::new(MemoryConfig { ack_wait: Duration::from_secs(10), dedup_window: Duration::from_secs(60) })
    }

    async fn depth(q: &MemoryQueue) -> u64 {
        q.depth().await.unwrap().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn dedup_forgets_after_the_window() {
        let q = queue();
        assert!(q.publish(&request("a"), None).await.unwrap());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!q.publish(&request("a"), None).await.unwrap());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(q.publish(&request("a"), None).await.unwrap(), "window passed");
        // The expired entry of the first publish must not evict the second one's.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!q.publish(&request("a"), None).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn stale_delivery_cannot_nack_or_extend() {
        let q = queue();
        q.publish(&request("a"), None).await.unwrap();
        let first = q.receive(1, Duration::ZERO).await.unwrap().pop().unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        let second = q.receive(1, Duration::ZERO).await.unwrap().pop().unwrap();
        assert_eq!(second.delivered, 2);

        // The first holder wakes up late: its nack and in_progress must not touch the
        // second delivery.
        first.in_progress().await.unwrap();
        first.nack(Duration::ZERO).await.unwrap();
        assert!(q.receive(1, Duration::ZERO).await.unwrap().is_empty(), "still held by the second delivery");
        tokio::time::advance(Duration::from_secs(5)).await;
        second.in_progress().await.unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(q.receive(1, Duration::ZERO).await.unwrap().is_empty(), "extended by the current holder");
        second.ack().await.unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(q.receive(1, Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(depth(&q).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn late_ack_removes_a_requeued_message_and_depth_stays_right() {
        let q = queue();
        q.publish(&request("a"), None).await.unwrap();
        q.publish(&request("b"), Some(Duration::from_secs(100))).await.unwrap();
        assert_eq!(depth(&q).await, 2);
        let first = q.receive(1, Duration::ZERO).await.unwrap().pop().unwrap();
        assert_eq!(first.request.run_id, "a");
        assert_eq!(depth(&q).await, 1, "in flight is not counted");
        tokio::time::advance(Duration::from_secs(11)).await;
        // "a" is ready again (deadline passed) when its first holder finally acks: done is done.
        first.ack().await.unwrap();
        assert_eq!(depth(&q).await, 1);
        assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
        tokio::time::advance(Duration::from_secs(100)).await;
        let later = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].request.run_id, "b");
        assert_eq!(depth(&q).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_receive_wakes_for_a_shorter_delay_published_meanwhile() {
        let q = queue();
        q.publish(&request("slow"), Some(Duration::from_secs(50))).await.unwrap();
        let waiter = tokio::spawn({
            let q = q.clone();
            async move {
                let start = Instant::now();
                let got = q.receive(1, Duration::from_secs(100)).await.unwrap();
                (got[0].request.run_id.clone(), start.elapsed())
            }
        });
        tokio::task::yield_now().await;
        q.publish(&request("fast"), Some(Duration::from_secs(5))).await.unwrap();
        let (run_id, waited) = waiter.await.unwrap();
        assert_eq!(run_id, "fast");
        assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(6), "waited {waited:?}");
    }

    #[tokio::test]
    async fn named_queues_are_shared_while_alive() {
        let name = format!("unit-{}", uuid::Uuid::new_v4());
        let a = MemoryQueue::named(&name, MemoryConfig::default());
        let b = MemoryQueue::named(&name, MemoryConfig::default());
        a.publish(&request("x"), None).await.unwrap();
        assert_eq!(b.receive(1, Duration::ZERO).await.unwrap().len(), 1);
        let other = MemoryQueue::named(&format!("{name}-other"), MemoryConfig::default());
        assert_eq!(depth(&other).await, 0);
    }
}
