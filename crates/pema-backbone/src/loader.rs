//! Loading weights into a [`Transformer`]: from GGUF (dequantised to f32) or from the HF
//! safetensors layout, through one documented remap table.
//!
//! Canonical names are the GGUF keys. The HF layout is mapped onto them by [`HF_REMAP`]:
//!
//! | canonical (GGUF)             | HF (`model.` prefix)                                |
//! |------------------------------|-----------------------------------------------------|
//! | `token_embd`                 | `embed_tokens`                                      |
//! | `output_norm`                | `norm`                                              |
//! | `output`                     | `lm_head` (no prefix; absent when tied)             |
//! | `blk.N.attn_norm`            | `layers.N.input_layernorm`                          |
//! | `blk.N.attn_{q,k,v,output}`  | `layers.N.self_attn.{q,k,v,o}_proj`                 |
//! | `blk.N.attn_{q,k}_norm`      | `layers.N.self_attn.{q,k}_norm`                     |
//! | `blk.N.ffn_{gate,up,down}`   | `layers.N.mlp.{gate,up,down}_proj`                  |
//! | `blk.N.ffn_norm`             | Llama: `post_attention_layernorm`; Gemma 3: `pre_feedforward_layernorm` |
//! | `blk.N.post_attention_norm`  | Gemma 3: `post_attention_layernorm`                 |
//! | `blk.N.post_ffw_norm`        | Gemma 3: `post_feedforward_layernorm`               |
//!
//! Conventions fixed at load time: Gemma's HF norm weights are stored as `w` with the model
//! computing `x·(1+w)`; GGUF already stores `1+w`, so `+1` is added to HF Gemma norms only.
//! llama.cpp permutes Llama's Q/K rows for its interleaved RoPE; HF does not: the config's
//! [`RopeLayout`](crate::config::RopeLayout) records which one the weights need.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::config::{Family, ModelConfig};
use crate::error::{BackboneError, Result};
use crate::gguf::GgufFile;
use crate::head::LmHead;
use crate::model::{Attention, Block, Mlp, Transformer};
use crate::nn::{Linear, RmsNorm};
use crate::st::StFile;
use crate::tokenizer::PemaTokenizer;

