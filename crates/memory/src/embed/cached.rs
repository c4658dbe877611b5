//! An [`Embedder`] that remembers recent vectors. A background agent asks the same task every
//! run, so Search embeds the same query text again and again: on the embedded MiniLM model that
//! was most of a run's CPU (`nightshift-bench e2e --profile`). Vectors of a text never change
//! for one model, so a hit is exact.
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hashlink::LruCache;

use super::Embedder;
use crate::error::MemoryError;

/// Memory the cache may hold, in bytes of vectors.
const CACHE_BYTES: usize = 8 << 20;
/// Texts longer than this are embedded every time (records, not queries; rarely repeated).
const MAX_CACHED_TEXT: usize = 4 << 10;

/// `inner` with an LRU cache of its vectors in front.
pub struct Cached {
    inner: Arc<dyn Embedder>,
    cache: Mutex<LruCache<String, Arc<[f32]>>>,
}

impl Cached {
    /// Caches `inner`'s vectors, as many as fit in 8 MiB.
    pub fn new(inner: Arc<dyn Embedder>) -> Self {
        let entries = (CACHE_BYTES / (inner.dims().max(1) * 4)).max(1);
        Self { inner, cache: Mutex::new(LruCache::new(entries)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Arc<[f32]>>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached").field("inner", &self.inner).field("entries", &self.lock().len()).finish()
    }
}

#[async_trait]
impl Embedder for Cached {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn dims(&self) -> usize {
        self.inner.dims()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, MemoryError> {
        let mut out: Vec<Option<Vec<f32>>> = {
            let mut cache = self.lock();
            texts.iter().map(|t| cache.get(t).map(|v| v.to_vec())).collect()
        };
        let missing: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
        metrics::counter!("nightshift_memory_embed_cache_total", "result" => "hit")
            .increment((texts.len() - missing.len()) as u64);
        if missing.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        metrics::counter!("nightshift_memory_embed_cache_total", "result" => "miss").increment(missing.len() as u64);
        let batch: Vec<String> = missing.iter().map(|&i| texts[i].clone()).collect();
        let vectors = self.inner.embed(&batch).await?;
        if vectors.len() != batch.len() {
            let why = format!("{} vectors for {} texts", vectors.len(), batch.len());
            return Err(MemoryError::backend("embedder", why));
        }
        let mut cache = self.lock();
        for (&i, v) in missing.iter().zip(vectors) {
            if texts[i].len() <= MAX_CACHED_TEXT {
                cache.insert(texts[i].clone(), Arc::from(v.as_slice()));
            }
            out[i] = Some(v);
        }
        Ok(out.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts the texts it embeds; a text's vector is its length and first byte.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    #[async_trait]
    impl Embedder for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn dims(&self) -> usize {
            2
        }
        async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, MemoryError> {
            self.0.fetch_add(texts.len(), Ordering::SeqCst);
            Ok(texts.iter().map(|t| vec![t.len() as f32, f32::from(t.bytes().next().unwrap_or(0))]).collect())
        }
    }

    #[tokio::test]
    async fn repeated_texts_are_embedded_once_and_answers_keep_their_order() {
        let inner = Arc::new(Counting::default());
        let cached = Cached::new(inner.clone());
        let texts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let first = cached.embed(&texts(&["report", "ab"])).await.unwrap();
        assert_eq!(first, [vec![6.0, 114.0], vec![2.0, 97.0]]);
        let mixed = cached.embed(&texts(&["zz", "report", "ab"])).await.unwrap();
        assert_eq!(mixed, [vec![2.0, 122.0], vec![6.0, 114.0], vec![2.0, 97.0]]);
        assert_eq!(inner.0.load(Ordering::SeqCst), 3, "only the new text was embedded again");
        let long = "x".repeat(MAX_CACHED_TEXT + 1);
        cached.embed(std::slice::from_ref(&long)).await.unwrap();
        cached.embed(&[long]).await.unwrap();
        assert_eq!(inner.0.load(Ordering::SeqCst), 5, "long texts are not cached");
    }
}
