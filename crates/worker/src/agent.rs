//! The agent loop: system instruction + task → LLM → tool calls (in parallel) → … → final
//! answer, checkpointing every LLM response and tool result, and resuming from earlier
//! checkpoints so that completed LLM calls are not paid again and completed tool calls are not
//! run again. Each call goes through the tool policy first (`crate::governed`): it runs, is
//! refused, or parks the run until a person approves it; an irreversible call is marked as
//! started before it runs, so that a crash never repeats it.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use nightshift_core::governance::Effect;
use nightshift_core::lifecycle::Failure;
use nightshift_core::pb;
use nightshift_llm::{ChatModel, ChatRequest, LlmError, Message, ToolCall, ToolSpec, Usage};
use nightshift_tools::{ToolOutput, ToolRegistry};

use crate::governed::{self, Governance, Plan, Resumed};

/// Retries of an LLM answer the runtime could not understand (malformed structured output).
const INVALID_RESPONSE_RETRIES: u32 = 2;

/// Where checkpoints go (the manager's fenced `Checkpoint`), and where the loop reports progress.
#[async_trait::async_trait]
pub trait StepSink: Send + Sync {
    /// Durably appends `step`. An error stops the loop (e.g. the lease was lost).
    async fn checkpoint(&self, step: pb::RunStep) -> Result<(), LoopError>;
    /// Called after each LLM call (for events and metrics); must not fail.
    fn llm_called(&self, _response: &pb::LlmResponse) {}
    /// Called after each tool call; must not fail.
    fn tool_called(&self, _result: &pb::ToolResult) {}
}

/// Why the loop stopped without a final answer.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The model call failed.
    #[error("LLM call failed: {0}")]
    Llm(#[from] LlmError),
    /// `policy.max_steps` LLM turns without a final answer.
    #[error("no final answer after {0} LLM turns (policy.max_steps)")]
    MaxSteps(u32),
    /// A checkpoint was refused: the run was cancelled or taken over (stale fencing token).
    #[error("run lost: {0}")]
    Fenced(String),
    /// A checkpoint could not be written (manager unreachable).
    #[error("checkpoint failed: {0}")]
    Checkpoint(String),
    /// Calls that need a person's approval, not decided yet: the run parks (every other call
    /// of the turn has its result checkpointed).
    #[error("waiting for approval of {} tool call(s)", .0.len())]
    Park(Vec<(ToolCall, Effect)>),
    /// The next LLM call would take the run past its per-run budget.
    #[error("{0}")]
    Budget(String),
}

impl LoopError {
    /// Whether retrying the run cannot help: the model's configuration or credentials are wrong,
    /// or the provider refused the request itself (400/404). Rate limits, outages, timeouts and a
    /// model that did not conclude may pass, so those stay retryable.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Llm(e) if !e.is_retryable() => Failure::Permanent,
            // Another attempt would spend the same budget again.
            Self::Budget(_) => Failure::Permanent,
            _ => Failure::Retryable,
        }
    }
}

/// The final answer. The tokens of the attempt are in its [`Spent`] meter, whatever the outcome
/// (resumed calls are not repeated or counted).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopOutcome {
    /// Final answer text.
    pub answer: String,
    /// The seq a step after the answer takes.
    pub next_seq: u32,
}

/// The tokens an attempt has spent so far. Shared with the attempt, which reads it however the
/// loop ends: a failure, or a timeout that drops the loop mid-turn, still records what was paid.
#[derive(Debug, Default)]
pub struct Spent {
    input: AtomicU64,
    output: AtomicU64,
}

impl Spent {
    fn add(&self, usage: &Usage) {
        self.input.fetch_add(usage.input_tokens, Ordering::Relaxed);
        self.output.fetch_add(usage.output_tokens, Ordering::Relaxed);
    }

    /// The tokens of every LLM call this attempt made so far.
    pub fn usage(&self) -> Usage {
        Usage::new(self.input.load(Ordering::Relaxed), self.output.load(Ordering::Relaxed))
    }
}

/// Inputs of one attempt.
pub struct AgentLoop<'a> {
    /// The model.
    pub model: Arc<dyn ChatModel>,
    /// The agent's tools.
    pub tools: &'a ToolRegistry,
    /// System prompt (instruction + recalled memory).
    pub system: String,
    /// The task of this run.
    pub query: String,
    /// What memory was recalled into `system` (None: the worker has no memory service).
    pub recall: Option<pb::MemoryRecall>,
    /// `policy.max_steps`.
    pub max_steps: u32,
    /// Steps checkpointed by earlier attempts.
    pub prior: Vec<pb::RunStep>,
    /// LLM turns completed (for status).
    pub step_counter: Arc<AtomicU32>,
    /// Tokens spent, whatever the outcome.
    pub spent: Arc<Spent>,
    /// Tool policies, the run's approvals and its per-run budget.
    pub governance: Governance,
    /// Where the LLM's text goes as it is produced (the attempt's number and a channel): the
    /// model is asked to stream only while the channel has a receiver.
    pub deltas: Option<(u32, tokio::sync::broadcast::Sender<pb::LlmDelta>)>,
}

