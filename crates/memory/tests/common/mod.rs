//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, TimeZone, Utc};
use nightshift_core::pb::memory_service_client::MemoryServiceClient;
use nightshift_core::{ManualClock, pb};
use nightshift_memory::{
    Embedder, InProcessIndex, MemoryError, MemoryRecord, MemoryService, MemoryStore, MemoryType, SERVICE_NAME, Scope,
};
use nightshift_rpc::GrpcServer;
use tonic::transport::Channel;

/// The Redis test server (`NIGHTSHIFT_TEST_REDIS`, default `redis://127.0.0.1:6379`).
pub use nightshift_testkit::redis_url;

/// A key prefix no other test run uses.
pub fn unique_prefix() -> String {
    format!("ns_test_mem_{}", uuid::Uuid::new_v4().simple())
}

/// Deletes every key of the Redis server at [`redis_url`] under `prefix` (as laid out by
/// RedisStore: `{prefix}:*`).
pub async fn redis_cleanup(prefix: &str) {
    nightshift_testkit::redis_delete_prefix(&redis_url(), prefix).await;
}

/// 2026-01-01T00:00:00Z.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid instant")
}

/// A record created `offset_ms` after [`t0`].
pub fn record(id: &str, kind: MemoryType, scope: &Scope, offset_ms: i64, content: &str) -> MemoryRecord {
    MemoryRecord {
        id: id.into(),
        kind,
        scope: scope.clone(),
        content: content.into(),
        metadata: BTreeMap::new(),
        run_id: "run-1".into(),
        created_at: t0() + Duration::milliseconds(offset_ms),
        expires_at: None,
        summary: false,
        archived: false,
    }
}

/// A metadata map.
pub fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// A memory service on its own gRPC server (ephemeral port), and a client of it.
pub struct Running {
    pub client: MemoryServiceClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("server task");
    }
}

/// A service over `store` (every type in it) on `clock`, searching long-term memory with
/// `embedder` in an in-process index when there is one.
pub fn service_over(
    clock: &ManualClock,
    store: Arc<dyn MemoryStore>,
    embedder: Option<Arc<dyn Embedder>>,
) -> MemoryService {
    let stores: HashMap<MemoryType, Arc<dyn MemoryStore>> =
        MemoryType::ALL.iter().map(|t| (*t, store.clone())).collect();
    let s = MemoryService::new(stores).expect("service").with_clock(Arc::new(clock.clone()));
    match embedder {
        Some(e) => s.with_search(Arc::new(InProcessIndex::new(DIMS)), e, [MemoryType::LongTerm]).expect("search"),
        None => s,
    }
}

/// The `agent` session scope of `agent`, as a request names it.
pub fn agent_scope(agent: &str) -> Option<pb::MemoryScope> {
    Some(pb::MemoryScope { agent_id: agent.into(), session: "agent".into() })
}

/// A record of `agent`'s own scope, as a Store request carries it.
pub fn pb_record(t: pb::MemoryType, agent: &str, content: &str, meta: &[(&str, &str)]) -> pb::MemoryRecord {
    pb::MemoryRecord {
        r#type: t as i32,
        scope: agent_scope(agent),
        content: content.into(),
        metadata: meta.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        ..Default::default()
    }
}

/// Serves `service` over real gRPC.
pub async fn serve(service: MemoryService) -> Running {
    let mut server = GrpcServer::new();
    server.routes().add_service(service.into_server());
    server.serving(SERVICE_NAME);
    let listener = GrpcServer::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
    });
    let client = MemoryServiceClient::connect(format!("http://{addr}")).await.expect("connect");
    Running { client, stop: Some(tx), task }
}

/// Bag-of-words hashing embedder: texts sharing words are similar. Fast and deterministic.
#[derive(Debug)]
pub struct WordsEmbedder;

pub const DIMS: usize = 64;

#[async_trait]
impl Embedder for WordsEmbedder {
    fn name(&self) -> &str {
        "words"
    }

    fn dims(&self) -> usize {
        DIMS
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, MemoryError> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0.0f32; DIMS];
                for w in t.to_lowercase().split_whitespace() {
                    let h = w.bytes().fold(5381u64, |h, b| h.wrapping_mul(33) ^ u64::from(b));
                    v[(h % DIMS as u64) as usize] += 1.0;
                }
                v
            })
            .collect())
    }
}

/// A summarizer that reports how many entries it saw.
#[derive(Debug, Default)]
pub struct CountingModel {
    /// The user message of every call.
    pub prompts: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl nightshift_llm::ChatModel for CountingModel {
    async fn chat(
        &self,
        req: &nightshift_llm::ChatRequest,
    ) -> Result<nightshift_llm::ChatResponse, nightshift_llm::LlmError> {
        let prompt = match req.messages.first() {
            Some(nightshift_llm::Message::User { content }) => content.clone(),
            _ => String::new(),
        };
        let entries = prompt.lines().filter(|l| l.starts_with("- [")).count();
        self.prompts.lock().expect("lock").push(prompt);
        Ok(nightshift_llm::ChatResponse {
            content: format!("summary of {entries} entries"),
            tool_calls: vec![],
            usage: Default::default(),
            finish_reason: nightshift_llm::FinishReason::Stop,
            model: "counting".into(),
            latency: std::time::Duration::ZERO,
            attempts: 1,
        })
    }
}
