//! The `MemoryService` gRPC API: routes each memory type to its store, embeds and indexes the
//! types configured for semantic search.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{Clock, SystemClock, duration, pb, time};
use tonic::{Request, Response, Status};

use nightshift_llm::{ChatModel, ChatRequest};

use crate::config::MemoryConfig;
use crate::embed::Embedder;
use crate::error::{MemoryError, redact};
use crate::store::MemoryStore;
use crate::types::{MemoryRecord, MemoryType, RecallQuery, Scope, to_millis_precision};
use crate::vector::{VectorIndex, VectorItem};
use crate::{
    ChromaIndex, InMemoryStore, InProcessIndex, MiniLmEmbedder, OpenAiEmbedder, PgVectorIndex, QdrantIndex, RedisStore,
    SqlStore,
};

/// Records embedded per page while rebuilding an index.
const REINDEX_PAGE: usize = 256;
/// Records per Store call.
pub const MAX_RECORDS_PER_STORE: usize = 1000;
/// Longest record content, in bytes.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// Reserved prefix of the vector index's own metadata keys; user keys get `m.`.
const NS: &str = "ns.";

/// The memory service.
#[derive(Clone)]
pub struct MemoryService {
    stores: HashMap<MemoryType, Arc<dyn MemoryStore>>,
    index: Option<Arc<dyn VectorIndex>>,
    embedder: Option<Arc<dyn Embedder>>,
    indexed: HashSet<MemoryType>,
    working_ttl: Duration,
    summarizer: Option<Arc<dyn ChatModel>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryService")
            .field("stores", &self.stores)
            .field("index", &self.index)
            .field("embedder", &self.embedder)
            .field("indexed", &self.indexed)
            .field("summarizer", &self.summarizer.is_some())
            .finish_non_exhaustive()
    }
}

/// The gRPC status of a memory error; backend details are logged, not returned.
pub fn status_from_memory(e: MemoryError) -> Status {
    match e {
        MemoryError::Invalid(m) => Status::invalid_argument(m),
        MemoryError::Unavailable(m) => Status::failed_precondition(m),
        MemoryError::Config(m) => {
            tracing::error!(error = %m, "configuration error");
            Status::internal("memory service misconfigured; see its log")
        }
        MemoryError::Corrupt(m) => {
            tracing::error!(error = %m, "corrupt stored data");
            Status::internal("stored data is corrupt; see the memory service's log")
        }
        MemoryError::Backend { backend, message } => {
            tracing::error!(backend, error = %message, "memory backend error");
            Status::unavailable(format!("{backend} backend failed; see the memory service's log"))
        }
    }
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

/// Validates a proto scope: agent id required, session `agent`, `run:<id>` or `fixed:<id>`.
fn scope_from_pb(field: &str, s: Option<&pb::MemoryScope>) -> Result<Scope, Status> {
    let s = s.ok_or_else(|| invalid(field, "is required"))?;
    if s.agent_id.trim().is_empty() {
        return Err(invalid(&format!("{field}.agent_id"), "is required"));
    }
    if s.agent_id.len() > 256 {
        return Err(invalid(&format!("{field}.agent_id"), "is too long (max 256 bytes)"));
    }
    let ok = match s.session.as_str() {
        "agent" => true,
        other => other
            .strip_prefix("run:")
            .or_else(|| other.strip_prefix("fixed:"))
            .is_some_and(|id| !id.is_empty() && id.len() <= 128),
    };
    if !ok {
        return Err(invalid(
            &format!("{field}.session"),
            format!("'{}' is not one of agent, run:<run_id>, fixed:<id>", s.session),
        ));
    }
    Ok(Scope::new(s.agent_id.clone(), s.session.clone()))
}

fn type_from_pb(field: &str, t: i32, unspecified: Option<MemoryType>) -> Result<Option<MemoryType>, Status> {
    match pb::MemoryType::try_from(t) {
        Ok(pb::MemoryType::Unspecified) => Ok(unspecified),
        Ok(pb::MemoryType::Working) => Ok(Some(MemoryType::Working)),
        Ok(pb::MemoryType::Episodic) => Ok(Some(MemoryType::Episodic)),
        Ok(pb::MemoryType::LongTerm) => Ok(Some(MemoryType::LongTerm)),
        Ok(pb::MemoryType::Procedural) => Ok(Some(MemoryType::Procedural)),
        Err(_) => Err(invalid(field, format!("unknown memory type {t}"))),
    }
}

fn type_to_pb(t: MemoryType) -> pb::MemoryType {
    match t {
        MemoryType::Working => pb::MemoryType::Working,
        MemoryType::Episodic => pb::MemoryType::Episodic,
        MemoryType::LongTerm => pb::MemoryType::LongTerm,
        MemoryType::Procedural => pb::MemoryType::Procedural,
    }
}

/// The proto form of a record (`ttl` is what remains at `now`).
pub fn record_to_pb(r: &MemoryRecord, now: DateTime<Utc>) -> pb::MemoryRecord {
    pb::MemoryRecord {
        id: r.id.clone(),
        r#type: type_to_pb(r.kind) as i32,
        scope: Some(pb::MemoryScope { agent_id: r.scope.agent_id.clone(), session: r.scope.session.clone() }),
        content: r.content.clone(),
        metadata: r.metadata.clone(),
        run_id: r.run_id.clone(),
        created_at: Some(time::to_pb(r.created_at)),
        ttl: r.expires_at.map(|e| duration::to_pb((e - now).to_std().unwrap_or_default())),
        summary: r.summary,
    }
}

fn vector_metadata(r: &MemoryRecord) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = r.metadata.iter().map(|(k, v)| (format!("m.{k}"), v.clone())).collect();
    m.insert(format!("{NS}agent"), r.scope.agent_id.clone());
    m.insert(format!("{NS}session"), r.scope.session.clone());
    m.insert(format!("{NS}type"), r.kind.as_str().to_owned());
    m
}

