//! Tiny random models for tests, examples and benches (no downloads needed).

use std::collections::HashMap;

use burn::tensor::backend::Backend;

use crate::config::{Family, ModelConfig, RopeLayout};
use crate::error::Result;
use crate::loader::build_transformer;
use crate::model::Transformer;

/// A tiny configuration of the given family (Gemma 3: window 4, every 3rd layer global).
pub fn tiny_config(family: Family) -> ModelConfig {
    let gemma = family == Family::Gemma3;
    ModelConfig {
        family,
        name: format!("tiny-{family:?}").to_lowercase(),
        vocab_size: 61,
        hidden_size: 32,
        n_layers: 3,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        ffn_size: 48,
        rms_eps: 1e-6,
        rope_theta: if gemma { 1_000_000.0 } else { 10_000.0 },
        rope_theta_local: 10_000.0,
        rope_scale: 1.0,
        rope_layout: if gemma {
            RopeLayout::Half
        } else {
            RopeLayout::Interleaved
        },
        sliding_window: gemma.then_some(4),
        sliding_window_pattern: if gemma { 3 } else { 0 },
        attn_scale: 1.0 / 8f64.sqrt(),
        embed_scale: if gemma { 32f64.sqrt() } else { 1.0 },
        context_length: 256,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        add_bos: gemma,
    }
}

/// Deterministic pseudo-random numbers (SplitMix64 → uniform in [-1, 1)).
pub fn pseudo_random(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = pema_common::SplitMix64(seed);
    (0..n)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect()
}

/// Random weights under canonical (GGUF) names for `config`; norms near 1, matrices scaled
/// like a trained model's so activations stay well-conditioned.
pub fn random_weights(config: &ModelConfig, seed: u64) -> HashMap<String, (Vec<f32>, Vec<usize>)> {
    let c = config;
    let (d, hd) = (c.hidden_size, c.head_dim);
    let (q, kv) = (c.n_heads * hd, c.n_kv_heads * hd);
    let mut w = HashMap::new();
    let mut k = seed;
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        k += 1;
        let n = shape.iter().product();
        let v = pseudo_random(k, n)
            .into_iter()
            .map(|x| offset + scale * x)
            .collect();
        w.insert(name, (v, shape));
    };
    let s = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
    add("token_embd.weight".into(), vec![c.vocab_size, d], 1.0, 0.0);
    add("output_norm.weight".into(), vec![d], 0.1, 1.0);
    for i in 0..c.n_layers {
        let n = |x: &str| format!("blk.{i}.{x}.weight");
        add(n("attn_norm"), vec![d], 0.1, 1.0);
        add(n("attn_q"), vec![q, d], s(d), 0.0);
        add(n("attn_k"), vec![kv, d], s(d), 0.0);
        add(n("attn_v"), vec![kv, d], s(d), 0.0);
        add(n("attn_output"), vec![d, q], s(q), 0.0);
        add(n("ffn_norm"), vec![d], 0.1, 1.0);
        add(n("ffn_gate"), vec![c.ffn_size, d], s(d), 0.0);
        add(n("ffn_up"), vec![c.ffn_size, d], s(d), 0.0);
        add(n("ffn_down"), vec![d, c.ffn_size], s(c.ffn_size), 0.0);
        if c.family == Family::Gemma3 {
            add(n("attn_q_norm"), vec![hd], 0.1, 1.0);
            add(n("attn_k_norm"), vec![hd], 0.1, 1.0);
            add(n("post_attention_norm"), vec![d], 0.1, 1.0);
            add(n("post_ffw_norm"), vec![d], 0.1, 1.0);
        }
    }
    w
}

/// A tiny random transformer of the given family on `device`.
pub fn tiny_model<B: Backend>(
    family: Family,
    seed: u64,
    device: &B::Device,
) -> Result<Transformer<B>> {
    let cfg = tiny_config(family);
    let w = random_weights(&cfg, seed);
    build_transformer(cfg, &w, device)
}
