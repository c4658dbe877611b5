//! Qdrant [`VectorIndex`] through the official `qdrant-client` crate, over Qdrant's gRPC API
//! (port 6334 by default; 6333 is its REST port and does not speak gRPC). Tested against a real
//! Qdrant 1.19 server by `tests/vector_contract.rs`.
//!
//! Qdrant point ids must be UUIDs or integers: an id that is not a UUID is mapped to a stable
//! UUID from two 64-bit hashes, and the original id is kept in the payload (`id`). Metadata keys
//! may contain dots, which Qdrant reads as nested paths, so filters match on a copy of the
//! metadata under `f` with hex-encoded keys; `meta` keeps the original map. This layout is the
//! one the earlier REST client wrote, so existing collections keep working.
use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::qdrant::{
    CollectionStatus, Condition, CountPointsBuilder, CreateCollectionBuilder, DeletePointsBuilder, Distance, Filter,
    PointId, PointStruct, PointsIdsList, QueryPointsBuilder, ScoredPoint, UpsertPointsBuilder, Value,
    VectorParamsBuilder, vectors_config,
};
use qdrant_client::{Payload, Qdrant};

use crate::error::{MemoryError, redact};
use crate::vector::{VectorHit, VectorIndex, VectorItem, check_items, check_query};

/// Per call: generous because one upsert carries up to a few hundred 384–1536-dim vectors and
/// waits until Qdrant has applied them.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP + HTTP/2 set-up of a gRPC channel: an unreachable server fails start-up quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Qdrant collection.
#[derive(Clone)]
pub struct QdrantIndex {
    client: Qdrant,
    /// Server URL without credentials, for messages.
    url: String,
    collection: String,
    dims: usize,
}

impl std::fmt::Debug for QdrantIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantIndex")
            .field("url", &self.url)
            .field("collection", &self.collection)
            .field("dims", &self.dims)
            .finish_non_exhaustive()
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> MemoryError {
    MemoryError::backend("qdrant", format!("{what}: {e}"))
}

fn fnv1a(seed: u64, s: &str) -> u64 {
    s.bytes().fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The Qdrant point id of `id` (a UUID stays itself; anything else maps to a stable UUID).
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

/// Payload of one item: `id` (the original id), `meta` (the metadata as given) and `f` (the
/// metadata under hex-encoded keys, what filters match on).
fn payload(item: &VectorItem) -> Payload {
    let mut meta = Payload::with_capacity(item.metadata.len());
    let mut f = Payload::with_capacity(item.metadata.len());
    for (k, v) in &item.metadata {
        meta.insert(k, v.as_str());
        f.insert(hex_key(k), v.as_str());
    }
    let mut p = Payload::with_capacity(3);
    p.insert("id", item.id.as_str());
    p.insert("meta", Value::from(meta));
    p.insert("f", Value::from(f));
    p
}

/// The hit of a scored point, `None` for a point this index did not write (no string `id`).
fn hit(p: ScoredPoint) -> Option<VectorHit> {
    let id = p.payload.get("id")?.as_str()?.clone();
    let metadata = p
        .payload
        .get("meta")
        .and_then(Value::as_struct)
        .map(|s| s.fields.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.clone()))).collect())
        .unwrap_or_default();
    Some(VectorHit { id, score: p.score, metadata })
}

impl QdrantIndex {
    /// Connects to the gRPC endpoint `url` (`http://host:6334`, `https://` for TLS) and gets or
    /// creates the collection `name` (cosine distance, `dims` dimensions). Fails if the server
    /// does not answer, or the existing collection has another size or distance.
    pub async fn connect(url: &str, name: &str, dims: usize, api_key: Option<String>) -> Result<Self, MemoryError> {
        let shown = redact(url);
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            // The crate's own check blocks the calling thread on a second runtime and prints to
            // stdout; the health check below does the same asynchronously and logs instead.
            .skip_compatibility_check()
            .build()
            .map_err(|e| MemoryError::Config(format!("qdrant URL {shown}: {e}")))?;
        let health = client.health_check().await.map_err(|e| {
            err(&format!("cannot reach {shown} over gRPC (Qdrant's gRPC port is 6334 by default, 6333 is REST)"), e)
        })?;
        tracing::info!(url = %shown, collection = name, server_version = %health.version, "qdrant connected");
        let index = Self { client, url: shown, collection: name.to_owned(), dims };
        index.ensure_collection().await?;
        Ok(index)
    }

