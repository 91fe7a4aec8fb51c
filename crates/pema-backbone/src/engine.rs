//! Serving the PLM: continuous batching, a shared-prefix KV cache and pluggable kernels.
//!
//! An [`Engine`] borrows a [`Transformer`] and implements [`Plm`]:
//! - **Continuous batching** ([`Plm::generate`]): at most `max_batch` sequences run at once;
//!   a sequence that stops leaves the batch at once and the next queued prompt takes its
//!   place (its prompt is prefilled in the same ragged forward as the others' next tokens).
//!   Nothing is padded and stopped sequences cost nothing.
//! - **Shared prefix** ([`Engine::set_prefix`]): the few-shot template's fixed beginning is run
//!   once; every prompt that starts with it (the longest common token prefix is used, so a
//!   tokenizer merging across the boundary is handled) starts from a copy of its keys/values
//!   and of its hidden states, so results are those of recomputing it.
//! - **Kernels** ([`crate::kernels`]): the reference burn ops, or CPU kernels (host attention,
//!   packed quantised weights).

use std::collections::VecDeque;

use burn::tensor::{Int, Tensor, TensorData, activation, backend::Backend};

use crate::cache::SeqKv;
use crate::error::{BackboneError, Result};
use crate::kernels::{Kernels, Reference};
use crate::model::Transformer;
use crate::seam::{ContextRepr, GenerateOptions, Plm, StepOutput, StepPolicy};

/// Most positions one ragged forward takes in teacher forcing and scoring (bounds activations).
const MAX_ROWS_PER_FORWARD: usize = 2048;

/// A computed shared prefix: its tokens, caches and pre-norm hidden states.
///
/// An [`Engine`] keeps one ([`Engine::set_prefix`]); a server holding several (one per
/// client template) computes them with [`Engine::compute_prefix`] and passes one to
/// [`Engine::begin`].
#[derive(Debug, Clone)]
pub struct SharedPrefix<B: Backend> {
    tokens: Vec<u32>,
    kv: SeqKv<B>,
    hidden: Tensor<B, 2>,
}

impl<B: Backend> SharedPrefix<B> {
    /// The prefix's tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// How many leading tokens of `seq` it provides: the longest common prefix, keeping at
    /// least `keep` tokens of `seq` to run.
    fn reuse(&self, seq: &[u32], keep: usize) -> usize {
        let lcp = self
            .tokens
            .iter()
            .zip(seq)
            .take_while(|(a, b)| a == b)
            .count();
        lcp.min(seq.len().saturating_sub(keep))
    }
}

/// One sequence being generated step by step ([`Engine::begin`], [`Engine::advance`]): its
/// cache and the tokens to feed at the next forward (the prompt's unshared part, then each
/// chosen token).
#[derive(Debug, Clone)]
pub struct DecodingSeq<B: Backend> {
    kv: SeqKv<B>,
    feed: Vec<u32>,
}

impl<B: Backend> DecodingSeq<B> {
    /// Sets the token fed at the next [`Engine::advance`] (the one just chosen).
    pub fn push(&mut self, token: u32) {
        self.feed = vec![token];
    }

    /// Positions in the cache.
    pub fn len(&self) -> usize {
        self.kv.len
    }

    /// Whether nothing has been run yet.
    pub fn is_empty(&self) -> bool {
        self.kv.len == 0
    }
}

/// The PLM as served for inference (see the module docs).
pub struct Engine<'m, B: Backend> {
    model: &'m Transformer<B>,
    kernels: Box<dyn Kernels<B> + 'm>,
    max_batch: usize,
    prefix: Option<SharedPrefix<B>>,
}

impl<'m, B: Backend> Engine<'m, B> {
    /// Reference kernels, all prompts of a call in one batch, no shared prefix.
    pub fn new(model: &'m Transformer<B>) -> Self {
        Self {
            model,
            kernels: Box::new(Reference),
            max_batch: usize::MAX,
            prefix: None,
        }
    }

