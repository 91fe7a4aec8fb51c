//! Cross-entropy through the frozen LM head, computed blockwise: no caller ever holds the
//! `[batch, V]` logits of a whole batch.
//!
//! PEMA's prediction loss (paper §3) is
//!
//! ```text
//! L_pd = (1/n) Σ_i [ lse_v(ℓ_iv) − ℓ_{i,y_i} ],   ℓ = W_hd · norm(h_pd)
//! ```
//!
//! with a frozen `W_hd ∈ R^{V×d}` (Gemma 3: V = 262,144). [`FusedHead`] evaluates it over row
//! chunks of at most [`HeadCeConfig::chunk_elems`] logits (one chunk's logits are the only
//! `[rows, V]` tensor alive), and computes the gradient in the same pass, as Liger-Kernel's fused
//! linear cross-entropy does: for a chunk, G = softmax(ℓ) − onehot(y) and
//! `∂(Σ nll)/∂norm(h) = G · W_hd`. W_hd is frozen, so no `∂/∂W_hd` is ever formed.
//!
//! Two exact paths, chosen per call by their multiply-add count ([`CePath::Auto`]):
//!
//! - **dense**: ℓ = ĥ · W_hdᵀ with ĥ = norm(h); cost ≈ 2·n·d·V forward + backward.
//! - **low-rank**: PEMA's h_pd = z · B_pd has rank r, and RMSNorm only rescales rows, so
//!   ℓ_i = ρ_i · z_i · M with `M = (B_pd ⊙ w) · W_hdᵀ ∈ R^{r×V}` and ρ_i = 1/rms(h_i). With
//!   q = ρ ⊙ z and B_w = B_pd ⊙ w the op takes (q, B_w) and returns ∂/∂q = G·Mᵀ and
//!   ∂/∂B_w = (qᵀ·G)·W_hd; cost ≈ 2·r·d·V + 3·n·r·V, several times cheaper than dense when
//!   r ≪ d and n is large (Gemma: d = 640, r = 64). M and its gradient are `[V, r]` each, which
//!   caps the rank this path accepts ([`HeadCeConfig::low_rank_max_bytes`]).
//!
//! Optional gradient filtering (Apple's Cut Cross-Entropy): in the backward product
//! `G · W_hd`, vocabulary blocks where every |G| < ε are skipped. The loss is still exact; the
//! gradient drops at most ε per skipped entry. Off by default ([`HeadCeConfig::filter_eps`]).
//!
//! W_hd may be stored in f16 ([`HeadPrecision::F16`]): half the bytes, activations cast to f16
//! for the product, logits back in the caller's precision.
//!
//! Everything is burn tensor operations, generic over `B: Backend`; the autodiff graph sees
//! the result through [`crate::PemaAdapter::losses`], which injects these gradients with a
//! surrogate term (value 0, gradient exact).

use burn::tensor::backend::DTypeUsage;
use burn::tensor::{DType, FloatDType, Int, Tensor, backend::AutodiffBackend, backend::Backend};
use burn::tensor::{IndexingUpdateOp, TensorData};
use pema_backbone::LmHead;
use serde::{Deserialize, Serialize};

use crate::error::{AdapterError, Result};

/// Which exact algorithm computes the loss and its gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CePath {
    /// The cheaper of the two by multiply-add count (low-rank only within its memory cap).
    #[default]
    Auto,
    /// ℓ = norm(h) · W_hdᵀ, row chunk by row chunk.
    Dense,
    /// ℓ = (ρ ⊙ z) · M with M = (B_pd ⊙ w) · W_hdᵀ (PEMA's rank-r structure).
    LowRank,
}

/// Storage precision of W_hd inside [`FusedHead`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadPrecision {
    /// The exported head's f32 values (exact).
    #[default]
    F32,
    /// f16 storage (half the memory); products take f16 operands.
    F16,
}

/// Settings of the blockwise head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadCeConfig {
    /// Largest number of logits held at once (rows of a chunk × V). Default 2²² (16 MiB f32).
    pub chunk_elems: usize,
    /// Dense, low-rank, or the cheaper one.
    pub path: CePath,
    /// The low-rank path holds M and ∂M (`2·V·r` values); above this many bytes it is not used.
    pub low_rank_max_bytes: usize,
    /// Gradient filtering threshold ε (None: exact gradient).
    pub filter_eps: Option<f64>,
    /// Vocabulary block width of gradient filtering.
    pub filter_block: usize,
    /// Storage precision of W_hd.
    pub precision: HeadPrecision,
}

