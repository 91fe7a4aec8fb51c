//! The decoder-only transformer shared by the Llama and Gemma 3 families.
//!
//! The module tree is named like the GGUF weight keys (`token_embd`, `blk.N.attn_q`, …,
//! `output_norm`, `output`), so the loader's remap table ([`crate::loader`]) stays one table.
//! The KV cache is passed explicitly into [`Transformer::forward`] (left-padded batches) or
//! [`Transformer::forward_ragged`] (ragged batches, one cache per sequence, any
//! [`Kernels`]).

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::cache::{KvCache, SeqKv};
use crate::config::ModelConfig;
use crate::error::{BackboneError, Result};
use crate::head::LmHead;
use crate::kernels::{AttnSpec, Kernels, Proj, Ragged, Reference};
use crate::nn::{Linear, RmsNorm, Rope};

/// Self-attention of one block (grouped-query, RoPE, optional q/k norms).
#[derive(Debug, Clone)]
pub struct Attention<B: Backend> {
    /// Query projection `blk.N.attn_q`.
    pub attn_q: Linear<B>,
    /// Key projection `blk.N.attn_k`.
    pub attn_k: Linear<B>,
    /// Value projection `blk.N.attn_v`.
    pub attn_v: Linear<B>,
    /// Output projection `blk.N.attn_output`.
    pub attn_output: Linear<B>,
    /// Per-head query norm `blk.N.attn_q_norm` (Gemma 3).
    pub attn_q_norm: Option<RmsNorm<B>>,
    /// Per-head key norm `blk.N.attn_k_norm` (Gemma 3).
    pub attn_k_norm: Option<RmsNorm<B>>,
}

/// Gated feed-forward network: `down(act(gate(x)) ⊙ up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp<B: Backend> {
    /// `blk.N.ffn_gate`.
    pub ffn_gate: Linear<B>,
    /// `blk.N.ffn_up`.
    pub ffn_up: Linear<B>,
    /// `blk.N.ffn_down`.
    pub ffn_down: Linear<B>,
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Block<B: Backend> {
    /// Pre-attention norm `blk.N.attn_norm`.
    pub attn_norm: RmsNorm<B>,
    /// Attention.
    pub attn: Attention<B>,
    /// Post-attention norm `blk.N.post_attention_norm` (Gemma 3).
    pub post_attention_norm: Option<RmsNorm<B>>,
    /// Pre-FFN norm `blk.N.ffn_norm`.
    pub ffn_norm: RmsNorm<B>,
    /// FFN.
    pub mlp: Mlp<B>,
    /// Post-FFN norm `blk.N.post_ffw_norm` (Gemma 3).
    pub post_ffw_norm: Option<RmsNorm<B>>,
}

/// A decoder-only transformer with its frozen LM head.
#[derive(Debug, Clone)]
pub struct Transformer<B: Backend> {
    /// Hyper-parameters.
    pub config: ModelConfig,
    /// Token embedding `token_embd`, `[vocab, d]`.
    pub token_embd: Tensor<B, 2>,
    /// Blocks `blk.0 …`.
    pub blk: Vec<Block<B>>,
    /// Final norm + output projection (`output_norm`, `output` or the tied embedding).
    pub head: LmHead<B>,
}

/// Per-forward inputs shared by every layer: RoPE tables of the new positions.
struct StepContext<B: Backend> {
    rope_global: (Tensor<B, 3>, Tensor<B, 3>),
    rope_local: Option<(Tensor<B, 3>, Tensor<B, 3>)>,
    global: Rope,
    local: Rope,
}

