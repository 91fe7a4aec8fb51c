//! Prefill and decode throughput (tokens/s) of the real models on CPU, on both CPU backends
//! (burn-ndarray and burn-flex) in the same run, so their ratio is measured under one load.
//!
//! Needs `cargo xtask fetch-assets`; prints a skip line per model when its files are absent.
//! (`criterion_group!` generates an undocumented function, hence the allow below.)
//! Run: `cargo bench -p pema-benches --bench backbone` (see README for figures).
#![allow(missing_docs)]

use std::path::PathBuf;

use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pema_backbone::{LoadedModel, load_model_dir};

const PREFILL: usize = 128;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets")
}

fn prompt<B: Backend>(m: &LoadedModel<B>) -> Vec<u32> {
    let text = "The history of the railway begins with wooden wagonways in the mines of Europe, \
                where horses pulled carts along simple tracks. ";
    let mut ids = m.tokenizer.encode_prompt(&text.repeat(8)).expect("encode");
    ids.truncate(PREFILL);
    ids
}

fn bench_model<B: Backend>(c: &mut Criterion, name: &str, backend: &str) {
    let dir = assets().join(name);
    if !dir.join("model.gguf").exists() {
        eprintln!(
            "SKIPPED {name}: {} absent (cargo xtask fetch-assets)",
            dir.display()
        );
        return;
    }
    let m = load_model_dir::<B>(&dir, &Default::default()).expect("load");
    let ids = prompt(&m);
    assert_eq!(ids.len(), PREFILL, "prompt too short");
    let mut g = c.benchmark_group(format!("{name}/{backend}"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(PREFILL as u64));
    g.bench_function("prefill_128", |b| {
        b.iter(|| {
            let mut cache = m.model.new_cache(vec![0]);
            let h = m
                .model
                .forward(std::slice::from_ref(&ids), &mut cache)
                .expect("forward");
            let [_, t, d] = h.dims();
            // Include the head on the last position, as a generation step would.
            m.model
                .logits(h.narrow(1, t - 1, 1).reshape([1, d]))
                .into_data()
        })
    });
    let mut warm = m.model.new_cache(vec![0]);
    m.model
        .forward(std::slice::from_ref(&ids), &mut warm)
        .expect("prefill");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_step_at_128", |b| {
        b.iter_batched(
            || warm.clone(),
            |mut cache| {
                let h = m.model.forward(&[vec![ids[5]]], &mut cache).expect("step");
                let [_, _, d] = h.dims();
                m.model.logits(h.reshape([1, d])).argmax(1).into_data()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn backbone(c: &mut Criterion) {
    for name in ["smollm2-135m", "gemma-3-270m"] {
        bench_model::<NdArray<f32>>(c, name, "ndarray");
        bench_model::<Flex>(c, name, "flex");
    }
}

criterion_group!(benches, backbone);
criterion_main!(benches);
