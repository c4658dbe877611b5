//! The outbox side of publishing: run requests go to the queue after their runs are recorded,
//! runs that reached it are flagged `published`, and a sweep publishes the ones that never did.
//! Also taking back prepared runs that must not be published.
use std::collections::BTreeMap;

use nightshift_core::{RunId, TriggerKind, time};
use nightshift_queue::RunRequest;
use nightshift_store::StoreError;

use super::index::Prepared;
use super::{Scheduler, shard_of};

/// How many run requests are published concurrently.
const PUBLISH_CONCURRENCY: usize = 256;
/// Published runs are flagged at most this long after the first of a batch was published …
const MARK_EVERY: chrono::Duration = chrono::Duration::milliseconds(200);
/// … or as soon as this many are waiting.
const MARK_BATCH: usize = 1000;

/// Published runs not yet flagged in the store, and since when the first of them waits.
#[derive(Default)]
pub(super) struct Unmarked {
    runs: Vec<RunId>,
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl Scheduler {
    /// Takes back prepared firings that must not be published (paused agent, replica stopping),
    /// newest first so that the schedule progress steps back in order.
    pub(super) async fn unprepare(&self, mut batch: Vec<Prepared>) {
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
    pub(super) async fn publish(&self, requests: &[RunRequest]) -> Vec<RunId> {
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

    /// Keeps published runs to be flagged with the next batch: a herd spread over a second is
    /// published at hundreds of instants, and one UPDATE per instant would cost a write
    /// transaction each. Until flagged, a run is one the outbox sweep may publish again — after
    /// `republish_after`, far longer than a batch waits, and harmless even then (the queue and
    /// StartRun drop a second request by run id).
    pub(super) fn defer_mark(&self, published: Vec<RunId>) {
        if published.is_empty() {
            return;
        }
        let mut unmarked = self.unmarked();
        if unmarked.runs.is_empty() {
            unmarked.since = Some(self.inner.clock.now());
        }
        unmarked.runs.extend(published);
    }

    /// When the kept runs must be flagged (`None`: none kept).
    pub(super) fn marks_due(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let unmarked = self.unmarked();
        let since = unmarked.since.filter(|_| !unmarked.runs.is_empty())?;
        Some(if unmarked.runs.len() >= MARK_BATCH { since } else { since + MARK_EVERY })
    }

    /// Flags the kept runs if their batch is due (or `all`, at a stop).
    pub(super) async fn flush_marks(&self, all: bool) {
        if !all && self.marks_due().is_none_or(|at| at > self.inner.clock.now()) {
            return;
        }
        let runs = std::mem::take(&mut self.unmarked().runs);
        if !runs.is_empty() {
            self.mark_published(&runs).await;
        }
    }

    fn unmarked(&self) -> std::sync::MutexGuard<'_, Unmarked> {
        self.inner.unmarked.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the outbox flag of published runs.
    pub(super) async fn mark_published(&self, published: &[RunId]) {
        if let Err(e) = self.inner.store.mark_published(published).await {
            // Harmless: the sweep publishes them again and the queue drops the duplicates.
            tracing::warn!(error = %e, "marking runs as published failed");
        }
    }

    /// Publishes queued runs (of owned shards) whose request never reached the queue: the
    /// publisher died between the store commit and the publish, the publish failed, or lease
    /// recovery put the run back.
    pub(super) async fn republish_stale(&self) -> Result<(), StoreError> {
        let cutoff =
            self.inner.clock.now() - chrono::Duration::from_std(self.inner.cfg.republish_after).unwrap_or_default();
        let stale = self.inner.store.stale_queued_runs(cutoff, 1000).await?;
        let owned = self.index().owned.clone();
        let now = self.inner.clock.now();
        let requests: Vec<RunRequest> = stale
            .into_iter()
            .filter(|s| owned.contains(&shard_of(&s.agent, self.inner.cfg.shard_count)))
            .map(|s| RunRequest {
                run_id: s.run.to_string(),
                agent_id: s.agent.to_string(),
                trigger: if s.scheduled_for.is_some() { TriggerKind::Schedule } else { TriggerKind::Manual }.to_pb()
                    as i32,
                scheduled_for: s.scheduled_for.map(time::to_pb),
                enqueued_at: Some(time::to_pb(now)),
                trace_context: trace_context(s.run.as_str(), s.agent.as_str()),
                // A run lease recovery put back has attempts, and its first request may still
                // be in the queue's dedup window.
                redelivery: if s.attempt == 0 { String::new() } else { format!("attempt-{}", s.attempt) },
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
pub(super) fn trace_context(run: &str, agent: &str) -> BTreeMap<String, String> {
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
