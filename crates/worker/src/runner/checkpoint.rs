//! Where the agent loop's steps go: fenced checkpoints at the manager, plus the `LLM_CALL` /
//! `TOOL_CALL` events and token and tool-call metrics of each step.
use std::time::Duration;

use nightshift_core::{EventType, pb};
use serde_json::json;
use tonic::Code;

use super::{Manager, truncate};
use crate::agent::{LoopError, StepSink};
use crate::events::RunEvents;

/// Fenced checkpoints at the manager.
pub(super) struct Checkpointer {
    pub(super) manager: Manager,
    pub(super) run_id: String,
    pub(super) attempt: u32,
    pub(super) lease_token: String,
    pub(super) lease_ttl: Duration,
    pub(super) events: RunEvents,
}

#[async_trait::async_trait]
impl StepSink for Checkpointer {
    async fn checkpoint(&self, step: pb::RunStep) -> Result<(), LoopError> {
        let req = pb::CheckpointRequest {
            run_id: self.run_id.clone(),
            attempt: self.attempt,
            lease_token: self.lease_token.clone(),
            step: Some(step),
            lease_ttl: Some(nightshift_core::duration::to_pb(self.lease_ttl)),
        };
        let mut last = String::new();
        for attempt in 0..3u64 {
            match self.manager.clone().checkpoint(req.clone()).await {
                Ok(_) => return Ok(()),
                Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                    return Err(LoopError::Fenced(s.message().to_owned()));
                }
                Err(s) => {
                    last = s.to_string();
                    tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                }
            }
        }
        Err(LoopError::Checkpoint(last))
    }

    fn llm_called(&self, r: &pb::LlmResponse) {
        let usage = r.usage.unwrap_or_default();
        let calls: Vec<&str> = r.tool_calls.iter().map(|c| c.name.as_str()).collect();
        self.events.emit(
            EventType::LlmCall,
            json!({"model": r.model, "tool_calls": calls, "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                   "latency_ms": r.latency.as_ref().and_then(|d| nightshift_core::duration::from_pb(d).ok()).map(|d| d.as_millis() as u64)}),
        );
        metrics::counter!("nightshift_llm_tokens_total", "model" => r.model.clone(), "kind" => "input")
            .increment(usage.input_tokens);
        metrics::counter!("nightshift_llm_tokens_total", "model" => r.model.clone(), "kind" => "output")
            .increment(usage.output_tokens);
    }

    fn tool_called(&self, t: &pb::ToolResult) {
        self.events.emit(
            EventType::ToolCall,
            json!({"tool": t.tool_name, "is_error": t.is_error, "output": truncate(&t.output, 500)}),
        );
        let outcome = if t.is_error { "error" } else { "ok" };
        metrics::counter!("nightshift_tool_calls_total", "tool" => t.tool_name.clone(), "outcome" => outcome)
            .increment(1);
    }
}
