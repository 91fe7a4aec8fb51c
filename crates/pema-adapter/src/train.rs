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

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use pema_memory::MemorySource;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::adam::{Adam, Moments};
use crate::adapter::{
    ADAPTER_FORMAT, AdapterMeta, KeyStats, PemaAdapter, Phase, host, read_json, write_json,
};
use crate::config::{AdapterConfig, KeyNorm, PhaseConfig, PhasePlan, TrainConfig};
use crate::error::{AdapterError, Result};
use crate::head_ce::FusedHead;

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

/// Everything that is restored when a run resumes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    format: String,
    phase: u8,
    step: u64,
    epoch: usize,
    batch: usize,
    adam_t: u64,
    dev_history: Vec<(u64, f64)>,
    best_step: u64,
    best: Option<DevMetrics>,
    phase1: Option<PhaseReport>,
    weights: String,
    config: TrainConfig,
    head_fingerprint: String,
    memory_fingerprint: String,
    dev_memory_fingerprint: String,
}

/// Where a phase starts: fresh or from a checkpoint.
struct PhaseStart<B: Backend> {
    adapter: PemaAdapter<B>,
    best: PemaAdapter<B>,
    adam: Adam<B>,
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
        KeyNorm::Standardize => Some(key_stats_of::<B::InnerBackend>(train_mem, device)?),
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

    // Phase 1 (unless the checkpoint is already in phase 2).
    let (phase1_report, phase1_best, phase2_start) = match resumed {
        Some(st) if st.phase == 2 => {
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
        None if cfg.plan == PhasePlan::Joint => {
            // Ablation: no phase 1; phase 2 starts from a fresh adapter (B_rct = 0, trained).
            let fresh =
                PemaAdapter::new(acfg, mix(cfg.seed, 2), device)?.with_key_stats(key_stats.clone());
            let start = fresh_start(fresh, Phase::Prediction, cfg, device);
            (PhaseReport::skipped(1), None, Some(start))
        }
        other => {
            let start = match other {
                Some(st) => load_start::<B>(&ctx, &st, Phase::Reconstruction, acfg)?,
                None => {
                    let fresh = PemaAdapter::new(acfg, mix(cfg.seed, 1), device)?
                        .with_key_stats(key_stats.clone());
                    fresh_start(fresh, Phase::Reconstruction, cfg, device)
                }
            };
            let (best, report) = run_phase(&mut ctx, Phase::Reconstruction, start)?;
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
                kept.b_pd = kept.b_pd.zeros_like();
                kept
            } else {
                p1.fresh_for_phase2(mix(cfg.seed, 2))
            };
            let start = fresh_start(fresh, Phase::Prediction, cfg, device);
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

/// One of the adapter's matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    A,
    BRct,
    BPd,
}

/// The matrices a phase trains under `plan`: (A, B_rct) in phase 1, (A, B_pd) in phase 2
/// (paper); (A, B_rct, B_pd) in phase 2 for `joint`; B_pd alone in phase 2 for `bpd-only`.
fn trained_params(phase: Phase, plan: PhasePlan) -> &'static [Param] {
    match (phase, plan) {
        (Phase::Reconstruction, _) => &[Param::A, Param::BRct],
        (Phase::Prediction, PhasePlan::TwoPhase) => &[Param::A, Param::BPd],
        (Phase::Prediction, PhasePlan::Joint) => &[Param::A, Param::BRct, Param::BPd],
        (Phase::Prediction, PhasePlan::BpdOnly) => &[Param::BPd],
    }
}

fn param<B: Backend>(a: &PemaAdapter<B>, p: Param) -> &Tensor<B, 2> {
    match p {
        Param::A => &a.a,
        Param::BRct => &a.b_rct,
        Param::BPd => &a.b_pd,
    }
}

fn trained<B: Backend>(a: &PemaAdapter<B>, phase: Phase, plan: PhasePlan) -> Vec<Tensor<B, 2>> {
    trained_params(phase, plan)
        .iter()
        .map(|p| param(a, *p).clone())
        .collect()
}

fn with_trained<B: Backend>(
    a: &PemaAdapter<B>,
    phase: Phase,
    plan: PhasePlan,
    values: Vec<Tensor<B, 2>>,
) -> PemaAdapter<B> {
    let mut out = a.clone();
    for (p, v) in trained_params(phase, plan).iter().zip(values) {
        match p {
            Param::A => out.a = v,
            Param::BRct => out.b_rct = v,
            Param::BPd => out.b_pd = v,
        }
    }
    out
}

/// [`key_stats_host`] uploaded as [`KeyStats`].
pub fn key_stats_of<B: Backend>(mem: &dyn MemorySource, device: &B::Device) -> Result<KeyStats<B>> {
    let (mean, std) = key_stats_host(mem)?;
    Ok(KeyStats::from_host(mean, std, device))
}

/// Per-dimension mean μ and standard deviation σ of the keys of `mem` (one streaming pass, f64
/// sums); σ is floored at 1e-6·(1 + |μ|) so that a constant dimension maps to 0, not NaN.
pub fn key_stats_host(mem: &dyn MemorySource) -> Result<(Vec<f32>, Vec<f32>)> {
    let d = mem.hidden_size();
    let n = mem.len();
    if n == 0 {
        return Err(AdapterError::Data {
            what: "train".into(),
            message: "has no entries".into(),
        });
    }
    let (mut sum, mut sq) = (vec![0f64; d], vec![0f64; d]);
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    const CHUNK: u64 = 4096;
    let mut start = 0u64;
    while start < n as u64 {
        let end = (start + CHUNK).min(n as u64);
        let ids: Vec<u64> = (start..end).collect();
        keys.clear();
        values.clear();
        mem.gather(&ids, &mut keys, &mut values)?;
        for row in keys.chunks_exact(d) {
            for (j, &x) in row.iter().enumerate() {
                let x = x as f64;
                sum[j] += x;
                sq[j] += x * x;
            }
        }
        start = end;
    }
    let nf = n as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / nf).collect();
    let std: Vec<f32> = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| {
            let var = (q / nf - m * m).max(0.0);
            var.sqrt().max(1e-6 * (1.0 + m.abs())) as f32
        })
        .collect();
    let mean: Vec<f32> = mean.iter().map(|m| *m as f32).collect();
    if mean.iter().chain(&std).any(|v| !v.is_finite()) {
        return Err(AdapterError::Data {
            what: "train".into(),
            message: "key statistics are not finite (a key holds inf or NaN)".into(),
        });
    }
    Ok((mean, std))
}

