//! The `nightshift.v1.MemoryService` gRPC handlers: validate requests, call the service core,
//! answer in proto form.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use nightshift_core::{pb, time};
use tonic::{Request, Response, Status};

use super::summarize::count_summary;
use super::{Budget, MAX_CONTENT_BYTES, MAX_RECORDS_PER_STORE, MemoryService};
use crate::convert::{
    invalid, record_from_pb, record_to_pb, retention_from_pb, scope_from_pb, status_from_memory, type_from_pb,
    type_to_pb, vector_filter,
};
use crate::embed::Embedder;
use crate::error::MemoryError;
use crate::types::{MemoryRecord, MemoryType, RecallQuery, Scope};
use crate::vector::VectorIndex;

/// Most records one recall returns.
const MAX_RECALL: u32 = 1000;
/// Most hits one search returns.
const MAX_TOP_K: u32 = 100;

/// `n` (a request's `field`) if it is at most `max`.
fn at_most(field: &str, n: u32, max: u32) -> Result<usize, Status> {
    if n > max {
        return Err(invalid(field, format!("{n} is over the maximum of {max}")));
    }
    Ok(n as usize)
}

/// A search's text: not blank, not over the longest content.
fn check_query(query: &str) -> Result<(), Status> {
    if query.trim().is_empty() {
        return Err(invalid("query", "is required"));
    }
    if query.len() > MAX_CONTENT_BYTES {
        return Err(invalid("query", format!("is too long (max {MAX_CONTENT_BYTES} bytes)")));
    }
    Ok(())
}

/// How a RecallForRun's search went.
enum Searched {
    NotAsked,
    Found(Vec<pb::ScoredMemory>),
    /// No index, or the type is not indexed.
    Unavailable,
    Failed(String),
}

impl MemoryService {
    /// The access check of a call on one scope (`None`: the whole store).
    async fn check_scope<T>(&self, req: &Request<T>, scope: Option<&pb::MemoryScope>) -> Result<(), Status> {
        self.access.check(req, scope.as_slice()).await
    }

    /// The index and embedder that search `kind`, or why there are none.
    fn searcher(&self, kind: MemoryType) -> Result<(&dyn VectorIndex, &dyn Embedder), Status> {
        let (Some(index), Some(embedder)) = (&self.index, &self.embedder) else {
            return Err(Status::failed_precondition("semantic search is not configured (set vector.url and embedder)"));
        };
        if !self.indexed.contains(&kind) {
            return Err(invalid("type", format!("{kind} memory is not indexed for search (see index_types)")));
        }
        Ok((index.as_ref(), embedder.as_ref()))
    }

    /// The records of `kind` in `scope` nearest `query`, best first, at most `top_k`.
    async fn search_scope(
        &self,
        scope: &Scope,
        kind: MemoryType,
        query: &str,
        top_k: usize,
        metadata: &BTreeMap<String, String>,
        min_score: Option<f32>,
    ) -> Result<Vec<pb::ScoredMemory>, Status> {
        let (index, embedder) = self.searcher(kind)?;
        let started = std::time::Instant::now();
        let filter = vector_filter(scope, kind, metadata);
        // A scope holding nothing of this type has nothing to find: no embedding, no index query
        // (most agents never write long-term facts, and every run of theirs searches). An index
        // that knows so at once (the in-process one) spares the store's count too — a read per
        // run on the run path.
        if index.holds_none(&filter)
            || self.store(kind).count(Some(scope), kind).await.map_err(status_from_memory)? == 0
        {
            return Ok(Vec::new());
        }
        let query = embedder.embed(&[query.to_owned()]).await.map_err(status_from_memory)?;
        let query = query.into_iter().next().ok_or_else(|| Status::internal("embedder returned no vector"))?;
        // Ask for a few more than needed: index entries whose records expired are dropped below.
        let hits = index.search(&query, top_k + 10, &filter).await.map_err(status_from_memory)?;
        let hits: Vec<_> = hits.into_iter().filter(|h| min_score.is_none_or(|m| h.score >= m)).collect();
        let ids: Vec<String> = hits.iter().map(|h| h.id.clone()).collect();
        let records = self.store(kind).get(scope, &ids).await.map_err(status_from_memory)?;
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
        Ok(out)
    }

