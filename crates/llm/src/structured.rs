//! Structured-output mode: tool calls for models without native tool calling.
//!
//! The model answers with exactly one JSON object, either `{"tool": NAME, "arguments": {...}}`
//! to call a tool or `{"final": TEXT}` to finish. The OpenAI-compatible provider sends the
//! [`response_schema`] as `response_format` (llama.cpp compiles it into a grammar, so even a tiny
//! model cannot produce anything else); the prompt additionally explains the protocol and lists
//! the tools, since the model cannot see a schema it is merely constrained by. The conversation
//! history is rendered as plain text turns in the same protocol, because chat templates of such
//! models often do not support `tool` messages.
use serde::Serialize;
use serde_json::{Value, json};

use crate::{ChatRequest, ChatResponse, FinishReason, LlmError, Message, ToolCall, ToolSpec};

/// The `json_schema.name` sent with `response_format`.
pub const SCHEMA_NAME: &str = "agent_step";

/// A parsed structured answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StructuredAnswer {
    /// `{"tool", "arguments"}`.
    Tool {
        /// One of the request's tool names.
        name: String,
        /// The arguments object.
        arguments: Value,
    },
    /// `{"final"}`.
    Final(String),
}

/// The JSON schema of one answer: a `oneOf` with one `{tool, arguments}` branch per tool (so the
/// arguments are constrained by that tool's own schema) and the `{final}` branch.
///
/// A typed value rather than a [`Value`] because key order matters: llama.cpp turns `properties`
/// into a grammar in the order given, and the model must write `tool` before `arguments` (choosing
/// the tool first), while a `serde_json::Map` would sort `arguments` first.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ResponseSchema {
    /// Tools are available: one of the branches.
    OneOf {
        /// Tool branches, then the final branch.
        #[serde(rename = "oneOf")]
        one_of: Vec<SchemaBranch>,
    },
    /// No tools: only `{final}`.
    FinalOnly(SchemaBranch),
}

/// One object shape of a [`ResponseSchema`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchemaBranch {
    #[serde(rename = "type")]
    ty: &'static str,
    properties: BranchProperties,
    required: &'static [&'static str],
    #[serde(rename = "additionalProperties")]
    additional_properties: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
