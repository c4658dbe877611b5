//! In-process [`VectorIndex`]: exact (brute-force) cosine search over normalised f32 vectors.
//!
//! Limit: a search reads every vector (384 dims = 1.5 KB each), so its cost is linear in the
//! item count and bound by memory bandwidth. Measured here (`examples/bench_index.rs`, release,
//! 2 shared cores): top-10 p50 1.8 ms / p99 6 ms at 10 k items, p50 23 ms / p99 29 ms at 100 k.
//! Keep it to ~100 k items per process (tens of ms per query there); beyond that, or for
//! single-digit milliseconds at 100 k, use ChromaDB/pgvector/Qdrant (or add int8 quantisation
//! with an f32 re-rank here). Nothing survives a restart (the service rebuilds it on start-up).
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;

use crate::error::MemoryError;
use crate::vector::{VectorHit, VectorIndex, VectorItem, check_dims};

/// The item count this index is meant for (tens of milliseconds per query there, see above).
pub const RECOMMENDED_MAX_ITEMS: usize = 100_000;

#[derive(Debug, Default)]
struct Inner {
    /// Row-major normalised vectors, `dims` floats per slot.
    data: Vec<f32>,
    ids: Vec<String>,
    metadata: Vec<BTreeMap<String, String>>,
    slot_of: HashMap<String, usize>,
}

/// Vectors held in memory, searched exactly.
#[derive(Debug, Clone)]
pub struct InProcessIndex {
    dims: usize,
    inner: Arc<RwLock<Inner>>,
}

impl InProcessIndex {
    /// An empty index of `dims`-dimensional vectors.
    pub fn new(dims: usize) -> Self {
        Self { dims, inner: Arc::new(RwLock::new(Inner::default())) }
    }
}

/// Dot product with eight independent accumulators, so the compiler can vectorise it (a single
/// running f32 sum cannot be reordered and stays scalar, ~8x slower).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for ((s, xi), yi) in acc.iter_mut().zip(x).zip(y) {
            *s += xi * yi;
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    // A zero vector has no direction: keep it zero so that it scores 0 against everything.
    if norm == 0.0 { v.to_vec() } else { v.iter().map(|x| x / norm).collect() }
}

#[async_trait]
impl VectorIndex for InProcessIndex {
    fn backend(&self) -> &'static str {
        "inprocess"
    }

    fn dims(&self) -> usize {
        self.dims
    }

    async fn upsert(&self, items: &[VectorItem]) -> Result<(), MemoryError> {
        for (i, item) in items.iter().enumerate() {
            check_dims(self.dims, &format!("items[{i}].vector"), &item.vector)?;
        }
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        for item in items {
            let v = normalized(&item.vector);
            match inner.slot_of.get(&item.id).copied() {
                Some(slot) => {
                    inner.data[slot * self.dims..(slot + 1) * self.dims].copy_from_slice(&v);
                    inner.metadata[slot] = item.metadata.clone();
                }
                None => {
                    let slot = inner.ids.len();
                    inner.data.extend_from_slice(&v);
                    inner.ids.push(item.id.clone());
                    inner.metadata.push(item.metadata.clone());
                    inner.slot_of.insert(item.id.clone(), slot);
                }
            }
        }
        Ok(())
    }

    async fn delete(&self, ids: &[String]) -> Result<(), MemoryError> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            let Some(slot) = inner.slot_of.remove(id) else { continue };
            // Swap-remove keeps the storage dense: the last item moves into the freed slot.
            let last = inner.ids.len() - 1;
            if slot != last {
                let (d, dims) = (&mut inner.data, self.dims);
                d.copy_within(last * dims..(last + 1) * dims, slot * dims);
                let moved = inner.ids[last].clone();
                inner.slot_of.insert(moved, slot);
            }
            inner.data.truncate(last * self.dims);
            inner.ids.swap_remove(slot);
            inner.metadata.swap_remove(slot);
        }
        Ok(())
    }

    async fn search(
        &self,
        vector: &[f32],
        k: usize,
        filter: &BTreeMap<String, String>,
    ) -> Result<Vec<VectorHit>, MemoryError> {
        check_dims(self.dims, "query vector", vector)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let q = normalized(vector);
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let mut scored: Vec<(f32, usize)> = inner
            .data
            .chunks_exact(self.dims)
            .enumerate()
            .filter(|(slot, _)| filter.iter().all(|(fk, fv)| inner.metadata[*slot].get(fk) == Some(fv)))
            .map(|(slot, row)| (dot(row, &q), slot))
            .collect();
        let by_score = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1));
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, by_score);
            scored.truncate(k);
        }
        scored.sort_by(by_score);
        Ok(scored
            .into_iter()
            .map(|(score, slot)| VectorHit {
                id: inner.ids[slot].clone(),
                score,
                metadata: inner.metadata[slot].clone(),
            })
            .collect())
    }

    async fn count(&self) -> Result<u64, MemoryError> {
        Ok(self.inner.read().unwrap_or_else(PoisonError::into_inner).ids.len() as u64)
    }
}
