//! Two-phase training of the adapter on an external memory (paper §3, official code):
//!
//! 1. (A₁, B_rct) as an autoencoder on L_rct (batch 20,480);
//! 2. B_rct frozen; a FRESH (A, B_pd) on κ·L_rct + (1−κ)·L_pd, h_rct computed with the new A
//!    (batch 2,048).
//!
//! Both phases: Adam (lr 1e-3, ε 1e-8, no weight decay), up to 200 epochs, validation on the dev
//! memory every 100 steps, stop as soon as a validation loss exceeds both of the two before it,
//! keep the weights with the best validation loss.
//!
//! Ablations ([`PhasePlan`]): `joint` skips phase 1 and trains A, B_rct, B_pd together on the
//! phase-2 loss; `bpd-only` keeps phase 1's A₁ frozen in phase 2 and trains B_pd alone.
//! With [`KeyNorm::Standardize`] the per-dimension key statistics of the training memory are
//! computed once, before phase 1, and stored with the adapter.
//!
//! The frozen head is used as plain tensors lifted into the autodiff graph without
//! `require_grad`: it never receives a gradient and is never written.
//!
//! Outputs in `OUT/`: `train_log.jsonl` (one JSON object per line: `train`, `dev`, `phase_end`
//! events), `checkpoint/` (resumable state, written after every validation with finite losses),
//! and the artifact `adapter.safetensors` + `adapter.json`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Param;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use pema_memory::MemorySource;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::adam::{AdamOptimizer, AdamState, TorchAdam};
use crate::adapter::{
    ADAPTER_FORMAT, AdapterMeta, KeyStats, PemaAdapter, Phase, host, read_json, write_json,
};
use crate::config::{AdapterConfig, KeyNorm, PhaseConfig, PhasePlan, TrainConfig};
use crate::error::{AdapterError, Result};
use crate::head_ce::FusedHead;

mod checkpoint;
mod phase;
mod shared;
mod stats;
mod step;
#[cfg(test)]
mod tests;

use checkpoint::{CheckpointState, JsonLog, check_resume, load_start, write_checkpoint};
use phase::{fresh_start, mix, run_phase};
pub use shared::{PHASE1_STATE, PHASE1_WEIGHTS};
pub use stats::{key_stats_host, key_stats_of};
pub use step::{StepOutcome, adam_for, train_step, trainable};

/// Name of the JSON-lines training log inside the output directory.
pub const LOG_FILE: &str = "train_log.jsonl";
/// Name of the checkpoint directory inside the output directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";
const STATE_FILE: &str = "state.json";
const CHECKPOINT_FORMAT: &str = "pema-train-checkpoint/1";

/// Dev-memory metrics of one validation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DevMetrics {
    /// The phase's loss (L_rct in phase 1, κ·L_rct + (1−κ)·L_pd in phase 2), mean over entries.
    pub loss: f64,
    /// L_rct.
    pub rct: f64,
    /// L_pd (phase 2).
    pub pd: Option<f64>,
    /// Top-1 accuracy of P_PEMA against the memory's values (phase 2).
    pub accuracy: Option<f64>,
}

/// Summary of one training phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    /// 1 or 2.
    pub phase: u8,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Step whose weights were kept (best dev loss).
    pub best_step: u64,
    /// Dev metrics of the kept weights.
    pub best: Option<DevMetrics>,
    /// Every validation: (step, dev loss).
    pub dev_history: Vec<(u64, f64)>,
    /// True when the early-stopping rule ended the phase.
    pub early_stopped: bool,
    /// Wall-clock seconds spent in this phase (this process only).
    pub seconds: f64,
}

impl PhaseReport {
    /// The report of a phase that did not run (phase 1 under [`PhasePlan::Joint`]).
    pub fn skipped(phase: u8) -> Self {
        Self {
            phase,
            steps: 0,
            best_step: 0,
            best: None,
            dev_history: Vec::new(),
            early_stopped: false,
            seconds: 0.0,
        }
    }
}

/// What [`train`] returns.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Phase 1 summary.
    pub phase1: PhaseReport,
    /// Phase 2 summary.
    pub phase2: PhaseReport,
    /// The artifact directory (the output directory).
    pub artifact: PathBuf,
    /// The artifact's description.
    pub meta: AdapterMeta,
}

/// What a checkpoint or a shared phase-1 result was trained against: the head and both
/// memories, by fingerprint (flattened into the JSON that records it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Provenance {
    head_fingerprint: String,
    memory_fingerprint: String,
    dev_memory_fingerprint: String,
}

impl Provenance {
    /// This run's head and memories.
    fn of<B: AutodiffBackend>(ctx: &Ctx<'_, B>) -> Self {
        Self::new(ctx.head, ctx.train, ctx.dev)
    }

