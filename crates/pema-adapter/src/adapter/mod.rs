//! The PEMA adapter: a LoRA-like bottleneck read through the frozen LM head (paper §3).
//!
//! ```text
//! z      = s · A · dropout(f)          s = 1/r, A ∈ R^{r×d}
//! h_rct  = B_rct · z                   B_rct ∈ R^{d×r}
//! h_pd   = B_pd · z                    B_pd ∈ R^{d×r}
//! P_PEMA = softmax(W_hd · norm(h_pd))
//! L_rct  = mean((h_rct − f)²)          over batch × d
//! L_pd   = CE(W_hd · norm(h_pd), y)    mean over tokens
//! L      = κ·L_rct + (1−κ)·L_pd
//! ```
//!
//! With [`crate::KeyNorm::Standardize`] (pema's default) the adapter reads x = (f − μ)/σ
//! instead of f, and h_rct reconstructs x ([`KeyStats`]).
//!
//! There is no residual and no frozen base weight. A is initialised like PyTorch's
//! `nn.Linear` (Kaiming-uniform with a = √5, i.e. U(−1/√d, 1/√d)); B_rct and B_pd start at zero.
//! In memory the matrices are kept transposed (`A` as `[d, r]`, `B` as `[r, d]`) so that a batch
//! of row vectors is multiplied without transposes; the artifact stores the paper's layout.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{Distribution, Int, Tensor, TensorData, backend::Backend};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::{AdapterConfig, HpdForm, KeyNorm};
use crate::error::{AdapterError, Result};
use crate::head_ce::{CePath, FusedHead};

/// Format tag of the adapter artifact (`adapter.json` and the safetensors metadata).
pub const ADAPTER_FORMAT: &str = "pema-adapter/1";
/// File name of the adapter weights inside an artifact directory.
pub const WEIGHTS_FILE: &str = "adapter.safetensors";
/// File name of the adapter description inside an artifact directory.
pub const CONFIG_FILE: &str = "adapter.json";

/// A named host matrix: (name, row-major f32 values, shape).
pub type NamedMatrix = (String, Vec<f32>, [usize; 2]);

/// Which training phase a loss is computed for (paper §3, "two phases").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Phase 1: autoencoder (A₁, B_rct) on L_rct alone.
    Reconstruction,
    /// Phase 2: fresh (A, B_pd) with frozen B_rct on κ·L_rct + (1−κ)·L_pd.
    Prediction,
}

impl Phase {
    /// 1 or 2, as in the paper.
    pub fn number(self) -> u8 {
        match self {
            Phase::Reconstruction => 1,
            Phase::Prediction => 2,
        }
    }
}

/// Per-dimension key statistics of the training memory: x = (f − μ)/σ. A module of constants:
/// saved with the adapter, never trained.
#[derive(Module, Debug)]
pub struct KeyStats<B: Backend> {
    /// μ, `[1, d]`.
    pub mean: Tensor<B, 2>,
    /// σ, `[1, d]` (floored, never zero).
    pub std: Tensor<B, 2>,
}

impl<B: Backend> KeyStats<B> {
    /// Statistics from host values (`mean`, `std` of length d).
    pub fn from_host(mean: Vec<f32>, std: Vec<f32>, device: &B::Device) -> Self {
        let d = mean.len();
        Self {
            mean: Tensor::from_data(TensorData::new(mean, [1, d]), device),
            std: Tensor::from_data(TensorData::new(std, [1, d]), device),
        }
    }

    /// The statistics on another backend.
    pub fn to_backend<B2: Backend>(&self, device: &B2::Device) -> KeyStats<B2> {
        KeyStats {
            mean: Tensor::from_data(self.mean.to_data(), device),
            std: Tensor::from_data(self.std.to_data(), device),
        }
    }
}

/// The adapter's weights on backend `B`: a burn module whose parameters are A, B_rct and
/// B_pd (which of them a training phase updates is set by their `require_grad` flags).
#[derive(Module, Debug)]
pub struct PemaAdapter<B: Backend> {
    /// Shape and regularisation.
    #[module(skip)]
    pub config: AdapterConfig,
    /// Aᵀ, `[d, r]` (the paper's A is `[r, d]`).
    pub a: Param<Tensor<B, 2>>,
    /// B_rctᵀ, `[r, d]`.
    pub b_rct: Param<Tensor<B, 2>>,
    /// B_pdᵀ, `[r, d]`.
    pub b_pd: Param<Tensor<B, 2>>,
    /// Key standardisation, when the adapter was trained with it.
    pub key_stats: Option<KeyStats<B>>,
}

