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
//! W_hd may be stored in f16 ([`HeadPrecision::F16`]): half the bytes. The tensor kernel
//! casts activations to f16 for the product; the CPU kernel converts W_hd block by block to f32
//! and multiplies in f32 (the exact kernel on f16-rounded weights). [`FusedHead::load`] reads
//! a head file straight into f16, so the f32 copy is never resident.
//!
//! Two kernels run the same algorithm ([`HeadKernel`]): burn tensor operations, generic over
//! `B: Backend` (GPUs; `tensor.rs`), and a host CPU kernel ([`cpu`]: the `gemm` crate's
//! AVX-512/AVX2 products and a fused, vectorised softmax over one reused chunk buffer), which
//! a CPU binary selects. The autodiff graph sees
//! the result through [`crate::PemaAdapter::losses`], which injects these gradients with a
//! surrogate term (value 0, gradient exact).

pub mod bf16;
mod config;
pub mod cpu;
mod tensor;

pub use config::{CePath, HeadCeConfig, HeadKernel, HeadPrecision};

use std::path::Path;
use std::sync::Arc;

use burn::tensor::backend::DTypeUsage;
use burn::tensor::{
    DType, FloatDType, Int, Tensor, TensorData, backend::AutodiffBackend, backend::Backend,
};
use pema_backbone::LmHead;
use pema_backbone::head::HeadParts;

use crate::error::{AdapterError, Result};
use cpu::HostMat;
pub(crate) use tensor::chunk_stats;
use tensor::{TensorWeight, chunk_rows, float_dtype};

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

/// Where W_hd lives.
#[derive(Debug, Clone)]
enum Storage<B: Backend> {
    /// A backend tensor `[V, d]`.
    Tensor(TensorWeight<B>),
    /// Host memory `[V, d]` row-major (the CPU kernel), shared between views.
    Host { w: HostWeight, vocab: usize },
}

/// W_hd in host memory, in its storage precision.
#[derive(Debug, Clone)]
enum HostWeight {
    F32(Arc<Vec<f32>>),
    F16(Arc<Vec<half::f16>>),
    Bf16(Arc<bf16::PackedBf16>),
}

/// The low-rank matrix Mᵀ = W_hd · B_wᵀ (`[V, r]`) of an adapter, in the kernel's storage.
#[derive(Debug, Clone)]
pub enum LowRankMatrix<B: Backend> {
    /// A backend tensor.
    Tensor(Tensor<B, 2>),
    /// Host values, `[V, r]` row-major.
    Host {
        /// Values.
        mt: Vec<f32>,
        /// r.
        rank: usize,
    },
}

/// The frozen LM head (final RMSNorm + W_hd) as the data owner uses it for training and
/// evaluation: blockwise cross-entropy with an exact gradient, never `[batch, V]` logits.
#[derive(Debug, Clone)]
pub struct FusedHead<B: Backend> {
    storage: Storage<B>,
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
    /// The blockwise view of `head`: shares its tensor with the f32 tensor kernel, holds an
    /// f16 copy with f16 storage, and a host copy with the CPU kernel (use
    /// [`FusedHead::from_head`] to drop the original and hold W_hd once).
    pub fn new(head: &LmHead<B>, config: HeadCeConfig) -> Result<Self> {
        Self::from_head(head.clone(), config)
    }

    /// Takes `head` by value, so that W_hd is held once (in the chosen storage): with the CPU
    /// kernel the head's tensor is consumed into the host copy.
    pub fn from_head(head: LmHead<B>, config: HeadCeConfig) -> Result<Self> {
        config.validate()?;
        let LmHead {
            norm_weight,
            eps,
            weight,
            model,
            fingerprint,
        } = head;
        let device = weight.device();
        if let (HeadKernel::Tensor, Some(low)) = (config.kernel, config.precision.reduced_dtype()) {
            let usage = B::dtype_usage(&device, DType::from(low));
            if !(usage.contains(DTypeUsage::Storage) && usage.contains(DTypeUsage::Arithmetic)) {
                return Err(AdapterError::Config(format!(
                    "this backend cannot hold the head in {low:?} (use f32, or the CPU kernel)"
                )));
            }
        }
        let storage = match (config.kernel, config.precision) {
            (HeadKernel::Cpu, precision) => {
                let [vocab, d] = weight.dims();
                let values = host_f32(weight)?;
                let w = match precision {
                    HeadPrecision::F32 => HostWeight::F32(Arc::new(values)),
                    HeadPrecision::F16 => HostWeight::F16(Arc::new(cpu::narrow(&values))),
                    HeadPrecision::Bf16 => {
                        HostWeight::Bf16(Arc::new(bf16::PackedBf16::pack(&values, vocab, d)))
                    }
                };
                Storage::Host { w, vocab }
            }
            (HeadKernel::Tensor, HeadPrecision::F32) => Storage::Tensor(TensorWeight {
                weight,
                precision: HeadPrecision::F32,
            }),
            (HeadKernel::Tensor, low @ (HeadPrecision::F16 | HeadPrecision::Bf16)) => {
                Storage::Tensor(TensorWeight {
                    weight: weight.cast(low.reduced_dtype().unwrap_or(FloatDType::F32)),
                    precision: low,
                })
            }
        };
        Ok(Self {
            storage,
            norm_weight,
            eps,
            config,
            fingerprint,
            model,
        })
    }