    fn new(
        head: &FusedHead<impl Backend>,
        train: &dyn MemorySource,
        dev: &dyn MemorySource,
    ) -> Self {
        Self {
            head_fingerprint: head.fingerprint.clone(),
            memory_fingerprint: train.fingerprint(),
            dev_memory_fingerprint: dev.fingerprint(),
        }
    }

    /// Why `self` (recorded) cannot continue in `now` (this run), if it cannot.
    fn mismatch(&self, now: &Self) -> Option<String> {
        if self.head_fingerprint != now.head_fingerprint {
            return Some(format!(
                "trained against head {}, this head is {}",
                self.head_fingerprint, now.head_fingerprint
            ));
        }
        (self.memory_fingerprint != now.memory_fingerprint
            || self.dev_memory_fingerprint != now.dev_memory_fingerprint)
            .then(|| "trained on another training or dev memory".to_string())
    }
}

/// Where a phase starts: fresh or from a checkpoint.
struct PhaseStart<B: AutodiffBackend> {
    adapter: PemaAdapter<B::InnerBackend>,
    best: PemaAdapter<B::InnerBackend>,
    optim: AdamOptimizer<PemaAdapter<B>, B>,
    step: u64,
    epoch: usize,
    batch: usize,
    dev_history: Vec<(u64, f64)>,
    best_step: u64,
    best_metrics: Option<DevMetrics>,
}

struct Ctx<'a, B: AutodiffBackend> {
    head: &'a FusedHead<B::InnerBackend>,
    head_ad: FusedHead<B>,
    key_stats: Option<KeyStats<B::InnerBackend>>,
    train: &'a dyn MemorySource,
    dev: &'a dyn MemorySource,
    cfg: &'a TrainConfig,
    out: &'a Path,
    device: &'a B::Device,
    log: JsonLog,
    phase1_report: Option<PhaseReport>,
    last_checkpoint: Option<PathBuf>,
    steps_this_run: u64,
}

