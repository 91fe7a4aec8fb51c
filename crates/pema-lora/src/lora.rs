//! LoRA weights: initialisation, differentiable merging into a model, the autodiff lift of the
//! frozen model, and the on-disk format.
//!
//! A LoRA directory holds `lora.safetensors` (f32 tensors `blk.N.<key>.lora_a` `[in, r]` and
//! `blk.N.<key>.lora_b` `[r, out]`, metadata `pema.format = "lora/1"`) and `lora.json`
//! ([`LoraMeta`]: format, model name, the model's `weights_sha256`, configuration, slots and the
//! training report).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use pema_backbone::head::LmHead;
use pema_backbone::loader::LoadedModel;
use pema_backbone::model::{Attention, Block, Mlp, Transformer};
use pema_backbone::nn::{Linear, RmsNorm};
use pema_backbone::st;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::config::{LoraConfig, LoraTarget};
use crate::error::{LoraError, Result};
use crate::report::LoraReport;

/// Format tag of LoRA directories.
pub const LORA_FORMAT: &str = "lora/1";
/// Weights file inside a LoRA directory.
pub const WEIGHTS_FILE: &str = "lora.safetensors";
/// Metadata file inside a LoRA directory.
pub const META_FILE: &str = "lora.json";

/// One adapted linear layer: block index and which projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoraSlot {
    /// Block index.
    pub layer: usize,
    /// Projection within the block.
    pub target: LoraTarget,
}

impl LoraSlot {
    /// Tensor name prefix, e.g. `blk.3.attn_q`.
    pub fn name(&self) -> String {
        format!("blk.{}.{}", self.layer, self.target.key())
    }
}

/// Everything `lora.json` records next to the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoraMeta {
    /// Always [`LORA_FORMAT`].
    pub format: String,
    /// Name of the model the weights were trained on.
    pub model: String,
    /// sha256 of that model's weight files ([`LoadedModel::weights_sha256`]).
    pub weights_sha256: String,
    /// Training configuration (rank, α and targets included).
    pub config: LoraConfig,
    /// Adapted layers, in tensor order.
    pub slots: Vec<LoraSlot>,
    /// Training report, when the weights came from [`crate::train`].
    pub report: Option<LoraReport>,
    /// sha256 of `lora.safetensors`, recorded by [`Lora::save`] and checked by [`Lora::load`]
    /// (absent in directories written before it existed: the check is then skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_sha256: Option<String>,
}

/// LoRA weights `A_i` `[in, r]` and `B_i` `[r, out]` for each slot: a burn module whose
/// parameters are the `A_i` and `B_i`.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// Rank r.
    #[module(skip)]
    pub rank: usize,
    /// Scaling numerator α (scale α/r).
    #[module(skip)]
    pub alpha: f64,
    /// Adapted layers.
    #[module(skip)]
    pub slots: Vec<LoraSlot>,
    /// `A_i`, `[in, r]`.
    pub a: Vec<Param<Tensor<B, 2>>>,
    /// `B_i`, `[r, out]`.
    pub b: Vec<Param<Tensor<B, 2>>>,
}

/// The linear layer of `block` that `target` names.
pub fn linear_mut<B: Backend>(block: &mut Block<B>, target: LoraTarget) -> &mut Linear<B> {
    match target {
        LoraTarget::Q => &mut block.attn.attn_q,
        LoraTarget::K => &mut block.attn.attn_k,
        LoraTarget::V => &mut block.attn.attn_v,
        LoraTarget::O => &mut block.attn.attn_output,
        LoraTarget::Gate => &mut block.mlp.ffn_gate,
        LoraTarget::Up => &mut block.mlp.ffn_up,
        LoraTarget::Down => &mut block.mlp.ffn_down,
    }
}

fn linear<B: Backend>(block: &Block<B>, target: LoraTarget) -> &Linear<B> {
    match target {
        LoraTarget::Q => &block.attn.attn_q,
        LoraTarget::K => &block.attn.attn_k,
        LoraTarget::V => &block.attn.attn_v,
        LoraTarget::O => &block.attn.attn_output,
        LoraTarget::Gate => &block.mlp.ffn_gate,
        LoraTarget::Up => &block.mlp.ffn_up,
        LoraTarget::Down => &block.mlp.ffn_down,
    }
}

