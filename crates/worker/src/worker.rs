//! The worker process: takes run requests from the queue, asks the manager to start them, runs
//! the agent loop with heartbeats, checkpoints and a timeout, and ends each attempt.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{AgentSpec, EventType, SessionScope, pb};
use nightshift_queue::{Delivery, WorkQueue};
use nightshift_tools::{ToolRegistry, ToolsConfig};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tracing::Instrument as _;

use crate::agent::{AgentLoop, LoopError, StepSink};
use crate::config::WorkerConfig;
use crate::events::{EventFn, RunEvents};
use crate::memory::{self, MemoryClient};
use nightshift_llm::ChatModel;

type Manager = pb::manager_service_client::ManagerServiceClient<nightshift_rpc::TracedChannel>;

/// Why an executing run was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// WorkerService.CancelRun.
    Cancelled,
    /// Drain grace period over: hand the run back.
    Released,
}

/// A run executing on this worker.
pub(crate) struct ActiveRun {
    pub(crate) agent_id: String,
    pub(crate) agent_name: String,
    pub(crate) attempt: u32,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) step: Arc<AtomicU32>,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

/// A worker. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) id: String,
    cfg: WorkerConfig,
    manager: Manager,
    queue: Arc<dyn WorkQueue>,
    events: Option<EventFn>,
    slots: Arc<Semaphore>,
    pub(crate) active: Mutex<HashMap<String, ActiveRun>>,
    pub(crate) draining: AtomicBool,
    pub(crate) completed: AtomicU64,
    pub(crate) started_at: DateTime<Utc>,
    stop: CancellationToken,
    /// The memory service, if this worker has one.
    memory: OnceLock<MemoryClient>,
    /// Model clients by (agent, spec version): one HTTP client (connection pool, TLS roots) per
    /// agent version instead of one per run.
    models: Mutex<HashMap<(String, u64), Arc<dyn ChatModel>>>,
}

/// Model clients kept before the cache is emptied (agents × versions seen by one worker).
const MODEL_CACHE_MAX: usize = 4096;

/// Outcome of one attempt, as reported to the manager.
enum AttemptEnd {
    Succeeded(String, nightshift_llm::Usage),
    Failed(String, nightshift_llm::Usage),
    TimedOut(nightshift_llm::Usage),
    Stopped(StopReason),
    /// The manager refused a fenced call: cancelled there or taken over by another worker.
    Lost(String),
}

