//! The agent loop: system instruction + task → LLM → tool calls (in parallel) → … → final
//! answer, checkpointing every LLM response and tool result, and resuming from earlier
//! checkpoints so that completed LLM calls are not paid again and completed tool calls are not
//! run again. The final answer's response is the exception: the loop hands it back to be
//! recorded with the attempt's end (FinishRun), a checkpoint call fewer per run; a worker that
//! dies in the few milliseconds between the answer and the end leaves that one call to be paid
//! again by the next attempt, as one that dies during the call always did. Each call goes
//! through the tool policy first (`crate::governed`): it runs, is refused, or parks the run
//! until a person approves it; an irreversible call is marked as started before it runs, so
//! that a crash never repeats it.
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

/// Largest final-answer step (encoded) handed to the end rather than checkpointed: FinishRun
/// also carries the answer as the result (at most 1 MiB) and the manager reads at most 4 MiB.
const MAX_STEP_WITH_END: usize = 512 << 10;

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
    /// The final answer's step when the loop did not checkpoint it: to be recorded with the end
    /// (`None` when it was checkpointed, or when an earlier attempt did).
    pub last: Option<pb::RunStep>,
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
    /// Where the LLM's text goes as it is produced (the attempt's number and its listeners): the
    /// model is asked to stream only while someone listens.
    pub deltas: Option<(u32, LlmDeltas)>,
}

/// An attempt's LLM text as it is produced, for whoever watches the run (WatchRunDeltas). The
/// channel and its buffer are made by the first listener: nearly every run has none, and making
/// a buffer of [`LlmDeltas::BUFFER`] slots for each run was 0.5 % of `nightshift dev`'s CPU at
/// 2,000 agents (a profile, docs/benchmarks.md, session 18). Clones share the channel; it
/// closes, ending its listeners' streams, when the last clone is dropped (the attempt is over).
#[derive(Clone, Default)]
pub struct LlmDeltas(Arc<std::sync::OnceLock<tokio::sync::broadcast::Sender<pb::LlmDelta>>>);

impl LlmDeltas {
    /// Text pieces kept for a slow listener before it misses some.
    pub const BUFFER: usize = 1024;

    /// A new listener, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<pb::LlmDelta> {
        self.0.get_or_init(|| tokio::sync::broadcast::channel(Self::BUFFER).0).subscribe()
    }

    /// The channel, while it has a listener.
    fn listened(&self) -> Option<&tokio::sync::broadcast::Sender<pb::LlmDelta>> {
        self.0.get().filter(|tx| tx.receiver_count() > 0)
    }
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
            return Ok(LoopOutcome { answer: r.content.clone(), next_seq: seq, last: None });
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
            let step =
                pb::RunStep { seq, payload: Some(pb::run_step::Payload::LlmResponse(record)), ..Default::default() };
            // The final answer goes with the end (module doc) unless it is too large to.
            let last = if resp.is_final() && prost::Message::encoded_len(&step) <= MAX_STEP_WITH_END {
                Some(step)
            } else {
                sink.checkpoint(step).await?;
                None
            };
            seq += 1;
            llm_turns += 1;
            self.step_counter.store(llm_turns, Ordering::Relaxed);
            if let Some(record) = &last_llm {
                sink.llm_called(record);
            }
            if resp.is_final() {
                return Ok(LoopOutcome { answer: resp.content, next_seq: seq, last });
            }
            messages.push(resp.to_message());
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
            let result = match self.deltas.as_ref().and_then(|(n, d)| Some((n, d.listened()?))) {
                Some((run_attempt, tx)) => {
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

#[cfg(test)]
mod tests;
