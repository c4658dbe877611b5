//! One attempt of a run: the model and tools of its agent, memory recalled into the prompt (with,
//! for a resumed attempt, the notes its earlier attempts left in working memory), the agent loop
//! raced against the policy timeout, cancel/drain and lost heartbeats; the result stored as an
//! episode on success.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nightshift_core::lifecycle::Failure;
use nightshift_core::{AgentSpec, pb};
use nightshift_queue::Delivery;
use nightshift_tools::ToolRegistry;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::checkpoint::Checkpointer;
use super::prompt::system_prompt;
use super::{Held, StopReason, Worker};
use crate::agent::{AgentLoop, LoopError, Spent};
use crate::events::RunEvents;
use crate::memory::{self, RunMemory};

/// Outcome of one attempt, as reported to the manager.
pub(super) enum AttemptEnd {
    /// The answer, the tokens, and the steps to record with the end (the final answer's LLM
    /// call, the episode stored).
    Succeeded(String, nightshift_llm::Usage, Vec<pb::RunStep>),
    Failed(String, Failure, nightshift_llm::Usage),
    TimedOut(nightshift_llm::Usage),
    Stopped(StopReason, nightshift_llm::Usage),
    /// The manager refused a fenced call: cancelled there or taken over by another worker.
    Lost(String),
    /// Tool calls wait for a person's approval: the run is to be parked.
    Parked(Vec<(nightshift_llm::ToolCall, nightshift_core::governance::Effect)>, nightshift_llm::Usage),
}

impl Worker {
    /// Checks `spec` against this worker's `[allow]` policy: its programs and secrets, and the
    /// addresses its MCP servers' URLs resolve to now (the model's client checks every
    /// connection it makes).
    async fn admit(&self, spec: &AgentSpec) -> Result<(), String> {
        let mut refusals: Vec<String> = self.inner.cfg.allow.refusals(spec).iter().map(ToString::to_string).collect();
        for (i, server) in spec.tools.mcp.iter().enumerate() {
            if let nightshift_core::McpTransport::Http { url, .. } = &server.transport
                && let Err(e) = self.inner.egress.check_url(url).await
            {
                refusals.push(format!("tools.mcp[{i}].url: {e}"));
            }
        }
        if refusals.is_empty() { Ok(()) } else { Err(format!("not allowed on this worker: {}", refusals.join("; "))) }
    }