impl Worker {
    /// A worker taking requests from `queue` and starting runs at `manager`.
    pub fn new(cfg: WorkerConfig, manager: Channel, queue: Arc<dyn WorkQueue>, events: Option<EventFn>) -> Self {
        let id = if cfg.worker_id.is_empty() {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "worker".into());
            format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        } else {
            cfg.worker_id.clone()
        };
        let slots = Arc::new(Semaphore::new(cfg.concurrency.max(1) as usize));
        let inner = Inner {
            id,
            manager: pb::manager_service_client::ManagerServiceClient::new(nightshift_rpc::traced(manager)),
            queue,
            events,
            slots,
            active: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            completed: AtomicU64::new(0),
            started_at: Utc::now(),
            stop: CancellationToken::new(),
            memory: OnceLock::new(),
            models: Mutex::new(HashMap::new()),
            cfg,
        };
        Self { inner: Arc::new(inner) }
    }

    /// Recalls memory before each run and stores results through the memory service on
    /// `channel` (without it, agents run without memory and are told so).
    pub fn with_memory(self, channel: Channel) -> Self {
        let _ = self.inner.memory.set(MemoryClient::new(nightshift_rpc::traced(channel)));
        self
    }

    /// The model client of an agent version, built once.
    fn model(&self, run: &pb::Run, spec: &AgentSpec) -> Result<Arc<dyn ChatModel>, nightshift_llm::LlmError> {
        let key = (run.agent_id.clone(), run.agent_version);
        let mut models = self.inner.models.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = models.get(&key) {
            return Ok(m.clone());
        }
        let m = nightshift_llm::model_from_config(&spec.model)?;
        if models.len() >= MODEL_CACHE_MAX {
            models.clear();
        }
        models.insert(key, m.clone());
        Ok(m)
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Maximum concurrent runs.
    pub fn capacity(&self) -> u32 {
        self.inner.cfg.concurrency
    }

    /// The worker-level tool settings.
    pub fn tools_config(&self) -> &ToolsConfig {
        &self.inner.cfg.tools
    }

    pub(crate) fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, ActiveRun>> {
        self.inner.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops a run executing here; false if it is not.
    pub fn cancel(&self, run_id: &str) -> bool {
        self.stop_run(run_id, StopReason::Cancelled)
    }

    fn stop_run(&self, run_id: &str, reason: StopReason) -> bool {
        let active = self.active();
        let Some(run) = active.get(run_id) else { return false };
        *run.reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        run.cancel.cancel();
        true
    }

    /// Stops taking new runs; in-flight runs get `grace` to finish, then are handed back.
    /// Returns the number of runs in flight when the drain began.
    pub fn drain(&self, grace: Duration) -> u32 {
        let in_flight = self.active().len() as u32;
        if !self.inner.draining.swap(true, Ordering::SeqCst) {
            tracing::info!(worker = %self.inner.id, in_flight, grace = ?grace, "draining");
            let me = self.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + grace;
                while !me.active().is_empty() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let left: Vec<String> = me.active().keys().cloned().collect();
                for run in left {
                    me.stop_run(&run, StopReason::Released);
                }
                while !me.active().is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                me.inner.stop.cancel();
            });
        }
        in_flight
    }

    /// Consumes the queue until drained (or `shutdown` resolves, which starts a drain with the
    /// configured grace), then returns once every in-flight run ended or was handed back.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tracing::info!(worker = %self.inner.id, capacity = self.inner.cfg.concurrency, "worker started");
        tokio::pin!(shutdown);
        let mut shutdown_seen = false;
        loop {
            if self.inner.draining.load(Ordering::SeqCst) {
                break;
            }
            let available = self.inner.slots.available_permits();
            if available == 0 {
                tokio::select! {
                    permit = self.inner.slots.clone().acquire_owned() => drop(permit),
                    () = &mut shutdown, if !shutdown_seen => { shutdown_seen = true; self.drain(self.inner.cfg.drain_grace); }
                }
                continue;
            }
            let batch = tokio::select! {
                r = self.inner.queue.receive(available, Duration::from_secs(1)) => r,
                () = &mut shutdown, if !shutdown_seen => {
                    shutdown_seen = true;
                    self.drain(self.inner.cfg.drain_grace);
                    continue;
                }
            };
            match batch {
                Ok(deliveries) => {
                    for d in deliveries {
                        let Ok(permit) = self.inner.slots.clone().acquire_owned().await else { return };
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.handle(d).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "receiving from the queue failed; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.inner.stop.cancelled().await;
        tracing::info!(worker = %self.inner.id, "worker stopped");
    }

    /// Handles one delivery in an `agent.run` span that continues the trace of whoever queued
    /// the run (the scheduler's tick or the manager's trigger), so one run is one trace.
    async fn handle(&self, d: Delivery) {
        let span = tracing::info_span!(
            parent: None,
            "agent.run",
            otel.name = "agent.run",
            otel.kind = "consumer",
            run = %d.request.run_id,
            agent = %d.request.agent_id,
        );
        nightshift_telemetry::set_parent_from_map(&span, &d.request.trace_context);
        self.handle_delivery(d).instrument(span).await
    }

    async fn handle_delivery(&self, d: Delivery) {
        if self.inner.draining.load(Ordering::SeqCst) {
            // Received while the drain began (or a run this worker just handed back): leave it
            // to another worker.
            nack(d, Duration::ZERO).await;
            return;
        }
        let req = d.request.clone();
        let mut manager = self.inner.manager.clone();
        let start = manager
            .start_run(pb::StartRunRequest {
                run_id: req.run_id.clone(),
                agent_id: req.agent_id.clone(),
                worker_id: self.inner.id.clone(),
                lease_ttl: Some(nightshift_core::duration::to_pb(self.inner.cfg.lease_ttl)),
                trigger: req.trigger,
                scheduled_for: req.scheduled_for,
            })
            .await;
        let start = match start {
            Ok(r) => r.into_inner(),
            Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => {
                tracing::info!(run = %req.run_id, error = %s.message(), "dropping a run request the manager cannot start");
                ack(d).await;
                return;
            }
            Err(s) => {
                tracing::warn!(run = %req.run_id, error = %s, "StartRun failed; redelivering in 5s");
                nack(d, Duration::from_secs(5)).await;
                return;
            }
        };
        let retry_after = start
            .retry_after
            .as_ref()
            .and_then(|d| nightshift_core::duration::from_pb(d).ok())
            .unwrap_or(Duration::from_secs(1));
        match start.decision() {
            pb::StartDecision::Started => {}
            pb::StartDecision::Skipped => {
                let run = start.run.unwrap_or_default();
                self.run_events(&run, &run.agent_name).emit(EventType::RunSkipped, json!({"reason": start.reason}));
                ack(d).await;
                return;
            }
            pb::StartDecision::AlreadyFinished | pb::StartDecision::Unspecified => {
                ack(d).await;
                return;
            }
            pb::StartDecision::Deferred | pb::StartDecision::LeasedElsewhere | pb::StartDecision::NotYet => {
                nack(d, retry_after).await;
                return;
            }
        }
        let (Some(run), Some(spec_pb)) = (start.run, start.spec) else {
            tracing::error!(run = %req.run_id, "StartRun said STARTED without run or spec");
            nack(d, Duration::from_secs(5)).await;
            return;
        };
        let spec = match AgentSpec::from_proto(&spec_pb) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(run = %run.id, error = %e, "the agent spec does not validate on this worker");
                self.finish(&run, pb::RunOutcome::Failed, "", &format!("invalid agent spec: {e}"), Default::default())
                    .await;
                ack(d).await;
                return;
            }
        };
        let events = self.run_events(&run, spec.name.as_str());
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let step = Arc::new(AtomicU32::new(0));
        self.active().insert(
            run.id.clone(),
            ActiveRun {
                agent_id: run.agent_id.clone(),
                agent_name: spec.name.to_string(),
                attempt: run.attempt,
                started_at: Utc::now(),
                step: step.clone(),
                cancel: cancel.clone(),
                reason: reason.clone(),
            },
        );
        events.emit(EventType::BackgroundTaskStarted, json!({"attempt": run.attempt, "worker": self.inner.id, "trigger": if run.trigger() == pb::TriggerKind::Manual { "manual" } else { "schedule" }}));
        events.emit(EventType::BackgroundAgentStatus, json!({"status": "running"}));
        let began = std::time::Instant::now();
        let end = self.execute(&run, &spec, start.steps, &d, &cancel, &reason, step, &events).await;
        self.settle(d, &run, end, &events, began.elapsed()).await;
        events.emit(EventType::BackgroundAgentStatus, json!({"status": "idle"}));
        // Removed only once the attempt is settled: a drain waits for this, and the process may
        // exit right after.
        self.active().remove(&run.id);
        self.inner.completed.fetch_add(1, Ordering::Relaxed);
    }

    fn run_events(&self, run: &pb::Run, agent_name: &str) -> RunEvents {
        RunEvents::new(
            self.inner.events.clone(),
            format!("worker/{}", self.inner.id),
            run.agent_id.clone(),
            agent_name.to_owned(),
            run.id.clone(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        run: &pb::Run,
        spec: &AgentSpec,
        prior: Vec<pb::RunStep>,
        delivery: &Delivery,
        cancel: &CancellationToken,
        reason: &Arc<Mutex<Option<StopReason>>>,
        step: Arc<AtomicU32>,
        events: &RunEvents,
    ) -> AttemptEnd {
        let zero = nightshift_llm::Usage::default();
        let model = match self.model(run, spec) {
            Ok(m) => m,
            Err(e) => return AttemptEnd::Failed(format!("model: {e}"), zero),
        };
        let tools = match ToolRegistry::new(&spec.tools, &self.inner.cfg.tools).await {
            Ok(t) => t,
            Err(e) => return AttemptEnd::Failed(format!("tools: {e}"), zero),
        };
        let sink = Checkpointer {
            manager: self.inner.manager.clone(),
            run_id: run.id.clone(),
            attempt: run.attempt,
            lease_ttl: self.inner.cfg.lease_ttl,
            events: events.clone(),
        };
        let query = run.query_override.clone().unwrap_or_else(|| spec.query.clone());
        let memory = self.inner.memory.get().map(|c| (c, memory::scope(spec, &run.agent_id, &run.id)));
        let recalled = match &memory {
            Some((client, scope)) => memory::recall(client, spec, scope, &query).await,
            None => String::new(),
        };
        let agent = AgentLoop {
            model,
            tools: &tools,
            system: system_prompt(spec, memory.is_some(), &recalled),
            query: query.clone(),
            max_steps: spec.policy.max_steps,
            prior,
            step_counter: step.clone(),
        };
        let fut = agent.run(&sink);
        tokio::pin!(fut);
        let timeout = tokio::time::sleep(spec.policy.timeout);
        tokio::pin!(timeout);
        let mut heartbeat = tokio::time::interval(self.inner.cfg.lease_ttl / 3);
        heartbeat.tick().await;
        let end = loop {
            tokio::select! {
                r = &mut fut => break match r {
                    Ok(out) => AttemptEnd::Succeeded(out.answer, out.usage),
                    Err(LoopError::Fenced(m)) => AttemptEnd::Lost(m),
                    Err(e) => AttemptEnd::Failed(e.to_string(), zero),
                },
                () = &mut timeout => break AttemptEnd::TimedOut(zero),
                () = cancel.cancelled() => {
                    let r = reason.lock().unwrap_or_else(PoisonError::into_inner).unwrap_or(StopReason::Cancelled);
                    break AttemptEnd::Stopped(r);
                }
                _ = heartbeat.tick() => {
                    let hb = self.inner.manager.clone().heartbeat(pb::HeartbeatRequest {
                        run_id: run.id.clone(),
                        attempt: run.attempt,
                        worker_id: self.inner.id.clone(),
                        lease_ttl: Some(nightshift_core::duration::to_pb(self.inner.cfg.lease_ttl)),
                    }).await;
                    match hb {
                        Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                            break AttemptEnd::Lost(s.message().to_owned());
                        }
                        Err(s) => tracing::warn!(run = %run.id, error = %s, "heartbeat failed; retrying"),
                        Ok(_) => {}
                    }
                    if let Err(e) = delivery.in_progress().await {
                        tracing::warn!(run = %run.id, error = %e, "extending the queue ack deadline failed");
                    }
                }
            }
        };
        tools.shutdown().await;
        if let (AttemptEnd::Succeeded(answer, _), Some((client, scope))) = (&end, &memory)
            && spec.memory.store_results
        {
            // Before FinishRun: a run that reads as succeeded has its episode stored.
            memory::store_episode(client, scope, run, &query, answer, step.load(Ordering::Relaxed)).await;
        }
        end
    }

    async fn settle(&self, d: Delivery, run: &pb::Run, end: AttemptEnd, events: &RunEvents, took: Duration) {
        let status = match &end {
            AttemptEnd::Succeeded(..) => "succeeded",
            AttemptEnd::Failed(..) => "failed",
            AttemptEnd::TimedOut(..) => "timed_out",
            AttemptEnd::Stopped(StopReason::Cancelled) => "cancelled",
            AttemptEnd::Stopped(StopReason::Released) => "released",
            AttemptEnd::Lost(..) => "lost",
        };
        metrics::counter!("nightshift_worker_runs_total", "status" => status).increment(1);
        metrics::histogram!("nightshift_run_duration_seconds", "status" => status).record(took.as_secs_f64());
        match end {
            AttemptEnd::Succeeded(answer, usage) => {
                self.finish(run, pb::RunOutcome::Succeeded, &answer, "", usage).await;
                events.emit(
                    EventType::BackgroundTaskCompleted,
                    json!({"attempt": run.attempt, "result": truncate(&answer, 2000)}),
                );
                ack(d).await;
            }
            AttemptEnd::Failed(error, usage) => self.fail(d, run, pb::RunOutcome::Failed, &error, usage, events).await,
            AttemptEnd::TimedOut(usage) => {
                self.fail(d, run, pb::RunOutcome::TimedOut, "run exceeded policy.timeout", usage, events).await
            }
            AttemptEnd::Stopped(StopReason::Cancelled) => {
                self.finish(run, pb::RunOutcome::Cancelled, "", "cancelled on the worker", Default::default()).await;
                events.emit(EventType::RunCancelled, json!({"attempt": run.attempt}));
                ack(d).await;
            }
            AttemptEnd::Stopped(StopReason::Released) => {
                self.finish(run, pb::RunOutcome::Released, "", "handed back by a draining worker", Default::default())
                    .await;
                nack(d, Duration::ZERO).await;
            }
            AttemptEnd::Lost(why) => {
                tracing::info!(run = %run.id, %why, "run no longer ours; stopping without finishing it");
                ack(d).await;
            }
        }
    }

    async fn fail(
        &self,
        d: Delivery,
        run: &pb::Run,
        outcome: pb::RunOutcome,
        error: &str,
        usage: nightshift_llm::Usage,
        events: &RunEvents,
    ) {
        let retry = self.finish(run, outcome, "", error, usage).await;
        events.emit(
            EventType::BackgroundTaskError,
            json!({"attempt": run.attempt, "error": error, "will_retry": retry.is_some()}),
        );
        match retry {
            Some(after) => {
                events.emit(
                    EventType::RunRetrying,
                    json!({"attempt": run.attempt, "retry_in_ms": after.as_millis() as u64}),
                );
                nack(d, after).await;
            }
            None => ack(d).await,
        }
    }

    /// FinishRun; returns the retry delay when the manager schedules a retry.
    async fn finish(
        &self,
        run: &pb::Run,
        outcome: pb::RunOutcome,
        result: &str,
        error: &str,
        usage: nightshift_llm::Usage,
    ) -> Option<Duration> {
        let req = pb::FinishRunRequest {
            run_id: run.id.clone(),
            attempt: run.attempt,
            outcome: outcome as i32,
            result: result.to_owned(),
            error: error.to_owned(),
            usage: Some(pb::TokenUsage { input_tokens: usage.input_tokens, output_tokens: usage.output_tokens }),
        };
        // A few tries: losing FinishRun would leave the run to a lease takeover.
        for attempt in 0..3 {
            match self.inner.manager.clone().finish_run(req.clone()).await {
                Ok(r) => return r.into_inner().retry_after.and_then(|d| nightshift_core::duration::from_pb(&d).ok()),
                Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                    tracing::info!(run = %run.id, error = %s.message(), "FinishRun refused");
                    return None;
                }
                Err(s) => {
                    tracing::warn!(run = %run.id, error = %s, attempt, "FinishRun failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
                }
            }
        }
        None
    }
}

/// Instruction plus what the loop must know about its context: the recalled memory, or that
/// there is none.
fn system_prompt(spec: &AgentSpec, has_memory: bool, recalled: &str) -> String {
    let mut s = spec.system_instruction.clone();
    if !recalled.is_empty() {
        s.push_str("\n\n");
        s.push_str(recalled);
    } else if !has_memory && spec.memory.session != SessionScope::Run {
        // A worker without a memory service: say so rather than let the model pretend to remember.
        s.push_str("\n\nYou have no memory of earlier runs in this session.");
    }
    s
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max { s.to_owned() } else { format!("{}…", &s[..s.floor_char_boundary(max)]) }
}

async fn ack(d: Delivery) {
    if let Err(e) = d.ack().await {
        tracing::warn!(error = %e, "ack failed; the request may be delivered again (StartRun makes that harmless)");
    }
}

async fn nack(d: Delivery, delay: Duration) {
    if let Err(e) = d.nack(delay).await {
        tracing::warn!(error = %e, "nack failed; the request comes back after the ack deadline");
    }
}

/// Fenced checkpoints at the manager.
struct Checkpointer {
    manager: Manager,
    run_id: String,
    attempt: u32,
    lease_ttl: Duration,
    events: RunEvents,
}

#[async_trait::async_trait]
impl StepSink for Checkpointer {
    async fn checkpoint(&self, step: pb::RunStep) -> Result<(), LoopError> {
        let req = pb::CheckpointRequest {
            run_id: self.run_id.clone(),
            attempt: self.attempt,
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
