//! The agent's memory around a run, through the memory service's gRPC API. What each type means
//! to a run (docs/architecture.md, "Memory around a run"):
//! - **procedural**: notes on how the agent does its job; the newest few go into the system prompt;
//! - **long-term**: facts, searched by the task's text (`memory.semantic_top_k`) into the prompt;
//! - **episodic**: one episode per successful run (task and result), stored before `FinishRun`;
//!   the newest `memory.recall_recent` (and summaries of older ones) go into the prompt;
//! - **working**: the scratch of one run across its attempts ([`working`]).
//!
//! The first three live in the agent's session scope (`memory.session`: its own, one per run, or
//! a `fixed:<id>` scope shared with every agent naming it); working memory always lives in the
//! run's own scope.
//!
//! Memory is context, not a dependency of the run: when the memory service fails, the run goes
//! on without it. That is never silent — a `tracing` warning and the
//! `nightshift_worker_memory_errors_total{op}` counter say so.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use nightshift_core::{AgentSpec, SessionScope, pb};

pub mod working;

/// The memory service client.
pub type MemoryClient = pb::memory_service_client::MemoryServiceClient<nightshift_rpc::CallChannel>;

/// The memory client of one run: every call names the run and presents the lease token of the
/// attempt, which is what the memory service lets this worker touch (that run's agent's memory
/// and no other).
#[derive(Clone)]
pub struct RunMemory {
    client: MemoryClient,
    /// The run and lease headers, made once per attempt (every memory call of it sends them).
    headers: [(&'static str, Option<tonic::metadata::AsciiMetadataValue>); 2],
}

impl RunMemory {
    /// Calls of `run_id`'s attempt holding `lease_token`, through `client`.
    pub fn new(client: &MemoryClient, run_id: &str, lease_token: &str) -> Self {
        let headers = [
            (nightshift_rpc::RUN_HEADER, run_id.parse().ok()),
            (nightshift_rpc::LEASE_HEADER, lease_token.parse().ok()),
        ];
        Self { client: client.clone(), headers }
    }

    /// `message` as a call of this run.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        for (name, value) in &self.headers {
            if let Some(v) = value {
                req.metadata_mut().insert(*name, v.clone());
            }
        }
        req
    }

    async fn store(
        &self,
        req: pb::StoreMemoryRequest,
    ) -> Result<tonic::Response<pb::StoreMemoryResponse>, tonic::Status> {
        self.client.clone().store(self.request(req)).await
    }

    async fn recall(&self, req: pb::RecallRequest) -> Result<tonic::Response<pb::RecallResponse>, tonic::Status> {
        self.client.clone().recall(self.request(req)).await
    }

    async fn recall_for_run(
        &self,
        req: pb::RecallForRunRequest,
    ) -> Result<tonic::Response<pb::RecallForRunResponse>, tonic::Status> {
        self.client.clone().recall_for_run(self.request(req)).await
    }

    async fn forget(&self, req: pb::ForgetRequest) -> Result<tonic::Response<pb::ForgetResponse>, tonic::Status> {
        self.client.clone().forget(self.request(req)).await
    }
}

/// Longest part of one record quoted into the prompt.
const MAX_RECORD_CHARS: usize = 1_000;
/// Longest memory section of the prompt.
const MAX_SECTION_CHARS: usize = 8_000;
/// Procedural notes recalled per run (how the agent does its job).
const PROCEDURAL_RECALL: u32 = 5;
/// Longest wait for memory around a run: it happens outside the heartbeat loop, well within
/// the lease, and a slow memory service must not hold a run up.
const MEMORY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The memory scope of a run, in the service's notation (`agent`, `run:<id>`, `fixed:<id>`,
/// which outside `default` is stored as `fixed:<namespace>/<id>`).
/// The agent id is sent for a `fixed:<id>` scope too; the service ignores it there, so that every
/// agent naming the scope reads and writes the same records.
pub fn scope(spec: &AgentSpec, agent_id: &str, run_id: &str) -> pb::MemoryScope {
    pb::MemoryScope { agent_id: agent_id.to_owned(), session: spec.memory.session.session_key(&spec.namespace, run_id) }
}

/// The id of the episode a run stores: deterministic, so that a run redelivered after its
/// worker died overwrites its own episode instead of adding a second one.
pub fn episode_id(run_id: &str) -> String {
    format!("episode-{run_id}")
}