impl MemoryService {
    /// A service over one store per memory type (every type must have one), without search.
    pub fn new(stores: HashMap<MemoryType, Arc<dyn MemoryStore>>) -> Result<Self, MemoryError> {
        if let Some(missing) = MemoryType::ALL.into_iter().find(|t| !stores.contains_key(t)) {
            return Err(MemoryError::Config(format!("no store configured for {missing} memory")));
        }
        Ok(Self {
            stores,
            index: None,
            embedder: None,
            indexed: [MemoryType::LongTerm, MemoryType::Procedural].into(),
            working_ttl: Duration::from_secs(24 * 3600),
            summarizer: None,
            clock: Arc::new(SystemClock),
        })
    }

    /// Enables Search: records of the `indexed` types are embedded and indexed on Store.
    pub fn with_search(
        mut self,
        index: Arc<dyn VectorIndex>,
        embedder: Arc<dyn Embedder>,
        indexed: impl IntoIterator<Item = MemoryType>,
    ) -> Result<Self, MemoryError> {
        if index.dims() != embedder.dims() {
            return Err(MemoryError::Config(format!(
                "vector index has {} dimensions but embedder {} produces {}",
                index.dims(),
                embedder.name(),
                embedder.dims()
            )));
        }
        self.index = Some(index);
        self.embedder = Some(embedder);
        self.indexed = indexed.into_iter().collect();
        Ok(self)
    }

    /// Lifetime of working memory stored without a TTL.
    pub fn with_working_ttl(mut self, ttl: Duration) -> Self {
        self.working_ttl = ttl;
        self
    }

    /// Enables Summarize with this LLM.
    pub fn with_summarizer(mut self, model: Arc<dyn ChatModel>) -> Self {
        self.summarizer = Some(model);
        self
    }

