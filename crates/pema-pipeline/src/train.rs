//! Training runs on the data owner's side: a PEMA adapter on a memory through the frozen head
//! (paper §3, both phases), and λmax chosen on the dev memory.

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use pema_adapter::{FusedHead, PemaAdapter, PhasePlan, TrainConfig};
use pema_backbone::PemaTokenizer;
use pema_memory::{MemorySource, MemoryStore};
use pema_schedule::{GuPosition, HorizonMode, LambdaTuneReport, MaxLenMode, plan_lengths};

use crate::decode::DEFAULT_LENGTH_RATIO;
use crate::error::{PipelineError, Result};
use crate::pairs::Pair;
use crate::summary::{TrainSummary, write_json_pretty};

pub use pema_adapter::PHASE1_STATE;

/// File name of the summary written next to a trained adapter.
pub const TRAIN_SUMMARY: &str = "train_summary.json";

/// Parameters the optimiser updates over a run with `plan` at rank `r` and width `d`: the
/// paper's two phases train A₁ and B_rct, then a fresh A and B_pd (4·r·d); the ablations train
/// three r×d matrices (joint: A, B_rct, B_pd; B_pd only: A₁ and B_rct, then B_pd).
pub fn optimised_params(plan: PhasePlan, rank: usize, d: usize) -> usize {
    match plan {
        PhasePlan::TwoPhase => 4 * rank * d,
        PhasePlan::Joint | PhasePlan::BpdOnly => 3 * rank * d,
    }
}

/// Opens a memory for training, checking the sha256 of every shard file against its manifest
/// ([`MemoryStore::open_verified`]: training never uses a memory `verify` rejects); warns on
/// stderr when its build did not finish (the committed entries are used).
pub fn open_memory(dir: &Path, what: &str) -> Result<MemoryStore> {
    let m = MemoryStore::open_verified(dir)?;
    if !m.is_complete() {
        eprintln!(
            "warning: the {what} memory {} is incomplete (its build did not finish); \
             training on the {} committed entries",
            m.dir().display(),
            m.len()
        );
    }
    Ok(m)
}

/// Trains an adapter on the memory at `memory` with early stopping on `dev_memory`, into
/// `out` (adapter artifact, log, checkpoint), and writes [`TRAIN_SUMMARY`] there.
pub fn train_adapter<B: AutodiffBackend>(
    head: &FusedHead<B::InnerBackend>,
    memory: &Path,
    dev_memory: &Path,
    cfg: &TrainConfig,
    out: &Path,
    device: &B::Device,
) -> Result<TrainSummary> {
    let t0 = Instant::now();
    let train_mem = open_memory(memory, "training")?;
    let dev_mem = open_memory(dev_memory, "dev")?;
    let check = pema_memory::ModelCheck {
        hidden_size: head.hidden_size(),
        vocab_size: head.vocab_size(),
        tokenizer_fingerprint: None,
        model_sha256: None,
    };
    train_mem.check_model(&check)?;
    dev_mem.check_model(&check)?;
    eprintln!(
        "pema train: head {} (d {}, vocab {}), memory {} entries, dev {} entries, rank {}, κ {}",
        head.model,
        head.hidden_size(),
        head.vocab_size(),
        train_mem.len(),
        dev_mem.len(),
        cfg.rank,
        cfg.kappa
    );
    let report = pema_adapter::train::<B>(head, &train_mem, &dev_mem, cfg, out, device)?;
    for p in [&report.phase1, &report.phase2] {
        let best = p.best.map(|m| m.loss).unwrap_or(f64::NAN);
        eprintln!(
            "phase {}{}: {} steps in {:.1}s, best dev loss {best:.5} at step {}{}{}",
            p.phase,
            match (&cfg.phase1_from, p.phase) {
                (Some(dir), 1) => format!(" (shared, from {})", dir.display()),
                _ => String::new(),
            },
            p.steps,
            p.seconds,
            p.best_step,
            p.best
                .and_then(|m| m.accuracy)
                .map(|a| format!(", dev top-1 {:.2}%", 100.0 * a))
                .unwrap_or_default(),
            if p.early_stopped { " (early stop)" } else { "" }
        );
    }
    let d = head.hidden_size();
    let summary = TrainSummary {
        seconds: t0.elapsed().as_secs_f64(),
        peak_rss_bytes: pema_lora::peak_rss_bytes(),
        trainable_params: 3 * cfg.rank * d,
        optimised_params: optimised_params(cfg.plan, cfg.rank, d),
        memory_entries: train_mem.len(),
        phase1: report.phase1,
        phase2: report.phase2,
    };
    write_json_pretty(&out.join(TRAIN_SUMMARY), &summary)?;
    Ok(summary)
}

/// What scoring λmax under Gradual Unrolling needs: the pairs the dev memory was built from
/// (in the same order) and the tokenizer whose source lengths give the leak-free horizons.
#[derive(Clone, Copy)]
pub struct GuDev<'a> {
    /// The dev pairs (entry provenance indexes them).
    pub pairs: &'a [Pair],
    /// The PLM's tokenizer (sources are counted as the decoder counts them).
    pub tokenizer: &'a PemaTokenizer,
}

/// Each dev entry's step k and horizon L = ⌈source tokens × `ratio`⌉, exactly as leak-free
/// decoding computes them.
pub fn dev_positions(dev: &MemoryStore, gu: GuDev<'_>, ratio: f64) -> Result<Vec<GuPosition>> {
    let source_lens = crate::pairs::source_lengths(gu.tokenizer, gu.pairs)?;
    let plan = plan_lengths(
        HorizonMode::Ratio { ratio },
        MaxLenMode::from_ratio(ratio),
        &source_lens,
        None,
    )?;
    (0..dev.len() as u64)
        .map(|i| {
            let p = dev.provenance(i)?;
            let horizon = *plan.horizons.get(p.pair as usize).ok_or_else(|| {
                PipelineError::Invalid(format!(
                    "dev memory entry {i} comes from pair {} but the dev pairs file has {} \
                     pairs: give the pairs the dev memory was built from",
                    p.pair,
                    gu.pairs.len()
                ))
            })?;
            Ok(GuPosition {
                step: p.step as usize,
                horizon,
            })
        })
        .collect()
}

/// Chooses λmax for the adapter in `adapter_dir` by the dev NLL of the mixture over at most
/// `max_dev` entries of `dev_memory` (no decoding): at a constant λ, and also under Gradual
/// Unrolling when `gu` is given (horizons from the adapter's recorded length ratio).
pub fn tune_lambda<B: Backend>(
    head: &FusedHead<B>,
    adapter_dir: &Path,
    dev_memory: &Path,
    grid: &[f64],
    max_dev: usize,
    gu: Option<GuDev<'_>>,
    device: &B::Device,
) -> Result<LambdaTuneReport> {
    let (adapter, meta) = PemaAdapter::<B>::load(adapter_dir, head, device)?;
    let dev = MemoryStore::open(dev_memory)?;
    let positions = match gu {
        Some(gu) => {
            let ratio = meta.length_ratio.unwrap_or(DEFAULT_LENGTH_RATIO);
            Some(dev_positions(&dev, gu, ratio)?)
        }
        None => None,
    };
    Ok(pema_schedule::tune_lambda(
        &adapter,
        head,
        &dev,
        grid,
        max_dev,
        positions.as_deref(),
    )?)
}