/// A source of named f32 weights (row-major) under canonical (GGUF) names.
pub trait WeightSource {
    /// The tensor `name` as (values, row-major shape), or `None` when absent.
    fn tensor(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>>;
}

impl WeightSource for GgufFile {
    fn tensor(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let Some(info) = GgufFile::tensor(self, name) else {
            return Ok(None);
        };
        let shape = info.shape();
        let values = self.dequantize(name).map_err(|e| BackboneError::Weight {
            name: name.to_string(),
            message: e.to_string(),
        })?;
        Ok(Some((values, shape)))
    }
}

/// In-memory weights: for tests and tiny models built in code.
impl WeightSource for HashMap<String, (Vec<f32>, Vec<usize>)> {
    fn tensor(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        Ok(self.get(name).cloned())
    }
}

/// The HF remap table: (canonical suffix, HF suffix) per family; see the module docs.
pub const HF_REMAP: &[(&str, &str, Option<Family>)] = &[
    ("attn_norm", "input_layernorm", None),
    ("attn_q", "self_attn.q_proj", None),
    ("attn_k", "self_attn.k_proj", None),
    ("attn_v", "self_attn.v_proj", None),
    ("attn_output", "self_attn.o_proj", None),
    ("attn_q_norm", "self_attn.q_norm", None),
    ("attn_k_norm", "self_attn.k_norm", None),
    ("ffn_gate", "mlp.gate_proj", None),
    ("ffn_up", "mlp.up_proj", None),
    ("ffn_down", "mlp.down_proj", None),
    ("ffn_norm", "post_attention_layernorm", Some(Family::Llama)),
    (
        "ffn_norm",
        "pre_feedforward_layernorm",
        Some(Family::Gemma3),
    ),
    (
        "post_attention_norm",
        "post_attention_layernorm",
        Some(Family::Gemma3),
    ),
    (
        "post_ffw_norm",
        "post_feedforward_layernorm",
        Some(Family::Gemma3),
    ),
];

/// HF safetensors checkpoint (one or more shards) seen under canonical names.
pub struct HfWeights {
    files: Vec<StFile>,
    index: HashMap<String, usize>,
    family: Family,
}

impl HfWeights {
    /// Opens every `*.safetensors` file in `dir`.
    pub fn open(dir: &Path, family: Family) -> Result<Self> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(pema_common::FileError::at(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        paths.sort();
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for p in paths {
            let f = StFile::open(&p)?;
            for n in f.names()? {
                index.insert(n, files.len());
            }
            files.push(f);
        }
        Ok(Self {
            files,
            index,
            family,
        })
    }

    fn hf_name(&self, canonical: &str) -> Vec<String> {
        let (stem, suffix) = canonical
            .strip_suffix(".weight")
            .map_or((canonical, ""), |s| (s, ".weight"));
        let mapped = match stem {
            "token_embd" => vec!["model.embed_tokens".to_string()],
            "output_norm" => vec!["model.norm".to_string()],
            "output" => vec!["lm_head".to_string()],
            _ => {
                let mut out = Vec::new();
                if let Some(rest) = stem.strip_prefix("blk.")
                    && let Some((n, key)) = rest.split_once('.')
                {
                    for (canon, hf, fam) in HF_REMAP {
                        if *canon == key && fam.is_none_or(|f| f == self.family) {
                            out.push(format!("model.layers.{n}.{hf}"));
                        }
                    }
                }
                out
            }
        };
        let mut names = Vec::new();
        for m in mapped {
            names.push(format!("{m}{suffix}"));
            names.push(format!("language_model.{m}{suffix}"));
            if let Some(r) = m.strip_prefix("model.") {
                names.push(format!("model.language_model.{r}{suffix}"));
            }
        }
        names
    }
}

impl WeightSource for HfWeights {
    fn tensor(&self, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        for hf in self.hf_name(name) {
            if let Some(&i) = self.index.get(&hf) {
                let (mut v, shape) = self.files[i].tensor_f32(&hf)?;
                let is_norm = name.ends_with("norm.weight");
                if self.family == Family::Gemma3 && is_norm {
                    v.iter_mut().for_each(|x| *x += 1.0);
                }
                return Ok(Some((v, shape)));
            }
        }
        Ok(None)
    }
}

fn required(src: &dyn WeightSource, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let (v, s) = src.tensor(name)?.ok_or_else(|| BackboneError::Weight {
        name: name.to_string(),
        message: "missing".into(),
    })?;
    check_shape(name, &s, shape)?;
    check_finite(name, &v)?;
    Ok(v)
}

/// Refuses a weight tensor holding NaN or ±∞ (one pass as it is loaded); the error names the
/// tensor, the first bad index and the count.
pub fn check_finite(name: &str, values: &[f32]) -> Result<()> {
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        let count = values.iter().filter(|x| !x.is_finite()).count();
        return Err(BackboneError::Weight {
            name: name.to_string(),
            message: format!(
                "{count} non-finite values (first: {} at index {i}); the weights are corrupt",
                values[i]
            ),
        });
    }
    Ok(())
}

fn check_shape(name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(BackboneError::Weight {
            name: name.to_string(),
            message: format!("shape {got:?}, expected {want:?}"),
        });
    }
    Ok(())
}

fn norm<B: Backend>(
    src: &dyn WeightSource,
    name: &str,
    dim: usize,
    eps: f64,
    device: &B::Device,
) -> Result<RmsNorm<B>> {
    let w = required(src, name, &[dim])?;
    Ok(RmsNorm {
        weight: Tensor::from_data(TensorData::new(w, [dim]), device),
        eps,
    })
}