    /// Uses `clock` for creation times and TTLs (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the service from configuration, connecting to every backend. An unreachable or
    /// malformed backend is an error (never a silent fall back to memory).
    pub async fn from_config(cfg: &MemoryConfig) -> Result<Self, MemoryError> {
        let mut by_url: HashMap<String, Arc<dyn MemoryStore>> = HashMap::new();
        let mut stores = HashMap::new();
        for kind in MemoryType::ALL {
            let url = cfg.stores.url(kind).trim();
            let store = match by_url.get(url) {
                Some(s) => s.clone(),
                None => {
                    let s = connect_store(url)
                        .await
                        .map_err(|e| MemoryError::Config(format!("stores.{kind} ({}): {e}", redact(url))))?;
                    by_url.insert(url.to_owned(), s.clone());
                    s
                }
            };
            tracing::info!(memory_type = %kind, backend = store.backend(), "memory store ready");
            stores.insert(kind, store);
        }
        let mut service = Self::new(stores)?.with_working_ttl(cfg.working_ttl);
        if let Some(model) = cfg.summarizer.model_config()? {
            let chat = nightshift_llm::model_from_config(&model)
                .map_err(|e| MemoryError::Config(format!("summarizer: {e}")))?;
            service = service.with_summarizer(chat);
        }
        let embedder = connect_embedder(cfg).await?;
        let url = cfg.vector.url.trim();
        match (url.is_empty(), embedder) {
            (true, None) => Ok(service),
            (true, Some(_)) => Err(MemoryError::Config("embedder is set but vector.url is empty".into())),
            (false, None) => Err(MemoryError::Config("vector.url is set but embedder.kind is none".into())),
            (false, Some(embedder)) => {
                let index = connect_index(url, &cfg.vector.api_key_env, embedder.dims())
                    .await
                    .map_err(|e| MemoryError::Config(format!("vector.url ({}): {e}", redact(url))))?;
                let mut indexed = Vec::new();
                for (i, t) in cfg.index_types.iter().enumerate() {
                    indexed.push(t.parse().map_err(|e| MemoryError::Config(format!("index_types[{i}]: {e}")))?);
                }
                let service = service.with_search(index, embedder, indexed)?;
                if url == "inprocess://" {
                    // The in-process index starts empty: rebuild it from the stores.
                    let started = std::time::Instant::now();
                    let n = service.reindex().await?;
                    tracing::info!(
                        records = n,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "in-process index rebuilt"
                    );
                }
                Ok(service)
            }
        }
    }

    /// The tonic server wrapping this service.
    pub fn into_server(self) -> pb::memory_service_server::MemoryServiceServer<Self> {
        pb::memory_service_server::MemoryServiceServer::new(self)
    }

    fn store(&self, kind: MemoryType) -> &Arc<dyn MemoryStore> {
        // `new` guarantees a store for every type.
        &self.stores[&kind]
    }