impl<B: Backend> Lora<B> {
    /// Fresh weights for `model`: `A` Kaiming-uniform(a = √5) like `peft` (U(−1/√in, 1/√in)),
    /// `B` zeros, so the adapted model starts equal to the base model.
    pub fn init(model: &Transformer<B>, cfg: &LoraConfig) -> Result<Self> {
        cfg.validate()?;
        let device = model.device();
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut targets = cfg.targets.clone();
        targets.sort_unstable();
        targets.dedup();
        let r = cfg.rank;
        let (mut slots, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
        for (layer, block) in model.blk.iter().enumerate() {
            for &target in &targets {
                let [inp, out] = linear(block, target).weight_t.dims();
                let av = pema_adapter::adapter::kaiming_uniform_a_sqrt5(inp, r, &mut rng);
                a.push(Param::from_tensor(Tensor::from_data(
                    TensorData::new(av, [inp, r]),
                    &device,
                )));
                b.push(Param::from_tensor(Tensor::zeros([r, out], &device)));
                slots.push(LoraSlot { layer, target });
            }
        }
        Ok(Self {
            rank: r,
            alpha: cfg.alpha,
            slots,
            a,
            b,
        })
    }

    /// The update's scale α/r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Number of trainable scalars (all `A_i` and `B_i`).
    pub fn trainable_params(&self) -> usize {
        self.a
            .iter()
            .chain(&self.b)
            .map(|t| t.dims().iter().product::<usize>())
            .sum()
    }

    /// Replaces every adapted weight `Wᵀ` of `model` by `Wᵀ + A·B·α/r`. On an autodiff backend
    /// with `A`, `B` tracked, the result is differentiable in `A` and `B`.
    pub fn apply_to(&self, model: &mut Transformer<B>) -> Result<()> {
        if self.a.len() != self.slots.len() || self.b.len() != self.slots.len() {
            return Err(LoraError::Shape(format!(
                "{} slots but {} A and {} B tensors",
                self.slots.len(),
                self.a.len(),
                self.b.len()
            )));
        }
        let scale = self.scale();
        for ((slot, a), b) in self.slots.iter().zip(&self.a).zip(&self.b) {
            let n_layers = model.blk.len();
            let block = model.blk.get_mut(slot.layer).ok_or_else(|| {
                LoraError::Shape(format!(
                    "{} refers to block {} of a model with {n_layers} blocks",
                    slot.name(),
                    slot.layer
                ))
            })?;
            let lin = linear_mut(block, slot.target);
            let [inp, out] = lin.weight_t.dims();
            let (ad, bd) = (a.dims(), b.dims());
            if ad != [inp, self.rank] || bd != [self.rank, out] {
                return Err(LoraError::Shape(format!(
                    "{}: weight [{inp}, {out}], A {ad:?}, B {bd:?}, rank {}",
                    slot.name(),
                    self.rank
                )));
            }
            let delta = a.val().matmul(b.val()).mul_scalar(scale);
            lin.weight_t = lin.weight_t.clone() + delta;
        }
        Ok(())
    }

    /// The same weights with every `A_i` and `B_i` requiring a gradient (on an autodiff
    /// backend: the trainable form).
    pub fn tracked(mut self) -> Self {
        let track = |p: Param<Tensor<B, 2>>| p.set_require_grad(true);
        self.a = self.a.into_iter().map(track).collect();
        self.b = self.b.into_iter().map(track).collect();
        self
    }

    /// The parameters as one list `[A_0, B_0, A_1, B_1, …]` (the optimiser's order).
    pub fn params(&self) -> Vec<Tensor<B, 2>> {
        self.a
            .iter()
            .zip(&self.b)
            .flat_map(|(a, b)| [a.val(), b.val()])
            .collect()
    }

    /// The same slots with parameters (fresh ids) from a list in [`Lora::params`] order.
    pub fn with_params<B2: Backend>(&self, params: Vec<Tensor<B2, 2>>) -> Lora<B2> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (i, p) in params.into_iter().enumerate() {
            let p = Param::from_tensor(p);
            if i % 2 == 0 { a.push(p) } else { b.push(p) }
        }
        Lora {
            rank: self.rank,
            alpha: self.alpha,
            slots: self.slots.clone(),
            a,
            b,
        }
    }

