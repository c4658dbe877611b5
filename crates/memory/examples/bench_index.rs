//! Store and Search latency of the in-process vector index (a benchmark, not a test):
//! `cargo run --release -p nightshift-memory --example bench_index [N...]` (default 10000 100000).
use std::time::{Duration, Instant};

use nightshift_memory::{InProcessIndex, VectorIndex, VectorItem};

const DIMS: usize = 384;
const QUERIES: usize = 300;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), nightshift_memory::MemoryError> {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10_000, 100_000] } else { sizes };
    let mut seed: u64 = 7;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    for n in sizes {
        let ix = InProcessIndex::new(DIMS);
        let mut store_lat = Vec::with_capacity(n);
        for i in 0..n {
            let mut metadata = std::collections::BTreeMap::new();
            metadata.insert("ns.agent".to_owned(), format!("a{}", i % 10));
            let item = VectorItem { id: format!("v{i}"), vector: (0..DIMS).map(|_| next()).collect(), metadata };
            let t = Instant::now();
            ix.upsert(std::slice::from_ref(&item)).await?;
            store_lat.push(t.elapsed());
        }
        store_lat.sort();
        let mut plain = Vec::with_capacity(QUERIES);
        let mut filtered = Vec::with_capacity(QUERIES);
        let filter = [("ns.agent".to_owned(), "a3".to_owned())].into();
        for _ in 0..QUERIES {
            let q: Vec<f32> = (0..DIMS).map(|_| next()).collect();
            let t = Instant::now();
            let hits = ix.search(&q, 10, &Default::default()).await?;
            plain.push(t.elapsed());
            assert_eq!(hits.len(), 10);
            let t = Instant::now();
            ix.search(&q, 10, &filter).await?;
            filtered.push(t.elapsed());
        }
        plain.sort();
        filtered.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // stderr: benchmarks report, they do not log.
        eprintln!(
            "inprocess n={n} dims={DIMS}: store p50 {:.3} ms p99 {:.3} ms | search top-10 p50 {:.2} ms p99 {:.2} ms | \
             search top-10 with a 1-in-10 filter p50 {:.2} ms p99 {:.2} ms",
            ms(percentile(&store_lat, 0.5)),
            ms(percentile(&store_lat, 0.99)),
            ms(percentile(&plain, 0.5)),
            ms(percentile(&plain, 0.99)),
            ms(percentile(&filtered, 0.5)),
            ms(percentile(&filtered, 0.99)),
        );
    }
    Ok(())
}
