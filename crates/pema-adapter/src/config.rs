//! Hyper-parameters of the adapter and of its two-phase training, with the paper's values as
//! defaults (spec §3: r = 512, κ = 0.2, dropout 0.2, Adam lr 1e-3, batches 20,480 / 2,048,
//! up to 200 epochs, validation every 100 steps).

use serde::{Deserialize, Serialize};

use crate::error::{AdapterError, Result};

/// Shape and regularisation of a PEMA adapter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Hidden size d of the context representations f(c) (= the head's width).
    pub d: usize,
    /// Vocabulary size of the head.
    pub vocab: usize,
    /// Bottleneck rank r (paper: 512).
    pub rank: usize,
    /// Input dropout probability p on f(c), training only (paper: 0.2).
    pub dropout: f64,
    /// Weight κ of the reconstruction loss in phase 2: L = κ·L_rct + (1−κ)·L_pd (paper: 0.2).
    pub kappa: f64,
    /// How h_pd is formed: the paper's B_pd·z, or pema's residual extension.
    #[serde(default)]
    pub form: HpdForm,
}

/// How the adapter forms the representation h_pd that the head reads.
///
/// The paper: h_pd = B_pd·z, so P_PEMA starts uniform (B_pd = 0) and must rebuild the whole
/// next-token distribution through a rank-r bottleneck. pema's extension
/// [`HpdForm::Residual`]: h_pd = f(c) + σ ⊙ B_pd·z (σ the key scale, 1 without key
/// standardisation), so P_PEMA starts equal to P_LM and training learns the domain's
/// correction. The data owner holds f(c) and the head, so nothing new is disclosed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HpdForm {
    /// h_pd = B_pd·z (the paper).
    #[default]
    Paper,
    /// h_pd = f(c) + σ ⊙ B_pd·z (pema extension, labelled in every report).
    Residual,
}

impl AdapterConfig {
    /// The paper's adapter for a head of width `d` and vocabulary `vocab`
    /// (r = 512, p = 0.2, κ = 0.2).
    pub fn paper(d: usize, vocab: usize) -> Self {
        Self {
            d,
            vocab,
            rank: 512,
            dropout: 0.2,
            kappa: 0.2,
            form: Default::default(),
        }
    }

    /// Scale s = 1/r applied to the bottleneck: z = s·A·dropout(f).
    pub fn scale(&self) -> f64 {
        1.0 / self.rank as f64
    }

    /// Checks ranges (non-zero sizes, p ∈ [0, 1), κ ∈ [0, 1]).
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("rank r (--rank)", self.rank),
            ("hidden size d", self.d),
            ("vocabulary size", self.vocab),
        ] {
            if value == 0 {
                return Err(AdapterError::Config(format!(
                    "{name} must be positive, got 0"
                )));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(AdapterError::Config(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if !(0.0..=1.0).contains(&self.kappa) {
            return Err(AdapterError::Config(format!(
                "kappa must be in [0, 1], got {}",
                self.kappa
            )));
        }
        Ok(())
    }
}

/// How the keys f(c) enter the adapter.
///
/// The paper feeds the raw context representation. A Gemma 3 residual stream before the final
/// norm has a mean of thousands in a few dimensions (on WMT22 contexts one dimension carries
/// over 80% of the energy, RMS ≈ 33k): L_rct is then ~10⁶, κ·L_rct swamps L_pd and nothing is
/// learnt. [`KeyNorm::Standardize`] trains on x = (f − μ)/σ per dimension, μ and σ estimated
/// by the data owner on its own training memory and stored with the adapter; h_rct then
/// reconstructs x. The CE path is unchanged in form (W_hd·norm(h_pd)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyNorm {
    /// The paper: x = f(c).
    #[default]
    None,
    /// pema's default: x = (f(c) − μ)/σ per dimension, from the training memory.
    Standardize,
}

/// Which parameters each phase trains: the paper's two phases, or an ablation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhasePlan {
    /// The paper: phase 1 trains (A₁, B_rct) on L_rct; phase 2 a fresh (A, B_pd), B_rct frozen.
    #[default]
    TwoPhase,
    /// Ablation "phase 2 only": no phase 1; A, B_rct and B_pd are trained jointly on
    /// κ·L_rct + (1−κ)·L_pd from the start.
    Joint,
    /// Ablation "B_pd only": phase 1 as in the paper, then phase 2 keeps A₁ (frozen, no fresh
    /// A) and trains B_pd alone.
    BpdOnly,
}

/// Settings of one training phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseConfig {
    /// Mini-batch size (paper: 20,480 in phase 1, 2,048 in phase 2).
    pub batch_size: usize,
    /// Maximum number of epochs over the training memory (paper: 200).
    pub max_epochs: usize,
    /// Optional hard cap on optimiser steps (tests, benchmarks, smoke runs).
    pub max_steps: Option<u64>,
}

