//! The LoRA baseline as a use case: encode the pairs with the decoding template, train LoRA
//! through the whole frozen backbone, save the LoRA directory, summarise.

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use pema_backbone::LoadedModel;
use pema_lora::{LORA_FORMAT, LoraConfig, LoraMeta};
use pema_memory::{PairsFile, PromptTemplate};

use crate::error::Result;
use crate::summary::LoraSummary;

/// Trains LoRA on the pairs file `train_pairs` (validated on `dev_pairs`) with the prompts of
/// `template`, and writes the LoRA directory `out` (`lora.safetensors`, `lora.json` with the
/// whole report).
pub fn train_lora<B: AutodiffBackend>(
    m: &LoadedModel<B::InnerBackend>,
    template: &PromptTemplate,
    train_pairs: &Path,
    dev_pairs: &Path,
    cfg: &LoraConfig,
    out: &Path,
) -> Result<LoraSummary> {
    cfg.validate()?;
    let read = |path: &Path| -> Result<Vec<pema_lora::Example>> {
        let pairs = PairsFile::read(path)?;
        Ok(pema_lora::encode_pairs(
            &m.tokenizer,
            template,
            &pairs.pairs,
        )?)
    };
    let train = read(train_pairs)?;
    let dev = read(dev_pairs)?;
    let targets: Vec<String> = cfg.targets.iter().map(|t| format!("{t:?}")).collect();
    eprintln!(
        "pema lora: model {} ({} blocks), {} training pairs, {} dev pairs, rank {}, α {}, targets {}",
        m.model.config.name,
        m.model.config.n_layers,
        train.len(),
        dev.len(),
        cfg.rank,
        cfg.alpha,
        targets.join(",").to_lowercase()
    );
    let (lora, report) = pema_lora::train::<B>(&m.model, &train, &dev, cfg)?;
    let meta = LoraMeta {
        format: LORA_FORMAT.to_string(),
        model: m.model.config.name.clone(),
        weights_sha256: m.weights_sha256.clone(),
        config: cfg.clone(),
        slots: lora.slots.clone(),
        report: Some(report.clone()),
        lora_sha256: None,
    };
    lora.save(out, &meta)?;
    Ok(LoraSummary {
        method: "lora".into(),
        out: out.to_path_buf(),
        seconds: report.seconds,
        peak_rss_bytes: report.peak_rss_bytes,
        trainable_params: report.trainable_params,
        best_dev_loss: report.best_dev_loss,
        best_step: report.best_step,
        steps: report.steps,
        epochs: report.epochs,
        stopped_early: report.stopped_early,
    })
}