    /// Uses `kernels` (e.g. [`crate::kernels::CpuKernels`]). Drops a computed prefix (its
    /// keys were made by the previous kernels); set it again afterwards.
    pub fn with_kernels(mut self, kernels: Box<dyn Kernels<B> + 'm>) -> Self {
        self.kernels = kernels;
        self.prefix = None;
        self
    }

    /// At most `n` sequences decode together (at least 1).
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// The model.
    pub fn model(&self) -> &'m Transformer<B> {
        self.model
    }

    /// The kernels (for callers driving [`Transformer::forward_ragged`] themselves).
    pub fn kernels(&self) -> &dyn Kernels<B> {
        self.kernels.as_ref()
    }

    /// The kernels' name.
    pub fn kernels_name(&self) -> &'static str {
        self.kernels.name()
    }

    /// Runs `tokens` once and keeps their keys/values and hidden states for every later prompt
    /// that starts with (part of) them. An empty slice removes the prefix.
    pub fn set_prefix(&mut self, tokens: &[u32]) -> Result<()> {
        self.prefix = None;
        if tokens.is_empty() {
            return Ok(());
        }
        self.prefix = Some(self.compute_prefix(tokens)?);
        Ok(())
    }

    /// Runs `tokens` (not empty) once and returns their caches and hidden states, for
    /// [`Engine::begin`].
    pub fn compute_prefix(&self, tokens: &[u32]) -> Result<SharedPrefix<B>> {
        if tokens.is_empty() {
            return Err(BackboneError::Invalid("empty shared prefix".into()));
        }
        let mut kv = self.model.new_seq_cache();
        let hidden = self
            .model
            .forward_ragged(self.kernels.as_ref(), &[tokens], &mut [&mut kv])?;
        Ok(SharedPrefix {
            tokens: tokens.to_vec(),
            kv,
            hidden,
        })
    }

    /// Starts generating from `prompt` (not empty), reusing `prefix` where the prompt starts
    /// with (part of) it; the engine's own prefix when `prefix` is `None`.
    pub fn begin(&self, prompt: &[u32], prefix: Option<&SharedPrefix<B>>) -> DecodingSeq<B> {
        let prefix = prefix.or(self.prefix.as_ref());
        let (kv, n) = match prefix.map(|p| (p, p.reuse(prompt, 1))) {
            Some((p, n)) if n > 0 => (p.kv.truncated(n), n),
            _ => (self.model.new_seq_cache(), 0),
        };
        DecodingSeq {
            kv,
            feed: prompt[n..].to_vec(),
        }
    }

    /// One ragged forward over `seqs` (each with its pending tokens): returns the context
    /// representation f(c) at each sequence's last position, `[seqs, d]`, in order. Each
    /// sequence's pending tokens are consumed; [`DecodingSeq::push`] sets the next.
    pub fn advance(&self, seqs: &mut [&mut DecodingSeq<B>]) -> Result<Tensor<B, 2>> {
        let feeds: Vec<Vec<u32>> = seqs
            .iter_mut()
            .map(|s| std::mem::take(&mut s.feed))
            .collect();
        let feed_refs: Vec<&[u32]> = feeds.iter().map(Vec::as_slice).collect();
        let mut kvs: Vec<&mut SeqKv<B>> = seqs.iter_mut().map(|s| &mut s.kv).collect();
        let h = self
            .model
            .forward_ragged(self.kernels.as_ref(), &feed_refs, &mut kvs)?;
        if feeds.iter().all(|f| f.len() == 1) {
            return Ok(h);
        }
        let mut idx = Vec::with_capacity(feeds.len());
        let mut end = 0i64;
        for f in &feeds {
            end += f.len() as i64;
            idx.push(end - 1);
        }
        let n = idx.len();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &h.device());
        Ok(h.select(0, idx))
    }

    /// The PLM's next-token logits for context representations `context: [n, d]` (final
    /// norm and head through this engine's kernels).
    pub fn logits(&self, context: Tensor<B, 2>) -> Tensor<B, 2> {
        self.kernels.head(&self.model.head, context)
    }

    /// Length of the shared prefix in tokens (0 without one).
    pub fn prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.tokens.len())
    }

    /// A cache for `seq` starting after its shared part; returns it and the reused length.
    fn start(&self, seq: &[u32], keep: usize) -> (SeqKv<B>, usize) {
        let n = self.prefix.as_ref().map_or(0, |p| p.reuse(seq, keep));
        match (&self.prefix, n) {
            (Some(p), n) if n > 0 => (p.kv.truncated(n), n),
            _ => (self.model.new_seq_cache(), 0),
        }
    }

    /// Pre-final-norm hidden states of every position of every sequence (`[len_i, d]` each),
    /// in ragged forwards of at most [`MAX_ROWS_PER_FORWARD`] new positions (the shared
    /// prefix's rows are copied, not recomputed).
    pub fn hidden_states(&self, seqs: &[&[u32]]) -> Result<Vec<Tensor<B, 2>>> {
        if seqs.iter().any(|s| s.is_empty()) {
            return Err(BackboneError::Invalid("empty sequence".into()));
        }
        let mut out = Vec::with_capacity(seqs.len());
        let mut i = 0;
        while i < seqs.len() {
            // One group: sequences until the row budget is used (at least one).
            let mut group = Vec::new();
            let mut rows = 0;
            while i < seqs.len() {
                let (kv, n) = self.start(seqs[i], 1);
                let t = seqs[i].len() - n;
                if !group.is_empty() && rows + t > MAX_ROWS_PER_FORWARD {
                    break;
                }
                rows += t;
                group.push((i, kv, n));
                i += 1;
            }
            let feed: Vec<&[u32]> = group.iter().map(|(j, _, n)| &seqs[*j][*n..]).collect();
            let mut kvs: Vec<&mut SeqKv<B>> = group.iter_mut().map(|(_, kv, _)| kv).collect();
            let h = self
                .model
                .forward_ragged(self.kernels.as_ref(), &feed, &mut kvs)?;
            let mut off = 0;
            for (j, _, n) in &group {
                let t = seqs[*j].len() - n;
                let own = h.clone().narrow(0, off, t);
                off += t;
                out.push(match (&self.prefix, *n) {
                    (Some(p), n) if n > 0 => {
                        Tensor::cat(vec![p.hidden.clone().narrow(0, 0, n), own], 0)
                    }
                    _ => own,
                });
            }
        }
        Ok(out)
    }

    /// Next-token log-probabilities at every position of one sequence, `[t, vocab]`.
    pub fn log_probs_all(&self, tokens: &[u32]) -> Result<Tensor<B, 2>> {
        let h = self
            .hidden_states(&[tokens])?
            .pop()
            .ok_or_else(|| BackboneError::Invalid("no hidden states".into()))?;
        let t = h.dims()[0];
        // Chunk the head so [chunk, vocab] stays small for large vocabularies.
        let chunk = 64;
        let mut parts = Vec::new();
        let mut s = 0;
        while s < t {
            let n = chunk.min(t - s);
            let logits = self
                .kernels
                .head(&self.model.head, h.clone().narrow(0, s, n));
            parts.push(activation::log_softmax(logits, 1));
            s += n;
        }
        Ok(Tensor::cat(parts, 0))
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
        let targets: Vec<i64> = tokens[1..].iter().map(|&i| i as i64).collect();
        let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [t, 1]), &lp.device());
        lp.narrow(0, 0, t)
            .gather(1, idx)
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .map_err(|e| BackboneError::Invalid(format!("{e:?}")))
    }

    /// Mean negative log-likelihood (nats per predicted token) and the number of predictions.
    pub fn nll(&self, tokens: &[u32]) -> Result<(f64, usize)> {
        let lp = self.token_log_probs(tokens)?;
        let n = lp.len();
        Ok((-lp.iter().sum::<f64>() / n as f64, n))
    }
}

