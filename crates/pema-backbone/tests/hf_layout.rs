//! The HF layout (`config.json` + `*.safetensors` + `tokenizer.json`) loads through the remap
//! table into the same model as the canonical (GGUF-named) weights, for both families.

use std::collections::HashMap;

use burn::backend::NdArray;
use burn::tensor::Tensor;
use pema_backbone::loader::HF_REMAP;
use pema_backbone::testing::{random_weights, tiny_config};
use pema_backbone::{Family, RopeLayout, build_transformer, load_model_dir};

type B = NdArray<f64>;

fn hf_name(canonical: &str, family: Family) -> String {
    let stem = canonical.trim_end_matches(".weight");
    let mapped = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.").expect("block tensor");
            let (n, key) = rest.split_once('.').expect("n.key");
            let (_, hf, _) = HF_REMAP
                .iter()
                .find(|(c, _, f)| *c == key && f.is_none_or(|f| f == family))
                .expect("remap entry");
            format!("model.layers.{n}.{hf}")
        }
    };
    format!("{mapped}.weight")
}

fn tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..61)
        .map(|i| (format!("w{i}"), serde_json::json!(i)))
        .collect();
    serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    })
    .to_string()
}

#[test]
fn hf_layout_loads_the_same_model_as_canonical_weights() {
    let dev = Default::default();
    for family in [Family::Llama, Family::Gemma3] {
        let mut cfg = tiny_config(family);
        cfg.rope_layout = RopeLayout::Half; // HF checkpoints are not permuted for llama.cpp
        let weights = random_weights(&cfg, 21);
        let dir = tempfile::tempdir().expect("tempdir");
        let gemma = family == Family::Gemma3;
        // HF Gemma stores norm weights as w with the model computing x·(1+w).
        let hf: HashMap<String, (Vec<f32>, Vec<usize>)> = weights
            .iter()
            .map(|(k, (v, s))| {
                let v = if gemma && k.ends_with("norm.weight") {
                    v.iter().map(|x| x - 1.0).collect()
                } else {
                    v.clone()
                };
                (hf_name(k, family), (v, s.clone()))
            })
            .collect();
        let tensors: Vec<(&str, &[f32], &[usize])> = hf
            .iter()
            .map(|(k, (v, s))| (k.as_str(), v.as_slice(), s.as_slice()))
            .collect();
        pema_backbone::st::write_f32(
            &dir.path().join("model.safetensors"),
            &tensors,
            HashMap::new(),
        )
        .expect("write safetensors");
        let config = if gemma {
            serde_json::json!({
                "model_type": "gemma3_text", "vocab_size": 61, "hidden_size": 32,
                "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 8, "intermediate_size": 48, "rms_norm_eps": 1e-6,
                "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
                "sliding_window": 4, "sliding_window_pattern": 3, "query_pre_attn_scalar": 8,
                "bos_token_id": 1, "eos_token_id": [2]
            })
        } else {
            serde_json::json!({
                "model_type": "llama", "vocab_size": 61, "hidden_size": 32,
                "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 48, "rms_norm_eps": 1e-6, "rope_theta": 10_000.0,
                "bos_token_id": 1, "eos_token_id": 2
            })
        };
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
        std::fs::write(dir.path().join("tokenizer.json"), tokenizer_json()).expect("tokenizer");

        let loaded = load_model_dir::<B>(dir.path(), &dev).expect("load HF layout");
        let expected = build_transformer::<B>(cfg, &weights, &dev).expect("canonical");
        assert_eq!(loaded.model.config.rope_layout, RopeLayout::Half);
        let seq = vec![vec![1u32, 7, 13, 19, 25, 31, 37]];
        let run = |m: &pema_backbone::Transformer<B>| -> Tensor<B, 2> {
            let mut cache = m.new_cache(vec![0]);
            let h = m.forward(&seq, &mut cache).expect("forward");
            m.logits(h.reshape([7, 32]))
        };
        let diff = (run(&loaded.model) - run(&expected))
            .abs()
            .max()
            .into_scalar();
        assert!(diff < 1e-5, "{family:?}: max |Δlogit| = {diff}");
        assert_eq!(
            loaded.tokenizer.encode_prompt("w5 w6").expect("enc").len(),
            if gemma { 3 } else { 2 }
        );
    }
}

#[test]
fn unknown_layout_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load_model_dir::<B>(dir.path(), &Default::default())
        .err()
        .expect("must fail");
    assert!(
        matches!(err, pema_backbone::BackboneError::UnknownLayout(_)),
        "{err}"
    );
}
