//! Negative log-likelihood and perplexity over target tokens.
//!
//! For a target sequence y = (y_1 … y_T) and a model p, NLL = −(1/N) Σ_t log p(y_t | y_<t, x),
//! averaged over the N target tokens of all sequences (prompt/source positions are never
//! counted), and perplexity = exp(NLL). Whether the end-of-sequence token counts as a target
//! token changes both numbers, so every summary says which convention it used.

use serde::Serialize;

/// Accumulates per-token NLLs (in nats) of target tokens over many sequences.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NllAccumulator {
    count_eos: bool,
    sum: f64,
    tokens: u64,
    sequences: u64,
}

/// The result of an [`NllAccumulator`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NllSummary {
    /// Mean NLL per target token, in nats.
    pub mean_nll: f64,
    /// exp(mean_nll).
    pub perplexity: f64,
    /// Number of target tokens averaged over.
    pub n_tokens: u64,
    /// Number of sequences.
    pub n_sequences: u64,
    /// Whether end-of-sequence tokens were counted as target tokens.
    pub eos_counted: bool,
}

impl NllAccumulator {
    /// A new accumulator; `count_eos` says whether an end-of-sequence token at the end of a
    /// target counts as a target token.
    pub fn new(count_eos: bool) -> Self {
        Self {
            count_eos,
            ..Self::default()
        }
    }

    /// Adds one sequence given the NLLs (nats, `−log p`) of its target tokens only, in
    /// order. `ends_with_eos` says whether the last entry is the end-of-sequence token; it
    /// is dropped unless the accumulator counts EOS.
    pub fn add_target(&mut self, target_nlls: &[f64], ends_with_eos: bool) {
        let used = if ends_with_eos && !self.count_eos && !target_nlls.is_empty() {
            &target_nlls[..target_nlls.len() - 1]
        } else {
            target_nlls
        };
        self.sum += used.iter().sum::<f64>();
        self.tokens += used.len() as u64;
        self.sequences += 1;
    }

    /// Adds one sequence given NLLs for every predicted position of prompt + target; the
    /// first `prompt_positions` entries belong to the prompt (source) and are ignored.
    pub fn add_with_prompt(&mut self, nlls: &[f64], prompt_positions: usize, ends_with_eos: bool) {
        let start = prompt_positions.min(nlls.len());
        self.add_target(&nlls[start..], ends_with_eos);
    }

    /// Adds one sequence given log-probabilities (`log p`, ≤ 0) of its target tokens.
    pub fn add_target_logprobs(&mut self, target_logprobs: &[f64], ends_with_eos: bool) {
        let nlls: Vec<f64> = target_logprobs.iter().map(|l| -l).collect();
        self.add_target(&nlls, ends_with_eos);
    }

    /// Merges another accumulator with the same EOS convention.
    pub fn merge(&mut self, other: &Self) {
        self.sum += other.sum;
        self.tokens += other.tokens;
        self.sequences += other.sequences;
    }

    /// Mean NLL, perplexity and counts (NaN mean when no token was added).
    pub fn summary(&self) -> NllSummary {
        let mean = if self.tokens > 0 {
            self.sum / self.tokens as f64
        } else {
            f64::NAN
        };
        NllSummary {
            mean_nll: mean,
            perplexity: mean.exp(),
            n_tokens: self.tokens,
            n_sequences: self.sequences,
            eos_counted: self.count_eos,
        }
    }
}

impl std::fmt::Display for NllSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mean NLL {:.4} nats/token, perplexity {:.3} over {} target tokens in {} sequences (EOS {})",
            self.mean_nll,
            self.perplexity,
            self.n_tokens,
            self.n_sequences,
            if self.eos_counted {
                "counted"
            } else {
                "not counted"
            }
        )
    }
}

/// Mean NLL of a single target sequence (see [`NllAccumulator::add_target`]).
pub fn mean_nll(target_nlls: &[f64], ends_with_eos: bool, count_eos: bool) -> NllSummary {
    let mut acc = NllAccumulator::new(count_eos);
    acc.add_target(target_nlls, ends_with_eos);
    acc.summary()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eos_convention() {
        let nlls = [1.0, 2.0, 3.0];
        let with = mean_nll(&nlls, true, true);
        let without = mean_nll(&nlls, true, false);
        assert_eq!(with.mean_nll, 2.0);
        assert_eq!(without.mean_nll, 1.5);
        assert_eq!(without.n_tokens, 2);
        assert!(!without.eos_counted);
        assert!((with.perplexity - 2f64.exp()).abs() < 1e-12);
        let mut acc = NllAccumulator::new(false);
        acc.add_with_prompt(&[9.0, 9.0, 1.0, 3.0], 2, false);
        assert_eq!(acc.summary().mean_nll, 2.0);
        assert!(NllAccumulator::new(true).summary().mean_nll.is_nan());
        assert!(without.to_string().contains("EOS not counted"));
    }
}
