//! The end of an attempt: `FinishRun` at the manager (retried), the closing events and metrics,
//! then ack — or nack when the manager schedules a retry or a draining worker hands the run back.
//! Working memory follows the run's fate (`crate::memory::working`): before a nack that lets
//! another attempt follow, a note of how this one ended; once the run has ended for good, its
//! notes are forgotten.
use std::time::Duration;

use nightshift_core::lifecycle::Failure;
use nightshift_core::{EventType, backoff, pb};
use nightshift_queue::Delivery;
use serde_json::json;
use tonic::Code;

use super::attempt::AttemptEnd;
use super::delivery::{ack, nack};
use super::{StopReason, Worker, truncate};
use crate::events::RunEvents;
use crate::memory::working;

/// What `FinishRun` reports about an attempt.
pub(super) struct Report<'a> {
    pub(super) outcome: pb::RunOutcome,
    /// The final answer (succeeded).
    pub(super) result: &'a str,
    /// The error (failed, timed out) or the reason (cancelled, released).
    pub(super) error: &'a str,
    /// Whether a failure may be retried.
    pub(super) failure: Failure,
    /// Tokens the attempt spent.
    pub(super) usage: nightshift_llm::Usage,
}

impl<'a> Report<'a> {
    /// An attempt that did not fail (its `failure` is never consulted).
    pub(super) fn ended(
        outcome: pb::RunOutcome,
        result: &'a str,
        error: &'a str,
        usage: nightshift_llm::Usage,
    ) -> Self {
        Self { outcome, result, error, failure: Failure::Retryable, usage }
    }

    /// A failed or timed-out attempt.
    pub(super) fn failed(
        outcome: pb::RunOutcome,
        error: &'a str,
        failure: Failure,
        usage: nightshift_llm::Usage,
    ) -> Self {
        Self { outcome, result: "", error, failure, usage }
    }
}

/// What became of a `FinishRun`.
pub(super) enum Recorded {
    /// The manager recorded the end; `Some` when it schedules a retry after that delay.
    Yes(Option<Duration>),
    /// The manager refused it: the run was cancelled there or taken over (fenced).
    Refused,
    /// The manager could not be reached: nothing was recorded.
    No,
}

impl Worker {
    /// Answers a delivery whose outcome the manager did not record: never acked, it comes back
    /// once the lease has run out, and the next attempt resumes from the checkpoints (a final
    /// answer already checkpointed is not paid for again).
    pub(super) async fn redeliver_later(&self, d: Delivery, run: &pb::Run) {
        tracing::warn!(run = %run.id, "the manager did not record the attempt's end; the run is delivered again");
        nack(d, self.inner.cfg.lease_ttl).await;
    }

    /// Ends the attempt `end` of `run`, which had done `turns` LLM turns in all.
    pub(super) async fn settle(
        &self,
        d: Delivery,
        run: &pb::Run,
        end: AttemptEnd,
        events: &RunEvents,
        took: Duration,
        turns: u32,
    ) {
        let status = match &end {
            AttemptEnd::Succeeded(..) => "succeeded",
            AttemptEnd::Failed(..) => "failed",
            AttemptEnd::TimedOut(..) => "timed_out",
            AttemptEnd::Stopped(StopReason::Cancelled, _) => "cancelled",
            AttemptEnd::Stopped(StopReason::Released, _) => "released",
            AttemptEnd::Lost(..) => "lost",
        };
        metrics::counter!("nightshift_worker_runs_total", "status" => status).increment(1);
        metrics::histogram!("nightshift_run_duration_seconds", "status" => status).record(took.as_secs_f64());
        match end {
            AttemptEnd::Succeeded(answer, usage) => {
                match self.finish(run, Report::ended(pb::RunOutcome::Succeeded, &answer, "", usage)).await {
                    Recorded::No => self.redeliver_later(d, run).await,
                    recorded @ (Recorded::Yes(_) | Recorded::Refused) => {
                        events.emit(
                            EventType::BackgroundTaskCompleted,
                            json!({"attempt": run.attempt, "result": truncate(&answer, 2000)}),
                        );
                        if matches!(recorded, Recorded::Yes(_)) {
                            self.forget_notes(run).await;
                        }
                        ack(d).await;
                    }
                }
            }
            AttemptEnd::Failed(error, failure, usage) => {
                let report = Report::failed(pb::RunOutcome::Failed, &error, failure, usage);
                self.fail(d, run, report, events, turns).await
            }
            AttemptEnd::TimedOut(usage) => {
                let error = "run exceeded policy.timeout";
                let report = Report::failed(pb::RunOutcome::TimedOut, error, Failure::Retryable, usage);
                self.fail(d, run, report, events, turns).await
            }
            AttemptEnd::Stopped(StopReason::Cancelled, usage) => {
                let report = Report::ended(pb::RunOutcome::Cancelled, "", "cancelled on the worker", usage);
                match self.finish(run, report).await {
                    Recorded::No => self.redeliver_later(d, run).await,
                    recorded @ (Recorded::Yes(_) | Recorded::Refused) => {
                        events.emit(EventType::RunCancelled, json!({"attempt": run.attempt}));
                        if matches!(recorded, Recorded::Yes(_)) {
                            self.forget_notes(run).await;
                        }
                        ack(d).await;
                    }
                }
            }
            AttemptEnd::Stopped(StopReason::Released, usage) => {
                let reason = "handed back by a draining worker";
                self.finish(run, Report::ended(pb::RunOutcome::Released, "", reason, usage)).await;
                let text = format!(
                    "Attempt {} was handed back by a worker shutting down, after {turns} LLM turns in all.",
                    run.attempt
                );
                self.note(run, "released", &text, turns).await;
                nack(d, Duration::ZERO).await;
            }
            AttemptEnd::Lost(why) => {
                tracing::info!(run = %run.id, %why, "run no longer ours; stopping without finishing it");
                ack(d).await;
            }
        }
    }