    /// Creates the collection if it is missing, then checks its vector size and distance.
    async fn ensure_collection(&self) -> Result<(), MemoryError> {
        let name = &self.collection;
        let exists = self.client.collection_exists(name).await.map_err(|e| err("collection exists", e))?;
        if !exists {
            let create = CreateCollectionBuilder::new(name)
                .vectors_config(VectorParamsBuilder::new(self.dims as u64, Distance::Cosine));
            match self.client.create_collection(create).await {
                Ok(_) => return Ok(()),
                // Another replica may have created it in between: check what exists instead.
                Err(e) => {
                    if !self.client.collection_exists(name).await.map_err(|e| err("collection exists", e))? {
                        return Err(err("create collection", e));
                    }
                }
            }
        }
        let info = self.client.collection_info(name).await.map_err(|e| err("collection info", e))?;
        let vectors = info.result.and_then(|r| r.config).and_then(|c| c.params).and_then(|p| p.vectors_config);
        match vectors.and_then(|v| v.config) {
            Some(vectors_config::Config::Params(p)) => {
                if p.size != self.dims as u64 {
                    return Err(MemoryError::Config(format!(
                        "qdrant collection {name} has {} dimensions, the embedder {}: use another collection \
                         or re-create this one",
                        p.size, self.dims
                    )));
                }
                if p.distance != Distance::Cosine as i32 {
                    return Err(MemoryError::Config(format!(
                        "qdrant collection {name} uses {} distance, the memory service needs Cosine",
                        Distance::try_from(p.distance).map(|d| d.as_str_name()).unwrap_or("an unknown")
                    )));
                }
                Ok(())
            }
            _ => Err(MemoryError::Config(format!(
                "qdrant collection {name} has named vectors (or none): the memory service needs one unnamed vector"
            ))),
        }
    }

    /// Waits until Qdrant has no optimisation left for the collection (status green twice in a
    /// row, 200 ms apart: the optimiser may start just after an upsert returns), so that a
    /// benchmark can measure searches on built HNSW graphs. Returns how long that took.
    pub async fn wait_until_optimized(&self, timeout: Duration) -> Result<Duration, MemoryError> {
        let started = std::time::Instant::now();
        let mut greens = 0;
        while greens < 2 {
            if started.elapsed() > timeout {
                return Err(err("optimize", format!("collection {} not green after {timeout:?}", self.collection)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let info = self.client.collection_info(&self.collection).await.map_err(|e| err("collection info", e))?;
            let green = info.result.is_some_and(|r| r.status == CollectionStatus::Green as i32);
            greens = if green { greens + 1 } else { 0 };
        }
        Ok(started.elapsed())
    }

    /// Deletes the whole collection (tests, resets).
    pub async fn drop_collection(self) -> Result<(), MemoryError> {
        self.client.delete_collection(&self.collection).await.map_err(|e| err("delete collection", e))?;
        Ok(())
    }
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
        let points: Vec<PointStruct> =
            items.iter().map(|i| PointStruct::new(point_id(&i.id), i.vector.clone(), payload(i))).collect();
        // wait: a Search right after a Store must see it, as with every other backend.
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
            .await
            .map_err(|e| err("upsert", e))?;
        Ok(())
    }

    async fn delete(&self, ids: &[String]) -> Result<(), MemoryError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<PointId> = ids.iter().map(|id| PointId::from(point_id(id))).collect();
        self.client
            .delete_points(DeletePointsBuilder::new(&self.collection).points(PointsIdsList { ids }).wait(true))
            .await
            .map_err(|e| err("delete", e))?;
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
        let mut query =
            QueryPointsBuilder::new(&self.collection).query(vector.to_vec()).limit(k as u64).with_payload(true);
        if !filter.is_empty() {
            query = query.filter(Filter::must(
                filter.iter().map(|(k, v)| Condition::matches(format!("f.{}", hex_key(k)), v.clone())),
            ));
        }
        let resp = self.client.query(query).await.map_err(|e| err("query", e))?;
        let found = resp.result.len();
        let hits: Vec<VectorHit> = resp.result.into_iter().filter_map(hit).collect();
        if hits.len() < found {
            tracing::warn!(
                collection = %self.collection,
                skipped = found - hits.len(),
                "qdrant points without an `id` payload (not written by Nightshift) left out of the hits"
            );
        }
        Ok(hits)
    }

    async fn count(&self) -> Result<u64, MemoryError> {
        let resp = self
            .client
            .count(CountPointsBuilder::new(&self.collection).exact(true))
            .await
            .map_err(|e| err("count", e))?;
        Ok(resp.result.map(|r| r.count).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_are_stable_uuids() {
        let a = point_id("a");
        assert_eq!(a, point_id("a"));
        assert_ne!(a, point_id("b"));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
        let u = "01a21343-dae4-7042-bb29-5f40b7ea376d";
        assert_eq!(point_id(u), u);
    }

    #[test]
    fn payload_keeps_the_rest_layout() {
        let item = VectorItem {
            id: "r1".into(),
            vector: vec![1.0],
            metadata: [("ns.agent".to_owned(), "a".to_owned())].into(),
        };
        let p: std::collections::HashMap<String, Value> = payload(&item).into();
        assert_eq!(p["id"].as_str().map(String::as_str), Some("r1"));
        let meta = p["meta"].as_struct().map(|s| s.fields.clone()).unwrap_or_default();
        assert_eq!(meta["ns.agent"].as_str().map(String::as_str), Some("a"));
        let f = p["f"].as_struct().map(|s| s.fields.clone()).unwrap_or_default();
        assert_eq!(f[&hex_key("ns.agent")].as_str().map(String::as_str), Some("a"));
    }
}
