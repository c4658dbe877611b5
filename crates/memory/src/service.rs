//! The [`MemoryService`]: routes each memory type to its store, embeds and indexes the types
//! configured for semantic search. Built from configuration by [`MemoryService::from_config`];
//! served over gRPC by the handlers in `grpc`; Summarize's core is in `summarize`.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use nightshift_core::{Clock, SystemClock, pb};
use nightshift_llm::ChatModel;

use crate::config::MemoryConfig;
use crate::convert::vector_metadata;
use crate::embed::{self, Embedder};
use crate::error::{MemoryError, redact};
use crate::store::{self, MemoryStore};
use crate::types::{MemoryRecord, MemoryType};
use crate::vector::{self, VectorIndex, VectorItem};

mod access;
mod grpc;
mod summarize;

use summarize::{AutoSummarize, ScopeLocks};
pub use summarize::{Budget, Retention, estimate_tokens, summary_request};

/// Records embedded per page while rebuilding an index.
const REINDEX_PAGE: usize = 256;
/// Records per Store call.
pub const MAX_RECORDS_PER_STORE: usize = 1000;
/// Longest record content, in bytes.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// The memory service.
#[derive(Clone)]
pub struct MemoryService {
    stores: HashMap<MemoryType, Arc<dyn MemoryStore>>,
    index: Option<Arc<dyn VectorIndex>>,
    embedder: Option<Arc<dyn Embedder>>,
    indexed: HashSet<MemoryType>,
    working_ttl: Duration,
    summarizer: Option<Summarizer>,
    /// The scopes being summarized (one pass per scope at a time).
    summarizing: Arc<ScopeLocks>,
    clock: Arc<dyn Clock>,
    /// Who may touch which memory.
    access: access::Access,
}

/// The LLM of Summarize, and whether it also summarizes on its own.
#[derive(Clone)]
struct Summarizer {
    model: Arc<dyn ChatModel>,
    /// Summarizing after a Store of episodes; `None`: only the Summarize RPC does.
    auto: Option<AutoSummarize>,
}

impl std::fmt::Debug for MemoryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryService")
            .field("stores", &self.stores)
            .field("index", &self.index)
            .field("embedder", &self.embedder)
            .field("indexed", &self.indexed)
            .field("summarizer", &self.summarizer.is_some())
            .field("auto_summarize", &self.summarizer.as_ref().and_then(|s| s.auto.as_ref()))
            .finish_non_exhaustive()
    }
}

impl MemoryService {
    /// Checks memory calls with `authority` (the manager): a worker touches only the memory
    /// of the run it holds, an operator only that of agents in its namespaces. Without it, a
    /// server with authentication refuses the calls it would have to check.
    pub fn with_authority(mut self, authority: Option<Arc<dyn nightshift_rpc::MemoryAuthority>>) -> Self {
        self.access = access::Access::new(authority);
        self
    }

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
            summarizing: Arc::default(),
            access: access::Access::default(),
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

    /// Enables Summarize with this LLM (the RPC only, until [`Self::with_auto_summarize`]).
    pub fn with_summarizer(mut self, model: Arc<dyn ChatModel>) -> Self {
        self.summarizer = Some(Summarizer { model, auto: None });
        self
    }

    /// After [`Self::with_summarizer`]: after every Store of episodes, a scope whose unarchived
    /// episodic history is over `budget` is summarized in the background, the replaced records
    /// handled per `retention` (archive or delete: keeping them would leave the history over
    /// budget and summarize it again on every Store). An unlimited budget turns this off, and so
    /// does the lack of a summarizer (there is nothing to summarize with).
    pub fn with_auto_summarize(mut self, budget: Budget, retention: Retention) -> Self {
        if let Some(s) = &mut self.summarizer {
            s.auto = (!budget.is_unlimited()).then(|| AutoSummarize::new(budget, retention));
        }
        self
    }

    /// Whether a Store of episodes may start an automatic summary.
    fn auto_summarizes(&self) -> bool {
        self.summarizer.as_ref().is_some_and(|s| s.auto.is_some())
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
                    let s = store::connect(url)
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
            service = service.with_summarizer(chat).with_auto_summarize(
                Budget {
                    tokens: cfg.summarizer.budget_tokens as usize,
                    records: cfg.summarizer.budget_episodes as usize,
                },
                cfg.summarizer.retention.into(),
            );
        }
        let embedder = embed::connect(&cfg.embedder).await?;
        let url = cfg.vector.url.trim();
        match (url.is_empty(), embedder) {
            (true, None) => Ok(service),
            (true, Some(_)) => Err(MemoryError::Config("embedder is set but vector.url is empty".into())),
            (false, None) => Err(MemoryError::Config("vector.url is set but embedder.kind is none".into())),
            (false, Some(embedder)) => {
                let index = vector::connect(url, &cfg.vector.api_key_env, embedder.dims())
                    .await
                    .map_err(|e| MemoryError::Config(format!("vector.url ({}): {e}", redact(url))))?;
                let service = service.with_search(index, embedder, cfg.index_types.iter().copied())?;
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
        pb::memory_service_server::MemoryServiceServer::new(self).max_decoding_message_size(4 << 20)
    }

    fn store(&self, kind: MemoryType) -> &Arc<dyn MemoryStore> {
        // `new` guarantees a store for every type.
        &self.stores[&kind]
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
