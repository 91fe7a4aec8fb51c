//! What a LoRA training run did and cost (kept apart from the training loop, so the LoRA
//! weights' metadata can carry it without `lora.rs` and `train.rs` importing each other).

use serde::{Deserialize, Serialize};

/// What a LoRA training run did and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraReport {
    /// Optimiser steps taken.
    pub steps: u64,
    /// Passes over the training pairs started.
    pub epochs: usize,
    /// Wall-clock seconds of the training loop (dev evaluation included).
    pub seconds: f64,
    /// Training loss (mean NLL per target token, nats) of every step.
    pub train_loss: Vec<f64>,
    /// Dev loss (mean NLL per target token) at `(step, loss)`; step 0 is the base model.
    pub dev_loss: Vec<(u64, f64)>,
    /// Step whose weights were kept (best dev loss; the last step without dev pairs).
    pub best_step: u64,
    /// Best dev loss (`None` without dev pairs).
    pub best_dev_loss: Option<f64>,
    /// Whether early stopping ended training.
    pub stopped_early: bool,
    /// Number of trainable scalars.
    pub trainable_params: usize,
    /// Training pairs and scored target tokens per epoch.
    pub train_pairs: usize,
    /// Target tokens (stop tokens included) scored per epoch.
    pub train_tokens: usize,
    /// Peak resident memory of the process after training (VmHWM), when known.
    pub peak_rss_bytes: Option<u64>,
}

/// Peak resident set size of this process (`VmHWM` of `/proc/self/status`); `None` where the
/// file is unavailable (not Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let unit = match parts.next() {
        Some("kB") | Some("KB") => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        None => 1,
        Some(_) => return None,
    };
    Some(value * unit)
}
