//! Typed, serde-serialisable summaries of the use cases, as the binaries write them
//! (`*.summary.json` of a decoding, `train_summary.json` of an adapter, LoRA's one-line
//! summary), and the JSON helpers that read and write them.

use std::path::{Path, PathBuf};

use pema_adapter::PhaseReport;
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};

/// What a decoding of a pairs file did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeSummary {
    /// Sequences decoded.
    pub sequences: usize,
    /// Tokens generated.
    pub tokens: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Generated tokens per second.
    pub tokens_per_s: f64,
    /// Whether any length came from the reference (oracle mode).
    pub uses_reference: bool,
    /// `plm`, `lora`, `knn-lm` or `pema-<schedule>`.
    pub method: String,
}

/// What training an adapter did (`train_summary.json` next to the adapter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Wall-clock seconds of the whole run (memories opened, both phases, artifact written).
    pub seconds: f64,
    /// Peak resident memory of the process (VmHWM), when known.
    pub peak_rss_bytes: Option<u64>,
    /// Parameters of the trained adapter (A, B_rct, B_pd: 3·r·d).
    pub trainable_params: usize,
    /// Parameters the optimiser updated over the run: phase 1's A₁ and B_rct plus phase 2's
    /// fresh A and B_pd for the paper's two phases (4·r·d); 3·r·d for the ablations.
    #[serde(default)]
    pub optimised_params: usize,
    /// Entries of the training memory.
    pub memory_entries: usize,
    /// Phase 1 (reconstruction).
    pub phase1: PhaseReport,
    /// Phase 2 (prediction).
    pub phase2: PhaseReport,
}

/// What training LoRA did (printed by `pema lora` as one JSON line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSummary {
    /// Always `lora`.
    pub method: String,
    /// The LoRA directory written.
    pub out: PathBuf,
    /// Wall-clock seconds of the training loop.
    pub seconds: f64,
    /// Peak resident memory of the process, when known.
    pub peak_rss_bytes: Option<u64>,
    /// Trainable scalars.
    pub trainable_params: usize,
    /// Best dev loss (mean NLL per target token), when dev pairs were given.
    pub best_dev_loss: Option<f64>,
    /// Step whose weights were kept.
    pub best_step: u64,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Epochs started.
    pub epochs: usize,
    /// Whether early stopping ended training.
    pub stopped_early: bool,
}

pub use pema_common::{read_json, write_json_line, write_json_pretty};

/// `value` as compact JSON.
pub fn to_json_line<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| PipelineError::Invalid(e.to_string()))
}

/// Writes one line per item (`\n`-terminated).
pub fn write_lines<I, S>(path: &Path, lines: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut text = String::new();
    for l in lines {
        text.push_str(l.as_ref());
        text.push('\n');
    }
    Ok(pema_common::write_atomic(path, text.as_bytes())?)
}
