//! The decoder-only transformer shared by the Llama and Gemma 3 families.
//!
//! The module tree is named like the GGUF weight keys (`token_embd`, `blk.N.attn_q`, …,
//! `output_norm`, `output`), so the loader's remap table ([`crate::loader`]) stays one table.
//! The KV cache is passed explicitly into [`Transformer::forward`].

use burn::tensor::{Int, Tensor, TensorData, activation, backend::Backend};

use crate::cache::KvCache;
use crate::config::{Family, ModelConfig};
use crate::error::{BackboneError, Result};
use crate::head::LmHead;
use crate::nn::{Linear, RmsNorm, Rope, gelu_tanh};

/// Masked-out attention logit (finite, so a fully padded row never produces NaN).
const MASKED: f32 = -1.0e30;

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

/// Per-forward inputs shared by every layer: RoPE tables and attention masks.
struct StepContext<B: Backend> {
    rope_global: (Tensor<B, 4>, Tensor<B, 4>),
    rope_local: (Tensor<B, 4>, Tensor<B, 4>),
    mask_global: Tensor<B, 4>,
    mask_local: Tensor<B, 4>,
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

    /// Runs `tokens` (`[b][t]`, equal lengths, left-padded as `cache.pad` says) through the
    /// model, appending to `cache`. Returns the residual stream after the last block and
    /// **before** the final norm, `[b, t, d]`: the context representations f(c) of PEMA.
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
        let cfg = &self.config;
        let vocab = cfg.vocab_size as u32;
        if let Some(bad) = tokens.iter().flatten().find(|&&id| id >= vocab) {
            return Err(BackboneError::Invalid(format!(
                "token id {bad} out of range (vocab {vocab})"
            )));
        }
        let device = self.device();
        let d = cfg.hidden_size;
        let ids: Vec<i64> = tokens.iter().flatten().map(|&i| i as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [b * t]), &device);
        let mut x = self.token_embd.clone().select(0, ids);
        if cfg.embed_scale != 1.0 {
            x = x.mul_scalar(cfg.embed_scale as f32);
        }
        let mut x = x.reshape([b, t, d]);
        let ctx = self.step_context(t, cache, &device);
        for (il, block) in self.blk.iter().enumerate() {
            x = self.block_forward(il, block, x, cache, &ctx);
        }
        cache.len += t;
        Ok(x)
    }

    fn step_context(&self, t: usize, cache: &KvCache<B>, device: &B::Device) -> StepContext<B> {
        let cfg = &self.config;
        let start = cache.len;
        let positions: Vec<Vec<usize>> = cache
            .pad
            .iter()
            .map(|&p| (0..t).map(|j| (start + j).saturating_sub(p)).collect())
            .collect();
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
        let g = cfg.n_heads / cfg.n_kv_heads;
        StepContext {
            rope_global: global.tables(&positions, cfg.head_dim, device),
            rope_local: local.tables(&positions, cfg.head_dim, device),
            mask_global: attention_mask(&cache.pad, start, t, g, None, device),
            mask_local: attention_mask(&cache.pad, start, t, g, cfg.sliding_window, device),
            global,
            local,
        }
    }

    fn block_forward(
        &self,
        il: usize,
        block: &Block<B>,
        x: Tensor<B, 3>,
        cache: &mut KvCache<B>,
        ctx: &StepContext<B>,
    ) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let h = block.attn_norm.forward(x.clone());
        let mut h = self.attention(il, &block.attn, h.reshape([b * t, d]), b, t, cache, ctx);
        if let Some(n) = &block.post_attention_norm {
            h = n.forward(h);
        }
        let x = x + h.reshape([b, t, d]);
        let h = block.ffn_norm.forward(x.clone()).reshape([b * t, d]);
        let gate = block.mlp.ffn_gate.forward(h.clone());
        let gate = match self.config.family {
            Family::Llama => activation::silu(gate),
            Family::Gemma3 => gelu_tanh(gate),
        };
        let mut h = block
            .mlp
            .ffn_down
            .forward(gate * block.mlp.ffn_up.forward(h));
        if let Some(n) = &block.post_ffw_norm {
            h = n.forward(h);
        }
        x + h.reshape([b, t, d])
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        il: usize,
        a: &Attention<B>,
        h: Tensor<B, 2>,
        b: usize,
        t: usize,
        cache: &mut KvCache<B>,
        ctx: &StepContext<B>,
    ) -> Tensor<B, 2> {
        let cfg = &self.config;
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let mut q = a
            .attn_q
            .forward(h.clone())
            .reshape([b, t, nh, hd])
            .swap_dims(1, 2);
        let mut k = a
            .attn_k
            .forward(h.clone())
            .reshape([b, t, nkv, hd])
            .swap_dims(1, 2);
        let v = a.attn_v.forward(h).reshape([b, t, nkv, hd]).swap_dims(1, 2);
        if let Some(n) = &a.attn_q_norm {
            q = n.forward(q);
        }
        if let Some(n) = &a.attn_k_norm {
            k = n.forward(k);
        }
        let local = cfg.is_local_layer(il);
        let (rope, (cos, sin), mask) = if local {
            (&ctx.local, &ctx.rope_local, &ctx.mask_local)
        } else {
            (&ctx.global, &ctx.rope_global, &ctx.mask_global)
        };
        let q = rope.apply(q, cos, sin);
        let k = rope.apply(k, cos, sin);
        let (k, v) = cache.append(il, k, v);
        let g = nh / nkv;
        // Query heads sharing a KV head are stacked as rows: no copy of K or V per group.
        let q = q.reshape([b, nkv, g * t, hd]);
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(cfg.attn_scale as f32)
            + mask.clone();
        let probs = activation::softmax(scores, 3);
        let o = probs
            .matmul(v)
            .reshape([b, nh, t, hd])
            .swap_dims(1, 2)
            .reshape([b * t, nh * hd]);
        a.attn_output.forward(o)
    }

    /// Logits of the PLM for context representations `h: [n, d]` (final norm + head).
    pub fn logits(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        self.head.forward(h)
    }
}

/// Additive attention mask `[b, 1, g·t, start + t]` for queries at slots `start..start+t`.
///
/// A key is visible when it is not in the future, not left padding (a padding query sees
/// itself, so no row is fully masked), and, for local layers, within the sliding window.
fn attention_mask<B: Backend>(
    pad: &[usize],
    start: usize,
    t: usize,
    g: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 4> {
    let b = pad.len();
    let s = start + t;
    let mut m = Vec::with_capacity(b * g * t * s);
    for &p in pad {
        for _ in 0..g {
            for j in 0..t {
                let q = start + j;
                for k in 0..s {
                    let visible = k <= q && (k >= p || k == q) && window.is_none_or(|w| q - k < w);
                    m.push(if visible { 0.0 } else { MASKED });
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(m, [b, 1, g * t, s]), device)
}
