//! The loop's own rules, with an in-process scripted model and tool: the exact step sequence of
//! a resumed turn must be deterministic, which a real model is not. The same paths run against
//! the scripted OpenAI-compatible server and real tools in `tests/e2e.rs`.
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use nightshift_llm::{ChatResponse, FinishReason};
use nightshift_tools::{Tool, ToolDef, ToolError, ToolSource, ToolsConfig};
use serde_json::Value;

use super::*;

/// A tool with a side effect (not idempotent) that counts its calls.
struct SendMail(Arc<AtomicUsize>);

#[async_trait::async_trait]
impl Tool for SendMail {
    fn definition(&self) -> ToolDef {
        ToolDef {
            name: "send_mail".into(),
            description: "Sends a mail".into(),
            input_schema: serde_json::json!({"type": "object"}),
            source: ToolSource::Local,
            hints: Default::default(),
        }
    }

    async fn call(&self, _args: Value) -> Result<String, ToolError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok("sent".into())
    }
}

/// Answers with the scripted responses, in order.
struct Scripted(Mutex<Vec<ChatResponse>>);

#[async_trait::async_trait]
impl ChatModel for Scripted {
    async fn chat(&self, _req: &ChatRequest) -> Result<ChatResponse, LlmError> {
        Ok(self.0.lock().unwrap().remove(0))
    }
}

/// Keeps the checkpoints in memory.
#[derive(Default)]
struct Steps(Mutex<Vec<pb::RunStep>>);

#[async_trait::async_trait]
impl StepSink for Steps {
    async fn checkpoint(&self, step: pb::RunStep) -> Result<(), LoopError> {
        self.0.lock().unwrap().push(step);
        Ok(())
    }
}

fn response(calls: &[&str], content: &str) -> ChatResponse {
    ChatResponse {
        content: content.into(),
        tool_calls: calls
            .iter()
            .map(|id| ToolCall { id: (*id).into(), name: "send_mail".into(), arguments: "{}".into() })
            .collect(),
        usage: Usage::default(),
        finish_reason: if calls.is_empty() { FinishReason::Stop } else { FinishReason::ToolCalls },
        model: "scripted".into(),
        latency: Duration::ZERO,
        attempts: 1,
    }
}

/// A loop of at most five turns on `tools`, answering with the scripted `responses`.
fn scripted_loop(tools: &ToolRegistry, responses: Vec<ChatResponse>) -> AgentLoop<'_> {
    AgentLoop {
        model: Arc::new(Scripted(Mutex::new(responses))),
        tools,
        system: "s".into(),
        query: "q".into(),
        recall: None,
        max_steps: 5,
        prior: Vec::new(),
        step_counter: Arc::default(),
        spent: Arc::default(),
        governance: Governance::default(),
        deltas: None,
    }
}

#[tokio::test]
async fn after_an_interrupted_call_later_calls_of_the_resumed_attempt_run() {
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tools = ToolRegistry::new(&Default::default(), &ToolsConfig::default()).await.unwrap();
    tools.register(Arc::new(SendMail(sent.clone())), Duration::from_secs(5)).unwrap();
    // The earlier attempt died after the model asked for call-1 and before its result was
    // checkpointed: call-1 may have sent the mail.
    let prior = vec![pb::RunStep {
        seq: 0,
        payload: Some(pb::run_step::Payload::LlmResponse(pb::LlmResponse::from(&response(&["call-1"], "")))),
        ..Default::default()
    }];
    let model = Scripted(Mutex::new(vec![response(&["call-2"], ""), response(&[], "done")]));
    let steps = Steps::default();
    let out = AgentLoop {
        model: Arc::new(model),
        tools: &tools,
        system: "s".into(),
        query: "q".into(),
        recall: None,
        max_steps: 5,
        prior,
        step_counter: Arc::default(),
        spent: Arc::default(),
        governance: Governance::default(),
        deltas: None,
    }
    .run(&steps)
    .await
    .unwrap();
    assert_eq!(out.answer, "done");
    assert_eq!(sent.load(Ordering::SeqCst), 1, "call-1 is not repeated, call-2 runs");
    let results: Vec<pb::ToolResult> = steps
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| match &s.payload {
            Some(pb::run_step::Payload::ToolResult(t)) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 2);
    assert!(results[0].is_error && results[0].output.contains("interrupted"), "{:?}", results[0]);
    assert!(!results[1].is_error && results[1].output == "sent", "{:?}", results[1]);
}