    /// Writes `lora.safetensors` and `lora.json` into `dir` (created if needed).
    pub fn save(&self, dir: &Path, meta: &LoraMeta) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(pema_common::FileError::at(dir))?;
        let host = |t: &Tensor<B, 2>| -> Result<(Vec<f32>, Vec<usize>)> {
            let v = t
                .to_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| LoraError::Shape(format!("reading a LoRA tensor: {e:?}")))?;
            Ok((v, t.dims().to_vec()))
        };
        let mut owned = Vec::new();
        for ((slot, a), b) in self.slots.iter().zip(&self.a).zip(&self.b) {
            owned.push((format!("{}.lora_a", slot.name()), host(a)?));
            owned.push((format!("{}.lora_b", slot.name()), host(b)?));
        }
        let tensors: Vec<(&str, &[f32], &[usize])> = owned
            .iter()
            .map(|(n, (v, s))| (n.as_str(), v.as_slice(), s.as_slice()))
            .collect();
        let mut st_meta = HashMap::new();
        st_meta.insert("pema.format".to_string(), LORA_FORMAT.to_string());
        st_meta.insert("weights_sha256".to_string(), meta.weights_sha256.clone());
        let weights = dir.join(WEIGHTS_FILE);
        st::write_f32(&weights, &tensors, st_meta)?;
        let meta = LoraMeta {
            lora_sha256: Some(pema_backbone::loader::sha256_files(&[weights])?),
            ..meta.clone()
        };
        let path = dir.join(META_FILE);
        Ok(pema_common::write_json_pretty(&path, &meta)?)
    }

    /// Reads a LoRA directory written by [`Lora::save`].
    pub fn load(dir: &Path, device: &B::Device) -> Result<(Self, LoraMeta)> {
        let meta = read_meta(dir)?;
        let path = dir.join(WEIGHTS_FILE);
        if let Some(expected) = &meta.lora_sha256 {
            let found = pema_backbone::loader::sha256_files(std::slice::from_ref(&path))?;
            if &found != expected {
                return Err(LoraError::Format {
                    path,
                    message: format!(
                        "sha256 {found} differs from the {expected} recorded in {META_FILE}: the weights file is corrupt or was replaced"
                    ),
                });
            }
        }
        let file = st::StFile::open(&path)?;
        let format = file.metadata().get("pema.format").cloned();
        if format.as_deref() != Some(LORA_FORMAT) {
            return Err(LoraError::Format {
                path,
                message: format!("format tag {format:?}, expected `{LORA_FORMAT}`"),
            });
        }
        let r = meta.config.rank;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for slot in &meta.slots {
            for (suffix, out) in [("lora_a", &mut a), ("lora_b", &mut b)] {
                let name = format!("{}.{suffix}", slot.name());
                let (v, shape) = file.tensor_f32(&name)?;
                let ok = shape.len() == 2
                    && if suffix == "lora_a" {
                        shape[1] == r
                    } else {
                        shape[0] == r
                    };
                if !ok {
                    return Err(LoraError::Format {
                        path,
                        message: format!("tensor `{name}` has shape {shape:?} for rank {r}"),
                    });
                }
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(LoraError::Format {
                        path,
                        message: format!(
                            "tensor `{name}` has a non-finite value {} at index {i}",
                            v[i]
                        ),
                    });
                }
                out.push(Param::from_tensor(Tensor::from_data(
                    TensorData::new(v, [shape[0], shape[1]]),
                    device,
                )));
            }
        }
        Ok((
            Self {
                rank: r,
                alpha: meta.config.alpha,
                slots: meta.slots.clone(),
                a,
                b,
            },
            meta,
        ))
    }

    /// [`Lora::load`], refusing weights trained on a model other than `weights_sha256`.
    pub fn load_for(
        dir: &Path,
        weights_sha256: &str,
        device: &B::Device,
    ) -> Result<(Self, LoraMeta)> {
        let meta = read_meta(dir)?;
        check_model(dir, &meta, weights_sha256)?;
        Self::load(dir, device)
    }
}

