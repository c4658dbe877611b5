//! The worker-facing calls of the run lifecycle: StartRun (with what follows a start: the
//! overlap policy's cancellations, a waiting run nudged), Checkpoint and FinishRun. Heartbeat and
//! RequestApproval are one-liners over the store (`service.rs`, `approvals.rs`).
use nightshift_core::lifecycle::Failure;
use nightshift_core::{AgentId, EventType, RunId, RunOutcome, WorkerId, duration, pb, time};
use nightshift_store::{FinishInput, Finished, StartInput, StartOutcome, StepInput};
use prost::Message;
use serde_json::json;
use tonic::Status;

use crate::convert;
use crate::error::{invalid, status_from_store};
use crate::request::{MAX_ERROR, MAX_FINISH_STEPS, MAX_RESULT, MAX_STEP, fence};
use crate::service::ManagerService;

impl ManagerService {
    /// StartRun.
    pub(crate) async fn start(&self, req: pb::StartRunRequest) -> Result<pb::StartRunResponse, Status> {
        let input = StartInput {
            run_id: RunId::parse("run_id", &req.run_id).map_err(invalid)?,
            agent_id: AgentId::parse("agent_id", &req.agent_id).map_err(invalid)?,
            worker_id: WorkerId::parse("worker_id", &req.worker_id).map_err(invalid)?,
            worker_endpoint: crate::run_end::check_worker_endpoint(&req.worker_endpoint)
                .map_err(Status::invalid_argument)?,
            lease_ttl: self.lease_ttl("lease_ttl", req.lease_ttl.as_ref())?,
            budgets: self.budgets().clone(),
        };
        let outcome = self.store().start_run(&input).await.map_err(status_from_store)?;
        self.watchers().changed(&input.run_id);
        let mut resp = pb::StartRunResponse::default();
        let (decision, run) = match outcome {
            StartOutcome::Started { run, lease_token, mut spec, steps, approvals, cancelled } => {
                if run.replay_of.is_some() {
                    resp.replay = self.replay_of(&run.id, &mut spec).await?;
                }
                resp.lease_token = lease_token;
                resp.approvals = approvals.iter().map(convert::approval).collect();
                resp.namespace_governance = self.namespace_policy(&run.namespace).cloned();
                resp.namespace_budget = self.budgets().get(&run.namespace).and_then(|b| b.to_pb());
                resp.model_price = self.prices().price(&spec.model.model).map(|p| pb::ModelPrice {
                    input: p.input,
                    output: p.output,
                    cached_input: p.cached_input,
                });
                for other in &cancelled {
                    tracing::info!(run = %other.id, by = %run.id, "run cancelled by overlap policy cancel_other");
                    if let Some(p) = self.events() {
                        p.event(EventType::RunCancelled)
                            .agent(&other.agent_id)
                            .agent_name(other.agent_name.clone())
                            .namespace(&other.namespace)
                            .run(&other.id)
                            .data(json!({"reason": other.reason.clone().unwrap_or_default(), "by_run": run.id.to_string()}))
                            .emit();
                    }
                }
                self.deliver_cancellations(&cancelled);
                resp.spec = Some(spec.to_proto());
                resp.steps = steps.iter().map(convert::step).collect();
                tracing::debug!(run = %run.id, attempt = run.attempt, worker = %input.worker_id, "run started");
                (pb::StartDecision::Started, run)
            }
            StartOutcome::Skipped { run, reason } => {
                tracing::info!(run = %run.id, %reason, "run skipped");
                resp.reason = reason;
                (pb::StartDecision::Skipped, run)
            }
            StartOutcome::Deferred { run, retry_after, reason, due_ahead } => {
                if let Some(ahead) = due_ahead {
                    self.publish_waiting(&run.agent_id, &ahead, &format!("ahead-of-{}", run.id)).await;
                }
                resp.retry_after = Some(duration::to_pb(retry_after));
                resp.reason = reason;
                (pb::StartDecision::Deferred, run)
            }
            StartOutcome::AlreadyFinished { run } => (pb::StartDecision::AlreadyFinished, run),
            StartOutcome::LeasedElsewhere { run, retry_after } => {
                resp.retry_after = Some(duration::to_pb(retry_after));
                (pb::StartDecision::LeasedElsewhere, run)
            }
            StartOutcome::NotYet { run, retry_after } => {
                resp.retry_after = Some(duration::to_pb(retry_after));
                (pb::StartDecision::NotYet, run)
            }
            StartOutcome::AwaitingApproval { run } => (pb::StartDecision::AwaitingApproval, run),
            StartOutcome::AwaitingBudget { run } => {
                resp.reason = run.reason.clone().unwrap_or_default();
                (pb::StartDecision::AwaitingBudget, run)
            }
        };
        resp.decision = decision as i32;
        resp.run = Some(convert::run(&run));
        Ok(resp)
    }

