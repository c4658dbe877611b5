//! Qdrant [`VectorIndex`] over its REST API (`/collections/...`, Qdrant 1.10+), through reqwest
//! rather than `qdrant-client`, to keep one HTTP stack and no second gRPC/rustls set-up.
//!
//! Qdrant point ids must be UUIDs or integers: an id that is not a UUID is mapped to a stable
//! UUID from two 64-bit hashes, and the original id is kept in the payload (`id`). Metadata keys
//! may contain dots, which Qdrant reads as nested paths, so filters match on a copy of the
//! metadata under `f` with hex-encoded keys; `meta` keeps the original map.
//!
//! No Qdrant server runs here: the contract suite runs against it only when `QDRANT_URL` is set.
use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{MemoryError, redact};
use crate::vector::{VectorHit, VectorIndex, VectorItem, check_items, check_query};

/// A Qdrant collection.
#[derive(Clone)]
pub struct QdrantIndex {
    http: reqwest::Client,
    /// `.../collections/<name>`.
    collection_url: String,
    api_key: Option<String>,
    dims: usize,
}

impl std::fmt::Debug for QdrantIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantIndex").field("collection_url", &self.collection_url).finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::backend("qdrant", e)
}

fn fnv1a(seed: u64, s: &str) -> u64 {
    s.bytes().fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The Qdrant point id of `id`.
pub fn point_id(id: &str) -> String {
    match uuid::Uuid::parse_str(id) {
        Ok(u) => u.to_string(),
        Err(_) => {
            uuid::Uuid::from_u64_pair(fnv1a(0xcbf2_9ce4_8422_2325, id), fnv1a(0x8422_2325_cbf2_9ce4, id)).to_string()
        }
    }
}

fn hex_key(k: &str) -> String {
    k.bytes().map(|b| format!("{b:02x}")).collect()
}

#[derive(Deserialize)]
struct QueryResponse {
    result: QueryResult,
}

#[derive(Deserialize)]
struct QueryResult {
    points: Vec<ScoredPoint>,
}

#[derive(Deserialize)]
struct ScoredPoint {
    score: f32,
    #[serde(default)]
    payload: Option<Payload>,
}

#[derive(Deserialize)]
struct Payload {
    id: String,
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct CountResponse {
    result: CountResult,
}

#[derive(Deserialize)]
struct CountResult {
    count: u64,
}

impl QdrantIndex {
    /// Connects to `base_url` (`http://host:6333`) and gets or creates the collection `name`
    /// (cosine distance, `dims` dimensions). Fails if the server does not answer or the existing
    /// collection has another size.
    pub async fn connect(
        base_url: &str,
        name: &str,
        dims: usize,
        api_key: Option<String>,
    ) -> Result<Self, MemoryError> {
        let base = base_url.trim_end_matches('/');
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(err)?;
        let index = Self { http, collection_url: format!("{base}/collections/{name}"), api_key, dims };
        let resp = index
            .req(reqwest::Method::GET, "")
            .send()
            .await
            .map_err(|e| err(format!("cannot reach {}: {e}", redact(base))))?;
        match resp.status().as_u16() {
            200 => {
                let info: Value = resp.json().await.map_err(err)?;
                let size = info.pointer("/result/config/params/vectors/size").and_then(Value::as_u64);
                if size.is_some_and(|s| s as usize != dims) {
                    return Err(MemoryError::Config(format!(
                        "qdrant collection {name} has {} dimensions, the embedder {dims}",
                        size.unwrap_or_default()
                    )));
                }
            }
            404 => {
                let resp = index
                    .req(reqwest::Method::PUT, "")
                    .json(&json!({ "vectors": { "size": dims, "distance": "Cosine" } }))
                    .send()
                    .await
                    .map_err(err)?;
                check(resp, "create collection").await?;
            }
            _ => {
                check(resp, "get collection").await?;
            }
        }
        Ok(index)
    }

    /// Deletes the whole collection (tests, resets).
    pub async fn drop_collection(self) -> Result<(), MemoryError> {
        let resp = self.req(reqwest::Method::DELETE, "").send().await.map_err(err)?;
        check(resp, "delete collection").await?;
        Ok(())
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let b = self.http.request(method, format!("{}{path}", self.collection_url));
        match &self.api_key {
            Some(k) => b.header("api-key", k),
            None => b,
        }
    }
}

async fn check(resp: reqwest::Response, what: &str) -> Result<reqwest::Response, MemoryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body: String = resp.text().await.unwrap_or_default().chars().take(500).collect();
    Err(err(format!("{what}: HTTP {status}: {body}")))
}

#[async_trait]
impl VectorIndex for QdrantIndex {
    fn backend(&self) -> &'static str {
        "qdrant"
    }

    fn dims(&self) -> usize {
        self.dims
    }

    async fn upsert(&self, items: &[VectorItem]) -> Result<(), MemoryError> {
        if !check_items(self.dims, items)? {
            return Ok(());
        }
        let points: Vec<Value> = items
            .iter()
            .map(|i| {
                let f: BTreeMap<String, &String> = i.metadata.iter().map(|(k, v)| (hex_key(k), v)).collect();
                json!({
                    "id": point_id(&i.id),
                    "vector": i.vector,
                    "payload": { "id": i.id, "meta": i.metadata, "f": f },
                })
            })
            .collect();
        let resp = self
            .req(reqwest::Method::PUT, "/points?wait=true")
            .json(&json!({ "points": points }))
            .send()
            .await
            .map_err(err)?;
        check(resp, "upsert").await?;
        Ok(())
    }

    async fn delete(&self, ids: &[String]) -> Result<(), MemoryError> {
        if ids.is_empty() {
            return Ok(());
        }
        let points: Vec<String> = ids.iter().map(|id| point_id(id)).collect();
        let resp = self
            .req(reqwest::Method::POST, "/points/delete?wait=true")
            .json(&json!({ "points": points }))
            .send()
            .await
            .map_err(err)?;
        check(resp, "delete").await?;
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
        let mut body = json!({ "query": vector, "limit": k, "with_payload": true });
        if !filter.is_empty() {
            let must: Vec<Value> = filter
                .iter()
                .map(|(k, v)| json!({ "key": format!("f.{}", hex_key(k)), "match": { "value": v } }))
                .collect();
            body["filter"] = json!({ "must": must });
        }
        let resp = self.req(reqwest::Method::POST, "/points/query").json(&body).send().await.map_err(err)?;
        let r: QueryResponse = check(resp, "query").await?.json().await.map_err(err)?;
        Ok(r.result
            .points
            .into_iter()
            .filter_map(|p| p.payload.map(|pl| VectorHit { id: pl.id, score: p.score, metadata: pl.meta }))
            .collect())
    }

    async fn count(&self) -> Result<u64, MemoryError> {
        let resp = self
            .req(reqwest::Method::POST, "/points/count")
            .json(&json!({ "exact": true }))
            .send()
            .await
            .map_err(err)?;
        let r: CountResponse = check(resp, "count").await?.json().await.map_err(err)?;
        Ok(r.result.count)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn point_ids_are_stable_uuids() {
        let a = super::point_id("a");
        assert_eq!(a, super::point_id("a"));
        assert_ne!(a, super::point_id("b"));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
        let u = "01a21343-dae4-7042-bb29-5f40b7ea376d";
        assert_eq!(super::point_id(u), u);
    }
}