fn check_model(dir: &Path, meta: &LoraMeta, weights_sha256: &str) -> Result<()> {
    if meta.weights_sha256 != weights_sha256 {
        return Err(LoraError::ModelMismatch {
            path: dir.to_path_buf(),
            expected: meta.weights_sha256.clone(),
            found: weights_sha256.to_string(),
        });
    }
    Ok(())
}

/// Reads and checks `lora.json` of a LoRA directory.
pub fn read_meta(dir: &Path) -> Result<LoraMeta> {
    let path: PathBuf = dir.join(META_FILE);
    let meta: LoraMeta = pema_common::read_json(&path)?;
    if meta.format != LORA_FORMAT {
        return Err(LoraError::Format {
            path,
            message: format!("format `{}`, expected `{LORA_FORMAT}`", meta.format),
        });
    }
    Ok(meta)
}

/// The inference model: a copy of `model` with `A·B·α/r` baked into the adapted weights (the
/// other tensors are shared, not copied). The normal greedy decoder runs on it unchanged.
pub fn merge<B: Backend>(model: &Transformer<B>, lora: &Lora<B>) -> Result<Transformer<B>> {
    let mut m = model.clone();
    lora.apply_to(&mut m)?;
    Ok(m)
}

/// Loads the LoRA directory `dir` for `model` (refusing weights trained on another model, by
/// `weights_sha256`) and returns the merged inference model.
pub fn load_merged<B: Backend>(
    model: &LoadedModel<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<Transformer<B>> {
    let (lora, _) = Lora::<B>::load_for(dir, &model.weights_sha256, device)?;
    merge(&model.model, &lora)
}

/// The frozen model on the autodiff backend: every tensor lifted as an untracked constant
/// (`Tensor::from_inner`, no copy of the weights).
pub fn lift<B: AutodiffBackend>(m: &Transformer<B::InnerBackend>) -> Transformer<B> {
    fn t2<B: AutodiffBackend>(t: &Tensor<B::InnerBackend, 2>) -> Tensor<B, 2> {
        Tensor::from_inner(t.clone())
    }
    fn lin<B: AutodiffBackend>(l: &Linear<B::InnerBackend>) -> Linear<B> {
        Linear {
            weight_t: t2::<B>(&l.weight_t),
        }
    }
    fn norm<B: AutodiffBackend>(n: &RmsNorm<B::InnerBackend>) -> RmsNorm<B> {
        RmsNorm {
            weight: Tensor::from_inner(n.weight.clone()),
            eps: n.eps,
        }
    }
    let blk = m
        .blk
        .iter()
        .map(|b| Block {
            attn_norm: norm::<B>(&b.attn_norm),
            attn: Attention {
                attn_q: lin::<B>(&b.attn.attn_q),
                attn_k: lin::<B>(&b.attn.attn_k),
                attn_v: lin::<B>(&b.attn.attn_v),
                attn_output: lin::<B>(&b.attn.attn_output),
                attn_q_norm: b.attn.attn_q_norm.as_ref().map(norm::<B>),
                attn_k_norm: b.attn.attn_k_norm.as_ref().map(norm::<B>),
            },
            post_attention_norm: b.post_attention_norm.as_ref().map(norm::<B>),
            ffn_norm: norm::<B>(&b.ffn_norm),
            mlp: Mlp {
                ffn_gate: lin::<B>(&b.mlp.ffn_gate),
                ffn_up: lin::<B>(&b.mlp.ffn_up),
                ffn_down: lin::<B>(&b.mlp.ffn_down),
            },
            post_ffw_norm: b.post_ffw_norm.as_ref().map(norm::<B>),
        })
        .collect();
    Transformer {
        config: m.config.clone(),
        token_embd: t2::<B>(&m.token_embd),
        blk,
        head: LmHead {
            norm_weight: Tensor::from_inner(m.head.norm_weight.clone()),
            eps: m.head.eps,
            weight: t2::<B>(&m.head.weight),
            model: m.head.model.clone(),
            fingerprint: m.head.fingerprint.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use pema_backbone::Family;
    use pema_backbone::testing::tiny_model;

    type B = NdArray<f32>;

    fn hidden(m: &Transformer<B>) -> Vec<f32> {
        let mut cache = m.new_cache(vec![0]);
        m.forward(&[vec![1, 5, 9, 13, 2]], &mut cache)
            .expect("forward")
            .into_data()
            .into_vec::<f32>()
            .expect("vec")
    }

    fn cfg(targets: &str) -> LoraConfig {
        LoraConfig {
            rank: 2,
            alpha: 4.0,
            targets: LoraTarget::parse_list(targets).expect("targets"),
            ..LoraConfig::default()
        }
    }

    #[test]
    fn zero_b_merges_to_the_base_model_exactly() {
        let dev = Default::default();
        let m = tiny_model::<B>(Family::Gemma3, 1, &dev).expect("model");
        let lora = Lora::init(&m, &cfg("all")).expect("init");
        assert_eq!(lora.slots.len(), 3 * 7);
        let merged = merge(&m, &lora).expect("merge");
        assert_eq!(hidden(&m), hidden(&merged));
        // A non-zero B changes the model.
        let mut l2 = lora.clone();
        l2.b[0] = Param::from_tensor(l2.b[0].val().add_scalar(0.5));
        assert_ne!(hidden(&m), hidden(&merge(&m, &l2).expect("merge")));
    }

    #[test]
    fn save_load_round_trip_and_model_check() {
        let dev = Default::default();
        let m = tiny_model::<B>(Family::Llama, 2, &dev).expect("model");
        let mut lora = Lora::init(&m, &cfg("q,v,down")).expect("init");
        for b in &mut lora.b {
            let n = b.dims();
            *b = Param::from_tensor(Tensor::from_data(
                TensorData::new(pema_backbone::testing::pseudo_random(9, n[0] * n[1]), n),
                &dev,
            ));
        }
        let meta = LoraMeta {
            format: LORA_FORMAT.into(),
            model: m.config.name.clone(),
            weights_sha256: "ab".repeat(32),
            config: cfg("q,v,down"),
            slots: lora.slots.clone(),
            report: None,
            lora_sha256: None,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        lora.save(dir.path(), &meta).expect("save");
        let (back, meta2) = Lora::<B>::load_for(dir.path(), &"ab".repeat(32), &dev).expect("load");
        assert_eq!(meta2.slots, lora.slots);
        assert_eq!(
            hidden(&merge(&m, &lora).expect("merge")),
            hidden(&merge(&m, &back).expect("merge"))
        );
        let loaded = LoadedModel {
            model: m.clone(),
            tokenizer: tiny_tokenizer(),
            weights_sha256: "cd".repeat(32),
        };
        match load_merged(&loaded, dir.path(), &dev) {
            Err(LoraError::ModelMismatch {
                expected, found, ..
            }) => {
                assert_eq!(expected, "ab".repeat(32));
                assert_eq!(found, "cd".repeat(32));
            }
            other => panic!("expected a model mismatch, got {:?}", other.map(|_| ())),
        }
        // Weights for another architecture do not fit.
        let other = tiny_model::<B>(Family::Gemma3, 2, &dev).expect("model");
        let mut small = other.clone();
        small.blk.truncate(1);
        assert!(matches!(merge(&small, &back), Err(LoraError::Shape(_))));
        // A corrupted metadata file is a typed error naming the file.
        std::fs::write(dir.path().join(META_FILE), "{").expect("write");
        assert!(matches!(
            Lora::<B>::load(dir.path(), &dev),
            Err(LoraError::Json(_))
        ));
    }

    fn tiny_tokenizer() -> pema_backbone::PemaTokenizer {
        let json = r#"{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},
            "post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"<unk>":0,"a":1},"unk_token":"<unk>"}}"#;
        pema_backbone::PemaTokenizer::from_json(json, false, None, vec![]).expect("tokenizer")
    }
}
