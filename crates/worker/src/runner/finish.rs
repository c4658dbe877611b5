//! The end of an attempt: `FinishRun` at the manager (retried), the closing events and metrics,
//! then ack — or nack when the manager schedules a retry or a draining worker hands the run back.
use std::time::Duration;

use nightshift_core::{EventType, pb};
use nightshift_queue::Delivery;
use serde_json::json;
use tonic::Code;

use super::attempt::AttemptEnd;
use super::delivery::{ack, nack};
use super::{StopReason, Worker, truncate};
use crate::events::RunEvents;

impl Worker {
    pub(super) async fn settle(&self, d: Delivery, run: &pb::Run, end: AttemptEnd, events: &RunEvents, took: Duration) {
        let status = match &end {
            AttemptEnd::Succeeded(..) => "succeeded",
            AttemptEnd::Failed(..) => "failed",
            AttemptEnd::TimedOut(..) => "timed_out",
            AttemptEnd::Stopped(StopReason::Cancelled) => "cancelled",
            AttemptEnd::Stopped(StopReason::Released) => "released",
            AttemptEnd::Lost(..) => "lost",
        };
        metrics::counter!("nightshift_worker_runs_total", "status" => status).increment(1);
        metrics::histogram!("nightshift_run_duration_seconds", "status" => status).record(took.as_secs_f64());
        match end {
            AttemptEnd::Succeeded(answer, usage) => {
                self.finish(run, pb::RunOutcome::Succeeded, &answer, "", usage).await;
                events.emit(
                    EventType::BackgroundTaskCompleted,
                    json!({"attempt": run.attempt, "result": truncate(&answer, 2000)}),
                );
                ack(d).await;
            }
            AttemptEnd::Failed(error, usage) => self.fail(d, run, pb::RunOutcome::Failed, &error, usage, events).await,
            AttemptEnd::TimedOut(usage) => {
                self.fail(d, run, pb::RunOutcome::TimedOut, "run exceeded policy.timeout", usage, events).await
            }
            AttemptEnd::Stopped(StopReason::Cancelled) => {
                self.finish(run, pb::RunOutcome::Cancelled, "", "cancelled on the worker", Default::default()).await;
                events.emit(EventType::RunCancelled, json!({"attempt": run.attempt}));
                ack(d).await;
            }
            AttemptEnd::Stopped(StopReason::Released) => {
                self.finish(run, pb::RunOutcome::Released, "", "handed back by a draining worker", Default::default())
                    .await;
                nack(d, Duration::ZERO).await;
            }
            AttemptEnd::Lost(why) => {
                tracing::info!(run = %run.id, %why, "run no longer ours; stopping without finishing it");
                ack(d).await;
            }
        }
    }

    async fn fail(
        &self,
        d: Delivery,
        run: &pb::Run,
        outcome: pb::RunOutcome,
        error: &str,
        usage: nightshift_llm::Usage,
        events: &RunEvents,
    ) {
        let retry = self.finish(run, outcome, "", error, usage).await;
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

    /// FinishRun; returns the retry delay when the manager schedules a retry.
    pub(super) async fn finish(
        &self,
        run: &pb::Run,
        outcome: pb::RunOutcome,
        result: &str,
        error: &str,
        usage: nightshift_llm::Usage,
    ) -> Option<Duration> {
        let req = pb::FinishRunRequest {
            run_id: run.id.clone(),
            attempt: run.attempt,
            outcome: outcome as i32,
            result: result.to_owned(),
            error: error.to_owned(),
            usage: Some(pb::TokenUsage { input_tokens: usage.input_tokens, output_tokens: usage.output_tokens }),
        };
        // A few tries: losing FinishRun would leave the run to a lease takeover.
        for attempt in 0..3 {
            match self.inner.manager.clone().finish_run(req.clone()).await {
                Ok(r) => return r.into_inner().retry_after.and_then(|d| nightshift_core::duration::from_pb(&d).ok()),
                Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                    tracing::info!(run = %run.id, error = %s.message(), "FinishRun refused");
                    return None;
                }
                Err(s) => {
                    tracing::warn!(run = %run.id, error = %s, attempt, "FinishRun failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
                }
            }
        }
        None
    }
}
