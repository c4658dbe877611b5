//! In-process [`VectorIndex`]: brute-force cosine search over normalised vectors.
//!
//! A search scans an int8 copy of every vector (384 bytes per 384-dim vector instead of 1.5 KB
//! of f32: the scan is bound by memory bandwidth), split over the available cores for large
//! indexes, keeps the best `max(8k, 64)` candidates and re-ranks them with the exact f32 dot
//! product. The returned scores are exact; the candidate set can only miss a true top-k item
//! whose int8 score fell behind dozens of others within the quantisation error (~1e-3), i.e.
//! near-ties. Metadata filters compare interned `key=value` ids, not strings.
//!
//! Cost is linear in the item count: measured figures are in docs/benchmarks.md
//! (`cargo run --release -p nightshift-bench -- memory-search`). Keep it to ~100 k items per process; beyond that use
//! ChromaDB/pgvector/Qdrant. Nothing survives a restart (the service rebuilds it on start-up).
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;

use crate::error::MemoryError;
use crate::vector::{VectorHit, VectorIndex, VectorItem, check_items, check_query};

/// The item count this index is meant for (tens of milliseconds per query there, see above).
pub const RECOMMENDED_MAX_ITEMS: usize = 100_000;

#[derive(Debug, Default)]
struct Inner {
    /// Row-major normalised vectors, `dims` floats per slot (exact re-ranking).
    data: Vec<f32>,
    /// The same vectors quantised to int8 (`round(x * 127)`), `dims` per slot (the scan).
    quant: Vec<i8>,
    ids: Vec<String>,
    metadata: Vec<BTreeMap<String, String>>,
    /// Interned `(key, value)` pairs of each slot's metadata, for cheap filter checks.
    pairs: Vec<Vec<u32>>,
    interned: HashMap<(String, String), u32>,
    slot_of: HashMap<String, usize>,
}

/// Items from which a search is split over several threads.
const PARALLEL_FROM: usize = 20_000;