fn fresh_start<B: Backend>(
    adapter: PemaAdapter<B>,
    phase: Phase,
    cfg: &TrainConfig,
    device: &B::Device,
) -> PhaseStart<B> {
    let shapes: Vec<[usize; 2]> = trained(&adapter, phase, cfg.plan)
        .iter()
        .map(|t| t.dims())
        .collect();
    PhaseStart {
        best: adapter.clone(),
        adapter,
        adam: Adam::new(cfg.lr, cfg.beta1, cfg.beta2, cfg.epsilon, &shapes, device),
        step: 0,
        epoch: 0,
        batch: 0,
        dev_history: Vec::new(),
        best_step: 0,
        best_metrics: None,
    }
}

/// What one [`train_step`] returns.
#[derive(Debug, Clone)]
pub struct StepOutcome<B: Backend> {
    /// The adapter after the Adam update.
    pub adapter: PemaAdapter<B>,
    /// The batch loss before the update (detached, shape `[1]`).
    pub loss: Tensor<B, 1>,
}

/// One optimiser step of `phase` on a batch (`keys: [n, d]`, `values: [n]`): forward with
/// dropout, backward, Adam, training the matrices `plan` assigns to `phase`. Returns the
/// updated adapter and the batch loss (detached). This is exactly what [`train`] runs per
/// step; it is public for benchmarks.
pub fn train_step<B: AutodiffBackend>(
    adapter: &PemaAdapter<B::InnerBackend>,
    adam: &mut Adam<B::InnerBackend>,
    head: &FusedHead<B>,
    keys: Tensor<B::InnerBackend, 2>,
    values: Tensor<B::InnerBackend, 1, Int>,
    phase: Phase,
    plan: PhasePlan,
) -> Result<StepOutcome<B::InnerBackend>> {
    let which = trained_params(phase, plan);
    let lift = |t: &Tensor<B::InnerBackend, 2>, p: Param| {
        let t = Tensor::<B, 2>::from_inner(t.clone());
        if which.contains(&p) {
            t.require_grad()
        } else {
            t
        }
    };
    let ad = PemaAdapter::<B> {
        config: adapter.config,
        a: lift(&adapter.a, Param::A),
        b_rct: lift(&adapter.b_rct, Param::BRct),
        b_pd: lift(&adapter.b_pd, Param::BPd),
        key_stats: adapter.key_stats.as_ref().map(|s| KeyStats {
            mean: Tensor::from_inner(s.mean.clone()),
            std: Tensor::from_inner(s.std.clone()),
        }),
    };
    let f = Tensor::<B, 2>::from_inner(keys);
    let y = Tensor::<B, 1, Int>::from_inner(values);
    let losses = ad.losses(head, f, y, phase, true);
    let grads = losses.total.backward();
    let params = trained(&ad, phase, plan);
    let mut g = Vec::with_capacity(params.len());
    for p in &params {
        g.push(p.grad(&grads).ok_or_else(|| {
            AdapterError::Config("a trained parameter received no gradient".into())
        })?);
    }
    let updated = adam.step(trained(adapter, phase, plan), g);
    Ok(StepOutcome {
        adapter: with_trained(adapter, phase, plan, updated),
        loss: losses.total.inner(),
    })
}

