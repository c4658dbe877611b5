//! Store records → proto messages.
use nightshift_core::{RunStatus, duration, pb, time};
use nightshift_store::{AgentRecord, RunRecord, StepRecord};
use prost::Message;

pub(crate) fn agent(a: &AgentRecord) -> pb::Agent {
    pb::Agent {
        id: a.id.to_string(),
        version: a.version,
        state: a.state.to_pb() as i32,
        spec: Some(a.spec.to_proto()),
        created_at: Some(time::to_pb(a.created_at)),
        updated_at: Some(time::to_pb(a.updated_at)),
    }
}

pub(crate) fn run(r: &RunRecord) -> pb::Run {
    pb::Run {
        id: r.id.to_string(),
        agent_id: r.agent_id.to_string(),
        agent_name: r.agent_name.clone(),
        namespace: r.namespace.to_string(),
        agent_version: r.agent_version,
        status: r.status.to_pb() as i32,
        trigger: r.trigger.to_pb() as i32,
        scheduled_for: r.scheduled_for.map(time::to_pb),
        query_override: r.query_override.clone(),
        attempt: r.attempt,
        retries: r.retries,
        worker_id: r.worker_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        lease_expires_at: (r.status == RunStatus::Running).then_some(r.lease_expires_at).flatten().map(time::to_pb),
        created_at: Some(time::to_pb(r.created_at)),
        started_at: r.started_at.map(time::to_pb),
        finished_at: r.finished_at.map(time::to_pb),
        result: r.result.clone().unwrap_or_default(),
        error: r.error.clone().unwrap_or_default(),
        reason: r.reason.clone().unwrap_or_default(),
        usage: Some(pb::TokenUsage { input_tokens: r.input_tokens, output_tokens: r.output_tokens }),
        steps: Vec::new(),
        not_before: r.not_before.map(time::to_pb),
    }
}

/// Decodes a stored step; the stored seq/attempt/time are authoritative.
pub(crate) fn step(s: &StepRecord) -> pb::RunStep {
    let mut step = pb::RunStep::decode(s.payload.as_slice()).unwrap_or_else(|e| {
        tracing::error!(seq = s.seq, error = %e, "undecodable run step");
        pb::RunStep::default()
    });
    step.seq = s.seq;
    step.attempt = s.attempt;
    step.created_at = Some(time::to_pb(s.created_at));
    step
}

/// The storage kind of a step payload.
pub(crate) fn step_kind(step: &pb::RunStep) -> Option<&'static str> {
    match step.payload {
        Some(pb::run_step::Payload::LlmResponse(_)) => Some("llm_response"),
        Some(pb::run_step::Payload::ToolResult(_)) => Some("tool_result"),
        None => None,
    }
}

pub(crate) fn opt_duration(d: Option<std::time::Duration>) -> Option<prost_types::Duration> {
    d.map(duration::to_pb)
}
