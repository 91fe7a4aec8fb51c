//! LoRA hyper-parameters and the linear layers LoRA can adapt.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{LoraError, Result};

/// A linear layer of every transformer block that LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    /// Query projection `attn_q`.
    Q,
    /// Key projection `attn_k`.
    K,
    /// Value projection `attn_v`.
    V,
    /// Attention output projection `attn_output`.
    O,
    /// FFN gate projection `ffn_gate`.
    Gate,
    /// FFN up projection `ffn_up`.
    Up,
    /// FFN down projection `ffn_down`.
    Down,
}

impl LoraTarget {
    /// All targets, in canonical order.
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// Short name used on the command line (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q",
            LoraTarget::K => "k",
            LoraTarget::V => "v",
            LoraTarget::O => "o",
            LoraTarget::Gate => "gate",
            LoraTarget::Up => "up",
            LoraTarget::Down => "down",
        }
    }

    /// The weight key of the layer (GGUF naming), e.g. `attn_q`.
    pub fn key(self) -> &'static str {
        match self {
            LoraTarget::Q => "attn_q",
            LoraTarget::K => "attn_k",
            LoraTarget::V => "attn_v",
            LoraTarget::O => "attn_output",
            LoraTarget::Gate => "ffn_gate",
            LoraTarget::Up => "ffn_up",
            LoraTarget::Down => "ffn_down",
        }
    }

    /// Parses a comma-separated list (`q,v`, `all`); sorted and deduplicated.
    pub fn parse_list(s: &str) -> Result<Vec<LoraTarget>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                out.extend(LoraTarget::ALL);
            } else {
                out.push(part.parse()?);
            }
        }
        out.sort_unstable();
        out.dedup();
        if out.is_empty() {
            return Err(LoraError::Config(format!("no LoRA target in `{s}`")));
        }
        Ok(out)
    }
}

impl FromStr for LoraTarget {
    type Err = LoraError;
    fn from_str(s: &str) -> Result<Self> {
        LoraTarget::ALL
            .into_iter()
            .find(|t| t.name() == s || t.key() == s)
            .ok_or_else(|| {
                LoraError::Config(format!(
                    "unknown LoRA target `{s}` (one of q, k, v, o, gate, up, down, all)"
                ))
            })
    }
}

impl fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Hyper-parameters of LoRA fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank r of the update `A·B`.
    pub rank: usize,
    /// Scaling numerator α: the update is `A·B·(α/r)`.
    pub alpha: f64,
    /// Adapted linear layers (in every block).
    pub targets: Vec<LoraTarget>,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam ε (outside the square root, PyTorch's default 1e-8).
    pub epsilon: f64,
    /// Pairs per optimiser step.
    pub batch_size: usize,
    /// Maximum number of passes over the training pairs.
    pub max_epochs: usize,
    /// Optional cap on optimiser steps.
    pub max_steps: Option<u64>,
    /// Dev loss every this many steps (and after the last step).
    pub validate_every: u64,
    /// Stop after this many validations in a row without a new best dev loss.
    pub patience: usize,
    /// Pairs per dev forward pass.
    pub dev_batch_size: usize,
    /// Seed of the initialisation of A and of the shuffling.
    pub seed: u64,
    /// Print one progress line per validation to stderr.
    pub progress: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: vec![LoraTarget::Q, LoraTarget::V],
            lr: 5e-4,
            epsilon: 1e-8,
            batch_size: 8,
            max_epochs: 3,
            max_steps: None,
            validate_every: 100,
            patience: 3,
            dev_batch_size: 16,
            seed: 0,
            progress: false,
        }
    }
}

impl LoraConfig {
    /// The update's scale α/r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(LoraError::Config(m.into()));
        if self.rank == 0 {
            return bad("rank must be at least 1");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad("alpha must be positive");
        }
        if self.targets.is_empty() {
            return bad("at least one target layer is needed");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("the learning rate must be positive");
        }
        if self.batch_size == 0 || self.dev_batch_size == 0 {
            return bad("batch sizes must be at least 1");
        }
        if self.validate_every == 0 {
            return bad("validate_every must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_lists_parse() {
        assert_eq!(
            LoraTarget::parse_list("v, q,q").expect("list"),
            vec![LoraTarget::Q, LoraTarget::V]
        );
        assert_eq!(LoraTarget::parse_list("all").expect("all").len(), 7);
        assert_eq!(
            LoraTarget::parse_list("ffn_down,o").expect("keys"),
            vec![LoraTarget::O, LoraTarget::Down]
        );
        assert!(LoraTarget::parse_list("q,x").is_err());
        assert!(LoraTarget::parse_list(" , ").is_err());
        let json = serde_json::to_string(&LoraConfig::default()).expect("json");
        assert!(json.contains("\"targets\":[\"q\",\"v\"]"), "{json}");
        assert!((LoraConfig::default().scale() - 2.0).abs() < 1e-12);
    }
}