fn run_phase<B: AutodiffBackend>(
    ctx: &mut Ctx<'_, B>,
    phase: Phase,
    start: PhaseStart<B::InnerBackend>,
) -> Result<(PemaAdapter<B::InnerBackend>, PhaseReport)> {
    let cfg = ctx.cfg;
    let pcfg: PhaseConfig = match phase {
        Phase::Reconstruction => cfg.phase1,
        Phase::Prediction => cfg.phase2,
    };
    let pn = phase.number();
    let n = ctx.train.len();
    let bs = pcfg.batch_size.min(n);
    let per_epoch = n.div_ceil(bs);
    let max_steps = pcfg
        .max_steps
        .unwrap_or(u64::MAX)
        .min((pcfg.max_epochs * per_epoch) as u64);
    let PhaseStart {
        mut adapter,
        mut best,
        mut adam,
        mut step,
        mut epoch,
        mut batch,
        mut dev_history,
        mut best_step,
        mut best_metrics,
    } = start;
    adam.lr = cfg.lr;
    let t0 = Instant::now();
    let pb = progress_bar(cfg.progress, max_steps, step, pn);
    let mut running: Option<Tensor<B::InnerBackend, 1>> = None;
    let mut running_n = 0u64;
    let mut early_stopped = false;
    let mut last_validated = step;
    let (mut keys, mut values) = (Vec::new(), Vec::new());

    'epochs: while epoch < pcfg.max_epochs {
        let perm = permutation(n, mix(mix(cfg.seed, pn as u64), epoch as u64));
        while batch < per_epoch {
            if step >= max_steps {
                break 'epochs;
            }
            let ids = &perm[batch * bs..((batch + 1) * bs).min(n)];
            let (f, y) = load_batch::<B::InnerBackend>(
                ctx.train,
                "train",
                ids,
                ctx.head.vocab_size(),
                ctx.device,
                &mut keys,
                &mut values,
            )?;
            B::seed(ctx.device, mix(mix(cfg.seed, 100 + pn as u64), step));
            let StepOutcome {
                adapter: next,
                loss,
            } = train_step::<B>(&adapter, &mut adam, &ctx.head_ad, f, y, phase, cfg.plan)?;
            adapter = next;
            running = Some(match running {
                Some(r) => r + loss,
                None => loss,
            });
            running_n += 1;
            step += 1;
            batch += 1;
            pb.inc(1);

            let validate_now = step % cfg.validate_every == 0;
            if (step % cfg.log_every == 0 || validate_now)
                && let Some(r) = running.take()
            {
                let mean = scalar(r)? / running_n as f64;
                running_n = 0;
                if !mean.is_finite() {
                    pb.abandon();
                    return Err(AdapterError::NonFinite {
                        phase: pn,
                        step,
                        what: "train loss".into(),
                        value: mean,
                        checkpoint: ctx.last_checkpoint.clone(),
                    });
                }
                ctx.log.write(&serde_json::json!({
                    "event": "train", "phase": pn, "step": step, "epoch": epoch,
                    "loss": mean, "lr": cfg.lr, "elapsed_s": t0.elapsed().as_secs_f64(),
                }))?;
                pb.set_message(format!("loss {mean:.4}"));
            }
            if validate_now {
                last_validated = step;
                let m = evaluate(ctx, &adapter, phase)?;
                let (improved, stop) = record_validation(&mut dev_history, step, m.loss);
                if improved || best_metrics.is_none() {
                    best = adapter.clone();
                    best_step = step;
                    best_metrics = Some(m);
                }
                ctx.log.write(&serde_json::json!({
                    "event": "dev", "phase": pn, "step": step, "epoch": epoch,
                    "loss": m.loss, "rct": m.rct, "pd": m.pd, "accuracy": m.accuracy,
                    "best": improved, "elapsed_s": t0.elapsed().as_secs_f64(),
                }))?;
                pb.set_message(format!("dev {:.4}", m.loss));
                let snap = PhaseStart {
                    adapter: adapter.clone(),
                    best: best.clone(),
                    adam: adam.clone(),
                    step,
                    epoch,
                    batch,
                    dev_history: dev_history.clone(),
                    best_step,
                    best_metrics,
                };
                write_checkpoint(ctx, phase, &snap)?;
                if stop {
                    early_stopped = true;
                    break 'epochs;
                }
            }
            ctx.steps_this_run += 1;
            if cfg
                .halt_after_steps
                .is_some_and(|h| ctx.steps_this_run >= h)
            {
                pb.abandon();
                return Err(AdapterError::Halted {
                    steps: ctx.steps_this_run,
                    phase: pn,
                    step,
                    checkpoint: ctx.last_checkpoint.clone(),
                });
            }
        }
        epoch += 1;
        batch = 0;
    }
    // A final validation when the phase ended between validation points.
    if step > last_validated || best_metrics.is_none() {
        if let Some(r) = running.take() {
            let mean = scalar(r)? / running_n.max(1) as f64;
            if !mean.is_finite() {
                pb.abandon();
                return Err(AdapterError::NonFinite {
                    phase: pn,
                    step,
                    what: "train loss".into(),
                    value: mean,
                    checkpoint: ctx.last_checkpoint.clone(),
                });
            }
        }
        let m = evaluate(ctx, &adapter, phase)?;
        let (improved, _) = record_validation(&mut dev_history, step, m.loss);
        if improved || best_metrics.is_none() {
            best = adapter.clone();
            best_step = step;
            best_metrics = Some(m);
        }
        ctx.log.write(&serde_json::json!({
            "event": "dev", "phase": pn, "step": step, "epoch": epoch,
            "loss": m.loss, "rct": m.rct, "pd": m.pd, "accuracy": m.accuracy,
            "best": improved, "final": true, "elapsed_s": t0.elapsed().as_secs_f64(),
        }))?;
    }
    pb.finish_and_clear();
    let report = PhaseReport {
        phase: pn,
        steps: step,
        best_step,
        best: best_metrics,
        dev_history,
        early_stopped,
        seconds: t0.elapsed().as_secs_f64(),
    };
    ctx.log
        .write(&serde_json::json!({"event": "phase_end", "report": report}))?;
    Ok((best, report))
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