    /// A run's episodes and procedural notes (`None`: not asked, nothing), in one read when
    /// one store holds both types.
    async fn recall_pair(&self, queries: [Option<RecallQuery>; 2]) -> Result<[Vec<MemoryRecord>; 2], MemoryError> {
        let recall = |q: Option<RecallQuery>| async move {
            match q {
                Some(q) => self.store(q.kind).recent(&q).await,
                None => Ok(Vec::new()),
            }
        };
        match queries {
            [Some(a), Some(b)] if Arc::ptr_eq(self.store(a.kind), self.store(b.kind)) => {
                let mut found = self.store(a.kind).recent_each(&[a, b]).await?.into_iter();
                Ok([found.next().unwrap_or_default(), found.next().unwrap_or_default()])
            }
            [a, b] => {
                let (a, b) = tokio::try_join!(recall(a), recall(b))?;
                Ok([a, b])
            }
        }
    }
}

#[tonic::async_trait]
impl pb::memory_service_server::MemoryService for MemoryService {
    async fn store(&self, req: Request<pb::StoreMemoryRequest>) -> Result<Response<pb::StoreMemoryResponse>, Status> {
        if req.get_ref().records.len() <= MAX_RECORDS_PER_STORE {
            let scopes: Vec<_> = req.get_ref().records.iter().filter_map(|r| r.scope.as_ref()).collect();
            self.access.check(&req, &scopes).await?;
        }
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
            .map(|(i, r)| record_from_pb(i, r, now, self.working_ttl))
            .collect::<Result<Vec<_>, _>>()?;
        let kinds: Vec<&'static str> = records.iter().map(|r| r.kind.as_str()).collect();
        // Scopes that got a new episode may now be over the summary budget.
        let grown: Option<BTreeSet<Scope>> = self.auto_summarizes().then(|| {
            records.iter().filter(|r| r.kind == MemoryType::Episodic && !r.summary).map(|r| r.scope.clone()).collect()
        });
        let ids = self.store_records(records).await.map_err(status_from_memory)?;
        for kind in kinds {
            metrics::counter!("nightshift_memory_records_stored_total", "type" => kind).increment(1);
        }
        if let Some(grown) = grown {
            self.summarize_in_background(grown);
        }
        Ok(Response::new(pb::StoreMemoryResponse { ids }))
    }