fn failed(op: &'static str, s: &tonic::Status) {
    metrics::counter!("nightshift_worker_memory_errors_total", "op" => op).increment(1);
    tracing::warn!(op, code = ?s.code(), error = %s.message(), "memory service call failed; the run goes on without it");
}

/// What was recalled for a run, rendered as a section of the system prompt ("" = nothing), and
/// how much of each type (the run's timeline shows it). Gives up (with what it has: nothing)
/// after [`MEMORY_TIMEOUT`].
#[tracing::instrument(name = "memory.recall", skip_all)]
pub async fn recall(
    client: &RunMemory,
    spec: &AgentSpec,
    scope: &pb::MemoryScope,
    query: &str,
) -> (String, pb::MemoryRecall) {
    match tokio::time::timeout(MEMORY_TIMEOUT, recall_all(client, spec, scope, query)).await {
        Ok(recalled) => recalled,
        Err(_) => {
            failed("recall", &tonic::Status::deadline_exceeded("memory recall took too long"));
            (String::new(), pb::MemoryRecall { errors: 1, ..Default::default() })
        }
    }
}

async fn recall_all(
    client: &RunMemory,
    spec: &AgentSpec,
    scope: &pb::MemoryScope,
    query: &str,
) -> (String, pb::MemoryRecall) {
    let top_k = spec.memory.semantic_top_k;
    let req = pb::RecallForRunRequest {
        scope: Some(scope.clone()),
        episodes: spec.memory.recall_recent,
        notes: PROCEDURAL_RECALL,
        top_k,
        query: if top_k > 0 { query.to_owned() } else { String::new() },
    };
    // One call for the three reads: the service answers them together (on SQLite, both
    // recalls in one statement).
    let found = match client.recall_for_run(req).await {
        Ok(found) => found.into_inner(),
        Err(s) => {
            failed("recall", &s);
            return (String::new(), pb::MemoryRecall { errors: 1, ..Default::default() });
        }
    };
    let mut errors = 0;
    if found.search_unavailable {
        // A deployment without a vector index: recall works, search does not. Not an error.
        tracing::debug!("semantic memory search is not configured");
    }
    if !found.search_error.is_empty() {
        // The facts are missing, the episodes and notes are not.
        errors += 1;
        failed("search", &tonic::Status::unavailable(found.search_error.as_str()));
    }
    let counts = pb::MemoryRecall {
        episodes: found.episodes.len() as u32,
        facts: found.facts.len() as u32,
        notes: found.notes.len() as u32,
        errors,
        ..Default::default()
    };
    let shared = matches!(spec.memory.session, SessionScope::Fixed(_));
    (render(&found.episodes, &found.notes, &found.facts, shared), counts)
}

fn clip(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max { s.to_owned() } else { format!("{}…", &s[..s.floor_char_boundary(max)]) }
}

fn when(r: &pb::MemoryRecord) -> String {
    r.created_at
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "earlier".into())
}

/// Who stored an episode, for a scope several agents share ("" when it does not say).
fn author(r: &pb::MemoryRecord) -> String {
    r.metadata.get("agent").map(|a| format!(", by {a}")).unwrap_or_default()
}

/// The memory section of the system prompt; in a `shared` scope the episodes are every member's.
fn render(
    episodes: &[pb::MemoryRecord],
    notes: &[pb::MemoryRecord],
    facts: &[pb::ScoredMemory],
    shared: bool,
) -> String {
    if episodes.is_empty() && notes.is_empty() && facts.is_empty() {
        return String::new();
    }
    let mut s = String::from("## Your memory");
    if !notes.is_empty() {
        s.push_str("\n\nNotes on how you do this job:");
        for r in notes {
            let _ = write!(s, "\n- {}", clip(&r.content, MAX_RECORD_CHARS));
        }
    }
    if !facts.is_empty() {
        s.push_str("\n\nFacts you kept that look relevant to this task:");
        for h in facts {
            if let Some(r) = &h.record {
                let _ = write!(s, "\n- {}", clip(&r.content, MAX_RECORD_CHARS));
            }
        }
    }
    if !episodes.is_empty() {
        if shared {
            s.push_str("\n\nEarlier runs of the agents sharing this memory (you included), newest first:");
        } else {
            s.push_str("\n\nYour earlier runs, newest first:");
        }
        for r in episodes {
            let by = if shared { author(r) } else { String::new() };
            let _ = write!(s, "\n- [{}{by}] {}", when(r), clip(&r.content, MAX_RECORD_CHARS).replace('\n', " | "));
        }
    }
    clip(&s, MAX_SECTION_CHARS)
}

