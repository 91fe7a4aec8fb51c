//! A steady-state decode loop for profilers (`perf record -D <ms>`): loads a model's packed
//! weights, prefills 128 tokens, then times `STEPS` single-sequence decode steps (forward +
//! head + argmax) and prints tokens/s. Criterion's harness loads every variant first, which
//! pollutes a profile; this runs only the packed engine.
//!
//! Run: `cargo run --release -p pema-benches --example decode_profile -- smollm2-135m 400`.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::backend::Flex;
use pema_backbone::gguf::GgufFile;
use pema_backbone::packed::PackedModel;
use pema_backbone::{CpuKernels, Engine, load_model_dir};

type B = Flex;

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "smollm2-135m".into());
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(400);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets")
        .join(&name);
    if !dir.join("model.gguf").exists() {
        eprintln!(
            "SKIPPED {name}: {} absent (cargo xtask fetch-assets)",
            dir.display()
        );
        return;
    }
    let m = load_model_dir::<B>(&dir, &Default::default()).expect("load");
    let file = GgufFile::open(&dir.join("model.gguf")).expect("gguf");
    let packed = Arc::new(PackedModel::from_gguf(&file, m.model.config.n_layers).expect("packed"));
    let e = Engine::new(&m.model).with_kernels(Box::new(CpuKernels::with_packed(packed)));
    let text = "The history of the railway begins with wooden wagonways in the mines of Europe. ";
    let mut ids = m.tokenizer.encode_prompt(&text.repeat(12)).expect("encode");
    ids.truncate(128);
    let (model, kernels) = (&m.model, e.kernels());
    let mut kv = model.new_seq_cache();
    let h = model
        .forward_ragged(kernels, &[&ids], &mut [&mut kv])
        .expect("prefill");
    let mut next = argmax(kernels.head(&model.head, h.narrow(0, ids.len() - 1, 1)));
    eprintln!("loaded; decoding {steps} steps");
    let t0 = Instant::now();
    for _ in 0..steps {
        let h = model
            .forward_ragged(kernels, &[&[next]], &mut [&mut kv])
            .expect("step");
        next = argmax(kernels.head(&model.head, h));
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{name} packed decode: {:.1} tok/s ({steps} steps, {s:.2} s)",
        steps as f64 / s
    );
}

fn argmax(logits: burn::tensor::Tensor<B, 2>) -> u32 {
    let v = logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("ids");
    v[0] as u32
}
