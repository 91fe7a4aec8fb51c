//! Sizes of a `reproduce-paper` run: `quick`, `standard` (the default) and `full`.

/// Size of a run.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Name (`quick` or `full`).
    pub name: &'static str,
    /// WMT22: training pairs used to build the memory.
    pub train_pairs: usize,
    /// WMT22: dev pairs (dev memory, early stopping, kNN-LM tuning).
    pub dev_pairs: usize,
    /// WMT22: test pairs decoded and scored.
    pub test_pairs: usize,
    /// Test pairs of the λmax sweep (a prefix of the test subset).
    pub sweep_pairs: usize,
    /// λmax values of the sweep (GU and constant λ each).
    pub lambda_sweep: &'static [f64],
    /// κ values trained and decoded in addition to 0 (ablation) and 0.2 (paper).
    pub extra_kappas: &'static [f64],
    /// Ding EN→DE: train / dev / test pairs.
    pub ding_sizes: [usize; 3],
    /// Synthetic formality: train / dev / test pairs.
    pub formality_sizes: [usize; 3],
    /// Adapter rank r.
    pub rank: usize,
    /// Phase-1 batch size.
    pub batch1: usize,
    /// Phase-2 batch size.
    pub batch2: usize,
    /// Maximum epochs per phase.
    pub epochs: usize,
    /// Cap on phase-2 optimiser steps (`None`: epochs and early stopping decide).
    pub max_steps2: Option<u64>,
    /// Cap on phase-2 steps of the ablation adapters (`None`: as `max_steps2`).
    pub ablation_steps2: Option<u64>,
    /// Cap on phase-2 steps of the adapters of the side tasks (Ding, formality).
    pub side_steps2: Option<u64>,
    /// Validation interval (steps).
    pub validate_every: usize,
    /// LoRA: optimiser steps cap, batch size, rank, dev pairs read by its validation (the
    /// first ones of the dev split).
    pub lora: [usize; 4],
    /// Decode batch size.
    pub decode_batch: usize,
    /// Also build a free-running (paper construction) memory and train/decode PEMA on it.
    pub free_running_row: bool,
    /// Train and decode the ablations (κ = 0, B_pd only, raw keys; the κ sweep and phase 2
    /// only where the profile lists them).
    pub ablations: bool,
    /// Also the "phase 2 only" ablation.
    pub joint_ablation: bool,
    /// Train and decode pema's residual extension (h_pd = f + σ⊙B_pd·z) next to the paper rows.
    pub residual: bool,
    /// Cap on phase-1 optimiser steps (`None`: epochs and early stopping decide).
    pub max_steps1: Option<u64>,
    /// Validation and λ tuning read at most this many dev-memory entries (evenly spaced).
    pub dev_max: usize,
    /// Precision of PEMA's head products (`pema --head-precision`) in training, λ tuning and
    /// the PEMA rows' decoding: `bf16` (f32 accumulation; on the CPU the host kernel's AVX-512
    /// BF16 products, ~1.9× faster per phase-2 step than f32) or `f32`. The PLM's own head and
    /// the baselines stay f32.
    pub head_precision: &'static str,
}

/// `quick`: CPU, real model and data, small subsets and 60 phase-2 steps; the ablations, the κ
/// sweep and the free-running row run only in `full` (on 2 CPU cores a 262k-vocabulary phase-2
/// step takes ~2 s, so each extra adapter costs minutes and learns little at this budget).
pub const QUICK: Profile = Profile {
    name: "quick",
    train_pairs: 240,
    dev_pairs: 24,
    test_pairs: 40,
    sweep_pairs: 16,
    lambda_sweep: &[0.3, 0.9],
    extra_kappas: &[],
    ding_sizes: [200, 20, 32],
    formality_sizes: [200, 20, 32],
    rank: 64,
    batch1: 1024,
    batch2: 64,
    epochs: 2,
    max_steps2: Some(60),
    ablation_steps2: None,
    side_steps2: Some(60),
    validate_every: 20,
    lora: [12, 2, 8, 24],
    decode_batch: 8,
    free_running_row: false,
    ablations: false,
    joint_ablation: false,
    residual: true,
    max_steps1: Some(50),
    dev_max: 2_000,
    head_precision: "bf16",
};

/// `standard` (the default): sized for 2 CPU cores. WMT22: memory from the first 4,000 training
/// pairs (147k entries), dev memory from 300 dev pairs, the first 500 test sentences (~10k
/// target tokens) decoded by every method. Ding at comparable size: 12,000 training pairs
/// (its sentences are a third as long: ~138k entries) and its whole 1,000-sentence test split
/// (~11k target tokens; 300 sentences gave too few tokens to separate methods). The synthetic
/// formality task: 4,000 / 300 / 300. Adapters: r = 512 as the paper (d = 640), phase-2 batch
/// 256 (CPU), the paper's early stopping with validation every 50 steps on 4,096 dev entries,
/// at most 600 phase-2 steps on every task (200 for the ablations; at 300 the Ding and
/// formality dev curves were still falling at the last step): a 262k-token phase-2 step costs
/// ~0.8 s on 2 AVX-512 cores, ~2.5 s on 2 AVX2 cores. LoRA gets a comparable wall-clock budget:
/// 24 steps of 8 pairs (a backward pass through the whole PLM costs ~18 s per step here),
/// validated on the first 64 dev pairs.
pub const STANDARD: Profile = Profile {
    name: "standard",
    train_pairs: 4_000,
    dev_pairs: 300,
    test_pairs: 500,
    sweep_pairs: 100,
    lambda_sweep: &[0.3, 0.9],
    extra_kappas: &[],
    ding_sizes: [12_000, 300, 1_000],
    formality_sizes: [4_000, 300, 300],
    rank: 512,
    batch1: 20_480,
    batch2: 256,
    epochs: 200,
    max_steps2: Some(600),
    ablation_steps2: Some(200),
    side_steps2: Some(600),
    validate_every: 50,
    lora: [24, 8, 8, 64],
    decode_batch: 16,
    free_running_row: false,
    ablations: true,
    joint_ablation: false,
    residual: true,
    max_steps1: Some(200),
    dev_max: 4_096,
    head_precision: "bf16",
};

/// `full`: all data, the paper's rank and batch sizes (a GPU machine via `--device`).
pub const FULL: Profile = Profile {
    name: "full",
    train_pairs: usize::MAX,
    dev_pairs: usize::MAX,
    test_pairs: usize::MAX,
    sweep_pairs: 400,
    lambda_sweep: &[0.1, 0.3, 0.5, 0.7, 0.9],
    extra_kappas: &[0.1, 0.5, 0.8],
    ding_sizes: [usize::MAX, 1000, 1000],
    formality_sizes: [usize::MAX, 1000, 1000],
    rank: 512,
    batch1: 20_480,
    batch2: 2_048,
    epochs: 200,
    max_steps2: None,
    ablation_steps2: None,
    side_steps2: None,
    validate_every: 100,
    lora: [5000, 8, 16, usize::MAX],
    decode_batch: 32,
    free_running_row: true,
    ablations: true,
    joint_ablation: true,
    residual: true,
    max_steps1: None,
    dev_max: usize::MAX,
    // fp32 by default on the GPU, as the paper (bf16 is an option of `pema`).
    head_precision: "f32",
};