    async fn recall(&self, req: Request<pb::RecallRequest>) -> Result<Response<pb::RecallResponse>, Status> {
        self.check_scope(&req, req.get_ref().scope.as_ref()).await?;
        let req = req.into_inner();
        let scope = scope_from_pb("scope", req.scope.as_ref())?;
        let kind = type_from_pb("type", req.r#type, None)?.ok_or_else(|| invalid("type", "is required"))?;
        let limit = match at_most("limit", req.limit, MAX_RECALL)? {
            0 => 10,
            n => n,
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
        self.check_scope(&req, req.get_ref().scope.as_ref()).await?;
        let req = req.into_inner();
        let scope = scope_from_pb("scope", req.scope.as_ref())?;
        check_query(&req.query)?;
        let top_k = match at_most("top_k", req.top_k, MAX_TOP_K)? {
            0 => 5,
            n => n,
        };
        let kind = type_from_pb("type", req.r#type, Some(MemoryType::LongTerm))?.unwrap_or(MemoryType::LongTerm);
        let hits = self.search_scope(&scope, kind, &req.query, top_k, &req.metadata_filter, req.min_score).await?;
        Ok(Response::new(pb::SearchMemoryResponse { hits }))
    }

    async fn recall_for_run(
        &self,
        req: Request<pb::RecallForRunRequest>,
    ) -> Result<Response<pb::RecallForRunResponse>, Status> {
        self.check_scope(&req, req.get_ref().scope.as_ref()).await?;
        let req = req.into_inner();
        let scope = scope_from_pb("scope", req.scope.as_ref())?;
        let episodes = at_most("episodes", req.episodes, MAX_RECALL)?;
        let notes = at_most("notes", req.notes, MAX_RECALL)?;
        let top_k = at_most("top_k", req.top_k, MAX_TOP_K)?;
        if top_k > 0 {
            check_query(&req.query)?;
        }
        let recalls = [(MemoryType::Episodic, episodes), (MemoryType::Procedural, notes)]
            .map(|(kind, limit)| (limit > 0).then(|| RecallQuery::new(scope.clone(), kind, limit)));
        let search = async {
            if top_k == 0 {
                return Searched::NotAsked;
            }
            // No index, or long-term memory not indexed: the recalls are still the answer.
            if self.searcher(MemoryType::LongTerm).is_err() {
                return Searched::Unavailable;
            }
            let no_filter = BTreeMap::new();
            match self.search_scope(&scope, MemoryType::LongTerm, &req.query, top_k, &no_filter, None).await {
                Ok(hits) => Searched::Found(hits),
                // A failing embedder or index costs the run its facts, not its episodes.
                Err(s) => {
                    tracing::warn!(code = ?s.code(), error = %s.message(), "RecallForRun: the search failed");
                    Searched::Failed(s.message().to_owned())
                }
            }
        };
        let (recalled, searched) = tokio::join!(self.recall_pair(recalls), search);
        let [episodes, notes] = recalled.map_err(status_from_memory)?;
        let now = self.clock.now();
        let to_pb = |records: Vec<MemoryRecord>| records.iter().map(|r| record_to_pb(r, now)).collect();
        let mut answer =
            pb::RecallForRunResponse { episodes: to_pb(episodes), notes: to_pb(notes), ..Default::default() };
        match searched {
            Searched::NotAsked => {}
            Searched::Found(hits) => answer.facts = hits,
            Searched::Unavailable => answer.search_unavailable = true,
            Searched::Failed(why) => answer.search_error = why,
        }
        Ok(Response::new(answer))
    }

    async fn summarize(&self, req: Request<pb::SummarizeRequest>) -> Result<Response<pb::SummarizeResponse>, Status> {
        self.check_scope(&req, req.get_ref().scope.as_ref()).await?;
        let req = req.into_inner();
        let scope = scope_from_pb("scope", req.scope.as_ref())?;
        let tokens = if req.token_budget == 0 { 2000 } else { req.token_budget as usize };
        let budget = Budget { tokens, records: req.max_records as usize };
        let retention = retention_from_pb("retention", req.retention)?;
        let Some(summarizer) = &self.summarizer else {
            return Err(Status::failed_precondition("Summarize is not configured (set [summarizer])"));
        };
        let (summary, n) = match self.summarize_scope(summarizer.model.as_ref(), &scope, budget, retention).await {
            Ok(done) => done,
            Err(e) => {
                count_summary("rpc", "error");
                return Err(status_from_memory(e));
            }
        };
        if summary.is_some() {
            count_summary("rpc", "ok");
        }
        let now = self.clock.now();
        Ok(Response::new(pb::SummarizeResponse {
            summary: summary.map(|r| record_to_pb(&r, now)),
            summarized_records: n as u32,
        }))
    }

    async fn forget(&self, req: Request<pb::ForgetRequest>) -> Result<Response<pb::ForgetResponse>, Status> {
        self.check_scope(&req, req.get_ref().scope.as_ref()).await?;
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
        self.check_scope(&req, req.get_ref().scope.as_ref()).await?;
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
