//! criterion bench: the external memory store.
//!
//! - `memory_read/*`: batch reading from a memory-mapped store (N = 100k, d = 640, f32 and
//!   f16 keys) in a warm page cache: raw `gather` into host buffers, and full batches as burn
//!   tensors (NdArray) in order and shuffled. Throughput is key+value bytes delivered per second.
//! - `memory_knn/*`: exact kNN (k = 16) over N = 100k keys of d = 640, L2 and inner product,
//!   64 queries per call, on NdArray. Throughput is queries per second.
//!
//! Run: `cargo bench -p pema-benches --bench memory`. `PEMA_BENCH_MEMORY_N` overrides N.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_main};
use pema_memory::batch::SplitMix64;
use pema_memory::manifest::{BuildMode, KeyDtype, KeyState, MemoryMeta};
use pema_memory::{
    BatchOrder, ExactKnn, MemorySource, MemoryStore, MemoryWriter, Metric, Provenance, ShardData,
    batches,
};

type B = NdArray<f32>;

const D: usize = 640;
const BATCH: usize = 1024;
const QUERIES: usize = 64;

fn n_entries() -> usize {
    std::env::var("PEMA_BENCH_MEMORY_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

/// Writes a synthetic memory of `n` entries: 100 pairs, 10 shards.
fn write_store(dir: &Path, n: usize, dtype: KeyDtype) {
    let pairs = 100u64;
    let per_pair = n.div_ceil(pairs as usize);
    let meta = MemoryMeta {
        model_name: "bench".into(),
        model_sha256: "0".repeat(64),
        hidden_size: D,
        vocab_size: None,
        state: KeyState::pre_final_norm(0),
        dtype,
        tokenizer_fingerprint: "none".into(),
        template_name: "mt".into(),
        template: "{source}".into(),
        mode: BuildMode::External,
        max_extra_steps: 10,
        data_file: "synthetic".into(),
        data_sha256: "0".repeat(64),
        pairs_total: pairs,
        pairs_per_shard: 10,
        batch_size: 1,
    };
    let mut w = MemoryWriter::open_or_create(dir, meta).expect("create");
    let mut rng = SplitMix64(7);
    let mut written = 0;
    for s in 0..10u64 {
        let mut shard = ShardData::new(s * 10, s * 10 + 10);
        for p in s * 10..s * 10 + 10 {
            for t in 0..per_pair.min(n - written) {
                let key: Vec<f32> = (0..D)
                    .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
                    .collect();
                shard.push(
                    &key,
                    (rng.next_u64() % 32000) as u32,
                    Provenance {
                        pair: p as u32,
                        step: t as u32,
                    },
                );
            }
            written += per_pair.min(n - written);
        }
        w.commit_shard(&shard).expect("commit");
    }
    w.finish().expect("finish");
}

fn bench_read(c: &mut Criterion) {
    let n = n_entries();
    let mut g = c.benchmark_group("memory_read");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for dtype in [KeyDtype::F32, KeyDtype::F16] {
        let dir = tempfile::tempdir().expect("tempdir");
        write_store(dir.path(), n, dtype);
        let store = MemoryStore::open(dir.path()).expect("open");
        let device = Default::default();
        // Warm the page cache.
        let warm = batches::<B, _>(&store, 8192, BatchOrder::InOrder, false, &device).count();
        black_box(warm);
        // Bytes delivered to the consumer: f32 keys + u32 values.
        let bytes = (n * (D * 4 + 4)) as u64;
        g.throughput(Throughput::Bytes(bytes));
        let name = dtype.name();
        g.bench_function(format!("gather_in_order_{name}"), |b| {
            let (mut k, mut v) = (Vec::with_capacity(BATCH * D), Vec::with_capacity(BATCH));
            let ids: Vec<u64> = (0..n as u64).collect();
            b.iter(|| {
                for chunk in ids.chunks(BATCH) {
                    k.clear();
                    v.clear();
                    store.gather(chunk, &mut k, &mut v).expect("gather");
                    black_box((&k, &v));
                }
            })
        });
        for (label, order) in [
            ("tensors_in_order", BatchOrder::InOrder),
            ("tensors_shuffled", BatchOrder::Shuffled { seed: 1 }),
        ] {
            g.bench_function(format!("{label}_{name}"), |b| {
                b.iter(|| {
                    for batch in batches::<B, _>(&store, BATCH, order, false, &device) {
                        black_box(batch.expect("batch"));
                    }
                })
            });
        }
    }
    g.finish();
}

fn bench_knn(c: &mut Criterion) {
    let n = n_entries();
    let dir = tempfile::tempdir().expect("tempdir");
    write_store(dir.path(), n, KeyDtype::F32);
    let store = MemoryStore::open(dir.path()).expect("open");
    let device = Default::default();
    let mut rng = SplitMix64(99);
    let queries: Vec<f32> = (0..QUERIES * D)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect();
    let mut g = c.benchmark_group("memory_knn");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(QUERIES as u64));
    for (label, metric) in [("l2", Metric::L2), ("inner_product", Metric::InnerProduct)] {
        let index = ExactKnn::<B>::new(&store, metric, 16384, &device).expect("index");
        g.bench_function(format!("{label}_n{n}_d{D}_k16_q{QUERIES}"), |b| {
            b.iter(|| {
                let q: Tensor<B, 2> =
                    Tensor::from_data(TensorData::new(queries.clone(), [QUERIES, D]), &device);
                black_box(index.search(q, 16).expect("search"))
            })
        });
    }
    g.finish();
}

/// All memory benchmarks (a documented stand-in for `criterion_group!`).
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    bench_read(&mut c);
    bench_knn(&mut c);
}

criterion_main!(benches);
