//! Left padding for the batch-level [`Transformer::forward`] API and NLL scoring of one
//! sequence (decoding and teacher forcing live in [`crate::engine`]).

use burn::tensor::{Tensor, backend::Backend};

use crate::engine::Engine;
use crate::error::Result;
use crate::model::Transformer;

/// Token id used for left padding (any valid id works: padded slots are never computed).
const PAD_ID: u32 = 0;

/// Left-pads `seqs` to a common length; returns the padded batch and each sequence's padding.
pub fn left_pad(seqs: &[Vec<u32>]) -> (Vec<Vec<u32>>, Vec<usize>) {
    let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let pad: Vec<usize> = seqs.iter().map(|s| t - s.len()).collect();
    let padded = seqs
        .iter()
        .zip(&pad)
        .map(|(s, &p)| {
            std::iter::repeat_n(PAD_ID, p)
                .chain(s.iter().copied())
                .collect()
        })
        .collect();
    (padded, pad)
}

impl<B: Backend> Transformer<B> {
    /// Mean negative log-likelihood (nats per predicted token) of `tokens` and the number of
    /// predicted tokens (every token after the first).
    pub fn nll(&self, tokens: &[u32]) -> Result<(f64, usize)> {
        Engine::new(self).nll(tokens)
    }

    /// Log-probability of each token `tokens[i+1]` given `tokens[..=i]`.
    pub fn token_log_probs(&self, tokens: &[u32]) -> Result<Vec<f64>> {
        Engine::new(self).token_log_probs(tokens)
    }

    /// Next-token log-probabilities at every position of one sequence, `[t, vocab]`.
    pub fn log_probs_all(&self, tokens: &[u32]) -> Result<Tensor<B, 2>> {
        Engine::new(self).log_probs_all(tokens)
    }
}
