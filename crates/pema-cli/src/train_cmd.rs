//! `pema train`: two-phase training of a PEMA adapter on an external memory through the
//! exported LM head (paper §3). Defaults are the paper's values.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use pema_adapter::{HpdForm, KeyNorm, PhaseConfig, PhasePlan, TrainConfig};
use pema_pipeline::summary::write_json_pretty;

/// Arguments of `pema train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Training memory directory (keys f(c_t), values y_t).
    #[arg(long)]
    pub memory: PathBuf,
    /// Dev memory directory, used for validation and early stopping.
    #[arg(long)]
    pub dev_memory: PathBuf,
    /// The exported LM head (safetensors with W_hd and the final norm).
    #[arg(long)]
    pub head: PathBuf,
    /// Output directory: adapter artifact, `train_log.jsonl`, `checkpoint/`.
    #[arg(long)]
    pub out: PathBuf,
    /// Bottleneck rank r (scale s = 1/r).
    #[arg(long, default_value_t = 512, value_parser = crate::values::count)]
    pub rank: usize,
    /// Weight κ of the reconstruction loss in phase 2: L = κ·L_rct + (1−κ)·L_pd.
    #[arg(long, default_value_t = 0.2, value_parser = crate::values::unit)]
    pub kappa: f64,
    /// Input dropout probability (training only).
    #[arg(long, default_value_t = 0.2, value_parser = crate::values::dropout)]
    pub dropout: f64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3, value_parser = crate::values::positive)]
    pub lr: f64,
    /// Adam epsilon (outside the square root, as in PyTorch).
    #[arg(long, default_value_t = 1e-8, value_parser = crate::values::positive)]
    pub adam_eps: f64,
    /// Phase-1 (reconstruction) batch size.
    #[arg(long, default_value_t = 20_480, value_parser = crate::values::count)]
    pub batch1: usize,
    /// Phase-2 (prediction) batch size.
    #[arg(long, default_value_t = 2_048, value_parser = crate::values::count)]
    pub batch2: usize,
    /// Maximum epochs per phase.
    #[arg(long, default_value_t = 200, value_parser = crate::values::count)]
    pub epochs: usize,
    /// Optional cap on phase-1 optimiser steps.
    #[arg(long, value_parser = crate::values::steps)]
    pub max_steps1: Option<u64>,
    /// Optional cap on phase-2 optimiser steps.
    #[arg(long, value_parser = crate::values::steps)]
    pub max_steps2: Option<u64>,
    /// Validate on the dev memory every this many steps (early stopping: stop when the dev
    /// loss exceeds both previous ones; the best weights are kept).
    #[arg(long, default_value_t = 100, value_parser = crate::values::steps)]
    pub validate_every: u64,
    /// Batch size for dev evaluation (does not change any result; the blockwise head bounds
    /// the logits held at once whatever the batch, see `--head-chunk`).
    #[arg(long, default_value_t = 2_048, value_parser = crate::values::count)]
    pub dev_batch: usize,
    /// Validate on at most this many dev entries, evenly spaced (default: all, as the paper).
    #[arg(long, value_parser = crate::values::count)]
    pub dev_max: Option<usize>,
    /// Seed of initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Target/source length ratio to record in the adapter (for leak-free Gradual Unrolling).
    #[arg(long, value_parser = crate::values::positive)]
    pub length_ratio: Option<f64>,
    /// Start from scratch even if OUT/checkpoint exists.
    #[arg(long)]
    pub no_resume: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Stop after this many steps in this run (resume later); for time-limited jobs.
    #[arg(long, value_parser = crate::values::steps)]
    pub halt_after_steps: Option<u64>,
    /// How keys enter the adapter: `standardize` (pema: (f − μ)/σ per dimension, from the
    /// training memory) or `none` (the paper: raw f(c)).
    #[arg(long, value_enum, default_value_t = KeyNormArg::Standardize)]
    pub key_norm: KeyNormArg,
    /// Which parameters each phase trains: the paper's `two-phase`, or the ablations `joint`
    /// (no phase 1; A, B_rct, B_pd trained together) and `bpd-only` (phase 2 trains B_pd on
    /// phase 1's frozen A₁).
    #[arg(long, value_enum, default_value_t = PlanArg::TwoPhase)]
    pub plan: PlanArg,
    /// How h_pd is formed: `paper` (B_pd·z) or `residual` (pema extension: f(c) + σ ⊙ B_pd·z,
    /// so P_PEMA starts as P_LM and learns the domain's correction).
    #[arg(long, value_enum, default_value_t = FormArg::Paper)]
    pub form: FormArg,
    /// Start phase 2 from the phase-1 result of another run on the same memories (its output
    /// directory; every phase-1 setting must match) instead of training phase 1 again.
    #[arg(long)]
    pub phase1_from: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub head_opts: crate::head_args::HeadArgs,
}

/// `--form` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormArg {
    /// h_pd = B_pd·z (the paper).
    Paper,
    /// h_pd = f(c) + σ ⊙ B_pd·z (pema extension).
    Residual,
}

/// `--key-norm` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyNormArg {
    /// Per-dimension standardisation (pema's default).
    Standardize,
    /// Raw f(c) (the paper).
    None,
}

/// `--plan` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanArg {
    /// The paper's two phases.
    TwoPhase,
    /// Ablation "phase 2 only".
    Joint,
    /// Ablation "B_pd only".
    BpdOnly,
}

