//! The PEMA seam: what the PLM owner exposes at each decoding step.
//!
//! At step t of decoding, for every sequence b of the batch, the PLM computes the context
//! representation f(c_t) — the residual stream at the last position after the last block and
//! before the final norm (paper §2, `f(c)`) — and its next-token logits. A [`StepPolicy`] sees
//! both and chooses the next tokens: greedy PLM decoding ([`Greedy`]), PEMA's interpolation with
//! Gradual Unrolling, or a memory builder that records keys while letting the PLM decode.

use burn::tensor::{Tensor, backend::Backend};

/// Context representations f(c) of a batch: `[batch, d]`, pre-final-norm.
#[derive(Debug, Clone)]
pub struct ContextRepr<B: Backend>(pub Tensor<B, 2>);

/// Everything the PLM returns for one decoding step of the running batch.
///
/// With continuous batching the rows are the sequences generating at this step, in any order:
/// a sequence that stopped is no longer a row, and one admitted late starts at step 0 while
/// others are further on. Row `r` is sequence `seqs[r]` (its index in the prompts given to
/// [`Plm::generate`]) at its own step `steps[r]`.
#[derive(Debug, Clone)]
pub struct StepOutput<B: Backend> {
    /// For each row, the index of its sequence among the prompts of the `generate` call.
    pub seqs: Vec<usize>,
    /// For each row, its step within its continuation (0 = its first generated token).
    pub steps: Vec<usize>,
    /// f(c) for each row, `[rows, d]`.
    pub context: ContextRepr<B>,
    /// PLM logits for the next token, `[rows, vocab]`.
    pub logits: Tensor<B, 2>,
}

impl<B: Backend> StepOutput<B> {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.seqs.len()
    }
}

/// Chooses the next token of every row of a [`StepOutput`].
pub trait StepPolicy<B: Backend> {
    /// Returns one token id per row.
    fn next_tokens(&mut self, out: &StepOutput<B>) -> Vec<u32>;
}

/// Plain greedy decoding on the PLM's logits.
#[derive(Debug, Default, Clone, Copy)]
pub struct Greedy;

impl<B: Backend> StepPolicy<B> for Greedy {
    fn next_tokens(&mut self, out: &StepOutput<B>) -> Vec<u32> {
        argmax_rows(out.logits.clone())
    }
}

/// Row-wise argmax of a `[batch, vocab]` tensor, as host token ids.
pub fn argmax_rows<B: Backend>(x: Tensor<B, 2>) -> Vec<u32> {
    let ids = x.argmax(1).into_data();
    ids.convert::<i64>()
        .into_vec::<i64>()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

/// Options of a batched generation.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    /// Maximum number of new tokens, per sequence (a single value is broadcast).
    pub max_new_tokens: Vec<usize>,
    /// Token ids that end a sequence (kept in the output as its last token).
    pub stop_tokens: Vec<u32>,
}

impl GenerateOptions {
    /// The same `max_new_tokens` for every sequence.
    pub fn uniform(max_new_tokens: usize, stop_tokens: Vec<u32>) -> Self {
        Self {
            max_new_tokens: vec![max_new_tokens],
            stop_tokens,
        }
    }

    /// The maximum for sequence `i` (broadcasting a single value).
    pub fn max_for(&self, i: usize) -> usize {
        match self.max_new_tokens.as_slice() {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        }
    }
}

/// A pretrained language model as the PLM owner runs it: the interface the memory builder
/// and PEMA decoding are written against (and that tests can fake).
pub trait Plm<B: Backend> {
    /// Hidden size d of the context representations.
    fn hidden_size(&self) -> usize;
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
    /// The device the model runs on.
    fn device(&self) -> B::Device;
    /// The most tokens (prompt + generated) one sequence may hold, when known (the model's
    /// trained context length). Callers refuse longer inputs; `None` skips those checks.
    fn context_length(&self) -> Option<usize> {
        None
    }
    /// Batched generation from token-id prompts. At every step the `policy` sees f(c) and the
    /// logits of every sequence still generating and picks their next tokens.
    /// Returns the generated ids of each sequence (a stop token, when hit, is the last one).
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        policy: &mut dyn StepPolicy<B>,
    ) -> crate::error::Result<Vec<Vec<u32>>>;
    /// Teacher forcing: for each `(prompt, continuation)` pair, the context representations
    /// f(prompt + y_<t) for t = 0..len(continuation), as `[len(continuation), d]`.
    fn teacher_forced_contexts(
        &self,
        prompts: &[Vec<u32>],
        continuations: &[Vec<u32>],
    ) -> crate::error::Result<Vec<Tensor<B, 2>>>;
}