fn optional_norm<B: Backend>(
    src: &dyn WeightSource,
    name: &str,
    dim: usize,
    eps: f64,
    device: &B::Device,
) -> Result<Option<RmsNorm<B>>> {
    match src.tensor(name)? {
        None => Ok(None),
        Some((w, s)) => {
            check_shape(name, &s, &[dim])?;
            check_finite(name, &w)?;
            Ok(Some(RmsNorm {
                weight: Tensor::from_data(TensorData::new(w, [dim]), device),
                eps,
            }))
        }
    }
}

fn linear<B: Backend>(
    src: &dyn WeightSource,
    name: &str,
    out: usize,
    inp: usize,
    device: &B::Device,
) -> Result<Linear<B>> {
    let w = required(src, name, &[out, inp])?;
    Ok(Linear::from_out_in(w, out, inp, device))
}

/// Builds a [`Transformer`] from any weight source under canonical names.
pub fn build_transformer<B: Backend>(
    config: ModelConfig,
    src: &dyn WeightSource,
    device: &B::Device,
) -> Result<Transformer<B>> {
    config.validate()?;
    let c = &config;
    let (d, hd, eps) = (c.hidden_size, c.head_dim, c.rms_eps);
    let q_dim = c.n_heads * hd;
    let kv_dim = c.n_kv_heads * hd;
    let gemma = c.family == Family::Gemma3;
    let embd = required(src, "token_embd.weight", &[c.vocab_size, d])?;
    let token_embd =
        Tensor::<B, 2>::from_data(TensorData::new(embd.clone(), [c.vocab_size, d]), device);
    let mut blk = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let n = |k: &str| format!("blk.{i}.{k}.weight");
        // Gemma 3 requires its extra norms; Llama may carry them (q/k norms in some variants).
        let family_norm = |k: &str, width: usize| -> Result<Option<RmsNorm<B>>> {
            if gemma {
                norm(src, &n(k), width, eps, device).map(Some)
            } else {
                optional_norm(src, &n(k), width, eps, device)
            }
        };
        blk.push(Block {
            attn_norm: norm(src, &n("attn_norm"), d, eps, device)?,
            attn: Attention {
                attn_q: linear(src, &n("attn_q"), q_dim, d, device)?,
                attn_k: linear(src, &n("attn_k"), kv_dim, d, device)?,
                attn_v: linear(src, &n("attn_v"), kv_dim, d, device)?,
                attn_output: linear(src, &n("attn_output"), d, q_dim, device)?,
                attn_q_norm: family_norm("attn_q_norm", hd)?,
                attn_k_norm: family_norm("attn_k_norm", hd)?,
            },
            post_attention_norm: family_norm("post_attention_norm", d)?,
            ffn_norm: norm(src, &n("ffn_norm"), d, eps, device)?,
            mlp: Mlp {
                ffn_gate: linear(src, &n("ffn_gate"), c.ffn_size, d, device)?,
                ffn_up: linear(src, &n("ffn_up"), c.ffn_size, d, device)?,
                ffn_down: linear(src, &n("ffn_down"), d, c.ffn_size, device)?,
            },
            post_ffw_norm: family_norm("post_ffw_norm", d)?,
        });
    }
    let out_norm = required(src, "output_norm.weight", &[d])?;
    let out = match src.tensor("output.weight")? {
        Some((w, s)) => {
            check_shape("output.weight", &s, &[c.vocab_size, d])?;
            check_finite("output.weight", &w)?;
            w
        }
        None => embd, // tied embeddings
    };
    let head = LmHead::from_host(out_norm, eps, out, c.vocab_size, &c.name, device)?;
    Ok(Transformer {
        config,
        token_embd,
        blk,
        head,
    })
}

