//! Deterministic test doubles: a toy PLM implementing the seam and a byte-level tokenizer.
//! Used by this crate's tests, the crash test, benches, and available to other crates' tests.

use std::time::Duration;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use pema_backbone::error::{BackboneError, Result as PlmResult};
use pema_backbone::{ContextRepr, GenerateOptions, Plm, StepOutput, StepPolicy};

use crate::batch::SplitMix64;
use crate::builder::PairTokenizer;
use crate::error::Result;

/// Byte-level tokenizer: byte b ↦ id b + 3, BOS = 1, EOS = 2 (vocabulary 259).
#[derive(Debug, Clone, Copy, Default)]
pub struct ToyTokenizer;

impl ToyTokenizer {
    /// BOS id.
    pub const BOS: u32 = 1;
    /// EOS id.
    pub const EOS: u32 = 2;
    /// Vocabulary size.
    pub const VOCAB: usize = 259;
    /// Id of `'\n'`.
    pub const NEWLINE: u32 = b'\n' as u32 + 3;
}

impl PairTokenizer for ToyTokenizer {
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut v = vec![Self::BOS];
        v.extend(text.bytes().map(|b| u32::from(b) + 3));
        Ok(v)
    }
    fn encode_target(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text.bytes().map(|b| u32::from(b) + 3).collect())
    }
    fn stop_ids(&self) -> Vec<u32> {
        vec![Self::EOS, Self::NEWLINE]
    }
    fn fingerprint(&self) -> String {
        "toy-bytes-v1".into()
    }
}

/// A deterministic toy PLM: f(c) is a pseudo-random function of the whole token history
/// (so results never depend on batch composition or padding), and its greedy next token is a
/// hash of the history, a newline with probability about `1/newline_every`.
#[derive(Debug, Clone)]
pub struct ToyPlm<B: Backend> {
    /// Hidden size d.
    pub d: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Device.
    pub device: B::Device,
    /// Sleep per decoding step (to make crash tests land mid-build).
    pub step_delay: Duration,
    /// A newline is emitted about once every this many steps (0: never).
    pub newline_every: u64,
    /// Context length reported through [`Plm::context_length`] (`None`: unbounded).
    pub context_length: Option<usize>,
}

impl<B: Backend> ToyPlm<B> {
    /// A toy PLM of width `d` over the [`ToyTokenizer`] vocabulary.
    pub fn new(d: usize, device: &B::Device) -> Self {
        Self {
            d,
            vocab: ToyTokenizer::VOCAB,
            device: device.clone(),
            step_delay: Duration::ZERO,
            newline_every: 25,
            context_length: None,
        }
    }

    fn hash(history: &[u32]) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for &t in history {
            h ^= u64::from(t);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        h
    }

    /// f(c) for a token history.
    pub fn context_of(&self, history: &[u32]) -> Vec<f32> {
        let mut r = SplitMix64(Self::hash(history));
        (0..self.d)
            .map(|_| (r.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            .collect()
    }

    /// The toy's greedy next token after `history`.
    pub fn next_of(&self, history: &[u32]) -> u32 {
        let mut r = SplitMix64(Self::hash(history) ^ 0x5555);
        let x = r.next_u64();
        if self.newline_every > 0 && x.is_multiple_of(self.newline_every) {
            ToyTokenizer::NEWLINE
        } else {
            // Printable bytes, never a stop token.
            (u64::from(b' ') + 3 + (x >> 16) % 90) as u32
        }
    }
}

impl<B: Backend> Plm<B> for ToyPlm<B> {
    fn hidden_size(&self) -> usize {
        self.d
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn device(&self) -> B::Device {
        self.device.clone()
    }
    fn context_length(&self) -> Option<usize> {
        self.context_length
    }
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        policy: &mut dyn StepPolicy<B>,
    ) -> PlmResult<Vec<Vec<u32>>> {
        let b = prompts.len();
        let mut hist = prompts.to_vec();
        let mut out = vec![Vec::new(); b];
        let mut done = vec![false; b];
        for step in 0.. {
            let active: Vec<bool> = (0..b)
                .map(|i| !done[i] && out[i].len() < options.max_for(i))
                .collect();
            if !active.iter().any(|&a| a) {
                break;
            }
            // Only the sequences still generating are rows (the seam's contract).
            let rows: Vec<usize> = (0..b).filter(|&i| active[i]).collect();
            let r = rows.len();
            let mut ctx = vec![0f32; r * self.d];
            let mut logits = vec![0f32; r * self.vocab];
            for (j, &i) in rows.iter().enumerate() {
                ctx[j * self.d..(j + 1) * self.d].copy_from_slice(&self.context_of(&hist[i]));
                logits[j * self.vocab + self.next_of(&hist[i]) as usize] = 1.0;
            }
            if !self.step_delay.is_zero() {
                std::thread::sleep(self.step_delay);
            }
            let so = StepOutput {
                seqs: rows.clone(),
                steps: vec![step; r],
                context: ContextRepr(Tensor::from_data(
                    TensorData::new(ctx, [r, self.d]),
                    &self.device,
                )),
                logits: Tensor::from_data(TensorData::new(logits, [r, self.vocab]), &self.device),
            };
            let toks = policy.next_tokens(&so);
            if toks.len() != r {
                return Err(BackboneError::Invalid(format!(
                    "policy returned {} tokens for {r} rows",
                    toks.len()
                )));
            }
            for (&i, &tok) in rows.iter().zip(&toks) {
                hist[i].push(tok);
                out[i].push(tok);
                if options.stop_tokens.contains(&tok) {
                    done[i] = true;
                }
            }
        }
        Ok(out)
    }
    fn teacher_forced_contexts(
        &self,
        prompts: &[Vec<u32>],
        continuations: &[Vec<u32>],
    ) -> PlmResult<Vec<Tensor<B, 2>>> {
        if prompts.len() != continuations.len() {
            return Err(BackboneError::Invalid(
                "prompts/continuations differ".into(),
            ));
        }
        Ok(prompts
            .iter()
            .zip(continuations)
            .map(|(p, c)| {
                let mut hist = p.clone();
                let mut rows = Vec::with_capacity(c.len() * self.d);
                for &y in c {
                    rows.extend(self.context_of(&hist));
                    hist.push(y);
                }
                Tensor::from_data(TensorData::new(rows, [c.len(), self.d]), &self.device)
            })
            .collect())
    }
}