/// Whether the latest turn of `messages` asked only for calls an earlier turn already made (same
/// tool, same arguments). Small models loop on one call; such a model is then asked to conclude
/// from the results it has (the next turn is final-only), instead of repeating it until
/// `max_steps`.
fn repeats_earlier_calls(messages: &[Message]) -> bool {
    let key = |c: &ToolCall| (c.name.clone(), c.arguments_value().unwrap_or_else(|_| c.arguments.clone().into()));
    let mut turns = messages.iter().filter_map(|m| match m {
        Message::Assistant { tool_calls, .. } if !tool_calls.is_empty() => Some(tool_calls),
        _ => None,
    });
    let Some(latest) = turns.next_back() else { return false };
    let earlier: Vec<_> = turns.flatten().map(key).collect();
    latest.iter().all(|c| earlier.contains(&key(c)))
}

fn tool_specs(tools: &ToolRegistry) -> Vec<ToolSpec> {
    tools
        .definitions()
        .iter()
        .map(|d| ToolSpec::new(d.name.clone(), d.description.clone(), d.input_schema.clone()))
        .collect()
}

impl AgentLoop<'_> {
    /// Runs the attempt to a final answer.
    pub async fn run(self, sink: &dyn StepSink) -> Result<LoopOutcome, LoopError> {
        let mut messages = vec![Message::user(self.query.clone())];
        let mut seq = 0u32;
        let mut llm_turns = 0u32;
        let mut last_llm: Option<pb::LlmResponse> = None;
        let mut answered: std::collections::HashSet<String> = Default::default();
        let mut started: std::collections::HashSet<String> = Default::default();
        for step in &self.prior {
            seq = seq.max(step.seq + 1);
            match &step.payload {
                Some(pb::run_step::Payload::LlmResponse(r)) => {
                    messages.push(Message::from(r));
                    llm_turns += 1;
                    answered.clear();
                    started.clear();
                    last_llm = Some(r.clone());
                }
                Some(pb::run_step::Payload::ToolStarted(s)) => {
                    started.insert(s.call_id.clone());
                }
                Some(pb::run_step::Payload::ToolResult(t)) => {
                    messages.push(Message::from(t));
                    answered.insert(t.call_id.clone());
                }
                Some(pb::run_step::Payload::MemoryStored(_)) | None => {}
            }
        }
        self.step_counter.store(llm_turns, Ordering::Relaxed);
        // Tool calls of the newest LLM turn that have no checkpointed result yet.
        let mut pending: Vec<ToolCall> = last_llm
            .as_ref()
            .map(|r| r.tool_calls.iter().filter(|c| !answered.contains(&c.id)).map(Into::into).collect())
            .unwrap_or_default();
        // Only the turn a crash (or a park) interrupted can hold calls that may have run without
        // their result being checkpointed; every later call of this attempt runs normally.
        let mut resumed = Resumed {
            resumed: !pending.is_empty(),
            started,
            intents_recorded: last_llm.as_ref().is_none_or(|r| r.intents_recorded),
        };
        if let Some(r) = &last_llm
            && r.tool_calls.is_empty()
        {
            // Crashed after the final answer was checkpointed: it is the answer.
            return Ok(LoopOutcome { answer: r.content.clone(), next_seq: seq });
        }
        let specs = tool_specs(self.tools);
        let mut first_call = true;
        loop {
            if !pending.is_empty() {
                let plans: Vec<Plan> =
                    pending.iter().map(|c| governed::plan(&self.governance, self.tools, c, &resumed)).collect();
                // Irreversible calls are marked as started before any of them runs.
                for (call, plan) in pending.iter().zip(&plans) {
                    if let Plan::Run { arguments, mark: true } = plan {
                        let started = pb::ToolCallStarted {
                            call_id: call.id.clone(),
                            tool_name: call.name.clone(),
                            arguments_json: arguments.clone(),
                        };
                        sink.checkpoint(pb::RunStep {
                            seq,
                            payload: Some(pb::run_step::Payload::ToolStarted(started)),
                            ..Default::default()
                        })
                        .await?;
                        seq += 1;
                    }
                }
                let results =
                    futures::future::join_all(pending.iter().zip(&plans).map(|(c, p)| self.call_tool(c, p))).await;
                let mut waiting = Vec::new();
                for ((call, plan), result) in pending.iter().zip(&plans).zip(results) {
                    let Some((out, elapsed)) = result else {
                        if let Plan::Wait(effect) = plan {
                            waiting.push((call.clone(), *effect));
                        }
                        continue;
                    };
                    let result = pb::ToolResult {
                        call_id: call.id.clone(),
                        tool_name: call.name.clone(),
                        output: out.content.clone(),
                        is_error: out.is_error,
                        duration: Some(nightshift_core::duration::to_pb(elapsed)),
                    };
                    sink.checkpoint(pb::RunStep {
                        seq,
                        payload: Some(pb::run_step::Payload::ToolResult(result.clone())),
                        ..Default::default()
                    })
                    .await?;
                    seq += 1;
                    sink.tool_called(&result);
                    messages.push(Message::from(&result));
                }
                pending.clear();
                resumed = Resumed::default();
                if !waiting.is_empty() {
                    return Err(LoopError::Park(waiting));
                }
            }
            if llm_turns >= self.max_steps {
                return Err(LoopError::MaxSteps(self.max_steps));
            }
            let last = last_llm.as_ref().and_then(|r| r.usage).map(|u| Usage::from(&u)).unwrap_or_default();
            self.governance.budget.next_call(self.spent.usage(), last).map_err(LoopError::Budget)?;
            let req = ChatRequest {
                system: Some(self.system.clone()),
                messages: messages.clone(),
                tools: specs.clone(),
                // The last allowed turn is for the answer: a model that keeps calling tools gets
                // to conclude from what it has instead of failing the run at `max_steps`.
                final_only: (self.max_steps > 1 && llm_turns + 1 >= self.max_steps) || repeats_earlier_calls(&messages),
                ..Default::default()
            };
            let resp = self.chat(&req, seq).await?;
            self.spent.add(&resp.usage);
            let prompt = self.prompt_sent(&req, first_call);
            first_call = false;
            let record =
                pb::LlmResponse { intents_recorded: true, prompt: Some(prompt), ..pb::LlmResponse::from(&resp) };
            last_llm = Some(record.clone());
            sink.checkpoint(pb::RunStep {
                seq,
                payload: Some(pb::run_step::Payload::LlmResponse(record.clone())),
                ..Default::default()
            })
            .await?;
            seq += 1;
            llm_turns += 1;
            self.step_counter.store(llm_turns, Ordering::Relaxed);
            sink.llm_called(&record);
            messages.push(resp.to_message());
            if resp.is_final() {
                return Ok(LoopOutcome { answer: resp.content, next_seq: seq });
            }
            pending = resp.tool_calls;
        }
    }

    /// What `req` sent, for the record: the texts and the recall only with the attempt's first
    /// call (every later call sends the same ones).
    fn prompt_sent(&self, req: &ChatRequest, first_call: bool) -> pb::PromptSent {
        let mut sent = pb::PromptSent {
            messages: req.messages.len() as u32,
            final_only: req.final_only,
            tools: req.tools.len() as u32,
            ..Default::default()
        };
        if first_call {
            sent.first = true;
            sent.system = req.system.clone().unwrap_or_default();
            sent.user = self.query.clone();
            sent.recall = self.recall;
        }
        sent
    }

    /// The model's answer to `req`, which becomes step `seq`; streamed to the attempt's delta
    /// channel while someone listens.
    async fn chat(&self, req: &ChatRequest, seq: u32) -> Result<nightshift_llm::ChatResponse, LlmError> {
        let mut attempt = 0;
        loop {
            let started = std::time::Instant::now();
            let result = match &self.deltas {
                Some((run_attempt, tx)) if tx.receiver_count() > 0 => {
                    let on_text = |text: &str| {
                        let _ = tx.send(pb::LlmDelta { attempt: *run_attempt, seq, text: text.to_owned() });
                    };
                    self.model.chat_streaming(req, &on_text).await
                }
                _ => self.model.chat(req).await,
            };
            let model = result.as_ref().map_or("error", |r| r.model.as_str()).to_owned();
            metrics::histogram!("nightshift_llm_request_duration_seconds", "model" => model)
                .record(started.elapsed().as_secs_f64());
            match result {
                Err(e)
                    if e.kind() == nightshift_llm::LlmErrorKind::InvalidResponse
                        && attempt < INVALID_RESPONSE_RETRIES =>
                {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "the model's answer was not understood; asking again");
                }
                other => return other,
            }
        }
    }

    /// Carries out one call's plan: its output and duration, or `None` while it waits for a
    /// person.
    async fn call_tool(&self, call: &ToolCall, plan: &Plan) -> Option<(ToolOutput, std::time::Duration)> {
        let started = std::time::Instant::now();
        let out = match plan {
            Plan::Run { arguments, .. } => self.tools.call(&call.name, arguments).await,
            Plan::Refuse(message) => ToolOutput::error(message.clone()),
            Plan::Recorded(out) => out.clone(),
            Plan::Wait(_) => return None,
        };
        Some((out, started.elapsed()))
    }
}

/// The loop's own rules, with an in-process scripted model and tool: the exact step sequence of
/// a resumed turn must be deterministic, which a real model is not. The same paths run against
/// the scripted OpenAI-compatible server and real tools in `tests/e2e.rs`.
#[cfg(test)]
mod tests {
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
                let model = Scripted(Mutex::new(vec![turn, response(&[], "done")]));
                let out = AgentLoop {
                    model: Arc::new(model),
                    tools,
                    system: "s".into(),
                    query: "q".into(),
                    recall: None,
                    max_steps: 5,
                    prior: Vec::new(),
                    step_counter: Arc::default(),
                    spent: Arc::default(),
                    governance,
                    deltas: None,
                }
                .run(&steps)
                .await;
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
        assert_eq!(
            waiting.iter().map(|(c, e)| (c.id.as_str(), *e)).collect::<Vec<_>>(),
            [("c1", Effect::Irreversible)]
        );
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
}