    /// Reads an exported head file (see [`LmHead::save`]) into the blockwise head. With the
    /// CPU kernel and f16 storage W_hd goes from the file to f16 piece by piece, so the process
    /// never holds its f32 copy (peak: the f16 values and one 16 MiB piece).
    pub fn load(path: &Path, config: HeadCeConfig, device: &B::Device) -> Result<Self> {
        config.validate()?;
        if (config.kernel, config.precision) != (HeadKernel::Cpu, HeadPrecision::F16) {
            return Self::from_head(LmHead::load(path, device)?, config);
        }
        let parts = HeadParts::read(path, Vec::with_capacity, |w: &mut Vec<half::f16>, piece| {
            w.extend_from_slice(&cpu::narrow(piece))
        })?;
        let d = parts.norm_weight.len();
        Ok(Self {
            storage: Storage::Host {
                w: HostWeight::F16(Arc::new(parts.weight)),
                vocab: parts.vocab,
            },
            norm_weight: Tensor::from_data(TensorData::new(parts.norm_weight, [d]), device),
            eps: parts.eps,
            config,
            fingerprint: parts.fingerprint,
            model: parts.model,
        })
    }

    /// Hidden size d.
    pub fn hidden_size(&self) -> usize {
        self.norm_weight.dims()[0]
    }

    /// The device of the norm weight (and of every tensor this head returns).
    pub fn device(&self) -> B::Device {
        self.norm_weight.device()
    }

    /// Vocabulary size V.
    pub fn vocab_size(&self) -> usize {
        match &self.storage {
            Storage::Tensor(t) => t.vocab(),
            Storage::Host { vocab, .. } => *vocab,
        }
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

    /// Bytes held by W_hd in its storage.
    pub fn weight_bytes(&self) -> usize {
        if let Storage::Host {
            w: HostWeight::Bf16(p),
            ..
        } = &self.storage
        {
            return p.bytes();
        }
        let per = match self.config.precision {
            HeadPrecision::F32 => 4,
            HeadPrecision::F16 | HeadPrecision::Bf16 => 2,
        };
        self.vocab_size() * self.hidden_size() * per
    }

    /// The same head on the autodiff backend whose inner backend is `B` (constants: the head
    /// never receives a gradient).
    pub fn lift<AD: AutodiffBackend<InnerBackend = B>>(&self) -> FusedHead<AD> {
        let storage = match &self.storage {
            Storage::Tensor(t) => Storage::Tensor(TensorWeight {
                weight: Tensor::from_inner(t.weight.clone()),
                precision: t.precision,
            }),
            Storage::Host { w, vocab } => Storage::Host {
                w: w.clone(),
                vocab: *vocab,
            },
        };
        FusedHead {
            storage,
            norm_weight: Tensor::from_inner(self.norm_weight.clone()),
            eps: self.eps,
            config: self.config,
            fingerprint: self.fingerprint.clone(),
            model: self.model.clone(),
        }
    }

    /// Rows per chunk for this vocabulary.
    pub(crate) fn chunk_rows(&self) -> usize {
        chunk_rows(&self.config, self.vocab_size())
    }

    fn filter(&self) -> Option<(f32, usize)> {
        self.config
            .filter_eps
            .map(|e| (e as f32, self.config.filter_block))
    }

    fn host_w(&self) -> Option<cpu::Weight<'_>> {
        let (rows, cols) = (self.vocab_size(), self.hidden_size());
        match &self.storage {
            Storage::Host {
                w: HostWeight::F32(w),
                ..
            } => Some(cpu::Weight::F32(HostMat {
                data: w.as_slice(),
                rows,
                cols,
            })),
            Storage::Host {
                w: HostWeight::F16(w),
                ..
            } => Some(cpu::Weight::F16 {
                data: w.as_slice(),
                rows,
                cols,
            }),
            Storage::Host {
                w: HostWeight::Bf16(p),
                ..
            } => Some(cpu::Weight::Bf16(p)),
            Storage::Tensor(_) => None,
        }
    }