fn evaluate<B: AutodiffBackend>(
    ctx: &Ctx<'_, B>,
    adapter: &PemaAdapter<B::InnerBackend>,
    phase: Phase,
) -> Result<DevMetrics> {
    let all =
        pema_memory::evenly_spaced(ctx.dev.len(), ctx.cfg.dev_max_entries.unwrap_or(usize::MAX));
    let n = all.len();
    let bs = ctx.cfg.dev_batch_size;
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let (mut loss, mut rct, mut pd, mut correct) = (0.0, 0.0, 0.0, 0u64);
    let mut start = 0usize;
    while start < n {
        let end = (start + bs).min(n);
        let ids = &all[start..end];
        let (f, y) = load_batch::<B::InnerBackend>(
            ctx.dev,
            "dev",
            ids,
            ctx.head.vocab_size(),
            ctx.device,
            &mut keys,
            &mut values,
        )?;
        let w = (end - start) as f64;
        let l = adapter.losses(ctx.head, f, y.clone(), phase, false);
        loss += scalar(l.total)? * w;
        rct += scalar(l.rct)? * w;
        if let Some(p) = l.pd {
            pd += scalar(p)? * w;
        }
        if let Some(top1) = l.top1 {
            let hit = top1.equal(y).int().sum();
            correct += scalar_int(hit)?;
        }
        start = end;
    }
    let nf = n as f64;
    let m = DevMetrics {
        loss: loss / nf,
        rct: rct / nf,
        pd: (phase == Phase::Prediction).then_some(pd / nf),
        accuracy: (phase == Phase::Prediction).then_some(correct as f64 / nf),
    };
    if !m.loss.is_finite() {
        return Err(AdapterError::NonFinite {
            phase: phase.number(),
            step: 0,
            what: "dev loss".into(),
            value: m.loss,
            checkpoint: ctx.last_checkpoint.clone(),
        });
    }
    Ok(m)
}