    fn record_from_pb(&self, i: usize, r: &pb::MemoryRecord, now: DateTime<Utc>) -> Result<MemoryRecord, Status> {
        let f = |name: &str| format!("records[{i}].{name}");
        let kind = type_from_pb(&f("type"), r.r#type, None)?.ok_or_else(|| invalid(&f("type"), "is required"))?;
        let scope = scope_from_pb(&f("scope"), r.scope.as_ref())?;
        if r.content.trim().is_empty() {
            return Err(invalid(&f("content"), "is required"));
        }
        if r.content.len() > MAX_CONTENT_BYTES {
            return Err(invalid(
                &f("content"),
                format!("is too long ({} bytes, max {MAX_CONTENT_BYTES})", r.content.len()),
            ));
        }
        if r.id.len() > 128 {
            return Err(invalid(&f("id"), "is too long (max 128 bytes)"));
        }
        let created_at = match &r.created_at {
            Some(ts) => time::from_pb(ts).ok_or_else(|| invalid(&f("created_at"), "is not a valid timestamp"))?,
            None => now,
        };
        let ttl = match &r.ttl {
            Some(d) => {
                let d = duration::from_pb(d).map_err(|e| invalid(&f("ttl"), e))?;
                if d.is_zero() {
                    return Err(invalid(&f("ttl"), "must be positive"));
                }
                Some(d)
            }
            None if kind == MemoryType::Working => Some(self.working_ttl),
            None => None,
        };
        let expires_at = ttl
            .map(|d| chrono::Duration::from_std(d).map(|d| now + d))
            .transpose()
            .map_err(|_| invalid(&f("ttl"), "is too long"))?;
        Ok(MemoryRecord {
            id: if r.id.is_empty() { uuid::Uuid::now_v7().to_string() } else { r.id.clone() },
            kind,
            scope,
            content: r.content.clone(),
            metadata: r.metadata.clone(),
            run_id: r.run_id.clone(),
            created_at: to_millis_precision(created_at),
            expires_at: expires_at.map(to_millis_precision),
            summary: r.summary,
            archived: false,
        })
    }

    /// Embeds and indexes every live record of the indexed types (for an index that does not
    /// persist, such as the in-process one, after a restart). Returns how many were indexed.
    pub async fn reindex(&self) -> Result<u64, MemoryError> {
        let (Some(index), Some(embedder)) = (&self.index, &self.embedder) else {
            return Ok(0);
        };
        let mut n = 0u64;
        for kind in MemoryType::ALL.into_iter().filter(|k| self.indexed.contains(k)) {
            let store = self.store(kind);
            let mut after: Option<String> = None;
            loop {
                let page = store.scan(kind, after.as_deref(), REINDEX_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                let texts: Vec<String> = page.iter().map(|r| r.content.clone()).collect();
                let vectors = embedder.embed(&texts).await?;
                let items: Vec<VectorItem> = page
                    .iter()
                    .zip(vectors)
                    .map(|(r, vector)| VectorItem { id: r.id.clone(), vector, metadata: vector_metadata(r) })
                    .collect();
                index.upsert(&items).await?;
                n += items.len() as u64;
                if page.len() < REINDEX_PAGE {
                    break;
                }
            }
        }
        Ok(n)
    }

    /// Stores records (validated, ids assigned), embedding and indexing the indexed types
    /// first so that an embedding failure stores nothing.
    pub async fn store_records(&self, records: Vec<MemoryRecord>) -> Result<Vec<String>, MemoryError> {
        let mut vectors = Vec::new();
        if let (Some(index), Some(embedder)) = (&self.index, &self.embedder) {
            let to_index: Vec<&MemoryRecord> = records.iter().filter(|r| self.indexed.contains(&r.kind)).collect();
            if !to_index.is_empty() {
                let texts: Vec<String> = to_index.iter().map(|r| r.content.clone()).collect();
                let embedded = embedder.embed(&texts).await?;
                vectors = to_index
                    .iter()
                    .zip(embedded)
                    .map(|(r, vector)| VectorItem { id: r.id.clone(), vector, metadata: vector_metadata(r) })
                    .collect();
                index.upsert(&vectors).await?;
            }
        }
        let mut by_type: BTreeMap<MemoryType, Vec<MemoryRecord>> = BTreeMap::new();
        for r in &records {
            by_type.entry(r.kind).or_default().push(r.clone());
        }
        for (kind, batch) in by_type {
            if let Err(e) = self.store(kind).put(&batch).await {
                // Keep the index consistent with what was stored.
                if let Some(index) = &self.index {
                    let ids: Vec<String> = vectors.iter().map(|v| v.id.clone()).collect();
                    if let Err(e2) = index.delete(&ids).await {
                        tracing::warn!(error = %e2, "could not undo index upsert after a failed store");
                    }
                }
                return Err(e);
            }
        }
        Ok(records.into_iter().map(|r| r.id).collect())
    }
}

/// What happens to the records a summary replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep them as they are.
    Keep,
    /// Exclude them from Recall; still readable by id.
    Archive,
    /// Delete them.
    Delete,
}

/// Rough token count (~4 characters per token for English text); good enough for budgets.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

const SUMMARY_SYSTEM: &str = "You compress the episodic memory of a background agent. Write one concise summary \
    of the entries below that keeps the facts, decisions, results, failures and open questions a later run \
    needs. Plain text, no preamble.";

impl MemoryService {
    /// Summarizes the episodic history of `scope` when it exceeds `budget` tokens: the oldest
    /// records (keeping the newest that fit in half the budget) are replaced by one summary record
    /// written by `model`, and handled per `retention`. Returns the summary (none if within
    /// budget) and how many records it replaced.
    pub async fn summarize_scope(
        &self,
        model: &dyn ChatModel,
        scope: &Scope,
        budget: usize,
        retention: Retention,
    ) -> Result<(Option<MemoryRecord>, usize), MemoryError> {
        let store = self.store(MemoryType::Episodic);
        // Newest first; bounded so one call cannot load an unbounded history.
        let history = store.recent(&RecallQuery::new(scope.clone(), MemoryType::Episodic, 10_000)).await?;
        let total: usize = history.iter().map(|r| estimate_tokens(&r.content)).sum();
        if total <= budget {
            return Ok((None, 0));
        }
        let mut kept_tokens = 0;
        let mut split = 0;
        for r in &history {
            let t = estimate_tokens(&r.content);
            if kept_tokens + t > budget / 2 {
                break;
            }
            kept_tokens += t;
            split += 1;
        }
        let mut old: Vec<MemoryRecord> = history[split..].to_vec();
        if old.len() < 2 && split > 0 {
            // Summarizing a single record saves little; fold in the next newest as well.
            split -= 1;
            old = history[split..].to_vec();
        }
        old.reverse();
        let mut prompt = String::from("Entries, oldest first:\n");
        for r in &old {
            let tag = if r.summary { " (earlier summary)" } else { "" };
            prompt.push_str(&format!("- [{}{tag}] {}\n", r.created_at.to_rfc3339(), r.content));
        }
        let answer = model
            .chat(&ChatRequest::new(SUMMARY_SYSTEM, prompt))
            .await
            .map_err(|e| MemoryError::backend("summarizer", e))?;
        let content = answer.content.trim().to_owned();
        if content.is_empty() {
            return Err(MemoryError::backend("summarizer", "the model returned an empty summary"));
        }
        let newest = old.last().map(|r| r.created_at).unwrap_or_else(|| self.clock.now());
        let ids: Vec<String> = old.iter().map(|r| r.id.clone()).collect();
        let summary = MemoryRecord {
            id: uuid::Uuid::now_v7().to_string(),
            kind: MemoryType::Episodic,
            scope: scope.clone(),
            content,
            metadata: [
                ("summarized_records".to_owned(), old.len().to_string()),
                ("summary_from".to_owned(), old.first().map(|r| r.created_at.to_rfc3339()).unwrap_or_default()),
                ("summary_to".to_owned(), newest.to_rfc3339()),
            ]
            .into(),
            run_id: String::new(),
            // Where the history it replaces ended, so Recall keeps chronological order.
            created_at: to_millis_precision(newest),
            expires_at: None,
            summary: true,
            archived: false,
        };
        self.store_records(vec![summary.clone()]).await?;
        match retention {
            Retention::Keep => {}
            Retention::Archive => {
                store.set_archived(scope, &ids, true).await?;
            }
            Retention::Delete => {
                store.delete(scope, Some(MemoryType::Episodic), &ids).await?;
                if let Some(index) = &self.index
                    && self.indexed.contains(&MemoryType::Episodic)
                {
                    index.delete(&ids).await?;
                }
            }
        }
        Ok((Some(summary), old.len()))
    }
}

async fn connect_store(url: &str) -> Result<Arc<dyn MemoryStore>, MemoryError> {
    if url.is_empty() {
        return Err(MemoryError::Config("is empty: name a store (memory://, redis://, sqlite://, postgres://)".into()));
    }
    if url == "memory://" {
        Ok(Arc::new(InMemoryStore::new()))
    } else if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(Arc::new(RedisStore::connect(url).await?))
    } else if url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(SqlStore::connect(url).await?))
    } else {
        Err(MemoryError::Config("unsupported store URL: use memory://, redis://, sqlite:// or postgres://".into()))
    }
}

