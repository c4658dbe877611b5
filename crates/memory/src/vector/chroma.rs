//! ChromaDB [`VectorIndex`] over its HTTP API v2 (tested against `chroma run` 1.5).
//!
//! One collection per index, created with cosine space (`configuration.hnsw.space`); Chroma
//! reports cosine *distance*, so `score = 1 - distance`. Its HNSW index is approximate.
use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{MemoryError, redact};
use crate::vector::{VectorHit, VectorIndex, VectorItem, check_items, check_query};

const TENANT: &str = "default_tenant";
const DATABASE: &str = "default_database";

/// A Chroma collection.
#[derive(Debug, Clone)]
pub struct ChromaIndex {
    http: reqwest::Client,
    /// `.../collections/<id>`.
    collection_url: String,
    name: String,
    dims: usize,
}

#[derive(Deserialize)]
struct Collection {
    id: String,
}

/// Metadata as Chroma returns it (values may be strings, numbers or booleans).
type ChromaMetadata = BTreeMap<String, Value>;

#[derive(Deserialize)]
struct QueryResult {
    ids: Vec<Vec<String>>,
    #[serde(default)]
    distances: Option<Vec<Vec<Option<f32>>>>,
    #[serde(default)]
    metadatas: Option<Vec<Vec<Option<ChromaMetadata>>>>,
}

fn err(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::backend("chroma", e)
}

async fn check(resp: reqwest::Response, what: &str) -> Result<reqwest::Response, MemoryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(500).collect();
    Err(err(format!("{what}: HTTP {status}: {body}")))
}

/// Chroma's `where` for exact matches on every pair (`None` for no filter).
fn where_clause(filter: &BTreeMap<String, String>) -> Option<Value> {
    let mut conds: Vec<Value> = filter.iter().map(|(k, v)| json!({ k: { "$eq": v } })).collect();
    match conds.len() {
        0 => None,
        1 => conds.pop(),
        _ => Some(json!({ "$and": conds })),
    }
}

impl ChromaIndex {
    /// Connects to the server at `base_url` (`http://host:port`) and gets or creates the
    /// collection `name` for `dims`-dimensional vectors. Fails if the server does not answer.
    pub async fn connect(base_url: &str, name: &str, dims: usize) -> Result<Self, MemoryError> {
        let base = base_url.trim_end_matches('/');
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(err)?;
        let hb = http
            .get(format!("{base}/api/v2/heartbeat"))
            .send()
            .await
            .map_err(|e| err(format!("cannot reach {}: {e}", redact(base))))?;
        check(hb, "heartbeat").await?;
        let collections = format!("{base}/api/v2/tenants/{TENANT}/databases/{DATABASE}/collections");
        let resp = http
            .post(&collections)
            .json(&json!({
                "name": name,
                "get_or_create": true,
                "configuration": { "hnsw": { "space": "cosine" } },
            }))
            .send()
            .await
            .map_err(err)?;
        let c: Collection = check(resp, "create collection").await?.json().await.map_err(err)?;
        tracing::info!(collection = name, id = %c.id, "chroma collection ready");
        Ok(Self { http, collection_url: format!("{collections}/{}", c.id), name: name.to_owned(), dims })
    }

    /// Deletes the whole collection (tests, resets).
    pub async fn drop_collection(self) -> Result<(), MemoryError> {
        let base = self.collection_url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or_default();
        let resp = self.http.delete(format!("{base}/{}", self.name)).send().await.map_err(err)?;
        check(resp, "delete collection").await?;
        Ok(())
    }

    async fn post(&self, op: &str, body: Value) -> Result<reqwest::Response, MemoryError> {
        let resp = self.http.post(format!("{}/{op}", self.collection_url)).json(&body).send().await.map_err(err)?;
        check(resp, op).await
    }
}

#[async_trait]
impl VectorIndex for ChromaIndex {
    fn backend(&self) -> &'static str {
        "chroma"
    }

    fn dims(&self) -> usize {
        self.dims
    }

    async fn upsert(&self, items: &[VectorItem]) -> Result<(), MemoryError> {
        if !check_items(self.dims, items)? {
            return Ok(());
        }
        // Chroma rejects an empty metadata object; null means "none".
        let metadatas: Vec<Value> =
            items.iter().map(|i| if i.metadata.is_empty() { Value::Null } else { json!(i.metadata) }).collect();
        self.post(
            "upsert",
            json!({
                "ids": items.iter().map(|i| &i.id).collect::<Vec<_>>(),
                "embeddings": items.iter().map(|i| &i.vector).collect::<Vec<_>>(),
                "metadatas": metadatas,
            }),
        )
        .await?;
        Ok(())
    }

    async fn delete(&self, ids: &[String]) -> Result<(), MemoryError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.post("delete", json!({ "ids": ids })).await?;
        Ok(())
    }

    async fn search(
        &self,
        vector: &[f32],
        k: usize,
        filter: &BTreeMap<String, String>,
    ) -> Result<Vec<VectorHit>, MemoryError> {
        if !check_query(self.dims, vector, k)? {
            return Ok(Vec::new());
        }
        let mut body = json!({
            "query_embeddings": [vector],
            "n_results": k,
            "include": ["metadatas", "distances"],
        });
        if let Some(w) = where_clause(filter) {
            body["where"] = w;
        }
        let r: QueryResult = self.post("query", body).await?.json().await.map_err(err)?;
        let ids = r.ids.into_iter().next().unwrap_or_default();
        let distances = r.distances.and_then(|d| d.into_iter().next()).unwrap_or_default();
        let metadatas = r.metadatas.and_then(|m| m.into_iter().next()).unwrap_or_default();
        let mut hits: Vec<VectorHit> = ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                let distance = distances.get(i).copied().flatten().unwrap_or(1.0);
                let metadata = metadatas
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => (k, s),
                        other => (k, other.to_string()),
                    })
                    .collect();
                VectorHit { id, score: 1.0 - distance, metadata }
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(hits)
    }

    async fn count(&self) -> Result<u64, MemoryError> {
        let resp = self.http.get(format!("{}/count", self.collection_url)).send().await.map_err(err)?;
        check(resp, "count").await?.json().await.map_err(err)
    }
}