/// Gathers a batch and uploads it: keys `[n, d]`, values `[n]` (checked against the vocab).
fn load_batch<B: Backend>(
    mem: &dyn MemorySource,
    what: &str,
    ids: &[u64],
    vocab: usize,
    device: &B::Device,
    keys: &mut Vec<f32>,
    values: &mut Vec<u32>,
) -> Result<(Tensor<B, 2>, Tensor<B, 1, Int>)> {
    keys.clear();
    values.clear();
    mem.gather(ids, keys, values)?;
    let d = mem.hidden_size();
    if keys.len() != ids.len() * d || values.len() != ids.len() {
        return Err(AdapterError::Data {
            what: what.into(),
            message: format!(
                "gather returned {} keys / {} values for {} entries",
                keys.len() / d.max(1),
                values.len(),
                ids.len()
            ),
        });
    }
    if let Some((i, v)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| **v as usize >= vocab)
    {
        return Err(AdapterError::Data {
            what: what.into(),
            message: format!(
                "entry {} has value {v}, outside the head's vocabulary of {vocab}",
                ids[i]
            ),
        });
    }
    let f = Tensor::from_data(TensorData::new(keys.clone(), [ids.len(), d]), device);
    let ints: Vec<i64> = values.iter().map(|&v| v as i64).collect();
    let y = Tensor::from_data(TensorData::new(ints, [ids.len()]), device);
    Ok((f, y))
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> Result<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .ok()
        .and_then(|v| v.first().copied())
        .ok_or_else(|| AdapterError::Config("cannot read a loss value from the device".into()))
}

fn scalar_int<B: Backend>(t: Tensor<B, 1, Int>) -> Result<u64> {
    t.into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .ok()
        .and_then(|v| v.first().copied())
        .map(|v| v.max(0) as u64)
        .ok_or_else(|| AdapterError::Config("cannot read a count from the device".into()))
}

