//! Timing PEMA's phase-2 training step at a fixed shape on synthetic data, on any backend: the
//! step `pema bench-step` prints, the criterion bench `adapter` runs, and
//! `benches/pytorch_train_step.py` times in PyTorch at the same shapes (same shape names).
//!
//! The step is [`pema_adapter::train_step`] in phase 2 (prediction): input dropout 0.2,
//! z = A·x / r, h_rct = B_rct·z (B_rct frozen), h_pd = B_pd·z,
//! L = κ·MSE(h_rct, x) + (1 − κ)·CE(W_hd·norm(h_pd), y) with κ = 0.2, backward, Adam
//! (lr 10⁻³, ε 10⁻⁸). W_hd, B_rct, the keys and the targets are deterministic pseudo-random
//! values, so two runs (and two backends) step on the same data.

use std::time::Instant;

use burn::module::Param;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use pema_adapter::{
    AdamOptimizer, AdapterConfig, FusedHead, HeadCeConfig, PemaAdapter, Phase, PhasePlan,
    TorchAdam, train_step,
};
use pema_backbone::LmHead;
use serde::Serialize;

use crate::error::{PipelineError, Result};

/// A phase-2 step's shape: batch × d, rank r, vocabulary V.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepShape {
    /// The shape's name (shared with `benches/pytorch_train_step.py`).
    pub name: &'static str,
    /// Memory entries per step (B).
    pub batch: usize,
    /// Hidden size d.
    pub d: usize,
    /// Adapter rank r.
    pub rank: usize,
    /// Vocabulary V (rows of W_hd).
    pub vocab: usize,
}

const fn shape(name: &'static str, batch: usize, d: usize, rank: usize, vocab: usize) -> StepShape {
    StepShape {
        name,
        batch,
        d,
        rank,
        vocab,
    }
}

/// The named shapes: the fused-head issue's grid (SmolLM2: d 576, V 49,152; Gemma 3: d 640,
/// V 262,144; r ∈ {64, 512}; B ∈ {256, 2,048}) and the paper's GPU setting (`paper`: OPT-1.3B's
/// d 2,048 and V 50,272, r 512, B 2,048).
pub const STEP_SHAPES: [StepShape; 9] = [
    shape("smollm2-r64-b256", 256, 576, 64, 49_152),
    shape("smollm2-r512-b256", 256, 576, 512, 49_152),
    shape("smollm2-r64-b2048", 2048, 576, 64, 49_152),
    shape("smollm2-r512-b2048", 2048, 576, 512, 49_152),
    shape("gemma-r64-b256", 256, 640, 64, 262_144),
    shape("gemma-r512-b256", 256, 640, 512, 262_144),
    shape("gemma-r64-b2048", 2048, 640, 64, 262_144),
    shape("gemma-r512-b2048", 2048, 640, 512, 262_144),
    shape("paper", 2048, 2048, 512, 50_272),
];

impl StepShape {
    /// The shape called `name` in [`STEP_SHAPES`].
    pub fn named(name: &str) -> Result<Self> {
        STEP_SHAPES
            .iter()
            .find(|s| s.name == name)
            .copied()
            .ok_or_else(|| {
                let known: Vec<&str> = STEP_SHAPES.iter().map(|s| s.name).collect();
                PipelineError::Invalid(format!(
                    "unknown step shape `{name}` (known: {})",
                    known.join(", ")
                ))
            })
    }
}

/// Deterministic pseudo-random values in [-1, 1) (xorshift; the same on every machine).
pub fn synthetic_values(n: usize, seed: u64) -> Vec<f32> {
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

/// A ready-to-step phase-2 training state on backend `B` (an autodiff backend).
pub struct PhaseTwoStep<B: AutodiffBackend> {
    /// The frozen head through which the CE is taken.
    pub head: FusedHead<B>,
    /// The adapter being trained.
    adapter: PemaAdapter<B::InnerBackend>,
    adam: AdamOptimizer<PemaAdapter<B>, B>,
    keys: Tensor<B::InnerBackend, 2>,
    targets: Tensor<B::InnerBackend, 1, Int>,
}

impl<B: AutodiffBackend> std::fmt::Debug for PhaseTwoStep<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhaseTwoStep").finish_non_exhaustive()
    }
}

