//! Store and Search latency of the vector indexes (a benchmark, not a test), on real servers:
//!
//! ```sh
//! cargo run --release -p nightshift-memory --example bench_index -- [inprocess|chroma|pgvector|all] [N...]
//! ```
//! (default: `all 10000 100000`). Chroma and pgvector are started like the contract tests start
//! them (`scripts/chroma-venv.sh`, `scripts/pgvector-venv.sh`). Vectors are random, 384 dims,
//! loaded in batches of 500; Store latency is then sampled over 200 single-item upserts and
//! Search over 200 top-10 queries, without a filter and with a 1-in-10 metadata filter (like a
//! scope filter of the memory service).
#[path = "../tests/common/chroma.rs"]
mod chroma;
#[path = "../tests/common/pgvector.rs"]
mod pgvector;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nightshift_memory::{ChromaIndex, InProcessIndex, PgVectorIndex, VectorIndex, VectorItem};

const DIMS: usize = 384;
const SAMPLES: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

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

async fn measure(backend: &str, ix: Arc<dyn VectorIndex>, n: usize) -> Result<(), nightshift_memory::MemoryError> {
    let mut rng = Rng(7);
    let loading = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<VectorItem> = (i..(i + 500).min(n)).map(|j| item(&mut rng, j)).collect();
        ix.upsert(&batch).await?;
        i += batch.len();
    }
    let load = loading.elapsed();
    let mut store = Vec::with_capacity(SAMPLES);
    for s in 0..SAMPLES {
        // Overwrites of existing ids: the item count stays n.
        let it = item(&mut rng, s * (n / SAMPLES).max(1));
        let t = Instant::now();
        ix.upsert(std::slice::from_ref(&it)).await?;
        store.push(t.elapsed());
    }
    let filter = [("ns.agent".to_owned(), "a3".to_owned())].into();
    let (mut plain, mut filtered) = (Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES));
    for _ in 0..SAMPLES {
        let q = rng.vector();
        let t = Instant::now();
        let hits = ix.search(&q, 10, &Default::default()).await?;
        plain.push(t.elapsed());
        assert_eq!(hits.len(), 10);
        let t = Instant::now();
        let hits = ix.search(&q, 10, &filter).await?;
        filtered.push(t.elapsed());
        assert_eq!(hits.len(), 10);
    }
    for v in [&mut store, &mut plain, &mut filtered] {
        v.sort();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // stdout: this is the benchmark's report.
    println!(
        "| {backend} | {n} | {:.0} items/s | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms |",
        n as f64 / load.as_secs_f64(),
        ms(percentile(&store, 0.5)),
        ms(percentile(&store, 0.99)),
        ms(percentile(&plain, 0.5)),
        ms(percentile(&plain, 0.99)),
        ms(percentile(&filtered, 0.5)),
        ms(percentile(&filtered, 0.99)),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), nightshift_memory::MemoryError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.iter().find(|a| a.parse::<usize>().is_err()).map_or("all", String::as_str).to_owned();
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10_000, 100_000] } else { sizes };
    println!(
        "| index | items | bulk load (batches of 500) | Store p50 / p99 | Search top-10 p50 / p99 | Search top-10, 1-in-10 filter, p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|");
    if which == "all" || which == "inprocess" {
        for &n in &sizes {
            measure("inprocess", Arc::new(InProcessIndex::new(DIMS)), n).await?;
        }
    }
    if which == "all" || which == "pgvector" {
        let server = tokio::task::spawn_blocking(pgvector::PgVectorServer::start).await.expect("pgvector start");
        for &n in &sizes {
            let ix = PgVectorIndex::connect(&server.url, &format!("bench_{n}"), DIMS).await?;
            measure("pgvector (exact scan)", Arc::new(ix), n).await?;
        }
    }
    if which == "all" || which == "chroma" {
        let server = chroma::ChromaServer::start().await;
        for &n in &sizes {
            let ix = ChromaIndex::connect(&server.url, &format!("bench_{n}"), DIMS).await?;
            measure("chroma (HNSW)", Arc::new(ix), n).await?;
        }
    }
    Ok(())
}
