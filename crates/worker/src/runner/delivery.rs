//! The queue loop and one delivery: `StartRun` at the manager, and what its decision means for
//! the request — run it here, drop it (ack) or let it come back later (nack).
use nightshift_core::lifecycle::Failure;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use nightshift_core::{AgentSpec, EventType, pb};
use nightshift_queue::Delivery;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::Instrument as _;

use super::finish::{Ending, Recorded, Report};
use super::{ActiveRun, Held, Worker};
use crate::events::RunEvents;

impl Worker {
    /// Consumes the queue until drained (or `shutdown` resolves, which starts a drain with the
    /// configured grace), then returns once every in-flight run ended or was handed back.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tracing::info!(worker = %self.inner.id, capacity = self.inner.cfg.concurrency, "worker started");
        tokio::pin!(shutdown);
        let mut shutdown_seen = false;
        loop {
            if self.inner.draining.load(Ordering::SeqCst) {
                break;
            }
            let available = self.inner.slots.available_permits();
            if available == 0 {
                tokio::select! {
                    permit = self.inner.slots.clone().acquire_owned() => drop(permit),
                    () = &mut shutdown, if !shutdown_seen => { shutdown_seen = true; self.drain(self.inner.cfg.drain_grace); }
                }
                continue;
            }
            let batch = tokio::select! {
                r = self.inner.queue.receive(available, Duration::from_secs(1)) => r,
                () = &mut shutdown, if !shutdown_seen => {
                    shutdown_seen = true;
                    self.drain(self.inner.cfg.drain_grace);
                    continue;
                }
            };
            match batch {
                Ok(deliveries) => {
                    for d in deliveries {
                        let Ok(permit) = self.inner.slots.clone().acquire_owned().await else { return };
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.handle(d).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "receiving from the queue failed; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.inner.stop.cancelled().await;
        tracing::info!(worker = %self.inner.id, "worker stopped");
    }

    /// Handles one delivery in an `agent.run` span that continues the trace of whoever queued
    /// the run (the scheduler's tick or the manager's trigger), so one run is one trace.
    async fn handle(&self, d: Delivery) {
        let span = tracing::info_span!(
            parent: None,
            "agent.run",
            otel.name = "agent.run",
            otel.kind = "consumer",
            run = %d.request.run_id,
            agent = %d.request.agent_id,
        );
        nightshift_telemetry::set_parent_from_map(&span, &d.request.trace_context);
        self.handle_delivery(d).instrument(span).await
    }

    async fn handle_delivery(&self, d: Delivery) {
        if self.inner.draining.load(Ordering::SeqCst) {
            // Received while the drain began (or a run this worker just handed back): leave it
            // to another worker.
            nack(d, Duration::ZERO).await;
            return;
        }
        let req = d.request.clone();
        let mut manager = self.inner.manager.clone();
        let start = manager
            .start_run(pb::StartRunRequest {
                run_id: req.run_id.clone(),
                agent_id: req.agent_id.clone(),
                worker_id: self.inner.id.clone(),
                lease_ttl: Some(nightshift_core::duration::to_pb(self.inner.cfg.lease_ttl)),
                trigger: req.trigger,
                scheduled_for: req.scheduled_for,
                worker_endpoint: self.inner.endpoint.clone(),
            })
            .await;
        let start = match start {
            Ok(r) => r.into_inner(),
            Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => {
                tracing::info!(run = %req.run_id, error = %s.message(), "dropping a run request the manager cannot start");
                ack(d).await;
                return;
            }
            Err(s) => {
                tracing::warn!(run = %req.run_id, error = %s, "StartRun failed; redelivering in 5s");
                nack(d, Duration::from_secs(5)).await;
                return;
            }
        };
        let retry_after = start
            .retry_after
            .as_ref()
            .and_then(|d| nightshift_core::duration::from_pb(d).ok())
            .unwrap_or(Duration::from_secs(1));
        match start.decision() {
            pb::StartDecision::Started => {}
            pb::StartDecision::Skipped => {
                let run = start.run.unwrap_or_default();
                self.run_events(&run, &run.agent_name).emit(EventType::RunSkipped, json!({"reason": start.reason}));
                ack(d).await;
                return;
            }
            // Parked for a person: the decision publishes the run again.
            pb::StartDecision::AlreadyFinished
            | pb::StartDecision::AwaitingApproval
            | pb::StartDecision::AwaitingBudget
            | pb::StartDecision::Unspecified => {
                ack(d).await;
                return;
            }
            pb::StartDecision::Deferred | pb::StartDecision::LeasedElsewhere | pb::StartDecision::NotYet => {
                nack(d, retry_after).await;
                return;
            }
        }
        let (Some(run), Some(spec_pb)) = (start.run, start.spec) else {
            tracing::error!(run = %req.run_id, "StartRun said STARTED without run or spec");
            nack(d, Duration::from_secs(5)).await;
            return;
        };
        let run = Held { run, lease_token: start.lease_token };
        // The manager hands over the stored spec: it loads under the rules it was stored with.
        let spec = match AgentSpec::from_stored_proto(&spec_pb) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(run = %run.id, error = %e, "the agent spec does not validate on this worker");
                // Retryable: a worker of another release may understand the spec.
                let error = format!("invalid agent spec: {e}");
                let report = Report::failed(pb::RunOutcome::Failed, &error, Failure::Retryable, Default::default());
                match self.finish(&run, report).await {
                    Recorded::Yes(Some(after)) => nack(d, after).await,
                    Recorded::No => self.redeliver_later(d, &run, &Ending::failed(&run, 0, &error)).await,
                    Recorded::Yes(None) | Recorded::Refused => ack(d).await,
                }
                return;
            }
        };
        let events = self.run_events(&run, spec.name.as_str());
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let step = Arc::new(AtomicU32::new(0));
        let deltas = crate::agent::LlmDeltas::default();
        self.active().insert(
            run.id.clone(),
            ActiveRun {
                deltas: deltas.clone(),
                agent_id: run.agent_id.clone(),
                agent_name: spec.name.to_string(),
                attempt: run.attempt,
                started_at: Utc::now(),
                step: step.clone(),
                cancel: cancel.clone(),
                reason: reason.clone(),
            },
        );
        events.emit(EventType::BackgroundTaskStarted, json!({"attempt": run.attempt, "worker": self.inner.id, "trigger": if run.trigger() == pb::TriggerKind::Manual { "manual" } else { "schedule" }}));
        events.emit(EventType::BackgroundAgentStatus, json!({"status": "running"}));
        let began = std::time::Instant::now();
        let mut governance = crate::governed::Governance::new(
            spec.governance.clone(),
            start.namespace_governance.as_ref(),
            start.approvals,
        );
        governance.budget = crate::governed::RunBudget {
            agent: spec.budget,
            // A budget a newer manager wrote that does not validate here limits nothing more
            // than the agent's own (the manager's admission still applies it).
            namespace: start
                .namespace_budget
                .as_ref()
                .and_then(|b| nightshift_core::budget::Budget::from_pb("namespace_budget", b).ok())
                .unwrap_or_default(),
            price: start.model_price.map(|p| nightshift_core::cost::Price {
                input: p.input,
                output: p.output,
                cached_input: p.cached_input,
            }),
            prior: run.usage.as_ref().map(nightshift_llm::Usage::from).unwrap_or_default(),
        };
        governance.replay = start.replay.map(|r| std::sync::Arc::new(crate::replay::Replay::from_pb(r)));
        let (end, notes) = self
            .execute(&run, &spec, start.steps, &d, &cancel, &reason, step.clone(), &events, governance, deltas)
            .await;
        let turns = step.load(Ordering::Relaxed);
        self.settle(d, &run, end, &events, began.elapsed(), turns, notes).await;
        events.emit(EventType::BackgroundAgentStatus, json!({"status": "idle"}));
        // Removed only once the attempt is settled: a drain waits for this, and the process may
        // exit right after.
        self.active().remove(&run.id);
        self.inner.completed.fetch_add(1, Ordering::Relaxed);
    }

    fn run_events(&self, run: &pb::Run, agent_name: &str) -> RunEvents {
        RunEvents::new(self.inner.events.clone(), format!("worker/{}", self.inner.id), run, agent_name.to_owned())
    }
}

pub(super) async fn ack(d: Delivery) {
    if let Err(e) = d.ack().await {
        tracing::warn!(error = %e, "ack failed; the request may be delivered again (StartRun makes that harmless)");
    }
}

pub(super) async fn nack(d: Delivery, delay: Duration) {
    if let Err(e) = d.nack(delay).await {
        tracing::warn!(error = %e, "nack failed; the request comes back after the ack deadline");
    }
}
