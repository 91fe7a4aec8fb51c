//! Prefill and decode throughput (tokens/s) of the real models on CPU (burn-flex), three ways
//! in the same run: the plain model (`Transformer::forward`, reference kernels, f32 weights),
//! the serving engine with CPU kernels and f32 weights, and the engine with packed quantised
//! weights (the `pema` default; on an AVX-512 CPU also with the AVX2 kernels forced). Compare with `benches/llamacpp_speed.py` run in the same
//! session.
//!
//! Needs `cargo xtask fetch-assets`; prints a skip line per model when its files are absent.
//! (`criterion_group!` generates an undocumented function, hence the allow below.)
//! Run: `cargo bench -p pema-benches --bench backbone`.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::backend::Flex;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pema_backbone::gguf::GgufFile;
use pema_backbone::packed::PackedModel;
use pema_backbone::packed::simd::Simd;
use pema_backbone::{CpuKernels, Engine, Kernels, LoadedModel, SeqKv, Transformer, load_model_dir};

type B = Flex;

const PREFILL: usize = 128;

/// Sequences per decoding step in the batched benchmark (the standard profile's batch).
const DECODE_BATCH: usize = 16;

/// Consecutive decoding steps per timed run (llama.cpp's side times 64 after its prefill).
const DECODE_RUN: u64 = 64;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets")
}

fn prompt(m: &LoadedModel<B>) -> Vec<u32> {
    let text = "The history of the railway begins with wooden wagonways in the mines of Europe, \
                where horses pulled carts along simple tracks. ";
    let mut ids = m.tokenizer.encode_prompt(&text.repeat(8)).expect("encode");
    ids.truncate(PREFILL);
    ids
}

fn bench_engine(c: &mut Criterion, name: &str, label: &str, m: &LoadedModel<B>, e: &Engine<'_, B>) {
    let ids = prompt(m);
    assert_eq!(ids.len(), PREFILL, "prompt too short");
    let kernels = e.kernels();
    let model = &m.model;
    let mut g = c.benchmark_group(format!("{name}/{label}"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(PREFILL as u64));
    g.bench_function("prefill_128", |b| {
        b.iter(|| {
            let mut kv = model.new_seq_cache();
            let h = model
                .forward_ragged(kernels, &[&ids], &mut [&mut kv])
                .expect("forward");
            // Include the head on the last position, as a generation step would.
            kernels
                .head(&model.head, h.narrow(0, PREFILL - 1, 1))
                .into_data()
        })
    });
    let mut warm: SeqKv<B> = model.new_seq_cache();
    model
        .forward_ragged(kernels, &[&ids], &mut [&mut warm])
        .expect("prefill");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_step_at_128", |b| {
        b.iter_custom(|iters| decode_runs(model, kernels, &warm, &ids, 1, iters))
    });
    // The `reproduce-paper` workload: 16 sequences decode one token each (ragged batch).
    g.throughput(Throughput::Elements(DECODE_BATCH as u64));
    g.bench_function("decode_step_batch16_at_128", |b| {
        b.iter_custom(|iters| decode_runs(model, kernels, &warm, &ids, DECODE_BATCH, iters))
    });
    g.finish();
}

/// Times `iters` greedy decoding steps of `batch` sequences as llama.cpp's side of the
/// comparison does (`benches/llamacpp_speed.py`): runs of [`DECODE_RUN`] consecutive steps, each
/// run from a copy of the 128-token prefill (copied untimed), so the caches grow as in real
/// decoding (positions 128 to 191) instead of reallocating on every timed step.
fn decode_runs(
    model: &Transformer<B>,
    kernels: &dyn Kernels<B>,
    warm: &SeqKv<B>,
    ids: &[u32],
    batch: usize,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let mut kvs = vec![warm.clone(); batch];
        let mut next: Vec<u32> = ids[..batch].to_vec();
        let run = (iters - done).min(DECODE_RUN);
        let t0 = Instant::now();
        for _ in 0..run {
            let feed: Vec<&[u32]> = next.iter().map(std::slice::from_ref).collect();
            let mut refs: Vec<&mut SeqKv<B>> = kvs.iter_mut().collect();
            let h = model
                .forward_ragged(kernels, &feed, &mut refs)
                .expect("step");
            let top = kernels.head(&model.head, h).argmax(1).into_data();
            next = top
                .convert::<i64>()
                .into_vec::<i64>()
                .expect("ids")
                .iter()
                .map(|&t| t as u32)
                .collect();
        }
        total += t0.elapsed();
        done += run;
    }
    total
}

fn backbone(c: &mut Criterion) {
    for name in ["smollm2-135m", "gemma-3-270m"] {
        let dir = assets().join(name);
        if !dir.join("model.gguf").exists() {
            eprintln!(
                "SKIPPED {name}: {} absent (cargo xtask fetch-assets)",
                dir.display()
            );
            continue;
        }
        let m = load_model_dir::<B>(&dir, &Default::default()).expect("load");
        let file = GgufFile::open(&dir.join("model.gguf")).expect("gguf");
        let packed =
            Arc::new(PackedModel::from_gguf(&file, m.model.config.n_layers).expect("packed"));
        bench_engine(c, name, "reference-f32", &m, &Engine::new(&m.model));
        let cpu = Engine::new(&m.model).with_kernels(Box::new(CpuKernels::new()));
        bench_engine(c, name, "cpu-f32", &m, &cpu);
        let pk = Engine::new(&m.model).with_kernels(Box::new(CpuKernels::with_packed(packed)));
        bench_engine(c, name, "cpu-packed", &m, &pk);
        // On an AVX-512 CPU, the AVX2 kernels too (what an AVX2-only machine runs).
        if Simd::detect() == Simd::Avx512Vnni {
            let avx2 = PackedModel::from_gguf(&file, m.model.config.n_layers)
                .expect("packed")
                .with_simd(Simd::Avx2);
            let k = CpuKernels::with_packed(Arc::new(avx2));
            let pk = Engine::new(&m.model).with_kernels(Box::new(k));
            bench_engine(c, name, "cpu-packed-avx2", &m, &pk);
        }
    }
}

criterion_group!(benches, backbone);
criterion_main!(benches);
