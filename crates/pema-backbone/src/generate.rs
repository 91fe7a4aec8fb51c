//! Batched decoding through the PEMA seam, teacher-forced context extraction and NLL scoring.

use burn::tensor::{Int, Tensor, TensorData, activation, backend::Backend};

use crate::error::{BackboneError, Result};
use crate::model::Transformer;
use crate::seam::{ContextRepr, GenerateOptions, Plm, StepOutput, StepPolicy};

/// Token id used for left padding (any valid id works: padded slots are masked out).
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
    /// The hidden state at the last position of each sequence, `[b, d]`.
    fn last_position(h: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, t, d] = h.dims();
        h.narrow(1, t - 1, 1).reshape([b, d])
    }

    /// Mean negative log-likelihood (nats per predicted token) of `tokens` and the number of
    /// predicted tokens (every token after the first).
    pub fn nll(&self, tokens: &[u32]) -> Result<(f64, usize)> {
        let lp = self.token_log_probs(tokens)?;
        let n = lp.len();
        Ok((-lp.iter().sum::<f64>() / n as f64, n))
    }

    /// Log-probability of each token `tokens[i+1]` given `tokens[..=i]`.
    pub fn token_log_probs(&self, tokens: &[u32]) -> Result<Vec<f64>> {
        if tokens.len() < 2 {
            return Err(BackboneError::Invalid(
                "NLL needs at least two tokens".into(),
            ));
        }
        let lp = self.log_probs_all(tokens)?;
        let t = tokens.len() - 1;
        let device = self.device();
        let targets: Vec<i64> = tokens[1..].iter().map(|&i| i as i64).collect();
        let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [t, 1]), &device);
        let picked = lp.narrow(0, 0, t).gather(1, idx);
        picked
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .map_err(|e| BackboneError::Invalid(format!("{e:?}")))
    }

    /// Next-token log-probabilities at every position of one sequence, `[t, vocab]`.
    pub fn log_probs_all(&self, tokens: &[u32]) -> Result<Tensor<B, 2>> {
        let mut cache = self.new_cache(vec![0]);
        let h = self.forward(&[tokens.to_vec()], &mut cache)?;
        let [_, t, d] = h.dims();
        let h = h.reshape([t, d]);
        // Chunk the head so [chunk, vocab] stays small for large vocabularies.
        let chunk = 64;
        let mut parts = Vec::new();
        let mut s = 0;
        while s < t {
            let n = chunk.min(t - s);
            let logits = self.logits(h.clone().narrow(0, s, n));
            parts.push(activation::log_softmax(logits, 1));
            s += n;
        }
        Ok(Tensor::cat(parts, 0))
    }
}

impl<B: Backend> Plm<B> for Transformer<B> {
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn device(&self) -> B::Device {
        Transformer::device(self)
    }

    fn generate(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        policy: &mut dyn StepPolicy<B>,
    ) -> Result<Vec<Vec<u32>>> {
        if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
            return Err(BackboneError::Invalid(
                "generate needs at least one prompt and no empty prompt".into(),
            ));
        }
        let b = prompts.len();
        let (padded, pad) = left_pad(prompts);
        let mut cache = self.new_cache(pad);
        let mut last = Self::last_position(self.forward(&padded, &mut cache)?);
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut active: Vec<bool> = (0..b).map(|i| options.max_for(i) > 0).collect();
        let vocab = self.config.vocab_size as u32;
        let mut step = 0;
        while active.iter().any(|&a| a) {
            let logits = self.logits(last.clone());
            let so = StepOutput {
                step,
                context: ContextRepr(last),
                logits,
                active: active.clone(),
            };
            let ids = policy.next_tokens(&so);
            if ids.len() != b {
                return Err(BackboneError::Invalid(format!(
                    "policy returned {} tokens for a batch of {b}",
                    ids.len()
                )));
            }
            let mut feed = Vec::with_capacity(b);
            for i in 0..b {
                if !active[i] {
                    feed.push(vec![PAD_ID]);
                    continue;
                }
                let id = ids[i];
                if id >= vocab {
                    return Err(BackboneError::Invalid(format!(
                        "policy chose token {id} outside the vocabulary ({vocab})"
                    )));
                }
                out[i].push(id);
                if options.stop_tokens.contains(&id) || out[i].len() >= options.max_for(i) {
                    active[i] = false;
                }
                feed.push(vec![id]);
            }
            step += 1;
            if !active.iter().any(|&a| a) {
                break;
            }
            last = Self::last_position(self.forward(&feed, &mut cache)?);
        }
        Ok(out)
    }

    fn teacher_forced_contexts(
        &self,
        prompts: &[Vec<u32>],
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Tensor<B, 2>>> {
        if prompts.len() != continuations.len() || prompts.is_empty() {
            return Err(BackboneError::Invalid(
                "teacher forcing needs as many continuations as prompts (at least one)".into(),
            ));
        }
        if prompts.iter().any(Vec::is_empty) || continuations.iter().any(Vec::is_empty) {
            return Err(BackboneError::Invalid(
                "teacher forcing needs non-empty prompts and continuations".into(),
            ));
        }
        // The key of step t is f(prompt + y_<t): feed prompt + y[..len-1].
        let seqs: Vec<Vec<u32>> = prompts
            .iter()
            .zip(continuations)
            .map(|(p, c)| p.iter().chain(&c[..c.len() - 1]).copied().collect())
            .collect();
        let (padded, pad) = left_pad(&seqs);
        let mut cache = self.new_cache(pad.clone());
        let h = self.forward(&padded, &mut cache)?;
        let [_, _, d] = h.dims();
        Ok((0..prompts.len())
            .map(|i| {
                let start = pad[i] + prompts[i].len() - 1;
                let n = continuations[i].len();
                h.clone()
                    .narrow(0, i, 1)
                    .narrow(1, start, n)
                    .reshape([n, d])
            })
            .collect())
    }
}