async fn connect_index(url: &str, api_key_env: &str, dims: usize) -> Result<Arc<dyn VectorIndex>, MemoryError> {
    if url == "inprocess://" {
        return Ok(Arc::new(InProcessIndex::new(dims)));
    }
    if let Some(rest) = url.strip_prefix("pgvector://") {
        let (db, table) = rest.split_once("?table=").unwrap_or((rest, "nightshift_memory_vectors"));
        return Ok(Arc::new(PgVectorIndex::connect(&format!("postgres://{db}"), table, dims).await?));
    }
    if let Some((scheme, rest)) = url
        .strip_prefix("qdrant://")
        .map(|r| ("http", r))
        .or_else(|| url.strip_prefix("qdrants://").map(|r| ("https", r)))
    {
        let (host, collection) = rest.split_once('/').unwrap_or((rest, "nightshift_memory"));
        let collection = if collection.is_empty() { "nightshift_memory" } else { collection };
        let key = match api_key_env {
            "" => None,
            var => Some(
                std::env::var(var).map_err(|_| MemoryError::Config(format!("vector.api_key_env: {var} is not set")))?,
            ),
        };
        return Ok(Arc::new(QdrantIndex::connect(&format!("{scheme}://{host}"), collection, dims, key).await?));
    }
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("chroma://") {
        ("http", rest)
    } else if let Some(rest) = url.strip_prefix("chromas://") {
        ("https", rest)
    } else {
        return Err(MemoryError::Config(
            "unsupported vector URL: use inprocess://, chroma://HOST:PORT/COLLECTION, \
             qdrant://HOST:PORT/COLLECTION or pgvector://USER@HOST/DB?table=NAME"
                .into(),
        ));
    };
    let (host, collection) = rest.split_once('/').unwrap_or((rest, "nightshift_memory"));
    let collection = if collection.is_empty() { "nightshift_memory" } else { collection };
    Ok(Arc::new(ChromaIndex::connect(&format!("{scheme}://{host}"), collection, dims).await?))
}

