//! `pema lora`: LoRA fine-tuning of the backbone, the standard PEFT baseline PEMA is compared
//! with. Writes the LoRA directory (`lora.safetensors`, `lora.json` with the training report)
//! and prints a one-line JSON summary (time, peak memory, trainable parameters, losses).

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use pema_lora::{LORA_FORMAT, LoraConfig, LoraMeta, LoraTarget};
use pema_memory::{PairsFile, PromptTemplate};

use crate::backend::{BackendTask, DeviceArg};

/// Arguments of `pema lora`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoraArgs {
    /// Model, training pairs and prompt template (the one used for decoding).
    #[command(flatten)]
    pub input: crate::args::TaskInput,
    /// Dev pairs, for validation and early stopping.
    #[arg(long)]
    pub dev_pairs: PathBuf,
    /// Output directory for the LoRA weights.
    #[arg(long)]
    pub out: PathBuf,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA α (the update is scaled by α/r).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Adapted projections of every block: q, k, v, o, gate, up, down, or `all`.
    #[arg(long, default_value = "q,v")]
    pub targets: String,
    /// Adam learning rate.
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Pairs per optimiser step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Maximum number of epochs.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Optional cap on optimiser steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Dev loss every this many steps (the best weights are kept).
    #[arg(long, default_value_t = 100)]
    pub validate_every: u64,
    /// Stop after this many validations without a new best dev loss.
    #[arg(long, default_value_t = 3)]
    pub patience: usize,
    /// Pairs per dev forward pass.
    #[arg(long, default_value_t = 16)]
    pub dev_batch_size: usize,
    /// Seed of the initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// No progress lines on stderr.
    #[arg(long)]
    pub no_progress: bool,
    /// Device.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceArg,
}

impl LoraArgs {
    /// The training configuration these arguments describe.
    pub fn config(&self) -> anyhow::Result<LoraConfig> {
        let cfg = LoraConfig {
            rank: self.rank,
            alpha: self.alpha,
            targets: LoraTarget::parse_list(&self.targets)?,
            lr: self.lr,
            batch_size: self.batch_size,
            max_epochs: self.epochs,
            max_steps: self.max_steps,
            validate_every: self.validate_every,
            patience: self.patience,
            dev_batch_size: self.dev_batch_size,
            seed: self.seed,
            progress: !self.no_progress,
            ..LoraConfig::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl BackendTask for &LoraArgs {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
        run::<B>(self, &device)
    }
}

/// Runs `pema lora` on the autodiff backend `B` (the frozen model and dev evaluation live on
/// its inner backend).
pub fn run<B: AutodiffBackend>(args: &LoraArgs, device: &B::Device) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let m = pema_backbone::load_model_dir::<B::InnerBackend>(&args.input.model, device)
        .with_context(|| format!("loading model {}", args.input.model.display()))?;
    let template = PromptTemplate::resolve(&args.input.template)
        .with_context(|| format!("reading the template {}", args.input.template))?;
    let read = |path: &PathBuf| -> anyhow::Result<Vec<pema_lora::Example>> {
        let pairs = PairsFile::read(path)?;
        Ok(pema_lora::encode_pairs(
            &m.tokenizer,
            &template,
            &pairs.pairs,
        )?)
    };
    let train = read(&args.input.pairs)?;
    let dev = read(&args.dev_pairs)?;
    eprintln!(
        "pema lora: model {} ({} blocks), {} training pairs, {} dev pairs, rank {}, α {}, targets {}",
        m.model.config.name,
        m.model.config.n_layers,
        train.len(),
        dev.len(),
        cfg.rank,
        cfg.alpha,
        args.targets
    );
    let (lora, report) = pema_lora::train::<B>(&m.model, &train, &dev, &cfg)?;
    let meta = LoraMeta {
        format: LORA_FORMAT.to_string(),
        model: m.model.config.name.clone(),
        weights_sha256: m.weights_sha256.clone(),
        config: cfg,
        slots: lora.slots.clone(),
        report: Some(report.clone()),
    };
    lora.save(&args.out, &meta)
        .with_context(|| format!("writing LoRA weights to {}", args.out.display()))?;
    let summary = serde_json::json!({
        "method": "lora",
        "out": args.out,
        "seconds": report.seconds,
        "peak_rss_bytes": report.peak_rss_bytes,
        "trainable_params": report.trainable_params,
        "best_dev_loss": report.best_dev_loss,
        "best_step": report.best_step,
        "steps": report.steps,
        "epochs": report.epochs,
        "stopped_early": report.stopped_early,
    });
    println!("{summary}");
    Ok(())
}