    async fn fail(&self, d: Delivery, run: &pb::Run, report: Report<'_>, events: &RunEvents, turns: u32) {
        let error = report.error.to_owned();
        let (outcome, text) = match report.outcome {
            pb::RunOutcome::TimedOut => (
                "timed_out",
                format!("Attempt {} ran out of time (policy.timeout) after {turns} LLM turns in all.", run.attempt),
            ),
            _ => ("failed", format!("Attempt {} failed after {turns} LLM turns in all: {error}", run.attempt)),
        };
        let retry = match self.finish(run, report).await {
            Recorded::No => {
                // The run comes back after the lease: the next attempt reads the note.
                self.note(run, outcome, &text, turns).await;
                return self.redeliver_later(d, run).await;
            }
            Recorded::Yes(Some(after)) => {
                self.note(run, outcome, &text, turns).await;
                Some(after)
            }
            Recorded::Yes(None) => {
                self.forget_notes(run).await;
                None
            }
            // Cancelled or taken over: an attempt elsewhere may still read the notes.
            Recorded::Refused => None,
        };
        events.emit(
            EventType::BackgroundTaskError,
            json!({"attempt": run.attempt, "error": error, "will_retry": retry.is_some()}),
        );
        match retry {
            Some(after) => {
                events.emit(
                    EventType::RunRetrying,
                    json!({"attempt": run.attempt, "retry_in_ms": after.as_millis() as u64}),
                );
                nack(d, after).await;
            }
            None => ack(d).await,
        }
    }

    /// Leaves the note of how this attempt ended for the attempt that follows (before the nack
    /// that lets it be delivered).
    async fn note(&self, run: &pb::Run, outcome: &str, text: &str, turns: u32) {
        if let Some(client) = self.inner.memory.get() {
            working::note(client, run, outcome, text, turns).await;
        }
    }

    /// Forgets the run's working memory once it has ended for good (the manager recorded the
    /// end; after a refusal an attempt elsewhere may still need it, and `working_ttl` cleans up).
    /// A first attempt has no notes to forget: notes are only written when another attempt follows.
    async fn forget_notes(&self, run: &pb::Run) {
        if run.attempt > 1
            && let Some(client) = self.inner.memory.get()
        {
            working::forget(client, run).await;
        }
    }

    /// FinishRun, tried a few times.
    pub(super) async fn finish(&self, run: &pb::Run, report: Report<'_>) -> Recorded {
        let usage = report.usage;
        let req = pb::FinishRunRequest {
            run_id: run.id.clone(),
            attempt: run.attempt,
            outcome: report.outcome as i32,
            result: report.result.to_owned(),
            error: report.error.to_owned(),
            usage: Some(pb::TokenUsage { input_tokens: usage.input_tokens, output_tokens: usage.output_tokens }),
            permanent: report.failure == Failure::Permanent,
        };
        // A few tries: losing FinishRun would leave the run to a lease takeover.
        for attempt in 0..3 {
            match self.inner.manager.clone().finish_run(req.clone()).await {
                Ok(r) => {
                    let retry = r.into_inner().retry_after.and_then(|d| nightshift_core::duration::from_pb(&d).ok());
                    return Recorded::Yes(retry);
                }
                Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                    tracing::info!(run = %run.id, error = %s.message(), "FinishRun refused");
                    return Recorded::Refused;
                }
                Err(s) => {
                    tracing::warn!(run = %run.id, error = %s, attempt, "FinishRun failed; retrying");
                    tokio::time::sleep(backoff::exponential(
                        Duration::from_millis(500),
                        attempt,
                        Duration::from_secs(2),
                    ))
                    .await;
                }
            }
        }
        Recorded::No
    }
}