async fn connect_embedder(cfg: &MemoryConfig) -> Result<Option<Arc<dyn Embedder>>, MemoryError> {
    let e = &cfg.embedder;
    match e.kind.as_str() {
        "" | "none" => Ok(None),
        "minilm" => {
            if e.model_path.is_empty() {
                return Err(MemoryError::Config(
                    "embedder.model_path is required for minilm (see crates/memory/scripts/fetch-model.sh)".into(),
                ));
            }
            let path = e.model_path.clone();
            let m = tokio::task::spawn_blocking(move || MiniLmEmbedder::load(path))
                .await
                .map_err(|err| MemoryError::Config(format!("loading the embedder: {err}")))??;
            Ok(Some(Arc::new(m)))
        }
        "openai" => {
            if e.base_url.is_empty() || e.model.is_empty() || e.dims == 0 {
                return Err(MemoryError::Config("embedder: openai needs base_url, model and dims".into()));
            }
            let key =
                if e.api_key_env.is_empty() {
                    None
                } else {
                    Some(std::env::var(&e.api_key_env).map_err(|_| {
                        MemoryError::Config(format!("embedder.api_key_env: {} is not set", e.api_key_env))
                    })?)
                };
            Ok(Some(Arc::new(OpenAiEmbedder::new(&e.base_url, &e.model, key, e.dims)?)))
        }
        other => Err(MemoryError::Config(format!("embedder.kind: '{other}' is not one of none, minilm, openai"))),
    }
}

