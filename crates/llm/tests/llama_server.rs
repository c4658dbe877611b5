//! Structured-output mode against a **real** small model: SmolLM2-135M on llama.cpp, the server
//! the suite installs (`scripts/llm.sh`, started by `nightshift_testkit::llama`). A missing
//! install fails the test loudly; it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::time::Duration;

use nightshift_core::{ModelConfig, ModelProvider, ToolCallMode};
use nightshift_llm::{ChatRequest, Message, ToolSpec, model_from_config};
use serde_json::json;

#[tokio::test]
async fn smollm_picks_a_tool_in_structured_mode() {
    let llama = tokio::task::spawn_blocking(nightshift_testkit::llama::LlamaServer::start).await.unwrap();
    let cfg = ModelConfig {
        provider: ModelProvider::OpenAi,
        model: "smollm2".into(),
        base_url: Some(llama.base_url.clone()),
        api_key: None,
        temperature: Some(0.0),
        max_tokens: Some(128),
        request_timeout: Duration::from_secs(120),
        tool_call_mode: ToolCallMode::Structured,
        sampling: Default::default(),
    };
    let model = model_from_config(&cfg).unwrap();
    let tools = vec![ToolSpec::new(
        "calculate_area",
        "Computes the area of a rectangle from its width and height.",
        json!({
            "type": "object",
            "properties": {"width": {"type": "number"}, "height": {"type": "number"}},
            "required": ["width", "height"]
        }),
    )];
    let mut req = ChatRequest::new(
        "You are a helpful assistant. Use the calculate_area tool for areas.",
        "What is the area of a rectangle 3 wide and 4 high? Call calculate_area with width 3 and height 4, \
         then give the final answer.",
    )
    .with_tools(tools);

    // The grammar makes every answer valid: either a call of the one tool or a final answer.
    let first = model.chat(&req).await.unwrap();
    assert!(first.usage.output_tokens > 0);
    assert!(!first.is_final(), "the model answered without the tool (temperature 0): {:?}", first.content);
    let call = &first.tool_calls[0];
    assert_eq!(call.name, "calculate_area");
    let args = call.arguments_value().unwrap();
    assert!(args["width"].is_number() && args["height"].is_number(), "{args}");

    req.messages.push(first.to_message());
    req.messages.push(Message::tool_result(call.id.clone(), "calculate_area", "12"));
    let second = model.chat(&req).await.unwrap();
    eprintln!("second answer: final={} content={:?} calls={:?}", second.is_final(), second.content, second.tool_calls);
    // What the grammar guarantees, whatever the tiny model chooses: a non-empty final answer, or
    // calls of the one tool with schema-valid arguments.
    if second.is_final() {
        assert!(!second.content.trim().is_empty(), "an empty final answer");
    } else {
        for call in &second.tool_calls {
            assert_eq!(call.name, "calculate_area");
            let args = call.arguments_value().unwrap();
            assert!(args["width"].is_number() && args["height"].is_number(), "{args}");
        }
    }
}
