//! criterion bench: one phase-2 PEMA training step (forward with dropout, blockwise head
//! cross-entropy, backward, Adam) on burn-flex (the `pema` binary's CPU backend), f32.
//!
//! Shapes (`batch × d`, rank r, vocabulary V), the fused-head issue's grid:
//! - Gemma 3: d = 640, V = 262,144; r ∈ {64, 512}; B ∈ {256, 2,048}
//! - SmolLM2: d = 576, V = 49,152; r ∈ {64, 512}; B ∈ {256, 2,048}
//!
//! Variants: `cpu` (the host CPU kernel, exact, the path [`CePath::Auto`] picks: low-rank when
//! cheaper; what `pema train` runs on `--device cpu`), `cpu-dense` (dense path forced),
//! `tensor` (burn tensor operations, auto path), `f16` (tensor kernel, W_hd stored in f16),
//! `cpu-f16` (CPU kernel, auto path, W_hd stored in f16 and converted block by block) and
//! `filter` (CPU kernel, dense, gradient filtering at ε = 2⁻¹², Cut Cross-Entropy's default);
//! variants other than `cpu` run on the Gemma shapes only.
//! `benches/pytorch_train_step.py --shapes issue10` runs PyTorch's dense step at the same shapes
//! for a ratio measured in one run. Peak memory (VmHWM growth while stepping) is printed before
//! the criterion runs.
//!
//! `PEMA_BENCH_SHAPES=gemma-r64-b256,...` runs a subset; `PEMA_BENCH_VARIANTS=cpu,tensor`
//! likewise.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::tensor::{Int, Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pema_adapter::{
    AdamOptimizer, AdapterConfig, CePath, FusedHead, HeadCeConfig, HeadKernel, HeadPrecision,
    PemaAdapter, Phase, PhasePlan, TorchAdam, train_step,
};
use pema_backbone::LmHead;

type B = Flex;
type AD = Autodiff<B>;

struct Shape {
    name: &'static str,
    batch: usize,
    d: usize,
    rank: usize,
    vocab: usize,
}

const fn shape(name: &'static str, batch: usize, d: usize, rank: usize, vocab: usize) -> Shape {
    Shape {
        name,
        batch,
        d,
        rank,
        vocab,
    }
}

const SHAPES: [Shape; 8] = [
    shape("smollm2-r64-b256", 256, 576, 64, 49_152),
    shape("smollm2-r512-b256", 256, 576, 512, 49_152),
    shape("smollm2-r64-b2048", 2048, 576, 64, 49_152),
    shape("smollm2-r512-b2048", 2048, 576, 512, 49_152),
    shape("gemma-r64-b256", 256, 640, 64, 262_144),
    shape("gemma-r512-b256", 256, 640, 512, 262_144),
    shape("gemma-r64-b2048", 2048, 640, 64, 262_144),
    shape("gemma-r512-b2048", 2048, 640, 512, 262_144),
];

const VARIANTS: [&str; 6] = ["cpu", "cpu-dense", "tensor", "f16", "cpu-f16", "filter"];

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
    head: FusedHead<AD>,
    adapter: PemaAdapter<B>,
    adam: AdamOptimizer<PemaAdapter<AD>, AD>,
    keys: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
}

fn head_config(variant: &str) -> HeadCeConfig {
    let cpu = HeadCeConfig {
        kernel: HeadKernel::Cpu,
        ..HeadCeConfig::default()
    };
    match variant {
        "cpu-dense" => HeadCeConfig {
            path: CePath::Dense,
            ..cpu
        },
        "tensor" => HeadCeConfig::default(),
        "f16" => HeadCeConfig {
            precision: HeadPrecision::F16,
            ..HeadCeConfig::default()
        },
        "cpu-f16" => HeadCeConfig {
            precision: HeadPrecision::F16,
            ..cpu
        },
        // Cut Cross-Entropy's default threshold for its bf16 kernels is 2⁻¹².
        "filter" => HeadCeConfig {
            filter_eps: Some(2f64.powi(-12)),
            path: CePath::Dense,
            ..cpu
        },
        _ => cpu,
    }
}

