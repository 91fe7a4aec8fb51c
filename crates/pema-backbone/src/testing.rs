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

/// The word list of [`write_tiny_model_dir`]'s tokenizer: `<unk>`, `<bos>`, `<eos>`, then the
/// letters `a`–`z` (ids 3–28), then `w29`…`w60`, one word per id up to the tiny vocabulary.
pub fn tiny_vocabulary(vocab_size: usize) -> Vec<String> {
    let mut words: Vec<String> = ["<unk>", "<bos>", "<eos>"].map(String::from).to_vec();
    words.extend((b'a'..=b'z').map(|c| (c as char).to_string()));
    while words.len() < vocab_size {
        words.push(format!("w{}", words.len()));
    }
    words.truncate(vocab_size);
    words
}

/// A word-level `tokenizer.json` over `words` (id = position), whitespace pre-tokenised.
pub fn word_level_tokenizer_json(words: &[String]) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), i.into()))
        .collect();
    serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// Writes a tiny random Llama-family model directory (`model.gguf` with F32 tensors and
/// `tokenizer.json`, word level over [`tiny_vocabulary`]) that `load_model_dir` and the `pema`
/// binary load like a real one: for end-to-end tests of the command line.
pub fn write_tiny_model_dir(dir: &std::path::Path, seed: u64) -> Result<()> {
    let c = tiny_config(Family::Llama);
    let weights = random_weights(&c, seed);
    write_model_dir(dir, &c, weights)
}

/// Writes a Llama-family model directory for `c` with the given canonical weights (F32) and a
/// word-level tokenizer over [`tiny_vocabulary`]: for tests that need a model of another
/// shape, or a damaged one.
pub fn write_model_dir(
    dir: &std::path::Path,
    c: &ModelConfig,
    weights: HashMap<String, (Vec<f32>, Vec<usize>)>,
) -> Result<()> {
    use crate::gguf::{GgmlType, GgufWriter, MetaValue};
    let words = tiny_vocabulary(c.vocab_size);
    let mut w = GgufWriter::new();
    let u = |v: usize| MetaValue::U32(v as u32);
    w.add_metadata("general.architecture", MetaValue::String("llama".into()));
    w.add_metadata("general.name", MetaValue::String(c.name.clone()));
    w.add_metadata("llama.block_count", u(c.n_layers));
    w.add_metadata("llama.embedding_length", u(c.hidden_size));
    w.add_metadata("llama.feed_forward_length", u(c.ffn_size));
    w.add_metadata("llama.attention.head_count", u(c.n_heads));
    w.add_metadata("llama.attention.head_count_kv", u(c.n_kv_heads));
    w.add_metadata("llama.attention.key_length", u(c.head_dim));
    w.add_metadata("llama.context_length", u(c.context_length));
    w.add_metadata("llama.rope.freq_base", MetaValue::F32(c.rope_theta as f32));
    w.add_metadata(
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(c.rms_eps as f32),
    );
    w.add_metadata(
        "tokenizer.ggml.tokens",
        MetaValue::Array(words.iter().cloned().map(MetaValue::String).collect()),
    );
    w.add_metadata("tokenizer.ggml.bos_token_id", MetaValue::U32(1));
    w.add_metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(2));
    w.add_metadata("tokenizer.ggml.add_bos_token", MetaValue::Bool(true));
    let mut tensors: Vec<_> = weights.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let gguf = |e: crate::gguf::GgufError| crate::error::BackboneError::Gguf {
        path: dir.join("model.gguf"),
        source: e,
    };
    for (name, (values, shape)) in &tensors {
        w.add_tensor(name.as_str(), shape, values, GgmlType::F32)
            .map_err(gguf)?;
    }
    std::fs::create_dir_all(dir).map_err(pema_common::FileError::at(dir))?;
    w.write(&dir.join("model.gguf")).map_err(gguf)?;
    let tok = dir.join("tokenizer.json");
    std::fs::write(&tok, word_level_tokenizer_json(&words))
        .map_err(pema_common::FileError::at(&tok))?;
    Ok(())
}