/// The losses of one batch (scalars, shape `[1]`).
#[derive(Debug, Clone)]
pub struct Losses<B: Backend> {
    /// The optimised loss: L_rct in phase 1, κ·L_rct + (1−κ)·L_pd in phase 2.
    pub total: Tensor<B, 1>,
    /// L_rct = mean((B_rct·z − x)²), x the (standardised) key.
    pub rct: Tensor<B, 1>,
    /// L_pd = CE(W_hd·norm(B_pd·z), y) (phase 2 only).
    pub pd: Option<Tensor<B, 1>>,
    /// argmax of P_PEMA per entry, `[batch]` (phase 2 only).
    pub top1: Option<Tensor<B, 1, Int>>,
}

/// Kaiming-uniform(a = √5) like `torch.nn.Linear(d, r)`: U(−1/√d, 1/√d), drawn from `rng`,
/// returned in the transposed `[d, r]` layout.
pub fn kaiming_uniform_a_sqrt5(d: usize, r: usize, rng: &mut StdRng) -> Vec<f32> {
    // gain = √(2 / (1 + a²)) = √(1/3); bound = gain · √(3 / fan_in) = 1/√fan_in, fan_in = d.
    let bound = 1.0 / (d as f64).sqrt();
    (0..d * r)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect()
}