fn governed(yaml: &str) -> Governance {
    let spec = nightshift_core::AgentSpec::from_yaml(&format!(
        "name: a\nmodel: {{provider: openai, model: m}}\ntask: {{query: q}}\ngovernance: {{{yaml}}}\n"
    ))
    .unwrap();
    Governance::new(spec.governance, None, Vec::new())
}

fn call(id: &str, name: &str) -> ToolCall {
    ToolCall { id: id.into(), name: name.into(), arguments: "{}".into() }
}

#[tokio::test]
async fn a_denied_call_is_refused_and_an_allowed_one_runs_before_the_run_parks() {
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tools = ToolRegistry::new(&Default::default(), &ToolsConfig::default()).await.unwrap();
    tools.register(Arc::new(SendMail(sent.clone())), Duration::from_secs(5)).unwrap();
    let mut turn = response(&[], "");
    turn.tool_calls = vec![call("c1", "send_mail"), call("c2", "get_system_info")];
    turn.finish_reason = FinishReason::ToolCalls;
    let run = |governance: Governance, turn: ChatResponse| {
        let tools = &tools;
        async move {
            let steps = Steps::default();
            let out =
                AgentLoop { governance, ..scripted_loop(tools, vec![turn, response(&[], "done")]) }.run(&steps).await;
            (out, steps.0.into_inner().unwrap())
        }
    };
    // Denied by policy: not run; the model reads why (get_system_info is not registered here,
    // so the registry refuses it as an unknown tool, without running anything either).
    let (out, steps) = run(governed("tools: [{tools: [send_mail], action: deny}]"), turn.clone()).await;
    assert_eq!(out.unwrap().answer, "done");
    assert_eq!(sent.load(Ordering::SeqCst), 0);
    let told: Vec<String> = steps
        .iter()
        .filter_map(|s| match &s.payload {
            Some(pb::run_step::Payload::ToolResult(t)) if t.call_id == "c1" => Some(t.output.clone()),
            _ => None,
        })
        .collect();
    assert!(told[0].contains("denied by this agent's tool policy"), "{told:?}");

    // One call needs approval, the other is allowed: the allowed one's result is checkpointed
    // (here the registry's refusal of a tool it does not have), then the loop stops to park
    // on the first, which has not run.
    let policy = "tools: [{tools: [send_mail], action: require_approval}]";
    let (out, steps) = run(governed(policy), turn).await;
    let Err(LoopError::Park(waiting)) = out else { panic!("must park: {out:?}") };
    assert_eq!(waiting.iter().map(|(c, e)| (c.id.as_str(), *e)).collect::<Vec<_>>(), [("c1", Effect::Irreversible)]);
    assert_eq!(sent.load(Ordering::SeqCst), 0, "send_mail waits");
    let kinds: Vec<(&str, String)> = steps
        .iter()
        .map(|s| match &s.payload {
            Some(pb::run_step::Payload::LlmResponse(_)) => ("llm", String::new()),
            Some(pb::run_step::Payload::ToolResult(t)) => ("tool", t.call_id.clone()),
            _ => ("other", String::new()),
        })
        .collect();
    assert_eq!(kinds, [("llm", String::new()), ("tool", "c2".to_owned())]);
}

