//! Model hyper-parameters, read from GGUF metadata or an HF `config.json`.

use serde::{Deserialize, Serialize};

use crate::error::{BackboneError, Result};
use crate::gguf::GgufFile;

/// Most layers a model may declare (real models have at most a few hundred).
pub const MAX_LAYERS: usize = 4096;

/// The model families pema implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama / SmolLM2 / LLaMA-7B: pre-norm blocks, SwiGLU, RoPE.
    Llama,
    /// Gemma 3: pre- and post- norms, q/k norms, GELU-tanh gated FFN, scaled embeddings,
    /// local sliding-window layers interleaved with global ones.
    Gemma3,
}

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1): llama.cpp's layout for converted Llama GGUFs (Q/K permuted).
    Interleaved,
    /// Pairs (i, i + d/2), "rotate-half" (NeoX / HF layout; Gemma, HF Llama).
    Half,
}

/// Hyper-parameters of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Family.
    pub family: Family,
    /// Display name (from `general.name` or the directory).
    pub name: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size d.
    pub hidden_size: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub n_kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// FFN inner size.
    pub ffn_size: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// RoPE base of global layers.
    pub rope_theta: f64,
    /// RoPE base of local (sliding-window) layers, Gemma 3 only.
    pub rope_theta_local: f64,
    /// Linear RoPE scaling factor of global layers (1 = none).
    pub rope_scale: f64,
    /// Pairing of dimensions in RoPE.
    pub rope_layout: RopeLayout,
    /// Sliding window of local layers (Gemma 3), `None` = all layers global.
    pub sliding_window: Option<usize>,
    /// Every `sliding_window_pattern`-th layer is global (Gemma 3: 6 → layers 5, 11, 17).
    pub sliding_window_pattern: usize,
    /// Attention logit scale (1/√head_dim unless the model says otherwise).
    pub attn_scale: f64,
    /// Embedding multiplier (Gemma: √d), 1 otherwise.
    pub embed_scale: f64,
    /// Maximum context length.
    pub context_length: usize,
    /// BOS token id.
    pub bos_token_id: Option<u32>,
    /// EOS token ids.
    pub eos_token_ids: Vec<u32>,
    /// Whether prompts start with BOS.
    pub add_bos: bool,
}

impl ModelConfig {
    /// Whether layer `il` attends only within the sliding window.
    pub fn is_local_layer(&self, il: usize) -> bool {
        self.sliding_window.is_some()
            && self.sliding_window_pattern > 0
            && !(il + 1).is_multiple_of(self.sliding_window_pattern)
    }

    /// Number of weights of the model (embedding counted once when tied); saturates at
    /// `usize::MAX` for sizes no file can hold ([`ModelConfig::validate`] rejects those).
    pub fn n_params(&self) -> usize {
        self.checked_params().unwrap_or(usize::MAX)
    }

    /// [`ModelConfig::n_params`], `None` when it overflows.
    fn checked_params(&self) -> Option<usize> {
        let d = self.hidden_size;
        let q = self.n_heads.checked_mul(self.head_dim)?;
        let kv = self.n_kv_heads.checked_mul(self.head_dim)?;
        let per_block = [
            d.checked_mul(q)?,
            d.checked_mul(kv)?.checked_mul(2)?,
            q.checked_mul(d)?,
            d.checked_mul(self.ffn_size)?.checked_mul(3)?,
        ]
        .into_iter()
        .try_fold(0usize, usize::checked_add)?;
        self.vocab_size
            .checked_mul(d)?
            .checked_add(self.n_layers.checked_mul(per_block)?)
    }