impl<B: Backend> PemaAdapter<B> {
    /// A freshly initialised adapter: A Kaiming-uniform from `seed`, B_rct = B_pd = 0.
    pub fn new(config: AdapterConfig, seed: u64, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let (d, r) = (config.d, config.rank);
        let mut rng = StdRng::seed_from_u64(seed);
        let a = kaiming_uniform_a_sqrt5(d, r, &mut rng);
        Ok(Self {
            config,
            a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d, r]), device)),
            b_rct: Param::from_tensor(Tensor::zeros([r, d], device)),
            b_pd: Param::from_tensor(Tensor::zeros([r, d], device)),
            key_stats: None,
        })
    }

    /// The same adapter reading standardised keys (`Some`) or raw ones (`None`).
    pub fn with_key_stats(mut self, stats: Option<KeyStats<B>>) -> Self {
        self.key_stats = stats;
        self
    }

    /// x = (f − μ)/σ with the adapter's key statistics, or f itself without them.
    pub fn standardize(&self, f: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.key_stats {
            Some(s) => (f - s.mean.clone()) / s.std.clone(),
            None => f,
        }
    }

    /// Phase-2 start: a FRESH A (from `seed`) and B_pd = 0, keeping the trained B_rct.
    pub fn fresh_for_phase2(&self, seed: u64) -> Self {
        let device = self.a.device();
        let (d, r) = (self.config.d, self.config.rank);
        let mut rng = StdRng::seed_from_u64(seed);
        let a = kaiming_uniform_a_sqrt5(d, r, &mut rng);
        Self {
            config: self.config,
            a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d, r]), &device)),
            b_rct: self.b_rct.clone(),
            b_pd: Param::from_tensor(Tensor::zeros([r, d], &device)),
            key_stats: self.key_stats.clone(),
        }
    }

    /// Number of trainable parameters in phase 2 plus B_rct: 3·r·d (paper: 3,145,728 for
    /// d = 2048, r = 512).
    pub fn num_params(&self) -> usize {
        3 * self.config.rank * self.config.d
    }

    /// z = s·A·dropout(x) for keys `f: [batch, d]` (x = f, or standardised), giving
    /// `[batch, r]`. Dropout (inverted, like PyTorch) is applied only when `train` is true and
    /// p > 0.
    pub fn bottleneck(&self, f: Tensor<B, 2>, train: bool) -> Tensor<B, 2> {
        self.project(self.standardize(f), train)
    }

    /// z = s·A·dropout(x) for already standardised `x`.
    fn project(&self, f: Tensor<B, 2>, train: bool) -> Tensor<B, 2> {
        let p = self.config.dropout;
        let x = if train && p > 0.0 {
            let keep = f.random_like(Distribution::Bernoulli(1.0 - p));
            f * keep.div_scalar(1.0 - p)
        } else {
            f
        };
        x.matmul(self.a.val()).mul_scalar(self.config.scale())
    }

    /// h_pd without dropout: the representation decoded by the head at inference (B_pd·z,
    /// or f + σ ⊙ B_pd·z in the residual form).
    pub fn h_pd(&self, f: Tensor<B, 2>) -> Tensor<B, 2> {
        let z = self.bottleneck(f.clone(), false);
        self.form_h_pd(f, z)
    }

    /// h_pd from the key `f` and the bottleneck `z` under the adapter's [`HpdForm`].
    pub(crate) fn form_h_pd(&self, f: Tensor<B, 2>, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let delta = z.matmul(self.b_pd.val());
        match self.config.form {
            HpdForm::Paper => delta,
            HpdForm::Residual => match &self.key_stats {
                Some(s) => f + delta * s.std.clone(),
                None => f + delta,
            },
        }
    }

    /// PEMA's logits W_hd·norm(h_pd) for `f: [batch, d]` (inference, no dropout):
    /// P_PEMA(·|c) = softmax of these.
    pub fn logits(&self, head: &FusedHead<B>, f: Tensor<B, 2>) -> Tensor<B, 2> {
        head.logits(self.h_pd(f))
    }

    /// The losses of a batch: `f: [batch, d]` keys, `y: [batch]` gold token ids.
    /// `train` switches the input dropout on.
    ///
    /// L_pd goes through the blockwise [`FusedHead`] (no `[batch, V]` logits). When the
    /// adapter's matrices require gradients (an autodiff backend in training), the exact
    /// gradient of L_pd computed there is injected into the graph by a surrogate term
    /// `s − detach(s)` with `s = ⟨x, ∂L/∂x⟩`: its value is 0 and its gradient with respect to
    /// x is ∂L/∂x, so autodiff carries it through norm, B_pd, A and dropout.
    pub fn losses(
        &self,
        head: &FusedHead<B>,
        f: Tensor<B, 2>,
        y: Tensor<B, 1, Int>,
        phase: Phase,
        train: bool,
    ) -> Losses<B> {
        let raw = f.clone();
        let f = self.standardize(f);
        let z = self.project(f.clone(), train);
        let h_rct = z.clone().matmul(self.b_rct.val());
        let rct = (h_rct - f).powi_scalar(2).mean();
        if phase == Phase::Reconstruction {
            return Losses {
                total: rct.clone(),
                rct,
                pd: None,
                top1: None,
            };
        }
        let n = y.dims()[0];
        let grad = self.a.val().is_require_grad() || self.b_pd.val().is_require_grad();
        // The low-rank form exists for the paper's h_pd = B_pd·z only.
        let rank = (self.config.form == HpdForm::Paper).then_some(self.config.rank);
        let (nll, top1, surrogate) = match head.choose_path(n, rank, grad) {
            CePath::LowRank => {
                let h_pd = z.clone().matmul(self.b_pd.val());
                // ℓ_i = ρ_i · z_i · (B_pd ⊙ w) · W_hdᵀ.
                let q = z * head.inverse_rms(h_pd);
                let bw = self.b_pd.val() * head.norm_weight().unsqueeze::<2>();
                let out =
                    head.cross_entropy_low_rank(q.clone().detach(), bw.clone().detach(), y, grad);
                let s = match (out.d_q, out.d_bw) {
                    (Some(dq), Some(dbw)) => Some((q * dq).sum() + (bw * dbw).sum()),
                    _ => None,
                };
                (out.rows.nll, out.rows.top1, s)
            }
            _ => {
                let normed = head.norm(self.form_h_pd(raw, z));
                let out = head.cross_entropy(normed.clone().detach(), y, grad);
                let s = out.d_normed.map(|g| (normed * g).sum());
                (out.rows.nll, out.rows.top1, s)
            }
        };
        let value = nll.mean().detach();
        let pd = match surrogate {
            Some(s) => (s.clone() - s.detach()).div_scalar(n as f64) + value,
            None => value,
        };
        let k = self.config.kappa;
        let total = rct.clone().mul_scalar(k) + pd.clone().mul_scalar(1.0 - k);
        Losses {
            total,
            rct,
            pd: Some(pd),
            top1: Some(top1),
        }
    }

    /// Moves the weights to another backend/device.
    pub fn to_backend<B2: Backend>(&self, device: &B2::Device) -> PemaAdapter<B2> {
        PemaAdapter {
            config: self.config,
            a: Param::from_tensor(Tensor::from_data(self.a.to_data(), device)),
            b_rct: Param::from_tensor(Tensor::from_data(self.b_rct.to_data(), device)),
            b_pd: Param::from_tensor(Tensor::from_data(self.b_pd.to_data(), device)),
            key_stats: self.key_stats.as_ref().map(|s| s.to_backend(device)),
        }
    }

    /// The three matrices in the paper's layout, as host f32:
    /// `A [r, d]`, `B_rct [d, r]`, `B_pd [d, r]`.
    pub fn paper_layout(&self) -> Result<[NamedMatrix; 3]> {
        let (d, r) = (self.config.d, self.config.rank);
        Ok([
            ("A".into(), transpose(&host(&self.a)?, d, r), [r, d]),
            ("B_rct".into(), transpose(&host(&self.b_rct)?, r, d), [d, r]),
            ("B_pd".into(), transpose(&host(&self.b_pd)?, r, d), [d, r]),
        ])
    }

    /// Builds an adapter from the paper layout (`A [r, d]`, `B_rct [d, r]`, `B_pd [d, r]`).
    pub fn from_paper_layout(
        config: AdapterConfig,
        a: &[f32],
        b_rct: &[f32],
        b_pd: &[f32],
        device: &B::Device,
    ) -> Self {
        let (d, r) = (config.d, config.rank);
        Self {
            config,
            a: Param::from_tensor(Tensor::from_data(
                TensorData::new(transpose(a, r, d), [d, r]),
                device,
            )),
            b_rct: Param::from_tensor(Tensor::from_data(
                TensorData::new(transpose(b_rct, d, r), [r, d]),
                device,
            )),
            b_pd: Param::from_tensor(Tensor::from_data(
                TensorData::new(transpose(b_pd, d, r), [r, d]),
                device,
            )),
            key_stats: None,
        }
    }

    /// Writes the artifact: `dir/adapter.safetensors` (A, B_rct, B_pd in the paper's layout)
    /// and `dir/adapter.json` (`meta`).
    pub fn save(&self, dir: &Path, meta: &AdapterMeta) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| AdapterError::io(dir, e))?;
        let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = self
            .paper_layout()?
            .into_iter()
            .map(|(n, v, s)| (n, v, s.to_vec()))
            .collect();
        if let Some(ks) = &self.key_stats {
            let d = self.config.d;
            tensors.push(("key_mean".into(), host(&ks.mean)?, vec![1, d]));
            tensors.push(("key_std".into(), host(&ks.std)?, vec![1, d]));
        }
        if (meta.key_norm == KeyNorm::Standardize) != self.key_stats.is_some() {
            return Err(AdapterError::Config(format!(
                "adapter metadata says key_norm {:?} but the adapter {} key statistics",
                meta.key_norm,
                if self.key_stats.is_some() {
                    "has"
                } else {
                    "has no"
                }
            )));
        }
        let views: Vec<(&str, &[f32], &[usize])> = tensors
            .iter()
            .map(|(n, v, s)| (n.as_str(), v.as_slice(), s.as_slice()))
            .collect();
        let mut st_meta = HashMap::new();
        st_meta.insert("pema.format".to_string(), ADAPTER_FORMAT.to_string());
        st_meta.insert("head_fingerprint".into(), meta.head_fingerprint.clone());
        let weights = dir.join(WEIGHTS_FILE);
        pema_backbone::st::write_f32(&weights, &views, st_meta)?;
        let meta = AdapterMeta {
            weights_sha256: Some(pema_backbone::loader::sha256_files(&[weights])?),
            ..meta.clone()
        };
        write_json(&dir.join(CONFIG_FILE), &meta)
    }

    /// Loads an artifact written by [`PemaAdapter::save`] and checks it against `head`:
    /// an adapter trained against another head (different fingerprint or shape) is refused.
    pub fn load(
        dir: &Path,
        head: &FusedHead<B>,
        device: &B::Device,
    ) -> Result<(Self, AdapterMeta)> {
        let cfg_path = dir.join(CONFIG_FILE);
        let meta: AdapterMeta = read_json(&cfg_path)?;
        if meta.format != ADAPTER_FORMAT {
            return Err(AdapterError::Format {
                path: cfg_path,
                message: format!(
                    "unsupported adapter format `{}` (expected `{ADAPTER_FORMAT}`)",
                    meta.format
                ),
            });
        }
        if meta.head_fingerprint != head.fingerprint
            || meta.d != head.hidden_size()
            || meta.vocab != head.vocab_size()
        {
            return Err(AdapterError::HeadMismatch {
                path: cfg_path,
                expected: format!(
                    "{} (d {}, vocab {})",
                    meta.head_fingerprint, meta.d, meta.vocab
                ),
                found: format!(
                    "{} (d {}, vocab {})",
                    head.fingerprint,
                    head.hidden_size(),
                    head.vocab_size()
                ),
            });
        }
        let config = meta.adapter_config();
        config.validate()?;
        let path = dir.join(WEIGHTS_FILE);
        // Artifacts written before the checksum was recorded load without the check.
        if let Some(expected) = &meta.weights_sha256 {
            let found = pema_backbone::loader::sha256_files(std::slice::from_ref(&path))?;
            if &found != expected {
                return Err(AdapterError::Format {
                    path: path.clone(),
                    message: format!(
                        "sha256 {found} differs from the {expected} recorded in {}: the weights file is corrupt or was replaced",
                        cfg_path.display()
                    ),
                });
            }
        }
        let file = pema_backbone::st::StFile::open(&path)?;
        let (d, r) = (config.d, config.rank);
        let get = |name: &str, shape: [usize; 2]| -> Result<Vec<f32>> {
            let (v, s) = file.tensor_f32(name)?;
            if s != shape {
                return Err(AdapterError::Format {
                    path: path.clone(),
                    message: format!("tensor `{name}` has shape {s:?}, config implies {shape:?}"),
                });
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(AdapterError::Format {
                    path: path.clone(),
                    message: format!(
                        "tensor `{name}` has a non-finite value {} at index {i}",
                        v[i]
                    ),
                });
            }
            Ok(v)
        };
        let a = get("A", [r, d])?;
        let b_rct = get("B_rct", [d, r])?;
        let b_pd = get("B_pd", [d, r])?;
        let stats = match meta.key_norm {
            KeyNorm::None => None,
            KeyNorm::Standardize => {
                let mean = get("key_mean", [1, d])?;
                let std = get("key_std", [1, d])?;
                if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                    return Err(AdapterError::Format {
                        path: path.clone(),
                        message: "key_std has a non-positive or non-finite entry".into(),
                    });
                }
                Some(KeyStats::from_host(mean, std, device))
            }
        };
        Ok((
            Self::from_paper_layout(config, &a, &b_rct, &b_pd, device).with_key_stats(stats),
            meta,
        ))
    }
}