/// Everything that controls [`crate::train`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Bottleneck rank r.
    pub rank: usize,
    /// Input dropout p.
    pub dropout: f64,
    /// Reconstruction weight κ of phase 2.
    pub kappa: f64,
    /// Phase 1: autoencoder (A₁, B_rct) on L_rct.
    pub phase1: PhaseConfig,
    /// Phase 2: fresh (A, B_pd), frozen B_rct, on κ·L_rct + (1−κ)·L_pd.
    pub phase2: PhaseConfig,
    /// Adam learning rate (paper: 1e-3).
    pub lr: f64,
    /// Adam β₁ (PyTorch default 0.9).
    pub beta1: f64,
    /// Adam β₂ (PyTorch default 0.999).
    pub beta2: f64,
    /// Adam ε, added outside the square root as in PyTorch (1e-8; burn's default is 1e-5).
    pub epsilon: f64,
    /// Validate on the dev memory every this many optimiser steps (paper: 100).
    pub validate_every: u64,
    /// Batch size used to evaluate the dev memory (does not change the result, only memory).
    pub dev_batch_size: usize,
    /// Validate on at most this many dev entries, evenly spaced (None: all, as the paper).
    #[serde(default)]
    pub dev_max_entries: Option<usize>,
    /// Write a `train` log line every this many steps (losses are read from the device then).
    pub log_every: u64,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Continue from `OUT/checkpoint` when it exists.
    pub resume: bool,
    /// Target/source length ratio estimated on the training memory, recorded in the artifact
    /// for leak-free Gradual Unrolling (optional).
    pub length_ratio: Option<f64>,
    /// Stop this process with [`AdapterError::Halted`] after this many optimiser steps (over
    /// both phases), as a scheduler's time limit would: the next run with `resume` continues
    /// from the last checkpoint. `None`: run to the end.
    #[serde(default)]
    pub halt_after_steps: Option<u64>,
    /// How keys enter the adapter (pema default: per-dimension standardisation).
    #[serde(default)]
    pub key_norm: KeyNorm,
    /// Which parameters each phase trains (paper: two phases).
    #[serde(default)]
    pub plan: PhasePlan,
    /// How h_pd is formed (paper: B_pd·z).
    #[serde(default)]
    pub form: HpdForm,
    /// Start phase 2 from the phase-1 result another run wrote into this directory (its
    /// `phase1.json`; every setting phase 1 reads must match) instead of training phase 1.
    #[serde(default)]
    pub phase1_from: Option<std::path::PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            rank: 512,
            dropout: 0.2,
            kappa: 0.2,
            phase1: PhaseConfig {
                batch_size: 20_480,
                max_epochs: 200,
                max_steps: None,
            },
            phase2: PhaseConfig {
                batch_size: 2_048,
                max_epochs: 200,
                max_steps: None,
            },
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            validate_every: 100,
            dev_batch_size: 2_048,
            dev_max_entries: None,
            log_every: 10,
            seed: 0,
            progress: true,
            resume: true,
            length_ratio: None,
            halt_after_steps: None,
            key_norm: KeyNorm::Standardize,
            plan: PhasePlan::TwoPhase,
            form: HpdForm::Paper,
            phase1_from: None,
        }
    }
}

impl TrainConfig {
    /// The adapter shape these settings give for a head of width `d` and vocabulary `vocab`.
    pub fn adapter(&self, d: usize, vocab: usize) -> AdapterConfig {
        AdapterConfig {
            d,
            vocab,
            rank: self.rank,
            dropout: self.dropout,
            kappa: self.kappa,
            form: self.form,
        }
    }

    /// Checks ranges of every field (rank ≥ 1, length ratio finite and > 0 when given, …).
    pub fn validate(&self) -> Result<()> {
        self.adapter(1, 1).validate()?;
        if let Some(r) = self.length_ratio
            && !(r.is_finite() && r > 0.0)
        {
            return Err(AdapterError::Config(format!(
                "length ratio (--length-ratio) must be finite and > 0, got {r}"
            )));
        }
        for (name, p) in [("phase1", &self.phase1), ("phase2", &self.phase2)] {
            if p.batch_size == 0 || p.max_epochs == 0 {
                return Err(AdapterError::Config(format!(
                    "{name}: batch size and max epochs must be positive"
                )));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(AdapterError::Config(format!(
                "learning rate must be positive and finite, got {}",
                self.lr
            )));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err(AdapterError::Config("Adam betas must be in [0, 1)".into()));
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(AdapterError::Config("Adam epsilon must be positive".into()));
        }
        if self.validate_every == 0 || self.dev_batch_size == 0 || self.log_every == 0 {
            return Err(AdapterError::Config(
                "validate_every, dev_batch_size and log_every must be positive".into(),
            ));
        }
        Ok(())
    }

    /// The settings a resumed run must keep, as (name, value) pairs: every hyper-parameter.
    /// Free to change on resume: the budget (`max_epochs`, `max_steps`), the run controls
    /// (`progress`, `resume`, `halt_after_steps`, `log_every`) and `dev_batch_size` (which
    /// changes memory use, not results).
    fn resume_settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("rank", self.rank.to_string()),
            ("dropout", self.dropout.to_string()),
            ("kappa", self.kappa.to_string()),
            ("phase1 batch size", self.phase1.batch_size.to_string()),
            ("phase2 batch size", self.phase2.batch_size.to_string()),
            ("lr", self.lr.to_string()),
            ("beta1", self.beta1.to_string()),
            ("beta2", self.beta2.to_string()),
            ("epsilon", self.epsilon.to_string()),
            ("validate_every", self.validate_every.to_string()),
            ("dev_max_entries", format!("{:?}", self.dev_max_entries)),
            ("seed", self.seed.to_string()),
            ("length_ratio", format!("{:?}", self.length_ratio)),
            ("key_norm", format!("{:?}", self.key_norm)),
            ("plan", format!("{:?}", self.plan)),
            ("form", format!("{:?}", self.form)),
            ("phase1_from", format!("{:?}", self.phase1_from)),
        ]
    }

    /// Every hyper-parameter that differs between the settings a checkpoint recorded
    /// (`recorded`) and these, as `name: old → new` (empty when a resume may proceed).
    pub fn resume_differences(&self, recorded: &TrainConfig) -> Vec<String> {
        recorded
            .resume_settings()
            .into_iter()
            .zip(self.resume_settings())
            .filter(|((_, old), (_, new))| old != new)
            .map(|((name, old), (_, new))| format!("{name}: {old} → {new}"))
            .collect()
    }
}