enum BranchProperties {
    Tool { tool: Value, arguments: Value },
    Final { r#final: Value },
}

impl ResponseSchema {
    /// As a JSON value (key order is lost; for inspection).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Builds the [`ResponseSchema`] for `tools`.
pub fn response_schema(tools: &[ToolSpec]) -> ResponseSchema {
    let final_branch = SchemaBranch {
        ty: "object",
        // An empty final answer says nothing: the grammar asks for at least one character.
        properties: BranchProperties::Final { r#final: json!({"type": "string", "minLength": 1}) },
        required: &["final"],
        additional_properties: false,
    };
    if tools.is_empty() {
        return ResponseSchema::FinalOnly(final_branch);
    }
    let mut one_of: Vec<SchemaBranch> = tools
        .iter()
        .map(|t| SchemaBranch {
            ty: "object",
            properties: BranchProperties::Tool {
                tool: json!({"type": "string", "const": t.name}),
                arguments: strict_arguments(&t.parameters_or_object()),
            },
            required: &["tool", "arguments"],
            additional_properties: false,
        })
        .collect();
    one_of.push(final_branch);
    ResponseSchema::OneOf { one_of }
}

/// The strict form of a tool's arguments schema for the grammar: every top-level property is
/// required and an optional one may be `null` instead (the form OpenAI's strict structured outputs
/// use). A grammar from the plain schema lets a small model stop after the required keys — SmolLM2
/// calls `calculate_area` with only `{"shape": "rectangle"}` — while this form makes it write a
/// value (or an explicit `null`) for each argument. [`parse_answer`] drops the `null`s of optional
/// arguments again, so the tool sees the call its own schema describes.
pub fn strict_arguments(schema: &Value) -> Value {
    let Some(props) = schema.get("properties").and_then(Value::as_object).filter(|p| !p.is_empty()) else {
        return schema.clone();
    };
    let required = required_names(schema);
    let mut strict = schema.clone();
    let properties: serde_json::Map<String, Value> = props
        .iter()
        .map(|(k, v)| {
            let v = if required.contains(&k.as_str()) { v.clone() } else { json!({"anyOf": [v, {"type": "null"}]}) };
            (k.clone(), v)
        })
        .collect();
    strict["properties"] = Value::Object(properties);
    strict["required"] = Value::Array(props.keys().map(|k| Value::String(k.clone())).collect());
    strict["additionalProperties"] = Value::Bool(false);
    strict
}

fn required_names(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Removes `null` values of optional arguments (see [`strict_arguments`]).
fn drop_null_optionals(arguments: &mut Value, schema: &Value) {
    let required = required_names(schema);
    if let Value::Object(args) = arguments {
        args.retain(|k, v| !v.is_null() || required.contains(&k.as_str()));
    }
}

/// `{"tool", "arguments"}` in the order the schema prescribes (for the rendered history).
#[derive(Serialize)]
struct ToolAnswerText<'a> {
    tool: &'a str,
    arguments: &'a Value,
}

/// The protocol explanation appended to the system prompt.
pub fn instructions(tools: &[ToolSpec]) -> String {
    let mut s = String::from(
        "Answer with exactly one JSON object and nothing else.\n\
         To call a tool: {\"tool\": \"<tool name>\", \"arguments\": {<arguments>}}\n\
         To give the final answer: {\"final\": \"<answer>\"}\n",
    );
    if tools.is_empty() {
        s.push_str("No tools are available: give the final answer.\n");
        return s;
    }
    s.push_str("Call one tool at a time; its result comes in the next message. Tools:\n");
    for t in tools {
        let schema = serde_json::to_string(&t.parameters_or_object()).unwrap_or_default();
        s.push_str(&format!("- {}: {} Arguments schema: {schema}\n", t.name, t.description.trim()));
    }
    s
}

/// The system prompt of a structured request: the caller's prompt plus [`instructions`].
pub(crate) fn system_prompt(system: Option<&str>, tools: &[ToolSpec]) -> String {
    match system.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => format!("{s}\n\n{}", instructions(tools)),
        None => instructions(tools),
    }
}

/// What a final-only turn adds to the conversation (the schema allows only `{"final"}` then).
pub(crate) const FINAL_ONLY_NOTE: &str = "No more tool calls: give the final answer now, as {\"final\": \"<answer>\"}.";

/// A structured request as text: the system prompt and the turns.
///
/// The system prompt lists every declared tool even on a final-only turn, and the turn says
/// that no more calls are allowed instead: the prompt of a run's last call then extends the
/// previous one, so a server's (or the embedded engine's) prompt cache reads only what was
/// added, instead of the whole conversation again.
pub(crate) fn render(req: &ChatRequest) -> (String, Vec<TextTurn>) {
    let system = system_prompt(req.system.as_deref(), &req.tools);
    let mut turns = render_history(&req.messages);
    if req.final_only {
        match turns.last_mut() {
            Some(TextTurn::User(last)) => {
                last.push_str("\n\n");
                last.push_str(FINAL_ONLY_NOTE);
            }
            _ => turns.push(TextTurn::User(FINAL_ONLY_NOTE.to_owned())),
        }
    }
    (system, turns)
}

/// A text-only turn of the rendered history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TextTurn {
    User(String),
    Assistant(String),
}

/// The history as alternating-friendly text turns: assistant tool calls become the JSON the model
/// would have produced, plain assistant text becomes `{"final"}`, tool results become user turns.
pub(crate) fn render_history(messages: &[Message]) -> Vec<TextTurn> {
    messages
        .iter()
        .map(|m| match m {
            Message::User { content } => TextTurn::User(content.clone()),
            Message::Assistant { content, tool_calls } if tool_calls.is_empty() => {
                TextTurn::Assistant(json!({ "final": content }).to_string())
            }
            Message::Assistant { tool_calls, .. } => TextTurn::Assistant(
                tool_calls
                    .iter()
                    .map(|c| {
                        // A malformed argument string is kept as a string so the history stays truthful.
                        let args = c.arguments_value().unwrap_or_else(|_| Value::String(c.arguments.clone()));
                        serde_json::to_string(&ToolAnswerText { tool: &c.name, arguments: &args }).unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Message::Tool { name, content, is_error: false, .. } => {
                TextTurn::User(format!("Result of tool {name}:\n{content}"))
            }
            Message::Tool { name, content, is_error: true, .. } => {
                TextTurn::User(format!("Tool {name} failed:\n{content}"))
            }
        })
        .collect()
}

/// Parses a structured answer. Anything that is not exactly one of the two shapes, or names a
/// tool that was not offered, is [`LlmError::InvalidResponse`] (the loop may sample again).
pub fn parse_answer(text: &str, tools: &[ToolSpec]) -> Result<StructuredAnswer, LlmError> {
    let json_text = strip_code_fence(text.trim());
    let value: Value = serde_json::from_str(json_text).map_err(|e| {
        LlmError::InvalidResponse(format!(
            "structured answer is not JSON ({e}): {}",
            crate::http::excerpt(text.as_bytes(), None)
        ))
    })?;
    let Value::Object(mut obj) = value else {
        return Err(LlmError::InvalidResponse("structured answer is not a JSON object".into()));
    };
    match (obj.remove("tool"), obj.remove("final")) {
        (Some(Value::String(name)), None) => {
            let Some(tool) = tools.iter().find(|t| t.name == name) else {
                return Err(LlmError::InvalidResponse(format!("structured answer calls unknown tool '{name}'")));
            };
            let mut arguments = match obj.remove("arguments") {
                // Lenient for tools without parameters: grammar-less models often omit it.
                None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
                Some(v @ Value::Object(_)) => v,
                Some(_) => {
                    return Err(LlmError::InvalidResponse(format!("arguments of tool '{name}' are not a JSON object")));
                }
            };
            drop_null_optionals(&mut arguments, &tool.parameters);
            Ok(StructuredAnswer::Tool { name, arguments })
        }
        (None, Some(Value::String(answer))) if answer.trim().is_empty() => {
            Err(LlmError::InvalidResponse("the final answer of the structured answer is empty".into()))
        }
        (None, Some(Value::String(answer))) => Ok(StructuredAnswer::Final(answer)),
        (Some(_), Some(_)) => Err(LlmError::InvalidResponse("structured answer has both 'tool' and 'final'".into())),
        (Some(_), None) => Err(LlmError::InvalidResponse("'tool' of the structured answer is not a string".into())),
        (None, Some(_)) => Err(LlmError::InvalidResponse("'final' of the structured answer is not a string".into())),
        (None, None) => Err(LlmError::InvalidResponse("structured answer has neither 'tool' nor 'final'".into())),
    }
}

impl StructuredAnswer {
    /// As response content and tool calls (a tool call gets a generated id, since there is none).
    pub(crate) fn into_parts(self) -> (String, Vec<ToolCall>) {
        match self {
            Self::Final(text) => (text, Vec::new()),
            Self::Tool { name, arguments } => {
                (String::new(), vec![ToolCall::new(crate::types::generated_call_id(), name, arguments.to_string())])
            }
        }
    }
}

/// Turns the text answer of a structured call into a final answer or one tool call.
pub(crate) fn into_response(mut resp: ChatResponse, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
    let answer = parse_answer(&resp.content, &req.tools).map_err(|e| match (&resp.finish_reason, e) {
        (FinishReason::Length, LlmError::InvalidResponse(m)) => {
            LlmError::InvalidResponse(format!("{m} (the answer was cut off by the token limit)"))
        }
        (_, e) => e,
    })?;
    let (content, tool_calls) = answer.into_parts();
    resp.finish_reason = if tool_calls.is_empty() { FinishReason::Stop } else { FinishReason::ToolCalls };
    resp.content = content;
    resp.tool_calls = tool_calls;
    Ok(resp)
}

/// Models without a grammar like to wrap JSON in a Markdown code fence.
fn strip_code_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else { return text };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<ToolSpec> {
        vec![
            ToolSpec::new(
                "calculate_area",
                "Area of a shape.",
                json!({"type": "object", "properties": {"shape": {"type": "string"}}, "required": ["shape"]}),
            ),
            ToolSpec::new("get_system_info", "Host facts.", Value::Null),
        ]
    }

    #[test]
    fn strict_arguments_require_every_key_and_let_optionals_be_null() {
        let plain = json!({"type": "object", "properties": {
            "shape": {"type": "string"}, "width": {"type": "number"}}, "required": ["shape"]});
        let strict = strict_arguments(&plain);
        assert_eq!(strict["required"], json!(["shape", "width"]));
        assert_eq!(strict["properties"]["shape"], json!({"type": "string"}));
        assert_eq!(strict["properties"]["width"], json!({"anyOf": [{"type": "number"}, {"type": "null"}]}));
        assert_eq!(strict["additionalProperties"], json!(false));
        let empty = json!({"type": "object", "properties": {}});
        assert_eq!(strict_arguments(&empty), empty);

        // The nulls of optional arguments are dropped again; a null required one is kept (and
        // left to the tool's validation to refuse).
        let tools = vec![ToolSpec::new("area", "Area.", plain)];
        let parsed = parse_answer(r#"{"tool": "area", "arguments": {"shape": null, "width": null}}"#, &tools).unwrap();
        assert_eq!(parsed, StructuredAnswer::Tool { name: "area".into(), arguments: json!({"shape": null}) });
    }

    #[test]
    fn schema_has_one_branch_per_tool_plus_final() {
        let schema = response_schema(&tools());
        let s = schema.to_value();
        let branches = s["oneOf"].as_array().unwrap();
        assert_eq!(branches.len(), 3);
        assert_eq!(branches[0]["properties"]["tool"]["const"], "calculate_area");
        assert_eq!(branches[0]["properties"]["arguments"]["required"], json!(["shape"]));
        assert_eq!(branches[0]["properties"]["arguments"]["additionalProperties"], json!(false));
        assert_eq!(branches[1]["properties"]["arguments"], json!({"type": "object", "properties": {}}));
        assert_eq!(branches[2]["required"], json!(["final"]));
        assert_eq!(branches[2]["properties"]["final"]["minLength"], json!(1));
        assert_eq!(response_schema(&[]).to_value()["required"], json!(["final"]));
        // `tool` precedes `arguments` in the serialized text (grammar order).
        let text = serde_json::to_string(&schema).unwrap();
        assert!(text.find("\"tool\"").unwrap() < text.find("\"arguments\"").unwrap(), "{text}");
    }

    #[test]
    fn valid_answers_parse() {
        let t = tools();
        assert_eq!(
            parse_answer(r#" {"tool": "calculate_area", "arguments": {"shape": "circle"}} "#, &t).unwrap(),
            StructuredAnswer::Tool { name: "calculate_area".into(), arguments: json!({"shape": "circle"}) }
        );
        assert_eq!(
            parse_answer(r#"{"tool": "get_system_info"}"#, &t).unwrap(),
            StructuredAnswer::Tool { name: "get_system_info".into(), arguments: json!({}) }
        );
        assert_eq!(parse_answer(r#"{"final": "42"}"#, &t).unwrap(), StructuredAnswer::Final("42".into()));
        assert_eq!(
            parse_answer("```json\n{\"final\": \"fenced\"}\n```", &t).unwrap(),
            StructuredAnswer::Final("fenced".into())
        );
    }

    #[test]
    fn malformed_answers_are_invalid_responses() {
        let t = tools();
        for bad in [
            "",
            "The area is 42.",
            r#"{"final": "cut off"#,
            r#"["final"]"#,
            r#"{"answer": "x"}"#,
            r#"{"final": 42}"#,
            r#"{"final": " "}"#,
            r#"{"tool": 1}"#,
            r#"{"tool": "rm_rf", "arguments": {}}"#,
            r#"{"tool": "calculate_area", "arguments": "shape=circle"}"#,
            r#"{"tool": "calculate_area", "arguments": {}, "final": "both"}"#,
        ] {
            let e = parse_answer(bad, &t).unwrap_err();
            assert!(matches!(e, LlmError::InvalidResponse(_)), "{bad}: {e:?}");
            assert!(e.is_retryable());
        }
    }

    #[test]
    fn history_is_rendered_in_the_protocol() {
        let turns = render_history(&[
            Message::user("area?"),
            Message::assistant("", vec![ToolCall::new("c1", "calculate_area", r#"{"shape":"circle"}"#)]),
            Message::tool_result("c1", "calculate_area", "3.14"),
            Message::tool_error("c2", "get_system_info", "interrupted"),
            Message::assistant("done", vec![]),
        ]);
        assert_eq!(
            turns,
            [
                TextTurn::User("area?".into()),
                TextTurn::Assistant(r#"{"tool":"calculate_area","arguments":{"shape":"circle"}}"#.into()),
                TextTurn::User("Result of tool calculate_area:\n3.14".into()),
                TextTurn::User("Tool get_system_info failed:\ninterrupted".into()),
                TextTurn::Assistant(r#"{"final":"done"}"#.into()),
            ]
        );
        let sys = system_prompt(Some("Be brief."), &tools());
        assert!(sys.starts_with("Be brief.\n\n"));
        assert!(sys.contains("- calculate_area: Area of a shape. Arguments schema: {"));
    }
}