    /// Runs one attempt of `run`. Also says whether the run may have working notes to forget
    /// once it ends for good: the attempt read some, or could not tell.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn execute(
        &self,
        run: &Held,
        spec: &AgentSpec,
        prior: Vec<pb::RunStep>,
        delivery: &Delivery,
        cancel: &CancellationToken,
        reason: &Arc<Mutex<Option<StopReason>>>,
        step: Arc<AtomicU32>,
        events: &RunEvents,
        governance: crate::governed::Governance,
        deltas: crate::agent::LlmDeltas,
    ) -> (AttemptEnd, bool) {
        let zero = nightshift_llm::Usage::default();
        // Until the notes are read: an earlier attempt may have left some.
        let unread = run.attempt > 1 && self.inner.memory.get().is_some();
        // The manager checked the spec against the same policy when it was applied; a spec
        // forced into the store (or a manager with another policy) gets no further here.
        if let Err(refused) = self.admit(spec).await {
            return (AttemptEnd::Failed(refused, Failure::Permanent, zero), unread);
        }
        let model = match self.model(run, spec) {
            Ok(m) => m,
            // Building the client fails only on its configuration (an unset API key variable, a
            // bad base URL): no retry can fix that.
            Err(e) => return (AttemptEnd::Failed(format!("model: {e}"), Failure::Permanent, zero), unread),
        };
        // MCP servers over HTTP connect through the egress policy's resolver, every connection.
        let http =
            match spec.tools.mcp.iter().any(|s| matches!(s.transport, nightshift_core::McpTransport::Http { .. })) {
                true => match self.inner.egress.http_client() {
                    Ok(c) => Some(c),
                    Err(e) => return (AttemptEnd::Failed(format!("tools: {e}"), Failure::Retryable, zero), unread),
                },
                false => None,
            };
        let tools = match ToolRegistry::with_http(&spec.tools, &self.inner.cfg.tools, http).await {
            Ok(t) => t,
            // An MCP server may be down for now: the retry policy decides.
            Err(e) => return (AttemptEnd::Failed(format!("tools: {e}"), Failure::Retryable, zero), unread),
        };
        let sink = Checkpointer {
            manager: self.inner.manager.clone(),
            run_id: run.id.clone(),
            attempt: run.attempt,
            lease_token: run.lease_token.clone(),
            lease_ttl: self.inner.cfg.lease_ttl,
            events: events.clone(),
        };
        let query = run.query_override.clone().unwrap_or_else(|| spec.query.clone());
        let memory = self
            .inner
            .memory
            .get()
            .map(|c| (RunMemory::new(c, &run.id, &run.lease_token), memory::scope(spec, &run.agent_id, &run.id)));
        let (recalled, notes, recall) = match &memory {
            Some((client, scope)) => {
                let started = std::time::Instant::now();
                let ((recalled, mut counts), (so_far, notes)) =
                    tokio::join!(memory::recall(client, spec, scope, &query), memory::working::recall(client, run));
                counts.working = !so_far.is_empty();
                counts.latency = Some(nightshift_core::duration::to_pb(started.elapsed()));
                let section = [recalled, so_far].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>();
                (section.join("\n\n"), notes, Some(counts))
            }
            None => (String::new(), false, None),
        };
        // A replay stores an episode only when asked to.
        let store_episode = spec.memory.store_results && governance.replay.as_ref().is_none_or(|r| r.store_memory);
        // Whatever way the attempt ends, the tokens it spent are recorded with its end.
        let spent = Arc::new(Spent::default());
        let agent = AgentLoop {
            model,
            tools: &tools,
            system: system_prompt(spec, memory.is_some(), &recalled),
            query: query.clone(),
            recall,
            max_steps: spec.policy.max_steps,
            prior,
            step_counter: step.clone(),
            spent: spent.clone(),
            governance,
            deltas: Some((run.attempt, deltas)),
        };
        let fut = agent.run(&sink);
        tokio::pin!(fut);
        let timeout = tokio::time::sleep(spec.policy.timeout);
        tokio::pin!(timeout);
        // Every beat renews the lease and pushes the delivery's ack deadline out: it must come
        // well within both, or the queue hands the run to another worker (which is told
        // LEASED_ELSEWHERE and parks it for the rest of the lease) while it still runs here.
        let beat = self.inner.cfg.lease_ttl.min(self.inner.cfg.queue.ack_wait) / 3;
        let mut heartbeat = tokio::time::interval(beat.max(std::time::Duration::from_millis(100)));
        heartbeat.tick().await;
        // The seq after the loop's last step (the answer's).
        let mut next_seq = 0;
        let end = loop {
            tokio::select! {
                r = &mut fut => break match r {
                    Ok(out) => {
                        next_seq = out.next_seq;
                        // The final answer's step, when the loop left it to the end.
                        AttemptEnd::Succeeded(out.answer, spent.usage(), out.last.into_iter().collect())
                    }
                    Err(LoopError::Fenced(m)) => AttemptEnd::Lost(m),
                    Err(LoopError::Park(calls)) => AttemptEnd::Parked(calls, spent.usage()),
                    Err(e) => AttemptEnd::Failed(e.to_string(), e.failure(), spent.usage()),
                },
                () = &mut timeout => break AttemptEnd::TimedOut(spent.usage()),
                () = cancel.cancelled() => {
                    let r = reason.lock().unwrap_or_else(PoisonError::into_inner).unwrap_or(StopReason::Cancelled);
                    break AttemptEnd::Stopped(r, spent.usage());
                }
                _ = heartbeat.tick() => {
                    let hb = self.inner.manager.clone().heartbeat(pb::HeartbeatRequest {
                        run_id: run.id.clone(),
                        attempt: run.attempt,
                        lease_token: run.lease_token.clone(),
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
        let mut end = end;
        if let (AttemptEnd::Succeeded(answer, _, record), Some((client, scope))) = (&mut end, &memory)
            && store_episode
        {
            // Before FinishRun: a run that reads as succeeded has its episode stored, and the
            // end records that it was (as the run's last step).
            let turns = step.load(Ordering::Relaxed);
            let stored = memory::store_episode(client, scope, run, spec.name.as_str(), &query, answer, turns).await;
            record.push(pb::RunStep {
                seq: next_seq,
                payload: Some(pb::run_step::Payload::MemoryStored(stored)),
                ..Default::default()
            });
        }
        (end, notes)
    }
}