/// Trains a PEMA adapter on `train_mem` (early stopping on `dev_mem`) through the frozen
/// `head`, writing logs, checkpoints and the artifact into `out`. The autodiff backend `B`
/// runs the training steps; validation runs on its inner backend.
pub fn train<B: AutodiffBackend>(
    head: &FusedHead<B::InnerBackend>,
    train_mem: &dyn MemorySource,
    dev_mem: &dyn MemorySource,
    cfg: &TrainConfig,
    out: &Path,
    device: &B::Device,
) -> Result<TrainReport> {
    cfg.validate()?;
    let (d, vocab) = (head.hidden_size(), head.vocab_size());
    for (what, mem) in [("train", train_mem), ("dev", dev_mem)] {
        if mem.is_empty() {
            return Err(AdapterError::Data {
                what: what.into(),
                message: "has no entries".into(),
            });
        }
        if mem.hidden_size() != d {
            return Err(AdapterError::Data {
                what: what.into(),
                message: format!(
                    "key width {} does not match the head's hidden size {d}",
                    mem.hidden_size()
                ),
            });
        }
    }
    let acfg = cfg.adapter(d, vocab);
    acfg.validate()?;
    std::fs::create_dir_all(out.join(CHECKPOINT_DIR))
        .map_err(|e| AdapterError::io(out.join(CHECKPOINT_DIR), e))?;

    let state_path = out.join(CHECKPOINT_DIR).join(STATE_FILE);
    let resumed: Option<CheckpointState> = if cfg.resume && state_path.exists() {
        let st: CheckpointState = read_json(&state_path)?;
        check_resume(&st, cfg, head, train_mem, dev_mem, &state_path)?;
        Some(st)
    } else {
        None
    };
    let log = JsonLog::open(&out.join(LOG_FILE), resumed.is_some())?;
    let key_stats = match cfg.key_norm {
        KeyNorm::None => None,
        KeyNorm::Standardize => Some(key_stats_of::<B::InnerBackend>(train_mem, "train", device)?),
    };
    let mut ctx = Ctx::<B> {
        head,
        head_ad: head.lift::<B>(),
        key_stats: key_stats.clone(),
        train: train_mem,
        dev: dev_mem,
        cfg,
        out,
        device,
        log,
        phase1_report: None,
        last_checkpoint: resumed.as_ref().map(|_| state_path.clone()),
        steps_this_run: 0,
    };

    // Phase 1 (unless the checkpoint is already in phase 2, or phase 1 is shared).
    let shared_from = cfg
        .phase1_from
        .as_deref()
        .filter(|_| cfg.plan != PhasePlan::Joint);
    let (phase1_report, phase1_best, phase2_start) = match (resumed, shared_from) {
        (Some(st), _) if st.phase == 2 => {
            let report = st
                .phase1
                .clone()
                .ok_or_else(|| AdapterError::ResumeMismatch {
                    path: state_path.clone(),
                    message: "phase-2 checkpoint without a phase-1 summary".into(),
                })?;
            let start = load_start::<B>(&ctx, &st, Phase::Prediction, acfg)?;
            (report, None, Some(start))
        }
        (None, Some(dir)) => {
            let (report, best) = shared::load_phase1(&ctx, dir, acfg)?;
            ctx.log.write(&serde_json::json!({
                "event": "phase1_shared", "from": dir.display().to_string()
            }))?;
            (report, Some(best), None)
        }
        (None, None) if cfg.plan == PhasePlan::Joint => {
            // Ablation: no phase 1; phase 2 starts from a fresh adapter (B_rct = 0, trained).
            let fresh =
                PemaAdapter::new(acfg, mix(cfg.seed, 2), device)?.with_key_stats(key_stats.clone());
            (PhaseReport::skipped(1), None, Some(fresh_start(fresh, cfg)))
        }
        (other, _) => {
            let start = match other {
                Some(st) => load_start::<B>(&ctx, &st, Phase::Reconstruction, acfg)?,
                None => {
                    let fresh = PemaAdapter::new(acfg, mix(cfg.seed, 1), device)?
                        .with_key_stats(key_stats.clone());
                    fresh_start(fresh, cfg)
                }
            };
            let (best, report) = run_phase(&mut ctx, Phase::Reconstruction, start)?;
            shared::save_phase1(&ctx, &best, &report)?;
            (report, Some(best), None)
        }
    };
    ctx.phase1_report = Some(phase1_report.clone());

    let start = match phase2_start {
        Some(s) => s,
        None => {
            let p1 = phase1_best
                .ok_or_else(|| AdapterError::Config("phase 1 produced no weights".into()))?;
            let fresh = if cfg.plan == PhasePlan::BpdOnly {
                // Ablation: keep A₁ (frozen in phase 2), B_pd from zero.
                let mut kept = p1.clone();
                kept.b_pd = Param::from_tensor(kept.b_pd.zeros_like());
                kept
            } else {
                p1.fresh_for_phase2(mix(cfg.seed, 2))
            };
            let start = fresh_start(fresh, cfg);
            // A checkpoint at the start of phase 2 keeps phase 1's result safe.
            write_checkpoint(&mut ctx, Phase::Prediction, &start)?;
            start
        }
    };
    let (best, phase2_report) = run_phase(&mut ctx, Phase::Prediction, start)?;

    let meta = AdapterMeta {
        format: ADAPTER_FORMAT.into(),
        pema_version: env!("CARGO_PKG_VERSION").into(),
        rank: acfg.rank,
        scale: acfg.scale(),
        dropout: acfg.dropout,
        kappa: acfg.kappa,
        d,
        vocab,
        head_fingerprint: head.fingerprint.clone(),
        head_model: head.model.clone(),
        memory_fingerprint: train_mem.fingerprint(),
        dev_memory_fingerprint: dev_mem.fingerprint(),
        length_ratio: cfg.length_ratio,
        key_norm: cfg.key_norm,
        form: cfg.form,
        weights_sha256: None,
        training: serde_json::json!({
            "config": cfg,
            "memory_entries": train_mem.len(),
            "dev_memory_entries": dev_mem.len(),
            "phase1": phase1_report,
            "phase2": phase2_report,
        }),
    };
    best.save(out, &meta)?;
    ctx.log
        .write(&serde_json::json!({"event": "done", "artifact": out.display().to_string()}))?;
    Ok(TrainReport {
        phase1: phase1_report,
        phase2: phase2_report,
        artifact: out.to_path_buf(),
        meta,
    })
}

/// Whether the early-stopping rule fired at the validation of `step`, the last one in
/// `history` (its loss above both before it): a resumed phase then stops at once.
pub fn stop_rule_fired_at(history: &[(u64, f64)], step: u64) -> bool {
    match history {
        [.., a, b, (s, loss)] => *s == step && *loss > b.1 && *loss > a.1,
        _ => false,
    }
}

/// Records a validation loss; returns (is a new best, early-stopping rule fired).
/// The rule (official code): stop when the loss exceeds both of the two previous ones.
/// A non-finite dev loss is never "best" and is reported by the caller's finite check.
pub fn record_validation(history: &mut Vec<(u64, f64)>, step: u64, loss: f64) -> (bool, bool) {
    let best_before = history.iter().map(|h| h.1).fold(f64::INFINITY, f64::min);
    let n = history.len();
    let stop = n >= 2 && loss > history[n - 1].1 && loss > history[n - 2].1;
    history.push((step, loss));
    (loss < best_before, stop)
}