impl Default for HeadCeConfig {
    fn default() -> Self {
        Self {
            chunk_elems: 1 << 22,
            path: CePath::Auto,
            low_rank_max_bytes: 160 << 20,
            filter_eps: None,
            filter_block: 4096,
            precision: HeadPrecision::F32,
        }
    }
}

impl HeadCeConfig {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        if self.chunk_elems == 0 || self.filter_block == 0 {
            return Err(AdapterError::Config(
                "head chunk size and filter block must be positive".into(),
            ));
        }
        if let Some(e) = self.filter_eps
            && !(e.is_finite() && e > 0.0)
        {
            return Err(AdapterError::Config(format!(
                "gradient filter ε must be positive and finite, got {e}"
            )));
        }
        Ok(())
    }
}

/// Per-row results of a blockwise evaluation.
#[derive(Debug, Clone)]
pub struct RowCe<B: Backend> {
    /// −log P(y_i | c_i), `[n]`.
    pub nll: Tensor<B, 1>,
    /// argmax_v ℓ_iv, `[n]`.
    pub top1: Tensor<B, 1, Int>,
}

/// [`FusedHead::cross_entropy`]'s result.
#[derive(Debug, Clone)]
pub struct DenseCe<B: Backend> {
    /// Per-row NLL and top-1.
    pub rows: RowCe<B>,
    /// ∂(Σ_i nll_i)/∂norm(h), `[n, d]` (when asked for).
    pub d_normed: Option<Tensor<B, 2>>,
}

/// [`FusedHead::cross_entropy_low_rank`]'s result.
#[derive(Debug, Clone)]
pub struct LowRankCe<B: Backend> {
    /// Per-row NLL and top-1.
    pub rows: RowCe<B>,
    /// ∂(Σ_i nll_i)/∂q, `[n, r]` (when asked for).
    pub d_q: Option<Tensor<B, 2>>,
    /// ∂(Σ_i nll_i)/∂B_w, `[r, d]` (when asked for).
    pub d_bw: Option<Tensor<B, 2>>,
}

/// The frozen LM head (final RMSNorm + W_hd) as the data owner uses it for training and
/// evaluation: blockwise cross-entropy with an exact gradient, never `[batch, V]` logits.
#[derive(Debug, Clone)]
pub struct FusedHead<B: Backend> {
    /// W_hd `[V, d]` in the storage precision (the layout `ĥ · W_hdᵀ` reads without a copy).
    weight: Tensor<B, 2>,
    /// Final-norm weight `[d]` (`x · w` convention).
    norm_weight: Tensor<B, 1>,
    /// RMSNorm ε.
    pub eps: f64,
    /// Settings.
    pub config: HeadCeConfig,
    /// Fingerprint of the exported head (see [`LmHead`]).
    pub fingerprint: String,
    /// Model the head came from.
    pub model: String,
}

impl<B: Backend> FusedHead<B> {
    /// The blockwise view of `head` (shares its tensors in f32; one f16 copy otherwise).
    pub fn new(head: &LmHead<B>, config: HeadCeConfig) -> Result<Self> {
        config.validate()?;
        let device = head.weight.device();
        if config.precision == HeadPrecision::F16 {
            let usage = B::dtype_usage(&device, DType::F16);
            if !(usage.contains(DTypeUsage::Storage) && usage.contains(DTypeUsage::Arithmetic)) {
                return Err(AdapterError::Config(
                    "this backend cannot hold the head in f16 (use f32)".into(),
                ));
            }
        }
        let weight = match config.precision {
            HeadPrecision::F32 => head.weight.clone(),
            HeadPrecision::F16 => head.weight.clone().cast(FloatDType::F16),
        };
        Ok(Self {
            weight,
            norm_weight: head.norm_weight.clone(),
            eps: head.eps,
            config,
            fingerprint: head.fingerprint.clone(),
            model: head.model.clone(),
        })
    }

