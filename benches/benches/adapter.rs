//! criterion bench: one phase-2 PEMA training step (forward with dropout, backward, Adam) at the
//! paper's shapes scaled to CPU, on burn's ndarray backend (f32).
//!
//! Shapes (`batch × d`, rank r, vocabulary V):
//! - `opt-like`:   B = 256, d = 640, r = 128, V = 32,768
//! - `gemma-vocab`: B = 32,  d = 640, r = 128, V = 262,144 (Gemma 3's vocabulary)
//!
//! The paper's GPU shape (B = 2048, d = 2048, r = 512, V = 50,272) is ~40× the first one in
//! FLOPs. `benches/pytorch_train_step.py` runs the same steps in PyTorch (CPU, same thread
//! count) for a ratio measured in one run. Peak memory of the training step (VmHWM growth of
//! this process while stepping) is printed before the criterion runs.
//!
//! Set `PEMA_BENCH_SHAPES=opt-like` (or `gemma-vocab`) to run one shape only.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Int, Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pema_adapter::{Adam, AdapterConfig, PemaAdapter, Phase, PhasePlan, train_step};
use pema_backbone::LmHead;

type B = NdArray<f32>;
type AD = Autodiff<B>;

struct Shape {
    name: &'static str,
    batch: usize,
    d: usize,
    rank: usize,
    vocab: usize,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "opt-like",
        batch: 256,
        d: 640,
        rank: 128,
        vocab: 32_768,
    },
    Shape {
        name: "gemma-vocab",
        batch: 32,
        d: 640,
        rank: 128,
        vocab: 262_144,
    },
];

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Setup {
    head: LmHead<AD>,
    adapter: PemaAdapter<B>,
    adam: Adam<B>,
    keys: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
}

fn setup(s: &Shape) -> Setup {
    let dev = Default::default();
    let w: Vec<f32> = values(s.vocab * s.d, 1).iter().map(|x| 0.05 * x).collect();
    let head =
        LmHead::<B>::from_host(vec![1.0; s.d], 1e-6, w, s.vocab, "bench", &dev).expect("head");
    // The frozen head lifted to the autodiff backend as constants, as `train` does.
    let head = LmHead::<AD> {
        norm_weight: Tensor::from_inner(head.norm_weight),
        eps: head.eps,
        weight: Tensor::from_inner(head.weight),
        model: head.model,
        fingerprint: head.fingerprint,
    };
    let cfg = AdapterConfig {
        d: s.d,
        vocab: s.vocab,
        rank: s.rank,
        dropout: 0.2,
        kappa: 0.2,
    };
    let mut adapter = PemaAdapter::<B>::new(cfg, 0, &dev).expect("adapter");
    adapter.b_rct = Tensor::from_data(
        TensorData::new(values(s.rank * s.d, 2), [s.rank, s.d]),
        &dev,
    );
    let adam = Adam::new(
        1e-3,
        0.9,
        0.999,
        1e-8,
        &[[s.d, s.rank], [s.rank, s.d]],
        &dev,
    );
    let keys = Tensor::from_data(
        TensorData::new(values(s.batch * s.d, 3), [s.batch, s.d]),
        &dev,
    );
    let ids: Vec<i64> = (0..s.batch)
        .map(|i| ((i * 7919) % s.vocab) as i64)
        .collect();
    let targets = Tensor::from_data(TensorData::new(ids, [s.batch]), &dev);
    Setup {
        head,
        adapter,
        adam,
        keys,
        targets,
    }
}

fn step(st: &mut Setup) -> f32 {
    let out = train_step::<AD>(
        &st.adapter,
        &mut st.adam,
        &st.head,
        st.keys.clone(),
        st.targets.clone(),
        Phase::Prediction,
        PhasePlan::TwoPhase,
    )
    .expect("step");
    st.adapter = out.adapter;
    out.loss.into_scalar()
}

/// VmHWM (peak resident set) of this process in KiB, from /proc/self/status.
fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn selected() -> Vec<&'static Shape> {
    let want = std::env::var("PEMA_BENCH_SHAPES").unwrap_or_default();
    SHAPES
        .iter()
        .filter(|s| want.is_empty() || want.split(',').any(|w| w == s.name))
        .collect()
}

fn bench_phase2_step(c: &mut Criterion) {
    // Peak memory first, shape by shape in increasing size, before criterion allocates.
    for s in selected() {
        let before = vm_hwm_kib();
        let mut st = setup(s);
        let after_setup = vm_hwm_kib();
        let t0 = Instant::now();
        for _ in 0..3 {
            black_box(step(&mut st));
        }
        let per_step = t0.elapsed().as_secs_f64() / 3.0;
        let after = vm_hwm_kib();
        if let (Some(b), Some(u), Some(a)) = (before, after_setup, after) {
            eprintln!(
                "pema adapter {}: B={} d={} r={} V={}: VmHWM {:.1} MiB after setup \
                 (+{:.1} MiB for head/data), {:.1} MiB after 3 steps \
                 (+{:.1} MiB for the step); {:.1} ms/step (warm-up)",
                s.name,
                s.batch,
                s.d,
                s.rank,
                s.vocab,
                u as f64 / 1024.0,
                u.saturating_sub(b) as f64 / 1024.0,
                a as f64 / 1024.0,
                a.saturating_sub(u) as f64 / 1024.0,
                per_step * 1e3
            );
        }
    }
    let mut group = c.benchmark_group("adapter_phase2_step");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(10));
    for s in selected() {
        let mut st = setup(s);
        group.throughput(Throughput::Elements(s.batch as u64));
        group.bench_function(s.name, |b| b.iter(|| black_box(step(&mut st))));
    }
    group.finish();
}

criterion_group!(benches, bench_phase2_step);
criterion_main!(benches);
