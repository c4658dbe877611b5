//! Conversions between chat types and the `nightshift.v1` proto messages the agent loop
//! checkpoints (`LlmResponse`, `ToolCall`, `TokenUsage`, `ToolResult`).
//!
//! The round trip `ChatResponse → LlmResponse → ChatResponse` keeps everything but
//! [`ChatResponse::attempts`], which the proto does not carry (it comes back as 0).
use nightshift_core::duration;
use nightshift_proto::v1 as pb;

use crate::{ChatResponse, FinishReason, Message, ToolCall, Usage};

impl From<Usage> for pb::TokenUsage {
    fn from(u: Usage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cached_input_tokens: u.cached_input_tokens,
        }
    }
}

impl From<&pb::TokenUsage> for Usage {
    fn from(u: &pb::TokenUsage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cached_input_tokens: u.cached_input_tokens,
        }
    }
}

impl From<&ToolCall> for pb::ToolCall {
    fn from(c: &ToolCall) -> Self {
        Self { id: c.id.clone(), name: c.name.clone(), arguments_json: c.arguments.clone() }
    }
}

impl From<&pb::ToolCall> for ToolCall {
    fn from(c: &pb::ToolCall) -> Self {
        Self { id: c.id.clone(), name: c.name.clone(), arguments: c.arguments_json.clone() }
    }
}

impl From<&ChatResponse> for pb::LlmResponse {
    fn from(r: &ChatResponse) -> Self {
        Self {
            model: r.model.clone(),
            content: r.content.clone(),
            tool_calls: r.tool_calls.iter().map(Into::into).collect(),
            usage: Some(r.usage.into()),
            finish_reason: r.finish_reason.as_str().to_owned(),
            latency: Some(duration::to_pb(r.latency)),
            // The agent loop sets these on what it checkpoints.
            intents_recorded: false,
            prompt: None,
        }
    }
}

impl From<ChatResponse> for pb::LlmResponse {
    fn from(r: ChatResponse) -> Self {
        (&r).into()
    }
}

impl From<&pb::LlmResponse> for ChatResponse {
    /// Rebuilds a checkpointed response (e.g. to replay the history of a resumed run). A missing
    /// or negative latency becomes zero.
    fn from(r: &pb::LlmResponse) -> Self {
        Self {
            content: r.content.clone(),
            tool_calls: r.tool_calls.iter().map(Into::into).collect(),
            usage: r.usage.as_ref().map(Usage::from).unwrap_or_default(),
            finish_reason: FinishReason::parse(&r.finish_reason),
            model: r.model.clone(),
            latency: r.latency.as_ref().and_then(|d| duration::from_pb(d).ok()).unwrap_or_default(),
            attempts: 0,
        }
    }
}

impl From<&pb::LlmResponse> for Message {
    /// The assistant turn of a checkpointed response.
    fn from(r: &pb::LlmResponse) -> Self {
        Message::assistant(r.content.clone(), r.tool_calls.iter().map(Into::into).collect())
    }
}

impl From<&pb::ToolResult> for Message {
    /// The tool message of a checkpointed tool result.
    fn from(r: &pb::ToolResult) -> Self {
        Message::Tool {
            call_id: r.call_id.clone(),
            name: r.tool_name.clone(),
            content: r.output.clone(),
            is_error: r.is_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn round_trip() {
        let r = ChatResponse {
            content: "thinking".into(),
            tool_calls: vec![ToolCall::new("c1", "fs.read", r#"{"path":"/x"}"#)],
            usage: Usage { input_tokens: 12, output_tokens: 3, cached_input_tokens: 2 },
            finish_reason: FinishReason::ToolCalls,
            model: "m".into(),
            latency: Duration::from_millis(1234),
            attempts: 2,
        };
        let p = pb::LlmResponse::from(&r);
        assert_eq!(p.finish_reason, "tool_calls");
        assert_eq!(p.tool_calls[0].arguments_json, r#"{"path":"/x"}"#);
        assert_eq!(p.usage, Some(pb::TokenUsage { input_tokens: 12, output_tokens: 3, cached_input_tokens: 2 }));
        assert_eq!(p.latency, Some(prost_types::Duration { seconds: 1, nanos: 234_000_000 }));
        assert_eq!(ChatResponse::from(&p), ChatResponse { attempts: 0, ..r.clone() });
        assert_eq!(Message::from(&p), r.to_message());

        let other = pb::LlmResponse { finish_reason: "weird".into(), ..Default::default() };
        let back = ChatResponse::from(&other);
        assert_eq!(back.finish_reason, FinishReason::Other("weird".into()));
        assert_eq!(pb::LlmResponse::from(&back).finish_reason, "weird");

        let t = pb::ToolResult {
            call_id: "c1".into(),
            tool_name: "t".into(),
            output: "boom".into(),
            is_error: true,
            duration: None,
        };
        assert_eq!(Message::from(&t), Message::tool_error("c1", "t", "boom"));
    }
}