/// splitmix64-style mixing of a seed with a stream number.
fn mix(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn permutation(n: usize, seed: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..n as u64).collect();
    ids.shuffle(&mut StdRng::seed_from_u64(seed));
    ids
}

fn progress_bar(show: bool, total: u64, pos: u64, phase: u8) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(&format!(
        "phase {phase} [{{bar:30}}] {{pos}}/{{len}} steps {{per_sec}} eta {{eta}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_position(pos);
    pb
}

/// JSON-lines log file.
struct JsonLog {
    path: PathBuf,
    file: File,
}

impl JsonLog {
    fn open(path: &Path, append: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|e| AdapterError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    fn write(&mut self, v: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| AdapterError::io(&self.path, e))
    }
}

fn check_resume(
    st: &CheckpointState,
    cfg: &TrainConfig,
    head: &FusedHead<impl Backend>,
    train: &dyn MemorySource,
    dev: &dyn MemorySource,
    path: &Path,
) -> Result<()> {
    let bad = |message: String| {
        Err(AdapterError::ResumeMismatch {
            path: path.to_path_buf(),
            message,
        })
    };
    if st.format != CHECKPOINT_FORMAT {
        return bad(format!("unknown checkpoint format `{}`", st.format));
    }
    if st.head_fingerprint != head.fingerprint {
        return bad(format!(
            "checkpoint was trained against head {}, this head is {}",
            st.head_fingerprint, head.fingerprint
        ));
    }
    if st.memory_fingerprint != train.fingerprint()
        || st.dev_memory_fingerprint != dev.fingerprint()
    {
        return bad("the training or dev memory differs from the checkpoint's".into());
    }
    let c = &st.config;
    if c.rank != cfg.rank
        || c.dropout != cfg.dropout
        || c.kappa != cfg.kappa
        || c.phase1.batch_size != cfg.phase1.batch_size
        || c.phase2.batch_size != cfg.phase2.batch_size
        || c.seed != cfg.seed
        || c.validate_every != cfg.validate_every
        || c.key_norm != cfg.key_norm
        || c.plan != cfg.plan
        || c.form != cfg.form
        || c.dev_max_entries != cfg.dev_max_entries
    {
        return bad(
            "rank, dropout, kappa, batch sizes, seed, validate_every, key_norm, plan, form and the dev subsample must \
             match the checkpoint \
             (start over without resume to change them)"
                .into(),
        );
    }
    Ok(())
}

fn write_checkpoint<B: AutodiffBackend>(
    ctx: &mut Ctx<'_, B>,
    phase: Phase,
    s: &PhaseStart<B::InnerBackend>,
) -> Result<()> {
    let dir = ctx.out.join(CHECKPOINT_DIR);
    let pn = phase.number();
    let weights_name = format!("weights-p{pn}-s{}.safetensors", s.step);
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
    let mut push = |name: String, t: &Tensor<B::InnerBackend, 2>| -> Result<()> {
        tensors.push((name, host(t)?, t.dims().to_vec()));
        Ok(())
    };
    for (prefix, a) in [("cur", &s.adapter), ("best", &s.best)] {
        push(format!("{prefix}.a"), &a.a)?;
        push(format!("{prefix}.b_rct"), &a.b_rct)?;
        push(format!("{prefix}.b_pd"), &a.b_pd)?;
    }
    for (i, m) in s.adam.moments.iter().enumerate() {
        push(format!("adam.m{i}"), &m.m)?;
        push(format!("adam.v{i}"), &m.v)?;
    }
    let views: Vec<(&str, &[f32], &[usize])> = tensors
        .iter()
        .map(|(n, v, sh)| (n.as_str(), v.as_slice(), sh.as_slice()))
        .collect();
    let path = dir.join(&weights_name);
    let tmp = dir.join(format!("{weights_name}.tmp"));
    pema_backbone::st::write_f32(&tmp, &views, Default::default())?;
    std::fs::rename(&tmp, &path).map_err(|e| AdapterError::io(&path, e))?;
    let state = CheckpointState {
        format: CHECKPOINT_FORMAT.into(),
        phase: pn,
        step: s.step,
        epoch: s.epoch,
        batch: s.batch,
        adam_t: s.adam.t,
        dev_history: s.dev_history.clone(),
        best_step: s.best_step,
        best: s.best_metrics,
        phase1: ctx.phase1_report.clone(),
        weights: weights_name.clone(),
        config: ctx.cfg.clone(),
        head_fingerprint: ctx.head.fingerprint.clone(),
        memory_fingerprint: ctx.train.fingerprint(),
        dev_memory_fingerprint: ctx.dev.fingerprint(),
    };
    let state_path = dir.join(STATE_FILE);
    write_json(&state_path, &state)?;
    // Only now that the state points at the new weights, remove older weight files.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("weights-") && name != weights_name {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    ctx.last_checkpoint = Some(state_path);
    Ok(())
}

fn load_start<AD: AutodiffBackend>(
    ctx: &Ctx<'_, AD>,
    st: &CheckpointState,
    phase: Phase,
    acfg: AdapterConfig,
) -> Result<PhaseStart<AD::InnerBackend>> {
    type B<AD> = <AD as AutodiffBackend>::InnerBackend;
    let path = ctx.out.join(CHECKPOINT_DIR).join(&st.weights);
    let file = pema_backbone::st::StFile::open(&path)?;
    let device = ctx.device;
    let get = |name: &str| -> Result<Tensor<B<AD>, 2>> {
        let (v, s) = file.tensor_f32(name)?;
        if s.len() != 2 {
            return Err(AdapterError::Format {
                path: path.clone(),
                message: format!("tensor `{name}` is not 2-D"),
            });
        }
        Ok(Tensor::from_data(TensorData::new(v, [s[0], s[1]]), device))
    };
    let adapter_of = |prefix: &str| -> Result<PemaAdapter<B<AD>>> {
        Ok(PemaAdapter {
            config: acfg,
            a: get(&format!("{prefix}.a"))?,
            b_rct: get(&format!("{prefix}.b_rct"))?,
            b_pd: get(&format!("{prefix}.b_pd"))?,
            key_stats: ctx.key_stats.clone(),
        })
    };
    let adapter = adapter_of("cur")?;
    let best = adapter_of("best")?;
    let cfg = ctx.cfg;
    let mut adam = Adam::new(cfg.lr, cfg.beta1, cfg.beta2, cfg.epsilon, &[], device);
    adam.t = st.adam_t;
    adam.moments = (0..trained(&adapter, phase, cfg.plan).len())
        .map(|i| -> Result<Moments<B<AD>>> {
            Ok(Moments {
                m: get(&format!("adam.m{i}"))?,
                v: get(&format!("adam.v{i}"))?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(PhaseStart {
        adapter,
        best,
        adam,
        step: st.step,
        epoch: st.epoch,
        batch: st.batch,
        dev_history: st.dev_history.clone(),
        best_step: st.best_step,
        best_metrics: st.best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_stopping_fires_when_the_loss_exceeds_both_previous_ones() {
        let mut h = Vec::new();
        assert_eq!(record_validation(&mut h, 100, 5.0), (true, false));
        assert_eq!(record_validation(&mut h, 200, 4.0), (true, false));
        // Above the last one only: no stop.
        assert_eq!(record_validation(&mut h, 300, 4.5), (false, false));
        // 4.2 < 4.5: no stop, and not a new best (4.0).
        assert_eq!(record_validation(&mut h, 400, 4.2), (false, false));
        // 4.6 > 4.2 and > 4.5: stop.
        assert_eq!(record_validation(&mut h, 500, 4.6), (false, true));
    }

    #[test]
    fn permutations_are_seeded_and_complete() {
        let p = permutation(100, 7);
        assert_eq!(p, permutation(100, 7));
        assert_ne!(p, permutation(100, 8));
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<u64>>());
    }
}
