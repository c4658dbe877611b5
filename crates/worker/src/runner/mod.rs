//! The worker process: takes run requests from the queue, asks the manager to start them, runs
//! the agent loop with heartbeats, checkpoints and a timeout, and ends each attempt.
//!
//! This file holds the [`Worker`] handle and what every run shares through it: identity and
//! configuration, the manager client, the slots, the runs executing here (status, cancel, drain)
//! and the model cache. One run request's way through the worker is split by stage:
//! - `delivery`: the queue loop, and one delivery's `StartRun` decision → run, ack or nack;
//! - `attempt`: one attempt — memory recall, the agent loop under heartbeats and the timeout;
//! - `prompt`: the system prompt the loop gets (instruction + recalled memory);
//! - `checkpoint`: the fenced checkpoints the loop writes, with their events and metrics;
//! - `finish`: the end of an attempt — `FinishRun`, then ack or nack.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{AgentSpec, pb};
use nightshift_queue::WorkQueue;
use nightshift_tools::ToolsConfig;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;
use crate::events::EventFn;
use crate::memory::MemoryClient;
use nightshift_llm::ChatModel;

mod attempt;
mod checkpoint;
mod delivery;
mod finish;
mod prompt;

type Manager = pb::manager_service_client::ManagerServiceClient<nightshift_rpc::CallChannel>;

/// A run this worker holds: the record StartRun returned and the attempt's lease token, which
/// Heartbeat, Checkpoint and FinishRun present.
pub(super) struct Held {
    run: pb::Run,
    lease_token: String,
}

impl std::ops::Deref for Held {
    type Target = pb::Run;
    fn deref(&self) -> &pb::Run {
        &self.run
    }
}

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
    /// The attempt's LLM text as it is produced, for WatchRunDeltas (streamed from the model only
    /// while it has a receiver).
    pub(crate) deltas: crate::agent::LlmDeltas,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

/// A worker. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    pub(crate) inner: Arc<Inner>,
}

/// A model client's cache key: agent id, spec version, model name.
type ModelKey = (String, u64, String);
pub(crate) struct Inner {
    pub(crate) id: String,
    /// Where this worker's WorkerService is reached (sent with StartRun; may be empty).
    endpoint: String,
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
    /// Model clients by (agent, spec version, model name — a replay may ask another): one HTTP
    /// client (connection pool, TLS roots) per agent version instead of one per run.
    models: Mutex<HashMap<ModelKey, Arc<dyn ChatModel>>>,
    /// Where model and MCP HTTP clients may connect (`[allow] private_egress`).
    egress: nightshift_egress::Egress,
}

/// Model clients kept before the cache is emptied (agents × versions seen by one worker).
const MODEL_CACHE_MAX: usize = 4096;

impl Worker {
    /// A worker taking requests from `queue` and starting runs at `manager`.
    pub fn new(
        cfg: WorkerConfig,
        manager: nightshift_rpc::CallChannel,
        queue: Arc<dyn WorkQueue>,
        events: Option<EventFn>,
    ) -> Self {
        let id = if cfg.worker_id.is_empty() {
            let host = nightshift_rpc::hostname().unwrap_or_else(|| "worker".into());
            format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        } else {
            cfg.worker_id.clone()
        };
        let slots = Arc::new(Semaphore::new(cfg.concurrency.max(1) as usize));
        let inner = Inner {
            id,
            endpoint: cfg.advertised_endpoint(),
            manager: pb::manager_service_client::ManagerServiceClient::new(manager),
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
            egress: nightshift_egress::Egress::new(cfg.allow.clone()),
            cfg,
        };
        Self { inner: Arc::new(inner) }
    }

    /// Recalls memory before each run and stores results through the memory service on
    /// `channel` (without it, agents run without memory and are told so).
    pub fn with_memory(self, channel: nightshift_rpc::CallChannel) -> Self {
        let _ = self.inner.memory.set(MemoryClient::new(channel));
        self
    }

    /// The model client of an agent version, built once.
    fn model(&self, run: &pb::Run, spec: &AgentSpec) -> Result<Arc<dyn ChatModel>, nightshift_llm::LlmError> {
        // The model's name too: a replay may ask another model of the same version.
        let key = (run.agent_id.clone(), run.agent_version, spec.model.model.clone());
        let mut models = self.inner.models.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = models.get(&key) {
            return Ok(m.clone());
        }
        let m = nightshift_llm::model_with(&spec.model, Default::default(), Some(&self.inner.egress))?;
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
}

/// `s` cut to `max` bytes (on a char boundary, marked with `…`): keeps event payloads small.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max { s.to_owned() } else { format!("{}…", &s[..s.floor_char_boundary(max)]) }
}
