//! The blockwise head in burn tensor operations, for any backend (GPUs, and the reference for
//! the host kernel): row chunks of logits, softmax statistics and G = softmax − onehot by tensor
//! ops, the products by the backend's matmul.

use burn::tensor::{DType, FloatDType, IndexingUpdateOp, Int, Tensor, backend::Backend};

use super::{HeadCeConfig, HeadPrecision, RowCe};

/// W_hd held as a tensor `[V, d]` in its storage precision.
#[derive(Debug, Clone)]
pub(crate) struct TensorWeight<B: Backend> {
    pub(crate) weight: Tensor<B, 2>,
    pub(crate) precision: HeadPrecision,
}

impl<B: Backend> TensorWeight<B> {
    pub(crate) fn vocab(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x · W_hdᵀ` for `x: [c, d]` → `[c, V]` in x's precision.
    pub(crate) fn times_weight_t(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let w = self.weight.clone().transpose();
        match self.precision.reduced_dtype() {
            None => x.matmul(w),
            Some(low) => {
                let dt = float_dtype(&x);
                x.cast(low).matmul(w).cast(dt)
            }
        }
    }

    /// Decoding's logits for a few rows: `(W_hd · xᵀ)ᵀ` in f32, which CPU GEMMs run several
    /// times faster at that shape than `x · W_hdᵀ`. The summation order differs from the
    /// training product (on Gemma's heavily cancelling logits, ~10⁻⁴ relative), so the loss
    /// and its gradient never take this path.
    pub(crate) fn logits_few_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.precision {
            HeadPrecision::F32 if x.dims()[0] < 64 => {
                self.weight.clone().matmul(x.transpose()).transpose()
            }
            _ => self.times_weight_t(x),
        }
    }

    /// `W_hd · x` for `x: [d, k]` → `[V, k]` in x's precision.
    pub(crate) fn weight_times(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.precision.reduced_dtype() {
            None => self.weight.clone().matmul(x),
            Some(low) => {
                let dt = float_dtype(&x);
                self.weight.clone().matmul(x.cast(low)).cast(dt)
            }
        }
    }

    /// `g · W_hd[start..start+len]` for `g: [c, len]` → `[c, d]`.
    pub(crate) fn times_weight_block(
        &self,
        g: Tensor<B, 2>,
        start: usize,
        len: usize,
    ) -> Tensor<B, 2> {
        let w = if start == 0 && len == self.vocab() {
            self.weight.clone()
        } else {
            self.weight.clone().narrow(0, start, len)
        };
        match self.precision.reduced_dtype() {
            None => g.matmul(w),
            Some(low) => {
                let dt = float_dtype(&g);
                g.cast(low).matmul(w).cast(dt)
            }
        }
    }

    /// `g · W_hd` for `g: [c, V]` → `[c, d]`, skipping filtered vocabulary blocks.
    pub(crate) fn times_weight(&self, g: Tensor<B, 2>, cfg: &HeadCeConfig) -> Tensor<B, 2> {
        let [c, v] = g.dims();
        let d = self.weight.dims()[1];
        let Some(eps) = cfg.filter_eps else {
            return self.times_weight_block(g, 0, v);
        };
        let bw = cfg.filter_block.min(v);
        let nb = v.div_ceil(bw);
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

    /// Dense path: per-row NLL and top-1 of normalised rows, and ∂(Σ nll)/∂normed.
    pub(crate) fn cross_entropy(
        &self,
        normed: Tensor<B, 2>,
        y: Tensor<B, 1, Int>,
        grad: bool,
        cfg: &HeadCeConfig,
    ) -> (RowCe<B>, Option<Tensor<B, 2>>) {
        let [n, _] = normed.dims();
        let step = chunk_rows(cfg, self.vocab());
        let (mut nll, mut top1, mut dh) = (Vec::new(), Vec::new(), Vec::new());
        let mut s = 0;
        while s < n {
            let c = step.min(n - s);
            let logits = self.times_weight_t(normed.clone().narrow(0, s, c));
            let (rows, g) = chunk_stats(logits, y.clone().narrow(0, s, c), grad);
            nll.push(rows.nll);
            top1.push(rows.top1);
            if let Some(g) = g {
                dh.push(self.times_weight(g, cfg));
            }
            s += c;
        }
        (
            RowCe {
                nll: Tensor::cat(nll, 0),
                top1: Tensor::cat(top1, 0),
            },
            grad.then(|| Tensor::cat(dh, 0)),
        )
    }

    /// Low-rank path with Mᵀ = W_hd·B_wᵀ: NLL, top-1, ∂/∂q and ∂/∂B_w.
    #[allow(clippy::type_complexity)]
    pub(crate) fn cross_entropy_low_rank(
        &self,
        q: Tensor<B, 2>,
        mt: Tensor<B, 2>,
        y: Tensor<B, 1, Int>,
        grad: bool,
        cfg: &HeadCeConfig,
    ) -> (RowCe<B>, Option<Tensor<B, 2>>, Option<Tensor<B, 2>>) {
        let [n, _] = q.dims();
        let step = chunk_rows(cfg, self.vocab());
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
        let d_bw = dmt.map(|dmt| self.times_weight_block(dmt.transpose(), 0, self.vocab()));
        (
            RowCe {
                nll: Tensor::cat(nll, 0),
                top1: Tensor::cat(top1, 0),
            },
            grad.then(|| Tensor::cat(dq, 0)),
            d_bw,
        )
    }
}

/// Rows per chunk for a vocabulary of `vocab`.
pub(crate) fn chunk_rows(cfg: &HeadCeConfig, vocab: usize) -> usize {
    (cfg.chunk_elems / vocab.max(1)).max(1)
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

pub(crate) fn float_dtype<B: Backend>(x: &Tensor<B, 2>) -> FloatDType {
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