/// Stores the episode of a successful attempt (idempotent per run). It names the agent that ran
/// (`agent`: its name, `agent_id`), which tells the members of a shared scope apart. Returns
/// what became of it, for the run's timeline.
#[tracing::instrument(name = "memory.store_episode", skip_all)]
pub async fn store_episode(
    client: &RunMemory,
    scope: &pb::MemoryScope,
    run: &pb::Run,
    agent_name: &str,
    query: &str,
    answer: &str,
    steps: u32,
) -> pb::MemoryStored {
    let started = std::time::Instant::now();
    let metadata = BTreeMap::from([
        ("outcome".to_owned(), "succeeded".to_owned()),
        ("attempt".to_owned(), run.attempt.to_string()),
        ("steps".to_owned(), steps.to_string()),
        ("agent".to_owned(), agent_name.to_owned()),
        ("agent_id".to_owned(), run.agent_id.clone()),
    ]);
    let record = pb::MemoryRecord {
        id: episode_id(&run.id),
        r#type: pb::MemoryType::Episodic as i32,
        scope: Some(scope.clone()),
        content: format!("Task: {}\nResult: {}", clip(query, 4_000), clip(answer, 16_000)),
        metadata,
        run_id: run.id.clone(),
        created_at: None,
        ttl: None,
        summary: false,
    };
    let id = record.id.clone();
    let error = match tokio::time::timeout(
        MEMORY_TIMEOUT,
        client.store(pb::StoreMemoryRequest { records: vec![record] }),
    )
    .await
    {
        Ok(Ok(_)) => String::new(),
        Ok(Err(s)) => {
            failed("store", &s);
            s.message().to_owned()
        }
        Err(_) => {
            let s = tonic::Status::deadline_exceeded("storing the episode took too long");
            failed("store", &s);
            s.message().to_owned()
        }
    };
    pb::MemoryStored {
        record_id: id,
        latency: Some(nightshift_core::duration::to_pb(started.elapsed())),
        error: clip(&error, 1_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(content: &str) -> pb::MemoryRecord {
        pb::MemoryRecord { content: content.into(), ..Default::default() }
    }

    #[test]
    fn renders_sections_and_nothing_for_no_memory() {
        assert_eq!(render(&[], &[], &[], false), "");
        let s = render(
            &[rec("Task: a\nResult: 42")],
            &[rec("check the units")],
            &[pb::ScoredMemory { record: Some(rec("the sky is blue")), score: 0.9 }],
            false,
        );
        assert!(s.starts_with("## Your memory"));
        assert!(s.contains("- check the units"));
        assert!(s.contains("- the sky is blue"));
        assert!(s.contains("] Task: a | Result: 42"), "{s}");
    }

    #[test]
    fn long_records_are_clipped() {
        let long = "x".repeat(5_000);
        let s = render(&[rec(&long)], &[], &[], false);
        assert!(s.len() < 1_200, "{}", s.len());
        assert!(s.ends_with('…'));
    }

    #[test]
    fn episodes_of_a_shared_scope_name_their_agent() {
        let mut r = rec("Task: a\nResult: 42");
        r.metadata.insert("agent".into(), "builder".into());
        let s = render(&[r.clone()], &[], &[], true);
        assert!(s.contains("Earlier runs of the agents sharing this memory"), "{s}");
        assert!(s.contains(", by builder] Task: a | Result: 42"), "{s}");
        assert!(!render(&[r], &[], &[], false).contains("builder"));
    }

    #[test]
    fn scope_follows_the_session() {
        let mut spec = AgentSpec::from_yaml(
            "name: m\nmodel: {provider: openai, model: m}\ntask: {query: q}\nschedule: {interval: 60s}\n",
        )
        .unwrap();
        assert_eq!(scope(&spec, "a1", "r1").session, "agent");
        spec.memory.session = SessionScope::Run;
        assert_eq!(scope(&spec, "a1", "r1").session, "run:r1");
        spec.memory.session = SessionScope::Fixed("team".into());
        assert_eq!(scope(&spec, "a1", "r1").session, "fixed:team");
    }
}