impl<B: Backend> Transformer<B> {
    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.token_embd.device()
    }

    /// A fresh cache for a batch with the given left padding.
    pub fn new_cache(&self, pad: Vec<usize>) -> KvCache<B> {
        KvCache::new(self.config.n_layers, pad)
    }

    /// A fresh cache for one sequence (ragged batches, [`Transformer::forward_ragged`]).
    pub fn new_seq_cache(&self) -> SeqKv<B> {
        SeqKv::new(self.config.n_layers)
    }

    /// Runs `tokens` (`[b][t]`, equal lengths, left-padded as `cache.pad` says) through the
    /// model with the reference kernels, appending to `cache`. Returns the residual stream after
    /// the last block and **before** the final norm, `[b, t, d]`: the context representations
    /// f(c) of PEMA. Padding slots are neither computed nor cached; their rows are zero.
    pub fn forward(&self, tokens: &[Vec<u32>], cache: &mut KvCache<B>) -> Result<Tensor<B, 3>> {
        let b = tokens.len();
        let t = tokens.first().map_or(0, Vec::len);
        if b == 0 || t == 0 || tokens.iter().any(|s| s.len() != t) {
            return Err(BackboneError::Invalid(
                "forward needs a non-empty batch of equal-length sequences".into(),
            ));
        }
        if cache.batch_size() != b {
            return Err(BackboneError::Invalid(format!(
                "cache holds {} sequences, batch has {b}",
                cache.batch_size()
            )));
        }
        self.check_ids(tokens.iter().flatten())?;
        let start = cache.len;
        // Real (non-padding) tokens of each row: slots ≥ pad.
        let skip: Vec<usize> = cache
            .pad
            .iter()
            .map(|&p| p.saturating_sub(start).min(t))
            .collect();
        let rows: Vec<usize> = (0..b).filter(|&i| skip[i] < t).collect();
        let feed: Vec<&[u32]> = rows.iter().map(|&i| &tokens[i][skip[i]..]).collect();
        let d = self.config.hidden_size;
        let device = self.device();
        let h = if rows.is_empty() {
            None
        } else {
            let mut seqs: Vec<&mut SeqKv<B>> = cache
                .seqs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| skip[*i] < t)
                .map(|(_, s)| s)
                .collect();
            Some(self.forward_ragged(&Reference, &feed, &mut seqs)?)
        };
        cache.len += t;
        let mut out = Vec::with_capacity(b);
        let mut off = 0;
        for &s in &skip {
            let real = t - s;
            let mut parts = Vec::new();
            if s > 0 {
                parts.push(Tensor::<B, 2>::zeros([s, d], &device));
            }
            if let (Some(h), true) = (&h, real > 0) {
                parts.push(h.clone().narrow(0, off, real));
                off += real;
            }
            out.push(Tensor::cat(parts, 0));
        }
        Ok(Tensor::stack(out, 0))
    }

    fn check_ids<'a>(&self, ids: impl IntoIterator<Item = &'a u32>) -> Result<()> {
        let vocab = self.config.vocab_size as u32;
        match ids.into_iter().find(|&&id| id >= vocab) {
            Some(bad) => Err(BackboneError::Invalid(format!(
                "token id {bad} out of range (vocab {vocab})"
            ))),
            None => Ok(()),
        }
    }

    /// Runs a ragged batch: sequence `i` feeds `tokens[i]` after the `seqs[i].len` positions
    /// it has cached (sequences of any lengths, no padding), through `kernels`. Returns the
    /// pre-final-norm hidden states of every new position, `[Σ len(tokens[i]), d]`, sequence
    /// after sequence, and advances every cache.
    pub fn forward_ragged(
        &self,
        kernels: &dyn Kernels<B>,
        tokens: &[&[u32]],
        seqs: &mut [&mut SeqKv<B>],
    ) -> Result<Tensor<B, 2>> {
        let cfg = &self.config;
        if tokens.is_empty() || tokens.iter().any(|t| t.is_empty()) || seqs.len() != tokens.len() {
            return Err(BackboneError::Invalid(format!(
                "a ragged forward needs one cache per sequence and no empty sequence ({} sequences, {} caches)",
                tokens.len(),
                seqs.len()
            )));
        }
        if seqs.iter().any(|s| s.layers.len() != cfg.n_layers) {
            return Err(BackboneError::Invalid(format!(
                "cache built for another model (the model has {} layers)",
                cfg.n_layers
            )));
        }
        self.check_ids(tokens.iter().flat_map(|t| t.iter()))?;
        let device = self.device();
        let d = cfg.hidden_size;
        let n: usize = tokens.iter().map(|t| t.len()).sum();
        let ids: Vec<i64> = tokens
            .iter()
            .flat_map(|t| t.iter())
            .map(|&i| i as i64)
            .collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &device);
        let mut x = self.token_embd.clone().select(0, ids);
        if cfg.embed_scale != 1.0 {
            x = x.mul_scalar(cfg.embed_scale as f32);
        }
        let positions: Vec<usize> = seqs
            .iter()
            .zip(tokens)
            .flat_map(|(s, t)| s.len..s.len + t.len())
            .collect();
        let new: Vec<usize> = tokens.iter().map(|t| t.len()).collect();
        let ctx = self.step_context(&positions, &device);
        let mut slot = Some(x);
        kernels.run_forward(&mut || {
            if let Some(mut h) = slot.take() {
                for (il, block) in self.blk.iter().enumerate() {
                    h = self.block_forward(il, block, h, kernels, seqs, &new, &ctx);
                }
                slot = Some(h);
            }
        });
        let x = slot.ok_or_else(|| {
            BackboneError::Invalid(format!(
                "the {} kernels did not run the forward pass",
                kernels.name()
            ))
        })?;
        for (s, t) in seqs.iter_mut().zip(tokens) {
            s.len += t.len();
        }
        debug_assert_eq!(x.dims(), [n, d]);
        Ok(x)
    }

    fn step_context(&self, positions: &[usize], device: &B::Device) -> StepContext<B> {
        let cfg = &self.config;
        let global = Rope {
            theta: cfg.rope_theta,
            scale: cfg.rope_scale,
            layout: cfg.rope_layout,
        };
        let local = Rope {
            theta: cfg.rope_theta_local,
            scale: 1.0,
            layout: cfg.rope_layout,
        };
        let has_local = (0..cfg.n_layers).any(|il| cfg.is_local_layer(il));
        StepContext {
            rope_global: global.tables_flat(positions, cfg.head_dim, device),
            rope_local: has_local.then(|| local.tables_flat(positions, cfg.head_dim, device)),
            global,
            local,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn block_forward(
        &self,
        il: usize,
        block: &Block<B>,
        x: Tensor<B, 2>,
        kernels: &dyn Kernels<B>,
        seqs: &mut [&mut SeqKv<B>],
        new: &[usize],
        ctx: &StepContext<B>,
    ) -> Tensor<B, 2> {
        let h = block.attn_norm.forward(x.clone());
        let mut h = self.attention(il, &block.attn, h, kernels, seqs, new, ctx);
        if let Some(n) = &block.post_attention_norm {
            h = n.forward(h);
        }
        let x = x + h;
        let h = block.ffn_norm.forward(x.clone());
        let mlp = &block.mlp;
        let gate = kernels.linear(il, Proj::Gate, &mlp.ffn_gate, h.clone());
        let up = kernels.linear(il, Proj::Up, &mlp.ffn_up, h);
        let act = kernels.gated(self.config.family, gate, up);
        let mut h = kernels.linear(il, Proj::Down, &mlp.ffn_down, act);
        if let Some(n) = &block.post_ffw_norm {
            h = n.forward(h);
        }
        x + h
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        il: usize,
        a: &Attention<B>,
        h: Tensor<B, 2>,
        kernels: &dyn Kernels<B>,
        seqs: &mut [&mut SeqKv<B>],
        new: &[usize],
        ctx: &StepContext<B>,
    ) -> Tensor<B, 2> {
        let cfg = &self.config;
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let n = h.dims()[0];
        let mut q = kernels
            .linear(il, Proj::Q, &a.attn_q, h.clone())
            .reshape([n, nh, hd]);
        let mut k = kernels
            .linear(il, Proj::K, &a.attn_k, h.clone())
            .reshape([n, nkv, hd]);
        let v = kernels
            .linear(il, Proj::V, &a.attn_v, h)
            .reshape([n, nkv, hd]);
        if let Some(nq) = &a.attn_q_norm {
            q = nq.forward(q);
        }
        if let Some(nk) = &a.attn_k_norm {
            k = nk.forward(k);
        }
        let local = cfg.is_local_layer(il);
        let (rope, (cos, sin)) = match (&ctx.rope_local, local) {
            (Some(tables), true) => (&ctx.local, tables),
            _ => (&ctx.global, &ctx.rope_global),
        };
        let q = kernels.rope(rope, q, cos, sin);
        let k = kernels.rope(rope, k, cos, sin);
        let spec = AttnSpec {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            scale: cfg.attn_scale,
            window: if local { cfg.sliding_window } else { None },
        };
        let o = kernels.attention(il, q, k, v, Ragged { seqs, new }, &spec);
        kernels.linear(il, Proj::O, &a.attn_output, o)
    }

    /// Logits of the PLM for context representations `h: [n, d]` (final norm + head).
    pub fn logits(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        self.head.forward(h)
    }
}