/// The final answer's step is handed back for the end, not checkpointed (the turns before it
/// are); one too large to go with the end is checkpointed as every other step is.
#[tokio::test]
async fn the_final_answer_goes_with_the_end_unless_it_is_too_large() {
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tools = ToolRegistry::new(&Default::default(), &ToolsConfig::default()).await.unwrap();
    tools.register(Arc::new(SendMail(sent.clone())), Duration::from_secs(5)).unwrap();
    let run = |answer: String| {
        let tools = &tools;
        async move {
            let steps = Steps::default();
            let out = scripted_loop(tools, vec![response(&["call-1"], ""), response(&[], &answer)])
                .run(&steps)
                .await
                .unwrap();
            (out, steps.0.into_inner().unwrap())
        }
    };
    let kind = |s: &pb::RunStep| match &s.payload {
        Some(pb::run_step::Payload::LlmResponse(r)) => format!("{}:llm:{}", s.seq, r.content.len()),
        Some(pb::run_step::Payload::ToolStarted(_)) => format!("{}:started", s.seq),
        Some(pb::run_step::Payload::ToolResult(_)) => format!("{}:tool", s.seq),
        _ => format!("{}:other", s.seq),
    };
    // send_mail is irreversible: marked as started before it runs.
    let (out, checkpointed) = run("done".into()).await;
    assert_eq!(checkpointed.iter().map(kind).collect::<Vec<_>>(), ["0:llm:0", "1:started", "2:tool"]);
    assert_eq!((out.answer.as_str(), out.next_seq), ("done", 4));
    assert_eq!(out.last.as_ref().map(kind).as_deref(), Some("3:llm:4"), "the answer's step, for the end");

    let large = "x".repeat(MAX_STEP_WITH_END);
    let (out, checkpointed) = run(large.clone()).await;
    let expected =
        ["0:llm:0".to_owned(), "1:started".to_owned(), "2:tool".to_owned(), format!("3:llm:{}", large.len())];
    assert_eq!(checkpointed.iter().map(kind).collect::<Vec<_>>(), expected);
    assert_eq!((out.answer.len(), out.next_seq, out.last), (large.len(), 4, None));
}

#[tokio::test]
async fn tokens_of_a_failed_attempt_are_counted() {
    let tools = ToolRegistry::new(&Default::default(), &ToolsConfig::default()).await.unwrap();
    let mut ask = response(&["call-1"], "");
    ask.usage = Usage::new(30, 7);
    // One turn asks for a tool the agent does not have (a tool error, not a loop error); the
    // second turn would be the answer, but max_steps = 1 stops the loop first.
    let model = Scripted(Mutex::new(vec![ask]));
    let spent = Arc::new(Spent::default());
    let err = AgentLoop {
        model: Arc::new(model),
        tools: &tools,
        system: "s".into(),
        query: "q".into(),
        recall: None,
        max_steps: 1,
        prior: Vec::new(),
        step_counter: Arc::default(),
        spent: spent.clone(),
        governance: Governance::default(),
        deltas: None,
    }
    .run(&Steps::default())
    .await
    .unwrap_err();
    assert!(matches!(err, LoopError::MaxSteps(1)), "{err}");
    assert_eq!(spent.usage(), Usage::new(30, 7));
}

#[test]
fn a_turn_that_repeats_earlier_calls_is_detected() {
    let call = |id: &str, args: &str| ToolCall::new(id, "format_data", args);
    let turn = |calls: Vec<ToolCall>| Message::assistant("", calls);
    let result = Message::tool_result("c", "format_data", "ok");
    // Same arguments in another key order and spacing are the same call.
    let history = vec![
        Message::user("go"),
        turn(vec![call("1", r#"{"a":1,"b":2}"#)]),
        result.clone(),
        turn(vec![call("2", r#"{ "b": 2, "a": 1 }"#)]),
    ];
    assert!(repeats_earlier_calls(&history));
    let mut fresh = history.clone();
    fresh[3] = turn(vec![call("2", r#"{"a":1,"b":3}"#)]);
    assert!(!repeats_earlier_calls(&fresh), "other arguments are a new call");
    assert!(!repeats_earlier_calls(&history[..2]), "a first call repeats nothing");
    assert!(!repeats_earlier_calls(&[Message::user("go")]));
}
