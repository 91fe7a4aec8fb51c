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
use std::path::{Path, PathBuf};

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

/// Per-dimension key statistics of the training memory: x = (f − μ)/σ.
#[derive(Debug, Clone)]
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

/// The adapter's weights on backend `B`.
#[derive(Debug, Clone)]
pub struct PemaAdapter<B: Backend> {
    /// Shape and regularisation.
    pub config: AdapterConfig,
    /// Aᵀ, `[d, r]` (the paper's A is `[r, d]`).
    pub a: Tensor<B, 2>,
    /// B_rctᵀ, `[r, d]`.
    pub b_rct: Tensor<B, 2>,
    /// B_pdᵀ, `[r, d]`.
    pub b_pd: Tensor<B, 2>,
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
            a: Tensor::from_data(TensorData::new(a, [d, r]), device),
            b_rct: Tensor::zeros([r, d], device),
            b_pd: Tensor::zeros([r, d], device),
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
            a: Tensor::from_data(TensorData::new(a, [d, r]), &device),
            b_rct: self.b_rct.clone(),
            b_pd: Tensor::zeros([r, d], &device),
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
        x.matmul(self.a.clone()).mul_scalar(self.config.scale())
    }

    /// h_pd without dropout: the representation decoded by the head at inference (B_pd·z,
    /// or f + σ ⊙ B_pd·z in the residual form).
    pub fn h_pd(&self, f: Tensor<B, 2>) -> Tensor<B, 2> {
        let z = self.bottleneck(f.clone(), false);
        self.form_h_pd(f, z)
    }

    /// h_pd from the key `f` and the bottleneck `z` under the adapter's [`HpdForm`].
    pub(crate) fn form_h_pd(&self, f: Tensor<B, 2>, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let delta = z.matmul(self.b_pd.clone());
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
        let h_rct = z.clone().matmul(self.b_rct.clone());
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
        let grad = self.a.is_require_grad() || self.b_pd.is_require_grad();
        // The low-rank form exists for the paper's h_pd = B_pd·z only.
        let rank = (self.config.form == HpdForm::Paper).then_some(self.config.rank);
        let (nll, top1, surrogate) = match head.choose_path(n, rank, grad) {
            CePath::LowRank => {
                let h_pd = z.clone().matmul(self.b_pd.clone());
                // ℓ_i = ρ_i · z_i · (B_pd ⊙ w) · W_hdᵀ.
                let q = z * head.inverse_rms(h_pd);
                let bw = self.b_pd.clone() * head.norm_weight().unsqueeze::<2>();
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
            a: Tensor::from_data(self.a.to_data(), device),
            b_rct: Tensor::from_data(self.b_rct.to_data(), device),
            b_pd: Tensor::from_data(self.b_pd.to_data(), device),
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
            a: Tensor::from_data(TensorData::new(transpose(a, r, d), [d, r]), device),
            b_rct: Tensor::from_data(TensorData::new(transpose(b_rct, d, r), [r, d]), device),
            b_pd: Tensor::from_data(TensorData::new(transpose(b_pd, d, r), [r, d]), device),
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
        let tmp = dir.join(format!("{WEIGHTS_FILE}.tmp"));
        pema_backbone::st::write_f32(&tmp, &views, st_meta)?;
        std::fs::rename(&tmp, &weights).map_err(|e| AdapterError::io(&weights, e))?;
        write_json(&dir.join(CONFIG_FILE), meta)
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
    let text = serde_json::to_string_pretty(value).map_err(|source| AdapterError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let tmp: PathBuf = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n").map_err(|e| AdapterError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| AdapterError::io(path, e))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| AdapterError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| AdapterError::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    //! Every test here runs on NdArray<f64>: burn 0.21 keeps one global default float dtype per
    //! process, so mixing f32 and f64 NdArray tests in one binary races.
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use pema_backbone::LmHead;

    type F = NdArray<f64>;
    type AD = Autodiff<F>;

    fn pseudo(n: usize, salt: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + 1.0) * 0.731 + salt).sin())
            .collect()
    }

    fn tiny_head<B: Backend>(d: usize, v: usize, dev: &B::Device) -> FusedHead<B> {
        tiny_head_with(d, v, CePath::Auto, dev)
    }

    /// A tiny head whose row chunks hold 2 rows, so that chunking is exercised.
    fn tiny_head_with<B: Backend>(
        d: usize,
        v: usize,
        path: CePath,
        dev: &B::Device,
    ) -> FusedHead<B> {
        let norm: Vec<f32> = (0..d).map(|i| 0.8 + 0.1 * i as f32).collect();
        let head = LmHead::from_host(norm, 1e-6, pseudo(v * d, 0.3), v, "tiny", dev).expect("head");
        let config = crate::HeadCeConfig {
            chunk_elems: 2 * v,
            path,
            ..Default::default()
        };
        FusedHead::new(&head, config).expect("fused head")
    }

    #[test]
    fn init_is_kaiming_uniform_and_zero_b() {
        let dev = Default::default();
        let cfg = AdapterConfig {
            d: 64,
            vocab: 5,
            rank: 8,
            dropout: 0.2,
            kappa: 0.2,
            form: Default::default(),
        };
        let ad = PemaAdapter::<NdArray<f64>>::new(cfg, 7, &dev).expect("adapter");
        let a = host(&ad.a).expect("a");
        let bound = 1.0 / 8.0; // 1/√64
        assert!(a.iter().all(|x| x.abs() <= bound));
        let max = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(max > 0.9 * bound, "uniform over the whole range, max {max}");
        assert!(host(&ad.b_rct).expect("b").iter().all(|x| *x == 0.0));
        assert!(host(&ad.b_pd).expect("b").iter().all(|x| *x == 0.0));
        assert_eq!(ad.num_params(), 3 * 64 * 8);
        assert_eq!(AdapterConfig::paper(2048, 10).rank * 2048 * 3, 3_145_728);
    }

    /// Central finite differences (f64) against autodiff for every weight of A, B_rct, B_pd,
    /// through both exact paths of the blockwise head (dense and low-rank), over 2-row chunks.
    #[test]
    fn gradients_match_finite_differences() {
        for (path, form) in [
            (CePath::Dense, HpdForm::Paper),
            (CePath::LowRank, HpdForm::Paper),
            (CePath::Auto, HpdForm::Residual),
        ] {
            gradients_match_finite_differences_on(path, form);
        }
    }

    fn gradients_match_finite_differences_on(path: CePath, form: HpdForm) {
        let dev = Default::default();
        let (d, r, v, n) = (5, 3, 7, 5);
        let cfg = AdapterConfig {
            d,
            vocab: v,
            rank: r,
            dropout: 0.2,
            kappa: 0.3,
            form,
        };
        let head = tiny_head_with::<AD>(d, v, path, &dev);
        let (a, b1, b2) = (pseudo(r * d, 0.1), pseudo(d * r, 0.2), pseudo(d * r, 0.4));
        let f: Vec<f32> = pseudo(n * d, 0.9).iter().map(|x| 2.0 * x).collect();
        let y = vec![1i64, 6, 0, 3, 6];
        let loss_of = |a: &[f32], b1: &[f32], b2: &[f32], grad: bool| {
            let mut ad = PemaAdapter::<AD>::from_paper_layout(cfg, a, b1, b2, &dev);
            if form == HpdForm::Residual {
                let (mean, std) = (pseudo(d, 0.6), pseudo(d, 0.8));
                let std = std.iter().map(|s| 0.5 + s.abs()).collect();
                ad = ad.with_key_stats(Some(KeyStats::from_host(mean, std, &dev)));
            }
            if grad {
                ad.a = ad.a.require_grad();
                ad.b_rct = ad.b_rct.require_grad();
                ad.b_pd = ad.b_pd.require_grad();
            }
            let ft = Tensor::<AD, 2>::from_data(TensorData::new(f.clone(), [n, d]), &dev);
            let yt = Tensor::<AD, 1, Int>::from_data(TensorData::new(y.clone(), [n]), &dev);
            let l = ad.losses(&head, ft, yt, Phase::Prediction, false);
            (ad, l.total)
        };
        let (ad, loss) = loss_of(&a, &b1, &b2, true);
        let grads = loss.backward();
        let g = |t: &Tensor<AD, 2>| {
            t.grad(&grads)
                .expect("grad")
                .into_data()
                .into_vec::<f64>()
                .expect("f64")
        };
        // Internal layouts are transposed: bring the gradients to the paper layout.
        let ga = transpose_f64(&g(&ad.a), d, r);
        let gb1 = transpose_f64(&g(&ad.b_rct), r, d);
        let gb2 = transpose_f64(&g(&ad.b_pd), r, d);
        let value = |a: &[f32], b1: &[f32], b2: &[f32]| {
            let (_, l) = loss_of(a, b1, b2, false);
            l.into_data().into_vec::<f64>().expect("f64")[0]
        };
        let h = 1e-3f32;
        let mut worst = 0.0f64;
        for which in 0..3 {
            let len = [a.len(), b1.len(), b2.len()][which];
            for i in 0..len {
                let (mut ap, mut b1p, mut b2p) = (a.clone(), b1.clone(), b2.clone());
                let (mut am, mut b1m, mut b2m) = (a.clone(), b1.clone(), b2.clone());
                let (p, m) = match which {
                    0 => (&mut ap[i], &mut am[i]),
                    1 => (&mut b1p[i], &mut b1m[i]),
                    _ => (&mut b2p[i], &mut b2m[i]),
                };
                *p += h;
                *m -= h;
                let hp = (*p as f64 - *m as f64) / 2.0;
                let fd = (value(&ap, &b1p, &b2p) - value(&am, &b1m, &b2m)) / (2.0 * hp);
                let an = [&ga, &gb1, &gb2][which][i];
                let err = (fd - an).abs() / (1e-4 + fd.abs().max(an.abs()));
                worst = worst.max(err);
                assert!(
                    err < 1e-4,
                    "{path:?} {form:?} param {which}[{i}]: fd {fd} vs autodiff {an}"
                );
            }
        }
        assert!(worst < 1e-4);
    }

    fn transpose_f64(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for i in 0..rows {
            for j in 0..cols {
                out[j * rows + i] = x[i * cols + j];
            }
        }
        out
    }

    /// The residual form starts as the PLM: with B_pd = 0, P_PEMA's logits are W_hd·norm(f).
    #[test]
    fn residual_form_starts_as_the_plm() {
        let dev = Default::default();
        let (d, v) = (6, 11);
        let head = tiny_head::<F>(d, v, &dev);
        let cfg = AdapterConfig {
            d,
            vocab: v,
            rank: 3,
            dropout: 0.2,
            kappa: 0.2,
            form: HpdForm::Residual,
        };
        let stats = KeyStats::from_host(vec![0.5; d], vec![2.0; d], &dev);
        let ad = PemaAdapter::<F>::new(cfg, 9, &dev)
            .expect("adapter")
            .with_key_stats(Some(stats));
        let f = Tensor::<F, 2>::from_data(TensorData::new(pseudo(3 * d, 0.2), [3, d]), &dev);
        let a = ad.logits(&head, f.clone()).into_data();
        let b = head.logits(f).into_data();
        a.assert_approx_eq::<f64>(&b, burn::tensor::Tolerance::absolute(1e-12));
    }

    #[test]
    fn dropout_only_in_training_and_inverted() {
        let dev = Default::default();
        let n = 400;
        let cfg = AdapterConfig {
            d: n,
            vocab: 3,
            rank: n,
            dropout: 0.5,
            kappa: 0.2,
            form: Default::default(),
        };
        let mut ad = PemaAdapter::<NdArray<f64>>::new(cfg, 1, &dev).expect("adapter");
        // A = identity: z = s·dropout(f) element by element.
        ad.a = Tensor::eye(n, &dev);
        let f = Tensor::<NdArray<f64>, 2>::ones([1, n], &dev);
        let s = 1.0 / n as f32;
        let eval = host(&ad.bottleneck(f.clone(), false)).expect("z");
        assert!(
            eval.iter().all(|&z| (z - s).abs() < 1e-9),
            "no dropout at inference"
        );
        let train = host(&ad.bottleneck(f, true)).expect("z");
        // Inverted dropout: kept entries are scaled by 1/(1−p) = 2, dropped ones are 0.
        let zeros = train.iter().filter(|&&z| z == 0.0).count();
        assert!(
            train
                .iter()
                .all(|&z| z == 0.0 || (z - 2.0 * s).abs() < 1e-9)
        );
        assert!(
            (120..280).contains(&zeros),
            "{zeros} of {n} dropped at p = 0.5"
        );
    }

    fn test_meta<B: Backend>(
        cfg: &AdapterConfig,
        head: &FusedHead<B>,
        key_norm: KeyNorm,
    ) -> AdapterMeta {
        AdapterMeta {
            format: ADAPTER_FORMAT.into(),
            pema_version: "test".into(),
            rank: cfg.rank,
            scale: cfg.scale(),
            dropout: cfg.dropout,
            kappa: cfg.kappa,
            d: cfg.d,
            vocab: cfg.vocab,
            head_fingerprint: head.fingerprint.clone(),
            head_model: head.model.clone(),
            memory_fingerprint: "m".into(),
            dev_memory_fingerprint: "dm".into(),
            length_ratio: Some(1.1),
            key_norm,
            form: cfg.form,
            training: serde_json::Value::Null,
        }
    }

    #[test]
    fn artifact_round_trips_and_refuses_another_head() {
        let dev = Default::default();
        type B = NdArray<f64>;
        let (d, v) = (6, 9);
        let head = tiny_head::<B>(d, v, &dev);
        let cfg = AdapterConfig {
            d,
            vocab: v,
            rank: 4,
            dropout: 0.2,
            kappa: 0.2,
            form: Default::default(),
        };
        let mut ad = PemaAdapter::<B>::new(cfg, 3, &dev).expect("adapter");
        ad.b_pd = Tensor::from_data(TensorData::new(pseudo(4 * d, 0.5), [4, d]), &dev);
        let meta = test_meta(&cfg, &head, KeyNorm::None);
        let dir = tempfile::tempdir().expect("tempdir");
        ad.save(dir.path(), &meta).expect("save");
        let (back, meta2) = PemaAdapter::<B>::load(dir.path(), &head, &dev).expect("load");
        assert_eq!(meta, meta2);
        assert_eq!(host(&back.a).expect("a"), host(&ad.a).expect("a"));
        assert_eq!(host(&back.b_pd).expect("b"), host(&ad.b_pd).expect("b"));
        let f = Tensor::<B, 2>::from_data(TensorData::new(pseudo(2 * d, 0.7), [2, d]), &dev);
        assert_eq!(
            host(&back.logits(&head, f.clone())).expect("l"),
            host(&ad.logits(&head, f)).expect("l")
        );
        // Another head (one weight changed) must be refused with a clear error.
        let mut w = pseudo(v * d, 0.3);
        w[0] += 1.0;
        let norm: Vec<f32> = (0..d).map(|i| 0.8 + 0.1 * i as f32).collect();
        let other = LmHead::<B>::from_host(norm, 1e-6, w, v, "tiny", &dev).expect("head");
        let other = FusedHead::new(&other, Default::default()).expect("fused");
        let err = PemaAdapter::<B>::load(dir.path(), &other, &dev).expect_err("must refuse");
        assert!(matches!(err, AdapterError::HeadMismatch { .. }));
        assert!(err.to_string().contains("refusing"), "{err}");
    }

    #[test]
    fn key_statistics_standardize_and_round_trip() {
        let dev = Default::default();
        type B = NdArray<f64>;
        let (d, v) = (3, 5);
        let head = tiny_head::<B>(d, v, &dev);
        let cfg = AdapterConfig {
            d,
            vocab: v,
            rank: 2,
            dropout: 0.0,
            kappa: 0.2,
            form: Default::default(),
        };
        let stats = KeyStats::<B>::from_host(vec![1.0, -2.0, 1000.0], vec![2.0, 0.5, 100.0], &dev);
        let mut ad = PemaAdapter::<B>::new(cfg, 1, &dev)
            .expect("adapter")
            .with_key_stats(Some(stats));
        ad.b_pd = Tensor::from_data(TensorData::new(pseudo(2 * d, 0.5), [2, d]), &dev);
        let f = Tensor::<B, 2>::from_data(TensorData::new(vec![3.0, -1.0, 1100.0], [1, d]), &dev);
        assert_eq!(
            host(&ad.standardize(f.clone())).expect("x"),
            vec![1.0, 2.0, 1.0]
        );
        let mut meta = test_meta(&cfg, &head, KeyNorm::None);
        let dir = tempfile::tempdir().expect("tempdir");
        // Metadata that contradicts the weights is refused.
        assert!(matches!(
            ad.save(dir.path(), &meta),
            Err(AdapterError::Config(_))
        ));
        meta.key_norm = KeyNorm::Standardize;
        ad.save(dir.path(), &meta).expect("save");
        let (back, _) = PemaAdapter::<B>::load(dir.path(), &head, &dev).expect("load");
        assert_eq!(
            host(&back.logits(&head, f.clone())).expect("l"),
            host(&ad.logits(&head, f)).expect("l")
        );
    }
}