/// A loaded PLM: the model and its tokenizer.
pub struct LoadedModel<B: Backend> {
    /// The transformer with its head.
    pub model: Transformer<B>,
    /// The tokenizer with the model's BOS/EOS conventions.
    pub tokenizer: PemaTokenizer,
    /// sha256 of the weights file(s) as read (GGUF file or sorted safetensors shards).
    pub weights_sha256: String,
}

/// Loads a model directory: `model.gguf` + `tokenizer.json`, or the HF layout
/// (`config.json` + `*.safetensors` + `tokenizer.json`).
pub fn load_model_dir<B: Backend>(dir: &Path, device: &B::Device) -> Result<LoadedModel<B>> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let gguf_path = dir.join("model.gguf");
    let tok_path = dir.join("tokenizer.json");
    if gguf_path.exists() {
        let file = GgufFile::open(&gguf_path).map_err(|source| BackboneError::Gguf {
            path: gguf_path.clone(),
            source,
        })?;
        let config = ModelConfig::from_gguf(&file, &name)?;
        let tokenizer = if tok_path.exists() {
            PemaTokenizer::from_file(
                &tok_path,
                config.add_bos,
                config.bos_token_id,
                config.eos_token_ids.clone(),
            )?
        } else {
            let json = crate::gguf_tokenizer::tokenizer_json_from_gguf(&file)?;
            PemaTokenizer::from_json(
                &json,
                config.add_bos,
                config.bos_token_id,
                config.eos_token_ids.clone(),
            )?
        };
        check_tokenizer(&tokenizer, &config, &tok_path, &gguf_path)?;
        let model = build_transformer(config, &file, device)?;
        let weights_sha256 = sha256_files(&[gguf_path])?;
        return Ok(LoadedModel {
            model,
            tokenizer,
            weights_sha256,
        });
    }
    let cfg_path = dir.join("config.json");
    if cfg_path.exists() && tok_path.exists() {
        let json: serde_json::Value = pema_common::read_json(&cfg_path)?;
        let config = ModelConfig::from_hf_json(&json, &name)?;
        let weights = HfWeights::open(dir, config.family)?;
        if weights.files.is_empty() {
            return Err(BackboneError::UnknownLayout(dir.to_path_buf()));
        }
        let tokenizer = PemaTokenizer::from_file(
            &tok_path,
            config.add_bos,
            config.bos_token_id,
            config.eos_token_ids.clone(),
        )?;
        let mut shards: Vec<PathBuf> = weights
            .files
            .iter()
            .map(|f| f.path().to_path_buf())
            .collect();
        shards.sort();
        check_tokenizer(&tokenizer, &config, &tok_path, &cfg_path)?;
        let model = build_transformer(config, &weights, device)?;
        let weights_sha256 = sha256_files(&shards)?;
        return Ok(LoadedModel {
            model,
            tokenizer,
            weights_sha256,
        });
    }
    Err(BackboneError::UnknownLayout(dir.to_path_buf()))
}

/// [`PemaTokenizer::check_model_vocab`] against the model's vocabulary, naming the tokenizer
/// file (or the GGUF when the tokenizer comes from it) and the model file.
fn check_tokenizer(
    tok: &PemaTokenizer,
    config: &ModelConfig,
    tok_path: &Path,
    model_path: &Path,
) -> Result<()> {
    tok.check_model_vocab(config.vocab_size).map_err(|e| {
        let from = if tok_path.exists() {
            tok_path
        } else {
            model_path
        };
        let why = match e {
            BackboneError::Tokenizer(m) => m,
            other => other.to_string(),
        };
        BackboneError::Tokenizer(format!(
            "{} does not fit {}: {why}",
            from.display(),
            model_path.display()
        ))
    })
}

/// sha256 over the concatenated contents of `paths` (hex).
pub fn sha256_files(paths: &[PathBuf]) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let mut f = std::fs::File::open(p).map_err(pema_common::FileError::at(p))?;
        loop {
            let n = f.read(&mut buf).map_err(pema_common::FileError::at(p))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(crate::head::hex(&h.finalize()))
}