impl Inner {
    fn intern(&mut self, metadata: &BTreeMap<String, String>) -> Vec<u32> {
        let mut out: Vec<u32> = metadata
            .iter()
            .map(|(k, v)| {
                let next = self.interned.len() as u32;
                *self.interned.entry((k.clone(), v.clone())).or_insert(next)
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// The interned ids a filter needs, or `None` if some pair occurs nowhere (no match).
    fn filter_ids(&self, filter: &BTreeMap<String, String>) -> Option<Vec<u32>> {
        filter.iter().map(|(k, v)| self.interned.get(&(k.clone(), v.clone())).copied()).collect()
    }

    /// Best `keep` slots of `range` by int8 score, among those carrying every `need` pair.
    fn scan(
        &self,
        dims: usize,
        q: &[i8],
        need: &[u32],
        range: std::ops::Range<usize>,
        keep: usize,
    ) -> Vec<(i32, usize)> {
        // A bounded buffer, pruned to the best `keep` whenever it fills: scores below the
        // pruned floor cannot make the cut and are not stored (no 100k-entry vector per query).
        let mut best: Vec<(i32, usize)> = Vec::with_capacity(keep * 4);
        let mut floor = i32::MIN;
        let prune = |best: &mut Vec<(i32, usize)>| {
            if best.len() > keep {
                best.select_nth_unstable_by(keep - 1, |a, b| b.0.cmp(&a.0));
                best.truncate(keep);
            }
        };
        for slot in range {
            if !need.iter().all(|id| self.pairs[slot].binary_search(id).is_ok()) {
                continue;
            }
            let score = dot_i8(&self.quant[slot * dims..(slot + 1) * dims], q);
            if score < floor {
                continue;
            }
            best.push((score, slot));
            if best.len() == best.capacity() {
                prune(&mut best);
                floor = best.iter().map(|b| b.0).min().unwrap_or(i32::MIN);
            }
        }
        prune(&mut best);
        best
    }
}

fn quantize(v: &[f32]) -> Vec<i8> {
    v.iter().map(|x| (x * 127.0).round().clamp(-127.0, 127.0) as i8).collect()
}

/// Integer dot product with sixteen independent accumulators (vectorised by the compiler).
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: i32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| i32::from(*x) * i32::from(*y)).sum();
    for (x, y) in ca.zip(cb) {
        for ((s, xi), yi) in acc.iter_mut().zip(x).zip(y) {
            // |127 * 127| fits in i16: a 16-bit multiply (one SSE2 instruction for 8 lanes)
            // instead of a 32-bit one, which baseline x86-64 lacks.
            *s += i32::from(i16::from(*xi) * i16::from(*yi));
        }
    }
    acc.iter().sum::<i32>() + tail
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
        if !check_items(self.dims, items)? {
            return Ok(());
        }
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        for item in items {
            let v = normalized(&item.vector);
            let q = quantize(&v);
            let pairs = inner.intern(&item.metadata);
            match inner.slot_of.get(&item.id).copied() {
                Some(slot) => {
                    inner.data[slot * self.dims..(slot + 1) * self.dims].copy_from_slice(&v);
                    inner.quant[slot * self.dims..(slot + 1) * self.dims].copy_from_slice(&q);
                    inner.metadata[slot] = item.metadata.clone();
                    inner.pairs[slot] = pairs;
                }
                None => {
                    let slot = inner.ids.len();
                    inner.data.extend_from_slice(&v);
                    inner.quant.extend_from_slice(&q);
                    inner.ids.push(item.id.clone());
                    inner.metadata.push(item.metadata.clone());
                    inner.pairs.push(pairs);
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
            let dims = self.dims;
            if slot != last {
                inner.data.copy_within(last * dims..(last + 1) * dims, slot * dims);
                inner.quant.copy_within(last * dims..(last + 1) * dims, slot * dims);
                let moved = inner.ids[last].clone();
                inner.slot_of.insert(moved, slot);
            }
            inner.data.truncate(last * dims);
            inner.quant.truncate(last * dims);
            inner.ids.swap_remove(slot);
            inner.metadata.swap_remove(slot);
            inner.pairs.swap_remove(slot);
        }
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
        let q = normalized(vector);
        let qq = quantize(&q);
        let dims = self.dims;
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let Some(need) = inner.filter_ids(filter) else { return Ok(Vec::new()) };
        let n = inner.ids.len();
        let keep = (k * 8).max(64);
        let threads = if n >= PARALLEL_FROM {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(8)
        } else {
            1
        };
        let candidates: Vec<(i32, usize)> = if threads <= 1 {
            inner.scan(dims, &qq, &need, 0..n, keep)
        } else {
            // Scoped threads over disjoint ranges: a few milliseconds of pure computation.
            let per = n.div_ceil(threads);
            let inner_ref = &*inner;
            std::thread::scope(|s| {
                let parts: Vec<_> = (0..threads)
                    .map(|t| {
                        let (qq, need) = (&qq, &need);
                        s.spawn(move || inner_ref.scan(dims, qq, need, t * per..((t + 1) * per).min(n), keep))
                    })
                    .collect();
                parts.into_iter().flat_map(|p| p.join().unwrap_or_default()).collect()
            })
        };
        let mut scored: Vec<(f32, usize)> = candidates
            .into_iter()
            .map(|(_, slot)| (dot(&inner.data[slot * dims..(slot + 1) * dims], &q), slot))
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

    /// Exact when it says true: a pair no item carries was never interned. A pair whose items
    /// were all deleted stays interned, and then it says false (the caller asks the store).
    fn holds_none(&self, filter: &BTreeMap<String, String>) -> bool {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.ids.is_empty() || inner.filter_ids(filter).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The int8 scan plus f32 re-rank returns exactly the top-k of an exact f32 search, on the
    /// parallel path too (more items than `PARALLEL_FROM`), with and without a filter.
    #[tokio::test]
    async fn quantised_search_returns_the_exact_top_k() {
        const DIMS: usize = 64;
        let mut seed: u64 = 42;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let ix = InProcessIndex::new(DIMS);
        let mut all = Vec::new();
        let items: Vec<VectorItem> = (0..PARALLEL_FROM + 5_000)
            .map(|i| {
                let vector: Vec<f32> = (0..DIMS).map(|_| next()).collect();
                all.push((format!("v{i}"), normalized(&vector), i % 3 == 0));
                let metadata = [("group".to_owned(), (i % 3).to_string())].into();
                VectorItem { id: format!("v{i}"), vector, metadata }
            })
            .collect();
        ix.upsert(&items).await.unwrap();
        let third: BTreeMap<String, String> = [("group".to_owned(), "0".to_owned())].into();
        for _ in 0..20 {
            let q: Vec<f32> = (0..DIMS).map(|_| next()).collect();
            let qn = normalized(&q);
            for (filter, only_third) in [(BTreeMap::new(), false), (third.clone(), true)] {
                let mut exact: Vec<(f32, &str)> = all
                    .iter()
                    .filter(|(_, _, t)| !only_third || *t)
                    .map(|(id, v, _)| (dot(v, &qn), id.as_str()))
                    .collect();
                exact.sort_by(|a, b| b.0.total_cmp(&a.0));
                let want: Vec<&str> = exact.iter().take(10).map(|e| e.1).collect();
                let got = ix.search(&q, 10, &filter).await.unwrap();
                assert_eq!(got.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), want);
                assert!((got[0].score - exact[0].0).abs() < 1e-5, "scores are exact f32");
            }
        }
        let none: BTreeMap<String, String> = [("group".to_owned(), "7".to_owned())].into();
        assert!(ix.search(&all[0].1, 10, &none).await.unwrap().is_empty());
    }

    /// `holds_none` is true only where no item matches: an empty index, a pair no item carries;
    /// after a delete it may say false (unknown), never true of a filter that still matches.
    #[tokio::test]
    async fn holds_none_only_where_nothing_matches() {
        let filter = |scope: &str| -> BTreeMap<String, String> {
            [("scope".to_owned(), scope.to_owned()), ("type".to_owned(), "long_term".to_owned())].into()
        };
        let ix = InProcessIndex::new(2);
        assert!(ix.holds_none(&filter("a")));
        assert!(ix.holds_none(&BTreeMap::new()), "an empty index holds nothing under any filter");
        let item =
            |id: &str, scope: &str| VectorItem { id: id.into(), vector: vec![1.0, 0.0], metadata: filter(scope) };
        ix.upsert(&[item("x", "a"), item("y", "b")]).await.unwrap();
        assert!(!ix.holds_none(&filter("a")));
        assert!(!ix.holds_none(&BTreeMap::new()));
        assert!(ix.holds_none(&filter("c")), "scope c has no item");
        let mut other_type = filter("a");
        other_type.insert("type".into(), "episodic".into());
        assert!(ix.holds_none(&other_type), "every pair must match, not one of them");
        ix.delete(&["y".to_owned()]).await.unwrap();
        assert!(!ix.holds_none(&filter("a")), "x is still there");
        assert!(ix.search(&[1.0, 0.0], 5, &filter("b")).await.unwrap().is_empty());
    }
}