    /// Checkpoint.
    pub(crate) async fn append_step(&self, req: pb::CheckpointRequest) -> Result<pb::CheckpointResponse, Status> {
        let id = RunId::parse("run_id", &req.run_id).map_err(invalid)?;
        let step = req.step.ok_or_else(|| Status::invalid_argument("step: is required"))?;
        let input = self.step_input("step", &step)?;
        let ttl = req.lease_ttl.as_ref().map(|d| self.lease_ttl("lease_ttl", Some(d))).transpose()?;
        let fence = fence(req.attempt, req.lease_token)?;
        let until = self.store().checkpoint(&id, fence, &input, ttl).await.map_err(status_from_store)?;
        self.watchers().changed(&id);
        Ok(pb::CheckpointResponse { lease_expires_at: until.map(time::to_pb) })
    }

    /// A step to checkpoint, checked (`field` names it in errors), with its ledger entry when it
    /// is an LLM call.
    fn step_input(&self, field: &str, step: &pb::RunStep) -> Result<StepInput, Status> {
        let kind = convert::step_kind(step)
            .ok_or_else(|| Status::invalid_argument(format!("{field}.payload: is required")))?;
        let payload = step.encode_to_vec();
        if payload.len() > MAX_STEP {
            return Err(Status::invalid_argument(format!("{field}: at most {} KiB encoded", MAX_STEP >> 10)));
        }
        let mut input = StepInput::new(step.seq, kind, payload);
        if let Some(pb::run_step::Payload::LlmResponse(r)) = &step.payload {
            input.call = Some(self.ledger_entry(r));
        }
        Ok(input)
    }

    /// FinishRun.
    pub(crate) async fn finish(&self, req: pb::FinishRunRequest) -> Result<pb::FinishRunResponse, Status> {
        let id = RunId::parse("run_id", &req.run_id).map_err(invalid)?;
        let outcome = RunOutcome::from_pb(req.outcome()).ok_or_else(|| {
            Status::invalid_argument("outcome: is required (SUCCEEDED, FAILED, TIMED_OUT, CANCELLED or RELEASED)")
        })?;
        if req.result.len() > MAX_RESULT || req.error.len() > MAX_ERROR {
            return Err(Status::invalid_argument(format!(
                "result: at most {} KiB, error: at most {} KiB",
                MAX_RESULT >> 10,
                MAX_ERROR >> 10
            )));
        }
        if req.steps.len() > MAX_FINISH_STEPS {
            return Err(Status::invalid_argument(format!("steps: at most {MAX_FINISH_STEPS}")));
        }
        let steps = (req.steps.iter().enumerate())
            .map(|(i, step)| self.step_input(&format!("steps[{i}]"), step))
            .collect::<Result<Vec<_>, _>>()?;
        let usage = req.usage.unwrap_or_default();
        let input = FinishInput {
            outcome,
            result: Some(req.result).filter(|s| !s.is_empty()),
            error: Some(req.error).filter(|s| !s.is_empty()),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            failure: if req.permanent { Failure::Permanent } else { Failure::Retryable },
        };
        let fence = fence(req.attempt, req.lease_token)?;
        let ended = self.store().finish_run_with_steps(&id, fence, &steps, &input).await;
        self.watchers().changed(&id);
        let Finished { run, retry_after, waiting } = ended.map_err(status_from_store)?;
        tracing::info!(run = %id, status = %run.status, retry_in = ?retry_after, "attempt finished");
        self.wake_waiting(&run.agent_id, &id, waiting);
        Ok(pb::FinishRunResponse { run: Some(convert::run(&run)), retry_after: convert::opt_duration(retry_after) })
    }
}
