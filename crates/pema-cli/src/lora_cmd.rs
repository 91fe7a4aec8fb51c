//! `pema lora`: LoRA fine-tuning of the backbone, the standard PEFT baseline PEMA is compared
//! with. Writes the LoRA directory (`lora.safetensors`, `lora.json` with the training report)
//! and prints a one-line JSON summary (time, peak memory, trainable parameters, losses).

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use pema_lora::{LoraConfig, LoraTarget};
use pema_memory::PromptTemplate;

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
    #[arg(long, default_value_t = 8, value_parser = crate::values::count)]
    pub rank: usize,
    /// LoRA α (the update is scaled by α/r).
    #[arg(long, default_value_t = 16.0, value_parser = crate::values::positive)]
    pub alpha: f64,
    /// Adapted projections of every block: q, k, v, o, gate, up, down, or `all`.
    #[arg(long, default_value = "q,v")]
    pub targets: String,
    /// Adam learning rate.
    #[arg(long, default_value_t = 5e-4, value_parser = crate::values::positive)]
    pub lr: f64,
    /// Pairs per optimiser step.
    #[arg(long, default_value_t = 8, value_parser = crate::values::count)]
    pub batch_size: usize,
    /// Maximum number of epochs.
    #[arg(long, default_value_t = 3, value_parser = crate::values::count)]
    pub epochs: usize,
    /// Optional cap on optimiser steps.
    #[arg(long, value_parser = crate::values::steps)]
    pub max_steps: Option<u64>,
    /// Dev loss every this many steps (the best weights are kept).
    #[arg(long, default_value_t = 100, value_parser = crate::values::steps)]
    pub validate_every: u64,
    /// Stop after this many validations without a new best dev loss.
    #[arg(long, default_value_t = 3, value_parser = crate::values::count)]
    pub patience: usize,
    /// Pairs per dev forward pass.
    #[arg(long, default_value_t = 16, value_parser = crate::values::count)]
    pub dev_batch_size: usize,
    /// Seed of the initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the summary (the JSON line printed on stdout) to this file.
    #[arg(long)]
    pub summary: Option<PathBuf>,
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
/// its inner backend) and prints the summary as one JSON line on stdout.
pub fn run<B: AutodiffBackend>(args: &LoraArgs, device: &B::Device) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let dir = args.input.model_dir("lora")?;
    let m = pema_backbone::load_model_dir::<B::InnerBackend>(dir, device)
        .with_context(|| format!("loading model {}", dir.display()))?;
    let template = PromptTemplate::resolve(&args.input.template)
        .with_context(|| format!("reading the template {}", args.input.template))?;
    let summary = pema_pipeline::lora::train_lora::<B>(
        &m,
        &template,
        &args.input.pairs,
        &args.dev_pairs,
        &cfg,
        &args.out,
    )
    .with_context(|| format!("training LoRA into {}", args.out.display()))?;
    if let Some(path) = &args.summary {
        pema_pipeline::summary::write_json_line(path, &summary)?;
    }
    println!("{}", pema_pipeline::summary::to_json_line(&summary)?);
    Ok(())
}