#[tonic::async_trait]
impl pb::memory_service_server::MemoryService for MemoryService {
    async fn store(&self, req: Request<pb::StoreMemoryRequest>) -> Result<Response<pb::StoreMemoryResponse>, Status> {
        let req = req.into_inner();
        if req.records.is_empty() {
            return Err(invalid("records", "is empty"));
        }
        if req.records.len() > MAX_RECORDS_PER_STORE {
            return Err(invalid("records", format!("has {} records, max {MAX_RECORDS_PER_STORE}", req.records.len())));
        }
        let now = self.clock.now();
        let records = req
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| self.record_from_pb(i, r, now))
            .collect::<Result<Vec<_>, _>>()?;
        let kinds: Vec<&'static str> = records.iter().map(|r| r.kind.as_str()).collect();
        let ids = self.store_records(records).await.map_err(status_from_memory)?;
        for kind in kinds {
            metrics::counter!("nightshift_memory_records_stored_total", "type" => kind).increment(1);
        }
        Ok(Response::new(pb::StoreMemoryResponse { ids }))
    }

    async fn recall(&self, req: Request<pb::RecallRequest>) -> Result<Response<pb::RecallResponse>, Status> {
        let req = req.into_inner();
        let scope = scope_from_pb("scope", req.scope.as_ref())?;
        let kind = type_from_pb("type", req.r#type, None)?.ok_or_else(|| invalid("type", "is required"))?;
        let limit = match req.limit {
            0 => 10,
            n if n > 1000 => return Err(invalid("limit", format!("{n} is over the maximum of 1000"))),
            n => n as usize,
        };
        let before = match &req.before {
            Some(ts) => Some(time::from_pb(ts).ok_or_else(|| invalid("before", "is not a valid timestamp"))?),
            None => None,
        };
        let mut q = RecallQuery::new(scope, kind, limit);
        q.before = before;
        q.metadata = req.metadata_filter.clone();
        let found = self.store(kind).recent(&q).await.map_err(status_from_memory)?;
        let now = self.clock.now();
        Ok(Response::new(pb::RecallResponse { records: found.iter().map(|r| record_to_pb(r, now)).collect() }))
    }

    async fn search(
        &self,
        req: Request<pb::SearchMemoryRequest>,
    ) -> Result<Response<pb::SearchMemoryResponse>, Status> {
        let req = req.into_inner();
        let scope = scope_from_pb("scope", req.scope.as_ref())?;
        if req.query.trim().is_empty() {
            return Err(invalid("query", "is required"));
        }
        if req.query.len() > MAX_CONTENT_BYTES {
            return Err(invalid("query", format!("is too long (max {MAX_CONTENT_BYTES} bytes)")));
        }
        let top_k = match req.top_k {
            0 => 5,
            n if n > 100 => return Err(invalid("top_k", format!("{n} is over the maximum of 100"))),
            n => n as usize,
        };
        let kind = type_from_pb("type", req.r#type, Some(MemoryType::LongTerm))?.unwrap_or(MemoryType::LongTerm);
        let (Some(index), Some(embedder)) = (&self.index, &self.embedder) else {
            return Err(Status::failed_precondition("semantic search is not configured (set vector.url and embedder)"));
        };
        if !self.indexed.contains(&kind) {
            return Err(invalid("type", format!("{kind} memory is not indexed for search (see index_types)")));
        }
        let started = std::time::Instant::now();
        let query = embedder.embed(std::slice::from_ref(&req.query)).await.map_err(status_from_memory)?;
        let query = query.into_iter().next().ok_or_else(|| Status::internal("embedder returned no vector"))?;
        let mut filter: BTreeMap<String, String> =
            req.metadata_filter.iter().map(|(k, v)| (format!("m.{k}"), v.clone())).collect();
        filter.insert(format!("{NS}agent"), scope.agent_id.clone());
        filter.insert(format!("{NS}session"), scope.session.clone());
        filter.insert(format!("{NS}type"), kind.as_str().to_owned());
        // Ask for a few more than needed: index entries whose records expired are dropped below.
        let hits = index.search(&query, top_k + 10, &filter).await.map_err(status_from_memory)?;
        let hits: Vec<_> = hits.into_iter().filter(|h| req.min_score.is_none_or(|m| h.score >= m)).collect();
        let ids: Vec<String> = hits.iter().map(|h| h.id.clone()).collect();
        let records = self.store(kind).get(&scope, &ids).await.map_err(status_from_memory)?;
        let by_id: HashMap<&str, &MemoryRecord> = records.iter().map(|r| (r.id.as_str(), r)).collect();
        let now = self.clock.now();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for h in &hits {
            match by_id.get(h.id.as_str()) {
                Some(r) if out.len() < top_k => {
                    out.push(pb::ScoredMemory { record: Some(record_to_pb(r, now)), score: h.score })
                }
                Some(_) => {}
                None => gone.push(h.id.clone()),
            }
        }
        if !gone.is_empty() {
            // Lazily drop vectors of records that expired or were deleted elsewhere.
            if let Err(e) = index.delete(&gone).await {
                tracing::warn!(error = %e, "could not drop stale vectors");
            }
        }
        metrics::histogram!("nightshift_memory_search_duration_seconds").record(started.elapsed().as_secs_f64());
        Ok(Response::new(pb::SearchMemoryResponse { hits: out }))
    }

    async fn summarize(&self, req: Request<pb::SummarizeRequest>) -> Result<Response<pb::SummarizeResponse>, Status> {
        let req = req.into_inner();
        let scope = scope_from_pb("scope", req.scope.as_ref())?;
        let budget = if req.token_budget == 0 { 2000 } else { req.token_budget as usize };
        let retention = match pb::SummaryRetention::try_from(req.retention) {
            Ok(pb::SummaryRetention::Unspecified | pb::SummaryRetention::Keep) => Retention::Keep,
            Ok(pb::SummaryRetention::Archive) => Retention::Archive,
            Ok(pb::SummaryRetention::Delete) => Retention::Delete,
            Err(_) => return Err(invalid("retention", format!("unknown retention {}", req.retention))),
        };
        let Some(model) = &self.summarizer else {
            return Err(Status::failed_precondition("Summarize is not configured (set [summarizer])"));
        };
        let (summary, n) =
            self.summarize_scope(model.as_ref(), &scope, budget, retention).await.map_err(status_from_memory)?;
        let now = self.clock.now();
        Ok(Response::new(pb::SummarizeResponse {
            summary: summary.map(|r| record_to_pb(&r, now)),
            summarized_records: n as u32,
        }))
    }

    async fn forget(&self, req: Request<pb::ForgetRequest>) -> Result<Response<pb::ForgetResponse>, Status> {
        let req = req.into_inner();
        let scope = scope_from_pb("scope", req.scope.as_ref())?;
        let kind = type_from_pb("type", req.r#type, None)?;
        let kinds: Vec<MemoryType> = kind.map_or_else(|| MemoryType::ALL.to_vec(), |k| vec![k]);
        let mut deleted = 0;
        for k in kinds {
            let store = self.store(k);
            // The index needs the ids; collect them before the records are gone.
            let index_ids = match &self.index {
                Some(_) if self.indexed.contains(&k) && req.ids.is_empty() => {
                    let mut q = RecallQuery::new(scope.clone(), k, usize::MAX);
                    q.include_archived = true;
                    store.recent(&q).await.map_err(status_from_memory)?.into_iter().map(|r| r.id).collect()
                }
                Some(_) if self.indexed.contains(&k) => req.ids.clone(),
                _ => Vec::new(),
            };
            deleted += store.delete(&scope, Some(k), &req.ids).await.map_err(status_from_memory)?;
            if let Some(index) = &self.index
                && !index_ids.is_empty()
            {
                index.delete(&index_ids).await.map_err(status_from_memory)?;
            }
        }
        Ok(Response::new(pb::ForgetResponse { deleted }))
    }

    async fn stats(&self, req: Request<pb::MemoryStatsRequest>) -> Result<Response<pb::MemoryStatsResponse>, Status> {
        let req = req.into_inner();
        let scope = match &req.scope {
            Some(s) => Some(scope_from_pb("scope", Some(s))?),
            None => None,
        };
        let mut types = Vec::new();
        for k in MemoryType::ALL {
            let store = self.store(k);
            let records = store.count(scope.as_ref(), k).await.map_err(status_from_memory)?;
            types.push(pb::MemoryTypeStats {
                r#type: type_to_pb(k) as i32,
                records,
                backend: store.backend().to_owned(),
            });
        }
        Ok(Response::new(pb::MemoryStatsResponse { types }))
    }
}