    /// Checks the invariants the model code relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(BackboneError::Config(m));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.n_layers == 0 {
            return bad(format!("empty model: {self:?}"));
        }
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return bad(format!(
                "head counts {} / {} are not a valid grouped-query layout",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even", self.head_dim));
        }
        if !(self.rms_eps > 0.0 && self.rope_theta > 0.0 && self.rope_theta_local > 0.0) {
            return bad("eps and RoPE bases must be positive".into());
        }
        // Sizes come from a model file: refuse what no real model has before anything is
        // allocated or multiplied per layer.
        if self.n_layers > MAX_LAYERS {
            return bad(format!("{} layers (more than {MAX_LAYERS})", self.n_layers));
        }
        if self
            .checked_params()
            .is_none_or(|n| n > isize::MAX as usize / 4)
        {
            return bad(format!(
                "sizes overflow: d {}, {} × {} heads ({} kv), ffn {}, vocab {}, {} layers",
                self.hidden_size,
                self.n_heads,
                self.head_dim,
                self.n_kv_heads,
                self.ffn_size,
                self.vocab_size,
                self.n_layers
            ));
        }
        Ok(())
    }

    /// Reads the configuration from GGUF metadata (`llama` and `gemma3` architectures).
    pub fn from_gguf(file: &GgufFile, fallback_name: &str) -> Result<Self> {
        let g = |e: crate::gguf::GgufError| BackboneError::Config(e.to_string());
        let arch = file.architecture().map_err(g)?.to_string();
        let family = match arch.as_str() {
            "llama" => Family::Llama,
            "gemma3" => Family::Gemma3,
            other => {
                return Err(BackboneError::Config(format!(
                    "unsupported architecture `{other}` (pema implements llama and gemma3)"
                )));
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| -> Result<usize> {
            let v = file.get_u64(&key(k)).map_err(g)?;
            usize::try_from(v).map_err(|_| BackboneError::Config(format!("{k} = {v} too large")))
        };
        let u_opt = |k: &str| {
            file.get(&key(k))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
        };
        let f_opt = |k: &str| file.get(&key(k)).and_then(|v| v.as_f64());
        let hidden_size = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let n_kv_heads = u_opt("attention.head_count_kv").unwrap_or(n_heads);
        let head_dim = u_opt("attention.key_length").unwrap_or(hidden_size / n_heads.max(1));
        let vocab_size = match file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(tokens) => tokens.len(),
            None => u_opt("vocab_size").ok_or_else(|| {
                BackboneError::Config("neither tokenizer.ggml.tokens nor vocab_size".into())
            })?,
        };
        let name = file
            .get("general.name")
            .and_then(|v| v.as_str())
            .unwrap_or(fallback_name)
            .to_string();
        let tok_u32 = |k: &str| file.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let bos_token_id = tok_u32("tokenizer.ggml.bos_token_id");
        let mut eos_token_ids: Vec<u32> =
            tok_u32("tokenizer.ggml.eos_token_id").into_iter().collect();
        eos_token_ids.extend(tok_u32("tokenizer.ggml.eot_token_id"));
        eos_token_ids.dedup();
        let add_bos = file
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(family == Family::Gemma3);
        let (sliding_window, pattern, embed_scale, theta_local) = match family {
            Family::Llama => (None, 0, 1.0, 10_000.0),
            Family::Gemma3 => (
                Some(u_opt("attention.sliding_window").unwrap_or(512)),
                6,
                (hidden_size as f64).sqrt(),
                10_000.0,
            ),
        };
        let rope_scale = match file.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            Some("linear") => f_opt("rope.scaling.factor").unwrap_or(1.0),
            _ => 1.0,
        };
        let cfg = Self {
            family,
            name,
            vocab_size,
            hidden_size,
            n_layers: u("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_size: u("feed_forward_length")?,
            rms_eps: f_opt("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_theta: f_opt("rope.freq_base").unwrap_or(10_000.0),
            rope_theta_local: theta_local,
            rope_scale,
            rope_layout: match family {
                Family::Llama => RopeLayout::Interleaved,
                Family::Gemma3 => RopeLayout::Half,
            },
            sliding_window,
            sliding_window_pattern: pattern,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            embed_scale,
            context_length: u_opt("context_length").unwrap_or(4096),
            bos_token_id,
            eos_token_ids,
            add_bos,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads an HF `config.json` (`LlamaForCausalLM`, `Gemma3ForCausalLM`).
    pub fn from_hf_json(json: &serde_json::Value, fallback_name: &str) -> Result<Self> {
        // Gemma 3 checkpoints may nest the text model's config.
        let c = json.get("text_config").unwrap_or(json);
        let model_type = c
            .get("model_type")
            .or_else(|| json.get("model_type"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let family = match model_type {
            "llama" => Family::Llama,
            "gemma3" | "gemma3_text" => Family::Gemma3,
            other => {
                return Err(BackboneError::Config(format!(
                    "unsupported model_type `{other}` (pema implements llama and gemma3_text)"
                )));
            }
        };
        let u = |k: &str| -> Result<usize> {
            c.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| BackboneError::Config(format!("config.json: `{k}` missing")))
        };
        let u_opt = |k: &str| c.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let f_opt = |k: &str| c.get(k).and_then(|v| v.as_f64());
        let ids = |k: &str| -> Vec<u32> {
            match c.get(k).or_else(|| json.get(k)) {
                Some(serde_json::Value::Number(n)) => {
                    n.as_u64().map(|v| v as u32).into_iter().collect()
                }
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as u32)
                    .collect(),
                _ => vec![],
            }
        };
        let hidden_size = u("hidden_size")?;
        let n_heads = u("num_attention_heads")?;
        let head_dim = u_opt("head_dim").unwrap_or(hidden_size / n_heads.max(1));
        let gemma = family == Family::Gemma3;
        let rope_scale = c
            .get("rope_scaling")
            .and_then(|r| r.get("factor"))
            .and_then(|f| f.as_f64())
            .unwrap_or(1.0);
        let cfg = Self {
            family,
            name: fallback_name.to_string(),
            vocab_size: u("vocab_size")?,
            hidden_size,
            n_layers: u("num_hidden_layers")?,
            n_heads,
            n_kv_heads: u_opt("num_key_value_heads").unwrap_or(n_heads),
            head_dim,
            ffn_size: u("intermediate_size")?,
            rms_eps: f_opt("rms_norm_eps").unwrap_or(1e-6),
            rope_theta: f_opt("rope_theta").unwrap_or(10_000.0),
            rope_theta_local: f_opt("rope_local_base_freq").unwrap_or(10_000.0),
            rope_scale,
            rope_layout: RopeLayout::Half,
            sliding_window: if gemma {
                Some(u_opt("sliding_window").unwrap_or(512))
            } else {
                None
            },
            sliding_window_pattern: if gemma {
                u_opt("sliding_window_pattern").unwrap_or(6)
            } else {
                0
            },
            attn_scale: 1.0
                / f_opt("query_pre_attn_scalar")
                    .filter(|_| gemma)
                    .unwrap_or(head_dim as f64)
                    .sqrt(),
            embed_scale: if gemma {
                (hidden_size as f64).sqrt()
            } else {
                1.0
            },
            context_length: u_opt("max_position_embeddings").unwrap_or(4096),
            bos_token_id: ids("bos_token_id").first().copied(),
            eos_token_ids: ids("eos_token_id"),
            add_bos: gemma,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
