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
use super::{Held, StopReason, Worker, truncate};
use crate::events::RunEvents;
use crate::memory::{RunMemory, working};

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
    /// Steps recorded with the end (the final answer's LLM call, the episode stored).
    pub(super) steps: Vec<pb::RunStep>,
}

impl<'a> Report<'a> {
    /// An attempt that did not fail (its `failure` is never consulted).
    pub(super) fn ended(
        outcome: pb::RunOutcome,
        result: &'a str,
        error: &'a str,
        usage: nightshift_llm::Usage,
    ) -> Self {
        Self { outcome, result, error, failure: Failure::Retryable, usage, steps: Vec::new() }
    }

    /// A failed or timed-out attempt.
    pub(super) fn failed(
        outcome: pb::RunOutcome,
        error: &'a str,
        failure: Failure,
        usage: nightshift_llm::Usage,
    ) -> Self {
        Self { outcome, result: "", error, failure, usage, steps: Vec::new() }
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

/// How an attempt ended, in the words of the note the attempt after it reads
/// (`crate::memory::working`).
pub(super) struct Ending {
    /// `failed`, `timed_out`, `released`, ... (note metadata `outcome`).
    outcome: &'static str,
    text: String,
    /// LLM turns of the run so far.
    turns: u32,
}

impl Ending {
    /// The ending of attempt `end` of `run`, after `turns` LLM turns in all.
    pub(super) fn of(end: &AttemptEnd, run: &pb::Run, turns: u32) -> Self {
        let n = run.attempt;
        let (outcome, text) = match end {
            AttemptEnd::Succeeded(..) => {
                ("succeeded", format!("Attempt {n} reached a final answer after {turns} LLM turns in all."))
            }
            AttemptEnd::Failed(error, ..) => return Self::failed(run, turns, error),
            AttemptEnd::TimedOut(_) => {
                ("timed_out", format!("Attempt {n} ran out of time (policy.timeout) after {turns} LLM turns in all."))
            }
            AttemptEnd::Stopped(StopReason::Cancelled, _) => {
                ("cancelled", format!("Attempt {n} was cancelled on its worker after {turns} LLM turns in all."))
            }
            AttemptEnd::Stopped(StopReason::Released, _) => (
                "released",
                format!("Attempt {n} was handed back by a worker shutting down, after {turns} LLM turns in all."),
            ),
            AttemptEnd::Lost(why) => {
                ("lost", format!("Attempt {n} lost the run after {turns} LLM turns in all: {why}"))
            }
            AttemptEnd::Parked(calls, _) => {
                let tools: Vec<&str> = calls.iter().map(|(c, _)| c.name.as_str()).collect();
                let tools = tools.join(", ");
                (
                    "parked",
                    format!(
                        "Attempt {n} parked the run for a person's approval of {tools} after {turns} LLM turns in all."
                    ),
                )
            }
        };
        Self { outcome, text, turns }
    }

    /// A failed attempt of `run`.
    pub(super) fn failed(run: &pb::Run, turns: u32, error: &str) -> Self {
        let text = format!("Attempt {} failed after {turns} LLM turns in all: {error}", run.attempt);
        Self { outcome: "failed", text, turns }
    }
}

impl Worker {
    /// Answers a delivery whose outcome the manager did not record: never acked, it comes back
    /// once the lease has run out, and the next attempt resumes from the checkpoints (the turns
    /// before the final answer are not paid for again; the final answer, recorded only with the
    /// end, is) and reads the note left here of how this attempt ended, as `unrecorded`.
    pub(super) async fn redeliver_later(&self, d: Delivery, run: &Held, ending: &Ending) {
        tracing::warn!(run = %run.id, "the manager did not record the attempt's end; the run is delivered again");
        let text = format!("{} Its end could not be recorded, so the run was delivered again.", ending.text);
        self.note(run, &Ending { outcome: "unrecorded", text, turns: ending.turns }).await;
        nack(d, self.inner.cfg.lease_ttl).await;
    }

    /// Ends the attempt `end` of `run`, which had done `turns` LLM turns in all; `notes`: the run
    /// may have working notes (the attempt read some, or could not tell), to forget once it has
    /// ended for good.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn settle(
        &self,
        d: Delivery,
        run: &Held,
        end: AttemptEnd,
        events: &RunEvents,
        took: Duration,
        turns: u32,
        notes: bool,
    ) {
        let status = match &end {
            AttemptEnd::Succeeded(..) => "succeeded",
            AttemptEnd::Failed(..) => "failed",
            AttemptEnd::TimedOut(..) => "timed_out",
            AttemptEnd::Stopped(StopReason::Cancelled, _) => "cancelled",
            AttemptEnd::Stopped(StopReason::Released, _) => "released",
            AttemptEnd::Lost(..) => "lost",
            AttemptEnd::Parked(..) => "parked",
        };
        metrics::counter!("nightshift_worker_runs_total", "status" => status).increment(1);
        metrics::histogram!("nightshift_run_duration_seconds", "status" => status).record(took.as_secs_f64());
        let ending = Ending::of(&end, run, turns);
        match end {
            AttemptEnd::Succeeded(answer, usage, steps) => {
                let report = Report { steps, ..Report::ended(pb::RunOutcome::Succeeded, &answer, "", usage) };
                match self.finish(run, report).await {
                    Recorded::No => self.redeliver_later(d, run, &ending).await,
                    Recorded::Yes(_) => {
                        let result = truncate(&answer, 2000);
                        events.emit(
                            EventType::BackgroundTaskCompleted,
                            json!({"attempt": run.attempt, "result": result}),
                        );
                        ack(d).await;
                        self.forget_notes(run, notes).await;
                    }
                    // Cancelled there or taken over: the run did not complete with this answer,
                    // so no BACKGROUND_TASK_COMPLETED (the manager announced the cancel; an
                    // attempt elsewhere announces its own end). It may still read the notes.
                    Recorded::Refused => {
                        tracing::info!(run = %run.id, "the manager refused the final answer; not reported completed");
                        ack(d).await;
                    }
                }
            }
            AttemptEnd::Failed(error, failure, usage) => {
                let report = Report::failed(pb::RunOutcome::Failed, &error, failure, usage);
                self.fail(d, run, report, events, &ending, notes).await
            }
            AttemptEnd::TimedOut(usage) => {
                let error = "run exceeded policy.timeout";
                let report = Report::failed(pb::RunOutcome::TimedOut, error, Failure::Retryable, usage);
                self.fail(d, run, report, events, &ending, notes).await
            }
            AttemptEnd::Stopped(StopReason::Cancelled, usage) => {
                let report = Report::ended(pb::RunOutcome::Cancelled, "", "cancelled on the worker", usage);
                match self.finish(run, report).await {
                    Recorded::No => self.redeliver_later(d, run, &ending).await,
                    // Refused too: a cancel at the manager is what stopped the attempt, and the
                    // manager has already ended the run when the worker reports it.
                    Recorded::Yes(_) | Recorded::Refused => {
                        events.emit(EventType::RunCancelled, json!({"attempt": run.attempt}));
                        ack(d).await;
                        self.forget_notes(run, notes).await;
                    }
                }
            }
            AttemptEnd::Stopped(StopReason::Released, usage) => {
                let reason = "handed back by a draining worker";
                match self.finish(run, Report::ended(pb::RunOutcome::Released, "", reason, usage)).await {
                    // Recorded or not, another attempt follows and reads how this one ended.
                    Recorded::Yes(_) | Recorded::No => self.note(run, &ending).await,
                    // Cancelled there or taken over: no attempt follows from this hand-back.
                    Recorded::Refused => {}
                }
                nack(d, Duration::ZERO).await;
            }
            AttemptEnd::Lost(why) => {
                tracing::info!(run = %run.id, %why, "run no longer ours; stopping without finishing it");
                ack(d).await;
            }
            AttemptEnd::Parked(calls, usage) => match self.park(run, &calls, usage).await {
                Recorded::No => self.redeliver_later(d, run, &ending).await,
                // Parked: the attempt after the decision reads how this one ended. The slot is
                // free once this returns.
                Recorded::Yes(_) => {
                    self.note(run, &ending).await;
                    ack(d).await;
                }
                // Cancelled there or taken over: no attempt follows from this one.
                Recorded::Refused => ack(d).await,
            },
        }
    }

    /// RequestApproval: parks the run on `calls`, tried a few times like FinishRun.
    async fn park(
        &self,
        run: &Held,
        calls: &[(nightshift_llm::ToolCall, nightshift_core::governance::Effect)],
        usage: nightshift_llm::Usage,
    ) -> Recorded {
        let req = pb::RequestApprovalRequest {
            run_id: run.id.clone(),
            attempt: run.attempt,
            lease_token: run.lease_token.clone(),
            calls: calls
                .iter()
                .map(|(c, effect)| pb::ToolCallForApproval {
                    call_id: c.id.clone(),
                    tool_name: c.name.clone(),
                    arguments_json: c.arguments.clone(),
                    effect: effect.to_pb() as i32,
                })
                .collect(),
            usage: Some(usage.into()),
        };
        self.with_retries("RequestApproval", &run.id, |mut m| {
            let req = req.clone();
            async move { m.request_approval(req).await.map(|_| None) }
        })
        .await
    }

    async fn fail(
        &self,
        d: Delivery,
        run: &Held,
        report: Report<'_>,
        events: &RunEvents,
        ending: &Ending,
        notes: bool,
    ) {
        let error = report.error.to_owned();
        let (retry, ended) = match self.finish(run, report).await {
            Recorded::No => return self.redeliver_later(d, run, ending).await,
            Recorded::Yes(Some(after)) => {
                // Before the nack that lets the next attempt be delivered.
                self.note(run, ending).await;
                (Some(after), false)
            }
            Recorded::Yes(None) => (None, true),
            // Cancelled or taken over: an attempt elsewhere may still read the notes.
            Recorded::Refused => (None, false),
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
        if ended {
            self.forget_notes(run, notes).await;
        }
    }

    /// Leaves the note of how this attempt ended for the attempt that follows (before the nack
    /// that lets it be delivered).
    async fn note(&self, run: &Held, ending: &Ending) {
        if let Some(client) = self.inner.memory.get() {
            let client = RunMemory::new(client, &run.id, &run.lease_token);
            working::note(&client, run, ending.outcome, &ending.text, ending.turns).await;
        }
    }

    /// Forgets the run's working memory once it has ended for good, when it may have any
    /// (`notes`: notes are only written when another attempt follows, and that attempt reads
    /// them). After the ack: the delivery does not wait for a memory call. A worker that dies
    /// first leaves them to `working_ttl`.
    async fn forget_notes(&self, run: &Held, notes: bool) {
        if notes && let Some(client) = self.inner.memory.get() {
            working::forget(&RunMemory::new(client, &run.id, &run.lease_token), run).await;
        }
    }

    /// FinishRun, tried a few times.
    pub(super) async fn finish(&self, run: &Held, report: Report<'_>) -> Recorded {
        let usage = report.usage;
        let req = pb::FinishRunRequest {
            run_id: run.id.clone(),
            attempt: run.attempt,
            lease_token: run.lease_token.clone(),
            outcome: report.outcome as i32,
            result: report.result.to_owned(),
            error: report.error.to_owned(),
            usage: Some(usage.into()),
            permanent: report.failure == Failure::Permanent,
            steps: report.steps,
        };
        // A few tries: losing FinishRun would leave the run to a lease takeover.
        self.with_retries("FinishRun", &run.id, |mut m| {
            let req = req.clone();
            async move {
                let r = m.finish_run(req).await?;
                Ok(r.into_inner().retry_after.and_then(|d| nightshift_core::duration::from_pb(&d).ok()))
            }
        })
        .await
    }

    /// An attempt-ending call (`what`), tried a few times: recorded (with the retry delay it
    /// returned), refused (fenced), or not reached.
    async fn with_retries<F, Fut>(&self, what: &str, run: &str, call: F) -> Recorded
    where
        F: Fn(super::Manager) -> Fut,
        Fut: std::future::Future<Output = Result<Option<Duration>, tonic::Status>>,
    {
        for attempt in 0..3 {
            match call(self.inner.manager.clone()).await {
                Ok(retry) => return Recorded::Yes(retry),
                Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                    tracing::info!(run = %run, error = %s.message(), "{what} refused");
                    return Recorded::Refused;
                }
                Err(s) => {
                    tracing::warn!(run = %run, error = %s, attempt, "{what} failed; retrying");
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