impl TrainArgs {
    /// The training configuration these arguments describe.
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            rank: self.rank,
            dropout: self.dropout,
            kappa: self.kappa,
            phase1: PhaseConfig {
                batch_size: self.batch1,
                max_epochs: self.epochs,
                max_steps: self.max_steps1,
            },
            phase2: PhaseConfig {
                batch_size: self.batch2,
                max_epochs: self.epochs,
                max_steps: self.max_steps2,
            },
            lr: self.lr,
            epsilon: self.adam_eps,
            validate_every: self.validate_every,
            dev_batch_size: self.dev_batch,
            dev_max_entries: self.dev_max,
            seed: self.seed,
            progress: !self.no_progress,
            resume: !self.no_resume,
            length_ratio: self.length_ratio,
            halt_after_steps: self.halt_after_steps,
            key_norm: match self.key_norm {
                KeyNormArg::Standardize => KeyNorm::Standardize,
                KeyNormArg::None => KeyNorm::None,
            },
            form: match self.form {
                FormArg::Paper => HpdForm::Paper,
                FormArg::Residual => HpdForm::Residual,
            },
            plan: match self.plan {
                PlanArg::TwoPhase => PhasePlan::TwoPhase,
                PlanArg::Joint => PhasePlan::Joint,
                PlanArg::BpdOnly => PhasePlan::BpdOnly,
            },
            phase1_from: self.phase1_from.clone(),
            ..TrainConfig::default()
        }
    }
}

/// Runs `pema train` on the autodiff backend `B` (validation runs on its inner backend);
/// `on_cpu` selects the host CPU head kernel unless `--head-kernel` says otherwise.
pub fn run<B: AutodiffBackend>(
    args: &TrainArgs,
    device: &B::Device,
    on_cpu: bool,
) -> anyhow::Result<()> {
    let head = args
        .head_opts
        .load::<B::InnerBackend>(&args.head, device, on_cpu)?;
    pema_pipeline::train::train_adapter::<B>(
        &head,
        &args.memory,
        &args.dev_memory,
        &args.config(),
        &args.out,
        device,
    )?;
    println!("{}", args.out.display());
    Ok(())
}

/// Arguments of `pema tune-lambda`.
#[derive(clap::Args, Debug, Clone)]
pub struct TuneLambdaArgs {
    /// Trained adapter directory.
    #[arg(long)]
    pub adapter: PathBuf,
    /// The exported LM head the adapter was trained against.
    #[arg(long)]
    pub head: PathBuf,
    /// Dev memory (its contexts give P_LM and P_PEMA; its values are scored).
    #[arg(long)]
    pub dev_memory: PathBuf,
    /// Output JSON (the chosen λ and the whole grid).
    #[arg(long)]
    pub out: PathBuf,
    /// Candidate λ values.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.02,0.05,0.1,0.2,0.3,0.5,0.7,0.9",
        value_parser = crate::values::unit,
    )]
    pub lambda: Vec<f64>,
    /// At most this many dev entries (evenly spaced).
    #[arg(long, default_value_t = 4000, value_parser = crate::values::count)]
    pub max_dev: usize,
    /// The pairs file the dev memory was built from: with `--tokenizer`, every λ is also
    /// scored as λmax of Gradual Unrolling (each dev entry at its own λ_k, L from the source
    /// length × the adapter's length ratio, as leak-free decoding does), written under `gu`.
    #[arg(long, requires = "tokenizer")]
    pub dev_pairs: Option<PathBuf>,
    /// The PLM's `tokenizer.json` (counts the dev sources for `--dev-pairs`).
    #[arg(long, requires = "dev_pairs")]
    pub tokenizer: Option<PathBuf>,
    /// Device.
    #[arg(long, value_enum, default_value_t)]
    pub device: crate::backend::DeviceArg,
    #[command(flatten)]
    pub head_opts: crate::head_args::HeadArgs,
}

/// Runs `pema tune-lambda`: λmax chosen by the dev NLL of the mixture (no decoding).
pub fn tune_lambda<B: burn::tensor::backend::Backend>(
    args: &TuneLambdaArgs,
    device: &B::Device,
) -> anyhow::Result<()> {
    let on_cpu = args.device == crate::backend::DeviceArg::Cpu;
    let head = args.head_opts.load::<B>(&args.head, device, on_cpu)?;
    let gu_inputs = match (&args.dev_pairs, &args.tokenizer) {
        (Some(pairs), Some(tok)) => Some((
            pema_pipeline::pairs::PairsFile::read(pairs)?,
            pema_backbone::PemaTokenizer::from_file(tok, false, None, vec![])
                .with_context(|| format!("loading the tokenizer {}", tok.display()))?,
        )),
        _ => None,
    };
    let gu = gu_inputs
        .as_ref()
        .map(|(pairs, tokenizer)| pema_pipeline::train::GuDev {
            pairs: &pairs.pairs,
            tokenizer,
        });
    let r = pema_pipeline::train::tune_lambda(
        &head,
        &args.adapter,
        &args.dev_memory,
        &args.lambda,
        args.max_dev,
        gu,
        device,
    )
    .with_context(|| format!("choosing λmax for {}", args.adapter.display()))?;
    write_json_pretty(&args.out, &r)?;
    eprintln!(
        "λ on {} dev entries: best {} (NLL {:.4}; PLM alone {:.4}); top-1 PEMA {:.1}%, PLM {:.1}%",
        r.dev_entries,
        r.best.lambda,
        r.best.nll,
        r.grid
            .iter()
            .find(|p| p.lambda == 0.0)
            .map_or(f64::NAN, |p| p.nll),
        100.0 * r.pema_top1,
        100.0 * r.plm_top1
    );
    if let Some(gu) = &r.gu {
        eprintln!(
            "λmax under Gradual Unrolling: best {} (NLL {:.4})",
            gu.best.lambda, gu.best.nll
        );
    }
    Ok(())
}
