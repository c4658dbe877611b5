//! Registry behaviour independent of the individual tools: unknown tools, timeouts, panics,
//! output limits, registration rules.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nightshift_core::ToolsSpec;
use nightshift_tools::{RegistryError, Tool, ToolDef, ToolError, ToolOutput, ToolRegistry, ToolSource, ToolsConfig};
use serde_json::{Value, json};

/// A test tool: counts its calls, sleeps, panics or echoes on request.
struct Probe {
    name: &'static str,
    calls: Arc<AtomicUsize>,
    schema: Value,
}

impl Probe {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            calls: Arc::default(),
            schema: json!({
                "type": "object",
                "properties": {
                    "mode": {"type": "string", "enum": ["echo", "sleep", "panic", "fail", "long"]},
                    "text": {"type": "string"},
                },
                "additionalProperties": false,
            }),
        }
    }
}

#[async_trait]
impl Tool for Probe {
    fn definition(&self) -> ToolDef {
        ToolDef {
            name: self.name.into(),
            description: "test probe".into(),
            input_schema: self.schema.clone(),
            source: ToolSource::Local,
            hints: Default::default(),
        }
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match args["mode"].as_str().unwrap_or("echo") {
            "sleep" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok("woke".into())
            }
            "panic" => panic!("probe panicked on purpose"),
            "fail" => Err(ToolError::Failed("the probe failed".into())),
            "long" => Ok("é".repeat(100)),
            _ => Ok(args["text"].as_str().unwrap_or("").to_owned()),
        }
    }
}

async fn empty(config: &ToolsConfig) -> ToolRegistry {
    ToolRegistry::new(&ToolsSpec::default(), config).await.unwrap()
}

#[tokio::test]
async fn unknown_tools_and_bad_json_are_tool_errors() {
    let mut reg = empty(&ToolsConfig::default()).await;
    reg.register(Arc::new(Probe::new("probe")), Duration::from_secs(5)).unwrap();
    let out = reg.call("nope", "{}").await;
    assert!(out.is_error);
    assert!(out.content.contains("unknown tool 'nope'") && out.content.contains("probe"), "{}", out.content);
    let out = reg.call("probe", "{\"mode\": ").await;
    assert!(out.is_error && out.content.contains("not valid JSON"), "{}", out.content);
    assert_eq!(reg.call("probe", "  ").await, ToolOutput::ok(""));
    assert_eq!(reg.call("probe", r#"{"text": "hi"}"#).await, ToolOutput::ok("hi"));
    assert_eq!(reg.call_value("probe", Value::Null).await, ToolOutput::ok(""));
    assert!(matches!(reg.try_call("nope", "{}").await, Err(ToolError::UnknownTool { .. })));
}

#[tokio::test]
async fn invalid_arguments_never_reach_the_tool() {
    let probe = Probe::new("probe");
    let calls = probe.calls.clone();
    let mut reg = empty(&ToolsConfig::default()).await;
    reg.register(Arc::new(probe), Duration::from_secs(5)).unwrap();
    for bad in [json!({"mode": "explode"}), json!({"text": 5}), json!({"other": 1}), json!([1]), json!("x")] {
        let out = reg.call_value("probe", bad.clone()).await;
        assert!(out.is_error && out.content.starts_with("invalid arguments"), "{bad}: {}", out.content);
        assert!(matches!(reg.try_call_value("probe", bad).await, Err(ToolError::InvalidArguments(_))));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn timeouts_panics_and_failures_become_tool_errors() {
    let mut reg = empty(&ToolsConfig::default()).await;
    reg.register(Arc::new(Probe::new("probe")), Duration::from_millis(200)).unwrap();
    let started = Instant::now();
    let out = reg.call("probe", r#"{"mode": "sleep"}"#).await;
    assert!(out.is_error && out.content.contains("timed out after 200ms"), "{}", out.content);
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = reg.try_call("probe", r#"{"mode": "sleep"}"#).await.unwrap_err();
    assert!(err.is_transient());

    let out = reg.call("probe", r#"{"mode": "panic"}"#).await;
    assert!(out.is_error && out.content.contains("crashed"), "{}", out.content);
    assert_eq!(reg.call("probe", r#"{"mode": "fail"}"#).await, ToolOutput::error("the probe failed"));
    // The registry still works after all that.
    assert_eq!(reg.call("probe", r#"{"text": "still here"}"#).await, ToolOutput::ok("still here"));
}

#[tokio::test]
async fn long_outputs_are_cut_on_a_char_boundary() {
    let config = ToolsConfig { max_output_bytes: 51, ..Default::default() };
    let mut reg = empty(&config).await;
    reg.register_default(Arc::new(Probe::new("probe"))).unwrap();
    let out = reg.call("probe", r#"{"mode": "long"}"#).await;
    assert!(!out.is_error);
    assert!(out.content.starts_with(&"é".repeat(25)), "{}", out.content);
    assert!(out.content.ends_with("[output truncated: 50 of 200 bytes shown]"), "{}", out.content);
    // try_call leaves the output whole.
    assert_eq!(reg.try_call("probe", r#"{"mode": "long"}"#).await.unwrap().len(), 200);
}

#[tokio::test]
async fn registration_rules() {
    let mut reg = empty(&ToolsConfig::default()).await;
    reg.register_default(Arc::new(Probe::new("probe"))).unwrap();
    assert!(
        matches!(reg.register_default(Arc::new(Probe::new("probe"))), Err(RegistryError::DuplicateTool(n)) if n == "probe")
    );
    assert!(matches!(
        reg.register_default(Arc::new(Probe::new("server.tool"))),
        Err(RegistryError::InvalidConfig { .. })
    ));
    let mut bad = Probe::new("bad_schema");
    bad.schema = json!({"type": "no-such-type"});
    assert!(matches!(reg.register_default(Arc::new(bad)), Err(RegistryError::InvalidSchema { .. })));
    assert_eq!(reg.definitions().len(), 1);
    assert_eq!(reg.definition("probe").unwrap().hints.effect(), nightshift_core::governance::Effect::Irreversible);

    let spec = ToolsSpec { local: vec!["rm_rf".into()], mcp: vec![] };
    let err = ToolRegistry::new(&spec, &ToolsConfig::default()).await.unwrap_err();
    assert!(matches!(err, RegistryError::UnknownLocalTool { .. }), "{err}");
    assert!(err.to_string().contains("calculate_area"), "{err}");
}

#[tokio::test]
async fn concurrent_calls_run_in_parallel() {
    let mut reg = empty(&ToolsConfig::default()).await;
    reg.register(Arc::new(Probe::new("probe")), Duration::from_millis(300)).unwrap();
    let reg = Arc::new(reg);
    let started = Instant::now();
    let calls = (0..8).map(|_| {
        let reg = reg.clone();
        tokio::spawn(async move { reg.call("probe", r#"{"mode": "sleep"}"#).await })
    });
    for c in futures::future::join_all(calls).await {
        assert!(c.unwrap().content.contains("timed out"));
    }
    // Eight 300 ms timeouts in parallel, not in sequence.
    assert!(started.elapsed() < Duration::from_millis(2000), "{:?}", started.elapsed());
}