/// A sequence in the running batch.
struct Row<B: Backend> {
    seq: usize,
    step: usize,
    dec: DecodingSeq<B>,
}

impl<B: Backend> Plm<B> for Engine<'_, B> {
    fn hidden_size(&self) -> usize {
        self.model.config.hidden_size
    }

    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    fn context_length(&self) -> Option<usize> {
        Some(self.model.config.context_length)
    }

    fn device(&self) -> B::Device {
        self.model.device()
    }

    /// Generation is capped at the model's context length: a sequence stops when prompt and
    /// generated tokens fill it (whatever `options` ask), and a prompt that already fills it
    /// is refused.
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
        let vocab = self.model.config.vocab_size as u32;
        // No sequence runs past the context length, whatever the caller asks for.
        let ctx = self.model.config.context_length;
        if let Some((i, p)) = prompts.iter().enumerate().find(|(_, p)| p.len() >= ctx) {
            return Err(BackboneError::Invalid(format!(
                "prompt {i} has {} tokens: it fills the model's context length {ctx}",
                p.len()
            )));
        }
        let max_for = |i: usize| options.max_for(i).min(ctx - prompts[i].len());
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
        let mut queue: VecDeque<usize> = (0..prompts.len()).filter(|&i| max_for(i) > 0).collect();
        let mut rows: Vec<Row<B>> = Vec::new();
        loop {
            while rows.len() < self.max_batch {
                let Some(i) = queue.pop_front() else { break };
                rows.push(Row {
                    seq: i,
                    step: 0,
                    dec: self.begin(&prompts[i], None),
                });
            }
            if rows.is_empty() {
                break;
            }
            let mut decs: Vec<&mut DecodingSeq<B>> = rows.iter_mut().map(|r| &mut r.dec).collect();
            let last = self.advance(&mut decs)?;
            let logits = self.logits(last.clone());
            let so = StepOutput {
                seqs: rows.iter().map(|r| r.seq).collect(),
                steps: rows.iter().map(|r| r.step).collect(),
                context: ContextRepr(last),
                logits,
            };
            let ids = policy.next_tokens(&so);
            if ids.len() != rows.len() {
                return Err(BackboneError::Invalid(format!(
                    "policy returned {} tokens for a batch of {}",
                    ids.len(),
                    rows.len()
                )));
            }
            let mut done = vec![false; rows.len()];
            for ((r, &id), done) in rows.iter_mut().zip(&ids).zip(&mut done) {
                if id >= vocab {
                    return Err(BackboneError::Invalid(format!(
                        "policy chose token {id} outside the vocabulary ({vocab})"
                    )));
                }
                let o = &mut out[r.seq];
                o.push(id);
                if options.stop_tokens.contains(&id) || o.len() >= max_for(r.seq) {
                    *done = true;
                } else {
                    r.dec.push(id);
                    r.step += 1;
                }
            }
            let mut d = done.into_iter();
            rows.retain(|_| !d.next().unwrap_or(false));
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
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let hidden = self.hidden_states(&refs)?;
        Ok(hidden
            .into_iter()
            .zip(prompts.iter().zip(continuations))
            .map(|(h, (p, c))| h.narrow(0, p.len() - 1, c.len()))
            .collect())
    }
}

/// The plain model is a [`Plm`] through a default [`Engine`] (reference kernels, every prompt
/// of a call in one batch, no shared prefix).
impl<B: Backend> Plm<B> for Transformer<B> {
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn context_length(&self) -> Option<usize> {
        Some(self.config.context_length)
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
        Engine::new(self).generate(prompts, options, policy)
    }

    fn teacher_forced_contexts(
        &self,
        prompts: &[Vec<u32>],
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Tensor<B, 2>>> {
        Engine::new(self).teacher_forced_contexts(prompts, continuations)
    }
}