    /// Takes `head` by value: with f16 storage the f32 weights are dropped here, so W_hd is
    /// held once.
    pub fn from_head(head: LmHead<B>, config: HeadCeConfig) -> Result<Self> {
        Self::new(&head, config)
    }

    /// Hidden size d.
    pub fn hidden_size(&self) -> usize {
        self.norm_weight.dims()[0]
    }

    /// The device holding W_hd.
    pub fn device(&self) -> B::Device {
        self.weight.device()
    }

    /// Vocabulary size V.
    pub fn vocab_size(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The final-norm weight w, `[d]`.
    pub fn norm_weight(&self) -> Tensor<B, 1> {
        self.norm_weight.clone()
    }

    /// The final norm: `x · rsqrt(mean(x²) + ε) · w` over the last axis.
    pub fn norm(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        pema_backbone::head::rms_norm(h, self.norm_weight.clone(), self.eps)
    }

    /// ρ_i = 1/√(mean_j h_ij² + ε), `[n, 1]`: norm(h) = ρ ⊙ h ⊙ w.
    pub fn inverse_rms(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        h.powi_scalar(2)
            .mean_dim(1)
            .add_scalar(self.eps)
            .sqrt()
            .recip()
    }

    /// Bytes held by W_hd in its storage precision.
    pub fn weight_bytes(&self) -> usize {
        let per = match self.config.precision {
            HeadPrecision::F32 => 4,
            HeadPrecision::F16 => 2,
        };
        self.weight.dims().iter().product::<usize>() * per
    }

    /// The same head on the autodiff backend whose inner backend is `B` (constants: the head
    /// never receives a gradient).
    pub fn lift<AD: AutodiffBackend<InnerBackend = B>>(&self) -> FusedHead<AD> {
        FusedHead {
            weight: Tensor::from_inner(self.weight.clone()),
            norm_weight: Tensor::from_inner(self.norm_weight.clone()),
            eps: self.eps,
            config: self.config,
            fingerprint: self.fingerprint.clone(),
            model: self.model.clone(),
        }
    }

    /// Rows per chunk for this vocabulary.
    pub(crate) fn chunk_rows(&self) -> usize {
        (self.config.chunk_elems / self.vocab_size().max(1)).max(1)
    }

    /// `x · W_hdᵀ` for `x: [c, d]` → `[c, V]` in x's precision.
    pub(crate) fn times_weight_t(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let w = self.weight.clone().transpose();
        match self.config.precision {
            HeadPrecision::F32 => x.matmul(w),
            HeadPrecision::F16 => {
                let dt = float_dtype(&x);
                x.cast(FloatDType::F16).matmul(w).cast(dt)
            }
        }
    }

    /// `W_hd · x` for `x: [d, k]` → `[V, k]` in x's precision.
    pub(crate) fn weight_times(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.config.precision {
            HeadPrecision::F32 => self.weight.clone().matmul(x),
            HeadPrecision::F16 => {
                let dt = float_dtype(&x);
                self.weight.clone().matmul(x.cast(FloatDType::F16)).cast(dt)
            }
        }
    }

    /// `g · W_hd` for `g: [c, V]` → `[c, d]`, skipping filtered vocabulary blocks.
    fn times_weight(&self, g: Tensor<B, 2>) -> Tensor<B, 2> {
        let [c, v] = g.dims();
        let d = self.hidden_size();
        let Some(eps) = self.config.filter_eps else {
            return self.times_weight_block(g, 0, v);
        };
        let bw = self.config.filter_block.min(v);
        let nb = v.div_ceil(bw);
        // max |g| per vocabulary block (a ragged last block is reduced on its own).
        let full = v / bw;
        let mut block_max: Vec<f64> = Vec::with_capacity(nb);
        if full > 0 {
            let m = g
                .clone()
                .narrow(1, 0, full * bw)
                .abs()
                .reshape([c, full, bw])
                .max_dim(2)
                .max_dim(0)
                .reshape([full]);
            block_max.extend(host_f64(m));
        }
        if full < nb {
            let m = g.clone().narrow(1, full * bw, v - full * bw).abs().max();
            block_max.extend(host_f64(m));
        }
        let mut acc: Option<Tensor<B, 2>> = None;
        for (b, &m) in block_max.iter().enumerate() {
            if m < eps {
                continue;
            }
            let (s, len) = (b * bw, bw.min(v - b * bw));
            let part = self.times_weight_block(g.clone().narrow(1, s, len), s, len);
            acc = Some(match acc {
                Some(a) => a + part,
                None => part,
            });
        }
        acc.unwrap_or_else(|| Tensor::zeros([c, d], &g.device()))
    }

    fn times_weight_block(&self, g: Tensor<B, 2>, start: usize, len: usize) -> Tensor<B, 2> {
        let v = self.vocab_size();
        let w = if start == 0 && len == v {
            self.weight.clone()
        } else {
            self.weight.clone().narrow(0, start, len)
        };
        match self.config.precision {
            HeadPrecision::F32 => g.matmul(w),
            HeadPrecision::F16 => {
                let dt = float_dtype(&g);
                g.cast(FloatDType::F16).matmul(w).cast(dt)
            }
        }
    }

    /// The path [`CePath::Auto`] takes for `n` rows (rank `r` when the low-rank form exists),
    /// with or without the gradient.
    pub fn choose_path(&self, n: usize, rank: Option<usize>, grad: bool) -> CePath {
        let (d, v) = (self.hidden_size() as f64, self.vocab_size() as f64);
        let Some(r) = rank else {
            return CePath::Dense;
        };
        let fits = 2 * self.vocab_size() * r * 4 <= self.config.low_rank_max_bytes;
        match self.config.path {
            CePath::Dense => CePath::Dense,
            CePath::LowRank if fits => CePath::LowRank,
            CePath::LowRank => CePath::Dense,
            CePath::Auto => {
                let (n, r) = (n as f64, r as f64);
                let (dense, low) = if grad {
                    (2.0 * n * d * v, 2.0 * r * d * v + 3.0 * n * r * v)
                } else {
                    (n * d * v, r * d * v + n * r * v)
                };
                // The low-rank path also reads M and ∂M: require a clear margin.
                if fits && low * 1.25 < dense {
                    CePath::LowRank
                } else {
                    CePath::Dense
                }
            }
        }
    }

    /// Per-row NLL of `y` and top-1 under softmax(normed · W_hdᵀ), and optionally
    /// ∂(Σ nll)/∂normed, for already normalised rows `normed: [n, d]`. The inputs should carry
    /// no autodiff graph (detach them): this is a constant computation.
    pub fn cross_entropy(
        &self,
        normed: Tensor<B, 2>,
        y: Tensor<B, 1, Int>,
        grad: bool,
    ) -> DenseCe<B> {
        let [n, _] = normed.dims();
        let step = self.chunk_rows();
        let (mut nll, mut top1, mut dh) = (Vec::new(), Vec::new(), Vec::new());
        let mut s = 0;
        while s < n {
            let c = step.min(n - s);
            let logits = self.times_weight_t(normed.clone().narrow(0, s, c));
            let (rows, g) = chunk_stats(logits, y.clone().narrow(0, s, c), grad);
            nll.push(rows.nll);
            top1.push(rows.top1);
            if let Some(g) = g {
                dh.push(self.times_weight(g));
            }
            s += c;
        }
        DenseCe {
            rows: RowCe {
                nll: Tensor::cat(nll, 0),
                top1: Tensor::cat(top1, 0),
            },
            d_normed: grad.then(|| Tensor::cat(dh, 0)),
        }
    }

    /// The low-rank form: ℓ = q · M with M = B_w · W_hdᵀ, for `q: [n, r]` (= ρ ⊙ z) and
    /// `bw: [r, d]` (= B_pd ⊙ w). Returns per-row NLL and top-1, and optionally ∂(Σ nll)/∂q
    /// and ∂(Σ nll)/∂B_w. Inputs should carry no autodiff graph.
    pub fn cross_entropy_low_rank(
        &self,
        q: Tensor<B, 2>,
        bw: Tensor<B, 2>,
        y: Tensor<B, 1, Int>,
        grad: bool,
    ) -> LowRankCe<B> {
        let [n, _] = q.dims();
        // Mᵀ = W_hd · B_wᵀ, `[V, r]`: logits of a chunk are q_c · (Mᵀ)ᵀ.
        let mt = self.weight_times(bw.transpose());
        let step = self.chunk_rows();
        let (mut nll, mut top1, mut dq) = (Vec::new(), Vec::new(), Vec::new());
        let mut dmt: Option<Tensor<B, 2>> = None;
        let mut s = 0;
        while s < n {
            let c = step.min(n - s);
            let qc = q.clone().narrow(0, s, c);
            let logits = qc.clone().matmul(mt.clone().transpose());
            let (rows, g) = chunk_stats(logits, y.clone().narrow(0, s, c), grad);
            nll.push(rows.nll);
            top1.push(rows.top1);
            if let Some(g) = g {
                dq.push(g.clone().matmul(mt.clone()));
                let part = g.transpose().matmul(qc);
                dmt = Some(match dmt {
                    Some(a) => a + part,
                    None => part,
                });
            }
            s += c;
        }
        let d_bw = dmt.map(|dmt| self.times_weight_block(dmt.transpose(), 0, self.vocab_size()));
        LowRankCe {
            rows: RowCe {
                nll: Tensor::cat(nll, 0),
                top1: Tensor::cat(top1, 0),
            },
            d_q: grad.then(|| Tensor::cat(dq, 0)),
            d_bw,
        }
    }

    /// log P(y_i | ·) and top-1 for pre-norm rows `h: [n, d]` (the PLM's own distribution when
    /// h = f(c)), chunked: `[n]` and `[n]`.
    pub fn gold_log_probs(&self, h: Tensor<B, 2>, y: Tensor<B, 1, Int>) -> RowCe<B> {
        let rows = self.cross_entropy(self.norm(h), y, false).rows;
        RowCe {
            nll: rows.nll.neg(),
            top1: rows.top1,
        }
    }

    /// Calls `visit(start, log_probs)` for consecutive row chunks of `softmax(norm(h) ·
    /// W_hdᵀ)` in log space (`[c, V]` each, at most [`HeadCeConfig::chunk_elems`] values).
    pub fn for_each_log_softmax<E>(
        &self,
        h: Tensor<B, 2>,
        mut visit: impl FnMut(usize, Tensor<B, 2>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let [n, _] = h.dims();
        let step = self.chunk_rows();
        let mut s = 0;
        while s < n {
            let c = step.min(n - s);
            let logits = self.times_weight_t(self.norm(h.clone().narrow(0, s, c)));
            visit(s, burn::tensor::activation::log_softmax(logits, 1))?;
            s += c;
        }
        Ok(())
    }

    /// Full logits `norm(h) · W_hdᵀ` for a few rows (decoding batches): `[n, V]`.
    pub fn logits(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        self.times_weight_t(self.norm(h))
    }
}

/// NLL, top-1 and (optionally) G = softmax − onehot of one chunk of logits.
pub(crate) fn chunk_stats<B: Backend>(
    logits: Tensor<B, 2>,
    y: Tensor<B, 1, Int>,
    grad: bool,
) -> (RowCe<B>, Option<Tensor<B, 2>>) {
    let [c, _] = logits.dims();
    let y2 = y.reshape([c, 1]);
    let (m, top1) = logits.clone().max_dim_with_indices(1);
    let gold = logits.clone().gather(1, y2.clone());
    let e = (logits - m.clone()).exp();
    let sum = e.clone().sum_dim(1);
    let nll = (m + sum.clone().log() - gold).reshape([c]);
    let rows = RowCe {
        nll,
        top1: top1.reshape([c]),
    };
    if !grad {
        return (rows, None);
    }
    let p = e / sum;
    let minus_one = Tensor::<B, 2>::full([c, 1], -1.0, &p.device());
    let g = p.scatter(1, y2, minus_one, IndexingUpdateOp::Add);
    (rows, Some(g))
}

fn float_dtype<B: Backend>(x: &Tensor<B, 2>) -> FloatDType {
    match x.dtype() {
        DType::F64 => FloatDType::F64,
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        _ => FloatDType::F32,
    }
}

fn host_f64<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .unwrap_or_default()
}

/// Builds `[n]` target ids on `device` from host values.
pub fn targets<B: Backend>(y: &[u32], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = y.iter().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(v, [y.len()]), device)
}