    /// The host weight, or an empty one (only called with host storage).
    fn host_weight(&self) -> cpu::Weight<'_> {
        self.host_w().unwrap_or(cpu::Weight::F32(HostMat {
            data: &[],
            rows: 0,
            cols: 0,
        }))
    }

    /// The path [`CePath::Auto`] takes for `n` rows (rank `r` when the low-rank form exists),
    /// with or without the gradient. The cost model counts multiply-adds, with the products
    /// whose inner dimension is r (ℓ = q·M, q·G) at a third of the speed of the d-wide ones
    /// (measured: small inner dimensions keep GEMM kernels memory-bound).
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
                const SMALL_K: f64 = 3.0;
                let (dense, low) = if grad {
                    (2.0 * n * d * v, 2.0 * r * d * v + SMALL_K * 3.0 * n * r * v)
                } else {
                    (n * d * v, r * d * v + SMALL_K * n * r * v)
                };
                if fits && low < dense {
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
        let (rows, d_normed) = match &self.storage {
            Storage::Tensor(t) => t.cross_entropy(normed, y, grad, &self.config),
            Storage::Host { .. } => {
                let [n, d] = normed.dims();
                let (dt, device) = (float_dtype(&normed), normed.device());
                let x = host_f32(normed).unwrap_or_default();
                let ys = host_ids(y);
                let w = self.host_weight();
                let out = cpu::cross_entropy(
                    HostMat {
                        data: &x,
                        rows: n,
                        cols: d,
                    },
                    w,
                    &ys,
                    self.chunk_rows(),
                    grad,
                    false,
                    self.filter(),
                );
                let dx = out.dx.map(|v| to_tensor(v, [n, d], dt, &device));
                (row_ce(out.nll, out.top1, dt, &device), dx)
            }
        };
        DenseCe { rows, d_normed }
    }

    /// Mᵀ = W_hd · B_wᵀ, `[V, r]`, for `bw: [r, d]` (= B_pd ⊙ w).
    pub fn low_rank_matrix(&self, bw: Tensor<B, 2>) -> LowRankMatrix<B> {
        match &self.storage {
            Storage::Tensor(t) => LowRankMatrix::Tensor(t.weight_times(bw.transpose())),
            Storage::Host { .. } => {
                let [r, d] = bw.dims();
                let b = host_f32(bw).unwrap_or_default();
                let w = self.host_weight();
                let mut mt = vec![0f32; w.rows() * r];
                cpu::weight_times(
                    w,
                    HostMat {
                        data: &b,
                        rows: r,
                        cols: d,
                    },
                    &mut mt,
                );
                LowRankMatrix::Host { mt, rank: r }
            }
        }
    }

    /// Logits q · M for `q: [n, r]` (= ρ ⊙ z), `[n, V]` (decoding batches).
    pub fn low_rank_logits(&self, q: Tensor<B, 2>, m: &LowRankMatrix<B>) -> Tensor<B, 2> {
        match m {
            LowRankMatrix::Tensor(mt) => q.matmul(mt.clone().transpose()),
            LowRankMatrix::Host { mt, rank } => {
                let [n, _] = q.dims();
                let (dt, device) = (float_dtype(&q), q.device());
                let x = host_f32(q).unwrap_or_default();
                let v = self.vocab_size();
                let mut out = vec![0f32; n * v];
                cpu::matmul_nt(
                    HostMat {
                        data: &x,
                        rows: n,
                        cols: *rank,
                    },
                    HostMat {
                        data: mt,
                        rows: v,
                        cols: *rank,
                    },
                    &mut out,
                );
                to_tensor(out, [n, v], dt, &device)
            }
        }
    }

    /// Per-row NLL and top-1 of the low-rank form ℓ = q · M (no gradient), in row chunks.
    pub fn low_rank_rows(
        &self,
        q: Tensor<B, 2>,
        m: &LowRankMatrix<B>,
        y: Tensor<B, 1, Int>,
    ) -> RowCe<B> {
        match (&self.storage, m) {
            (Storage::Tensor(t), LowRankMatrix::Tensor(mt)) => {
                t.cross_entropy_low_rank(q, mt.clone(), y, false, &self.config)
                    .0
            }
            _ => self.host_low_rank(q, m, y, false).0,
        }
    }

    #[allow(clippy::type_complexity)]
    fn host_low_rank(
        &self,
        q: Tensor<B, 2>,
        m: &LowRankMatrix<B>,
        y: Tensor<B, 1, Int>,
        grad: bool,
    ) -> (RowCe<B>, Option<Tensor<B, 2>>, Option<Tensor<B, 2>>) {
        let [n, r] = q.dims();
        let (dt, device) = (float_dtype(&q), q.device());
        let v = self.vocab_size();
        let owned;
        let mt: &[f32] = match m {
            LowRankMatrix::Host { mt, .. } => mt,
            LowRankMatrix::Tensor(t) => {
                owned = host_f32(t.clone()).unwrap_or_default();
                &owned
            }
        };
        let x = host_f32(q).unwrap_or_default();
        let out = cpu::cross_entropy(
            HostMat {
                data: &x,
                rows: n,
                cols: r,
            },
            cpu::Weight::F32(HostMat {
                data: mt,
                rows: v,
                cols: r,
            }),
            &host_ids(y),
            self.chunk_rows(),
            grad,
            grad,
            self.filter(),
        );
        let dq = out.dx.map(|d| to_tensor(d, [n, r], dt, &device));
        let dbw = match (out.dw_t, self.host_w()) {
            (Some(dm), Some(w)) => {
                let d = self.hidden_size();
                let mut g = vec![0f32; r * d];
                cpu::times_weight(
                    HostMat {
                        data: &dm,
                        rows: r,
                        cols: v,
                    },
                    w,
                    &mut g,
                );
                Some(to_tensor(g, [r, d], dt, &device))
            }
            _ => None,
        };
        (row_ce(out.nll, out.top1, dt, &device), dq, dbw)
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
        let m = self.low_rank_matrix(bw);
        let (rows, d_q, d_bw) = match (&self.storage, &m) {
            (Storage::Tensor(t), LowRankMatrix::Tensor(mt)) => {
                t.cross_entropy_low_rank(q, mt.clone(), y, grad, &self.config)
            }
            _ => self.host_low_rank(q, &m, y, grad),
        };
        LowRankCe { rows, d_q, d_bw }
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

    /// Full logits `norm(h) · W_hdᵀ` for a few rows (decoding batches): `[n, V]`.
    pub fn logits(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        let normed = self.norm(h);
        match &self.storage {
            Storage::Tensor(t) => t.logits_few_rows(normed),
            Storage::Host { .. } => {
                let [n, d] = normed.dims();
                let (dt, device) = (float_dtype(&normed), normed.device());
                let x = host_f32(normed).unwrap_or_default();
                let w = self.host_weight();
                let v = w.rows();
                let mut out = vec![0f32; n * v];
                cpu::logits(
                    HostMat {
                        data: &x,
                        rows: n,
                        cols: d,
                    },
                    w,
                    &mut out,
                );
                to_tensor(out, [n, v], dt, &device)
            }
        }
    }
}

fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| AdapterError::Config(format!("cannot read tensor data: {e:?}")))
}

fn host_ids<B: Backend>(y: Tensor<B, 1, Int>) -> Vec<u32> {
    y.into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.max(0) as u32)
        .collect()
}

fn to_tensor<B: Backend, const D: usize>(
    v: Vec<f32>,
    shape: [usize; D],
    dt: FloatDType,
    device: &B::Device,
) -> Tensor<B, D> {
    let t = Tensor::<B, D>::from_data(TensorData::new(v, shape), device);
    if dt == FloatDType::F32 { t } else { t.cast(dt) }
}

fn row_ce<B: Backend>(
    nll: Vec<f32>,
    top1: Vec<u32>,
    dt: FloatDType,
    device: &B::Device,
) -> RowCe<B> {
    let n = nll.len();
    let ids: Vec<i64> = top1.into_iter().map(i64::from).collect();
    RowCe {
        nll: to_tensor(nll, [n], dt, device),
        top1: Tensor::from_data(TensorData::new(ids, [n]), device),
    }
}

/// Builds `[n]` target ids on `device` from host values.
pub fn targets<B: Backend>(y: &[u32], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = y.iter().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(v, [y.len()]), device)
}
