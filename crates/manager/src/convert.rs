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
        usage: Some(pb::TokenUsage {
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            ..Default::default()
        }),
        steps: Vec::new(),
        not_before: r.not_before.map(time::to_pb),
        replay_of: r.replay_of.as_ref().map(ToString::to_string).unwrap_or_default(),
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
        Some(pb::run_step::Payload::ToolStarted(_)) => Some("tool_started"),
        Some(pb::run_step::Payload::MemoryStored(_)) => Some("memory_stored"),
        None => None,
    }
}

pub(crate) fn opt_duration(d: Option<std::time::Duration>) -> Option<prost_types::Duration> {
    d.map(duration::to_pb)
}

const HOUR_MS: i64 = 3_600_000;

/// The start of the oldest of the last 24 UTC hours up to the one holding `now`.
pub(crate) fn last_day_start(now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    time::from_millis((time::to_millis(now).div_euclid(HOUR_MS) - 23) * HOUR_MS)
}

/// The last 24 UTC hours up to the one holding `now`, oldest first, each with its runs from
/// `hours` (the store leaves hours without runs out).
pub(crate) fn last_day(
    now: chrono::DateTime<chrono::Utc>,
    hours: &[nightshift_store::HourRuns],
) -> Vec<pb::HourOfRuns> {
    let current = time::to_millis(now).div_euclid(HOUR_MS);
    (current - 23..=current)
        .map(|h| {
            let start = time::from_millis(h * HOUR_MS);
            let found = hours.iter().find(|r| r.hour == start);
            pb::HourOfRuns {
                hour: Some(time::to_pb(start)),
                succeeded: found.map_or(0, |r| r.succeeded),
                failed: found.map_or(0, |r| r.failed),
                other: found.map_or(0, |r| r.other),
                mean_duration: opt_duration(found.and_then(|r| r.mean_duration)),
            }
        })
        .collect()
}

pub(crate) fn approval(a: &nightshift_store::ApprovalRecord) -> pb::Approval {
    pb::Approval {
        id: a.id.clone(),
        run_id: a.run_id.to_string(),
        agent_id: a.agent_id.to_string(),
        agent_name: a.agent_name.clone(),
        namespace: a.namespace.to_string(),
        call_id: a.call_id.clone(),
        tool_name: a.tool_name.clone(),
        arguments_json: a.arguments_json.clone(),
        call_hash: a.call_hash.clone(),
        effect: a.effect.to_pb() as i32,
        status: a.status.to_pb() as i32,
        requested_at: Some(time::to_pb(a.requested_at)),
        expires_at: Some(time::to_pb(a.expires_at)),
        on_timeout: a.on_timeout.to_pb() as i32,
        decided_at: a.decided_at.map(time::to_pb),
        decided_by: a.decided_by.clone().unwrap_or_default(),
        reason: a.reason.clone().unwrap_or_default(),
        approved_arguments_json: a.approved_arguments_json.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_day_has_24_hours_ending_with_the_current_one() {
        let now = time::from_millis(1_700_000_000_000); // 22:13:20 UTC
        let hour =
            |ms: i64| nightshift_store::HourRuns { hour: time::from_millis(ms), succeeded: 3, ..Default::default() };
        let day = last_day(now, &[hour(1_699_999_200_000), hour(1_699_920_000_000)]);
        assert_eq!(day.len(), 24);
        assert_eq!(day[23].hour, Some(time::to_pb(time::from_millis(1_699_999_200_000))), "the current hour last");
        assert_eq!(day[23].succeeded, 3);
        assert_eq!(day[0].hour, Some(time::to_pb(time::from_millis(1_699_916_400_000))));
        assert_eq!(day[1].succeeded, 3, "22 hours before the current one");
        assert_eq!(day.iter().map(|h| h.succeeded).sum::<u64>(), 6);
        assert_eq!(last_day_start(now), time::from_millis(1_699_916_400_000));
    }
}