fn setup(s: &Shape, variant: &str) -> Setup {
    let dev = Default::default();
    let w: Vec<f32> = values(s.vocab * s.d, 1).iter().map(|x| 0.05 * x).collect();
    let head =
        LmHead::<B>::from_host(vec![1.0; s.d], 1e-6, w, s.vocab, "bench", &dev).expect("head");
    let head = FusedHead::from_head(head, head_config(variant)).expect("fused head");
    let cfg = AdapterConfig {
        d: s.d,
        vocab: s.vocab,
        rank: s.rank,
        dropout: 0.2,
        kappa: 0.2,
        form: Default::default(),
    };
    let mut adapter = PemaAdapter::<B>::new(cfg, 0, &dev).expect("adapter");
    adapter.b_rct = Param::from_tensor(Tensor::from_data(
        TensorData::new(values(s.rank * s.d, 2), [s.rank, s.d]),
        &dev,
    ));
    let adam = TorchAdam {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
    }
    .into();
    let keys = Tensor::from_data(
        TensorData::new(values(s.batch * s.d, 3), [s.batch, s.d]),
        &dev,
    );
    let ids: Vec<i64> = (0..s.batch)
        .map(|i| ((i * 7919) % s.vocab) as i64)
        .collect();
    let targets = Tensor::from_data(TensorData::new(ids, [s.batch]), &dev);
    Setup {
        head: head.lift::<AD>(),
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
        1e-3,
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

fn filter_env<T>(items: impl Iterator<Item = T>, var: &str, name: impl Fn(&T) -> &str) -> Vec<T> {
    let want = std::env::var(var).unwrap_or_default();
    items
        .filter(|s| want.is_empty() || want.split(',').any(|w| w == name(s)))
        .collect()
}

/// (shape, variant) pairs to run: every shape with `auto`, the Gemma shapes with the others.
fn selected() -> Vec<(&'static Shape, &'static str)> {
    let shapes = filter_env(SHAPES.iter(), "PEMA_BENCH_SHAPES", |s| s.name);
    let variants = filter_env(VARIANTS.iter().copied(), "PEMA_BENCH_VARIANTS", |v| v);
    let mut out = Vec::new();
    for s in shapes {
        for &v in &variants {
            if v == "cpu" || s.name.starts_with("gemma") {
                out.push((s, v));
            }
        }
    }
    out
}

fn bench_phase2_step(c: &mut Criterion) {
    // Peak memory and a first timing, before criterion allocates anything.
    for (s, v) in selected() {
        let before = vm_hwm_kib();
        let mut st = setup(s, v);
        let path = st.head.choose_path(s.batch, Some(s.rank), true);
        let after_setup = vm_hwm_kib();
        let t0 = Instant::now();
        let mut loss = 0.0;
        for _ in 0..2 {
            loss = black_box(step(&mut st));
        }
        let per_step = t0.elapsed().as_secs_f64() / 2.0;
        let after = vm_hwm_kib();
        if let (Some(b), Some(u), Some(a)) = (before, after_setup, after) {
            eprintln!(
                "pema adapter {}/{v}: B={} d={} r={} V={} path {path:?}: VmHWM {:.1} MiB after \
                 setup (+{:.1} MiB head/data), {:.1} MiB after 2 steps (+{:.1} MiB for the \
                 step); {:.1} ms/step (warm-up), loss {loss:.4}",
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
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    for (s, v) in selected() {
        let mut st = setup(s, v);
        group.throughput(Throughput::Elements(s.batch as u64));
        group.bench_function(format!("{}/{v}", s.name), |b| {
            b.iter(|| black_box(step(&mut st)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_phase2_step);
criterion_main!(benches);