/// The adapter artifact's description (`adapter.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMeta {
    /// Always [`ADAPTER_FORMAT`].
    pub format: String,
    /// Version of pema that wrote the artifact.
    pub pema_version: String,
    /// Rank r.
    pub rank: usize,
    /// Scale s = 1/r.
    pub scale: f64,
    /// Training-time input dropout p.
    pub dropout: f64,
    /// Phase-2 reconstruction weight κ.
    pub kappa: f64,
    /// Hidden size d.
    pub d: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Fingerprint of the LM head the adapter was trained against.
    pub head_fingerprint: String,
    /// Model the head came from.
    pub head_model: String,
    /// Fingerprint of the training memory.
    pub memory_fingerprint: String,
    /// Fingerprint of the dev memory used for early stopping.
    pub dev_memory_fingerprint: String,
    /// Target/source length ratio estimated on the training data, when known (for
    /// leak-free Gradual Unrolling).
    pub length_ratio: Option<f64>,
    /// How keys enter the adapter (`none` for artifacts written before it existed).
    #[serde(default)]
    pub key_norm: KeyNorm,
    /// How h_pd is formed (`paper` for artifacts written before it existed).
    #[serde(default)]
    pub form: HpdForm,
    /// Training summary (best steps, losses, configuration).
    pub training: serde_json::Value,
    /// sha256 of the weights file, recorded by [`PemaAdapter::save`] and checked on load
    /// (absent in artifacts written before it existed: the check is then skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
}

impl AdapterMeta {
    /// The adapter shape recorded in the artifact.
    pub fn adapter_config(&self) -> AdapterConfig {
        AdapterConfig {
            d: self.d,
            vocab: self.vocab,
            rank: self.rank,
            dropout: self.dropout,
            kappa: self.kappa,
            form: self.form,
        }
    }
}

/// Host f32 copy of a tensor (row-major).
pub(crate) fn host<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Result<Vec<f32>> {
    t.to_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| AdapterError::Config(format!("cannot read tensor data: {e:?}")))
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
pub(crate) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = x[i * cols + j];
        }
    }
    out
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    Ok(pema_common::write_json_pretty(path, value)?)
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    Ok(pema_common::read_json(path)?)
}

#[cfg(test)]
mod tests;
