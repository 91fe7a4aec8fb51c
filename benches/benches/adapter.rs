//! criterion bench: one phase-2 PEMA training step (forward with dropout, blockwise head
//! cross-entropy, backward, Adam) on burn-flex (the `pema` binary's CPU backend), f32.
//!
//! Shapes (`batch × d`, rank r, vocabulary V), the fused-head issue's grid
//! ([`pema_pipeline::step_bench::STEP_SHAPES`] without the paper's GPU shape; the state and the
//! step are [`PhaseTwoStep`]'s, what `pema bench-step` times on any device):
//! - Gemma 3: d = 640, V = 262,144; r ∈ {64, 512}; B ∈ {256, 2,048}
//! - SmolLM2: d = 576, V = 49,152; r ∈ {64, 512}; B ∈ {256, 2,048}
//!
//! Variants: `cpu` (the host CPU kernel, exact, the path [`CePath::Auto`] picks: low-rank when
//! cheaper; what `pema train` runs on `--device cpu`), `cpu-dense` (dense path forced),
//! `tensor` (burn tensor operations, auto path), `f16` (tensor kernel, W_hd stored in f16),
//! `cpu-f16` (CPU kernel, auto path, W_hd stored in f16 and converted block by block),
//! `cpu-bf16` (CPU kernel, bf16 products on AVX-512 BF16, f32 accumulation) and
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
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pema_adapter::{CePath, HeadCeConfig, HeadKernel, HeadPrecision};
use pema_pipeline::step_bench::{PhaseTwoStep, STEP_SHAPES, StepShape};

type AD = Autodiff<Flex>;

const VARIANTS: [&str; 7] = [
    "cpu",
    "cpu-dense",
    "tensor",
    "f16",
    "cpu-f16",
    "cpu-bf16",
    "filter",
];

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
        "cpu-bf16" => HeadCeConfig {
            precision: HeadPrecision::Bf16,
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

fn setup(s: &StepShape, variant: &str) -> PhaseTwoStep<AD> {
    PhaseTwoStep::new(*s, head_config(variant), &Default::default()).expect("step state")
}

fn step(st: &mut PhaseTwoStep<AD>) -> f32 {
    st.step().expect("step")
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
fn selected() -> Vec<(&'static StepShape, &'static str)> {
    // The CPU grid: every named shape but the paper's GPU one.
    let grid = STEP_SHAPES.iter().filter(|s| s.name != "paper");
    let shapes = filter_env(grid, "PEMA_BENCH_SHAPES", |s| s.name);
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