impl<B: AutodiffBackend> PhaseTwoStep<B> {
    /// Builds W_hd (0.05 × values in [-1, 1), unit norm weight), a fresh phase-2 adapter with a
    /// pseudo-random B_rct, the keys and the targets (token i·7919 mod V) on `device`.
    pub fn new(shape: StepShape, head: HeadCeConfig, device: &B::Device) -> Result<Self> {
        let StepShape {
            batch,
            d,
            rank,
            vocab,
            ..
        } = shape;
        let w: Vec<f32> = synthetic_values(vocab * d, 1)
            .iter()
            .map(|x| 0.05 * x)
            .collect();
        let lm_head = LmHead::<B::InnerBackend>::from_host(
            vec![1.0; d],
            1e-6,
            w,
            vocab,
            "step-bench",
            device,
        )?;
        let fused = FusedHead::from_head(lm_head, head)?;
        let cfg = AdapterConfig {
            d,
            vocab,
            rank,
            dropout: 0.2,
            kappa: 0.2,
            form: Default::default(),
        };
        let mut adapter = PemaAdapter::<B::InnerBackend>::new(cfg, 0, device)?;
        adapter.b_rct = Param::from_tensor(Tensor::from_data(
            TensorData::new(synthetic_values(rank * d, 2), [rank, d]),
            device,
        ));
        let adam = TorchAdam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        }
        .into();
        let keys = Tensor::from_data(
            TensorData::new(synthetic_values(batch * d, 3), [batch, d]),
            device,
        );
        let ids: Vec<i64> = (0..batch).map(|i| ((i * 7919) % vocab) as i64).collect();
        let targets = Tensor::from_data(TensorData::new(ids, [batch]), device);
        Ok(Self {
            head: fused.lift::<B>(),
            adapter,
            adam,
            keys,
            targets,
        })
    }

    /// One training step; returns the batch loss (reading it back waits for the device).
    pub fn step(&mut self) -> Result<f32> {
        let out = train_step::<B>(
            &self.adapter,
            &mut self.adam,
            1e-3,
            &self.head,
            self.keys.clone(),
            self.targets.clone(),
            Phase::Prediction,
            PhasePlan::TwoPhase,
        )?;
        self.adapter = out.adapter;
        Ok(out.loss.into_scalar().elem::<f32>())
    }
}

/// What [`time_phase_two_step`] measured (the keys of `benches/pytorch_train_step.py`'s JSON).
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    /// The shape's name.
    pub shape: &'static str,
    /// B.
    pub batch: usize,
    /// d.
    pub d: usize,
    /// r.
    pub rank: usize,
    /// V.
    pub vocab: usize,
    /// Median milliseconds per step over the timed steps.
    pub ms_per_step: f64,
    /// Memory entries per second at the median step.
    pub tokens_per_s: f64,
    /// Timed steps (after the warm-up ones).
    pub steps: usize,
    /// Seconds to build the state (W_hd, adapter, data) on the device.
    pub setup_s: f64,
    /// The last step's loss.
    pub loss: f32,
}

/// Builds a [`PhaseTwoStep`], runs `warmup` steps, then times `steps` steps one by one (each
/// waits for its loss, so a GPU's queue is drained per step as PyTorch's `synchronize` does).
pub fn time_phase_two_step<B: AutodiffBackend>(
    shape: StepShape,
    head: HeadCeConfig,
    warmup: usize,
    steps: usize,
    device: &B::Device,
) -> Result<StepTiming> {
    if steps == 0 {
        return Err(PipelineError::Invalid("time at least one step".into()));
    }
    let t0 = Instant::now();
    let mut state = PhaseTwoStep::<B>::new(shape, head, device)?;
    let setup_s = t0.elapsed().as_secs_f64();
    let mut loss = 0.0;
    for _ in 0..warmup {
        loss = state.step()?;
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        loss = state.step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let mid = times.len() / 2;
    let median = if times.len() % 2 == 1 {
        times[mid]
    } else {
        0.5 * (times[mid - 1] + times[mid])
    };
    Ok(StepTiming {
        shape: shape.name,
        batch: shape.batch,
        d: shape.d,
        rank: shape.rank,
        vocab: shape.vocab,
        ms_per_step: median * 1e3,
        tokens_per_s: shape.batch as f64 / median,
        steps,
        setup_s,
        loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type AD = Autodiff<NdArray<f32>>;

    #[test]
    fn every_named_shape_is_found_and_unknown_names_are_an_error() {
        for s in STEP_SHAPES {
            assert_eq!(StepShape::named(s.name).expect("step"), s);
        }
        let err = StepShape::named("gemma")
            .expect_err("unknown shape")
            .to_string();
        assert!(err.contains("unknown step shape `gemma`"), "{err}");
        assert!(err.contains("paper"), "{err}");
    }

    #[test]
    fn a_small_step_lowers_the_loss_and_is_timed() {
        let tiny = StepShape {
            name: "tiny",
            batch: 16,
            d: 8,
            rank: 4,
            vocab: 32,
        };
        let dev = Default::default();
        let t = time_phase_two_step::<AD>(tiny, HeadCeConfig::default(), 1, 3, &dev).expect("step");
        assert_eq!((t.batch, t.d, t.rank, t.vocab, t.steps), (16, 8, 4, 32, 3));
        assert!(t.ms_per_step > 0.0 && t.tokens_per_s > 0.0);
        assert!(t.loss.is_finite());
        let mut s = PhaseTwoStep::<AD>::new(tiny, HeadCeConfig::default(), &dev).expect("step");
        let first = s.step().expect("step");
        let mut last = first;
        for _ in 0..40 {
            last = s.step().expect("step");
        }
        assert!(last < first, "loss {first} → {last}");
        assert!(
            time_phase_two_step::<AD>(tiny, HeadCeConfig::default(), 0, 0, &dev).is_err(),
            "zero timed steps is refused"
        );
    }
}
