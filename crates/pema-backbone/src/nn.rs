//! Building blocks shared by the model families: linear layers, RMSNorm, RoPE.

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::config::RopeLayout;
use crate::head::rms_norm;

/// A bias-free linear layer `y = x · Wᵀ`, stored as the contiguous transpose `Wᵀ` `[in, out]`.
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    /// `Wᵀ`, `[in, out]`.
    pub weight_t: Tensor<B, 2>,
}

impl<B: Backend> Linear<B> {
    /// From a row-major `[out, in]` weight (the GGUF / PyTorch convention).
    pub fn from_out_in(weight: Vec<f32>, out: usize, inp: usize, device: &B::Device) -> Self {
        let mut t = vec![0f32; out * inp];
        for o in 0..out {
            for i in 0..inp {
                t[i * out + o] = weight[o * inp + i];
            }
        }
        Self {
            weight_t: Tensor::from_data(TensorData::new(t, [inp, out]), device),
        }
    }

    /// `x: [n, in]` → `[n, out]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.weight_t.clone())
    }
}

/// RMSNorm with the weight in the `x · w` convention (Gemma's `+1` folded in at load time).
#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    /// Weight `[dim]`.
    pub weight: Tensor<B, 1>,
    /// Epsilon.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalises over the last axis.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        rms_norm(x, self.weight.clone(), self.eps)
    }
}

/// Rotary position embedding with a base θ and a linear scaling factor.
#[derive(Debug, Clone, Copy)]
pub struct Rope {
    /// Base θ.
    pub theta: f64,
    /// Linear position scaling (positions are divided by it).
    pub scale: f64,
    /// Dimension pairing.
    pub layout: RopeLayout,
}

impl Rope {
    /// cos and sin tables `[b, 1, t, head_dim/2]` for host positions `[b][t]`.
    pub fn tables<B: Backend>(
        &self,
        positions: &[Vec<usize>],
        head_dim: usize,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for row in positions {
            for &p in row {
                let p = p as f64 / self.scale;
                for i in 0..half {
                    let inv = self.theta.powf(-(2.0 * i as f64) / head_dim as f64);
                    let a = p * inv;
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
        (
            Tensor::from_data(TensorData::new(cos, [b, 1, t, half]), device),
            Tensor::from_data(TensorData::new(sin, [b, 1, t, half]), device),
        )
    }

    /// cos and sin tables `[n, 1, head_dim/2]` for the positions of a ragged batch's rows.
    pub fn tables_flat<B: Backend>(
        &self,
        positions: &[usize],
        head_dim: usize,
        device: &B::Device,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let n = positions.len();
        let half = head_dim / 2;
        let inv: Vec<f64> = (0..half)
            .map(|i| self.theta.powf(-(2.0 * i as f64) / head_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for &p in positions {
            let p = p as f64 / self.scale;
            for &f in &inv {
                let a = p * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        (
            Tensor::from_data(TensorData::new(cos, [n, 1, half]), device),
            Tensor::from_data(TensorData::new(sin, [n, 1, half]), device),
        )
    }

    /// Rotates `x: [n, heads, head_dim]` with tables from [`Rope::tables_flat`].
    pub fn apply_flat<B: Backend>(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 3>,
        sin: &Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let [n, h, hd] = x.dims();
        let half = hd / 2;
        let (c, s) = (cos.clone(), sin.clone());
        match self.layout {
            RopeLayout::Half => {
                let x1 = x.clone().narrow(2, 0, half);
                let x2 = x.narrow(2, half, half);
                let o1 = x1.clone() * c.clone() - x2.clone() * s.clone();
                let o2 = x2 * c + x1 * s;
                Tensor::cat(vec![o1, o2], 2)
            }
            RopeLayout::Interleaved => {
                let x = x.reshape([n, h, half, 2]);
                let e = x.clone().narrow(3, 0, 1).reshape([n, h, half]);
                let o = x.narrow(3, 1, 1).reshape([n, h, half]);
                let oe = e.clone() * c.clone() - o.clone() * s.clone();
                let oo = e * s + o * c;
                Tensor::stack::<4>(vec![oe, oo], 3).reshape([n, h, hd])
            }
        }
    }

    /// Rotates `x: [b, h, t, head_dim]` with tables from [`Rope::tables`].
    pub fn apply<B: Backend>(
        &self,
        x: Tensor<B, 4>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let [b, h, t, hd] = x.dims();
        let half = hd / 2;
        match self.layout {
            RopeLayout::Half => {
                let x1 = x.clone().narrow(3, 0, half);
                let x2 = x.narrow(3, half, half);
                let (c, s) = (cos.clone(), sin.clone());
                let o1 = x1.clone() * c.clone() - x2.clone() * s.clone();
                let o2 = x2 * c + x1 * s;
                Tensor::cat(vec![o1, o2], 3)
            }
            RopeLayout::Interleaved => {
                let x = x.reshape([b, h, t, half, 2]);
                let e = x.clone().narrow(4, 0, 1).reshape([b, h, t, half]);
                let o = x.narrow(4, 1, 1).reshape([b, h, t, half]);
                let (c, s) = (cos.clone(), sin.clone());
                let oe = e.clone() * c.clone() - o.clone() * s.clone();
                let oo = e * s + o * c;
                Tensor::stack::<5>(vec![oe, oo], 4).reshape([b, h, t, hd])
            }
        }
    }
}

/// GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::gelu_approximate(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tolerance};

    type B = NdArray<f32>;

    /// The interleaved layout on permuted Q equals the half layout on the original Q: this is
    /// exactly llama.cpp's Q/K permutation, so both paths must agree.
    #[test]
    fn interleaved_rope_matches_half_rope_under_llama_cpp_permutation() {
        let dev = Default::default();
        let hd = 8;
        let x = Tensor::<B, 4>::random([2, 3, 5, hd], Distribution::Normal(0.0, 1.0), &dev);
        // permute: half-layout index j*hd/2 + i → interleaved index 2i + j
        let data = x.to_data().into_vec::<f32>().expect("vec");
        let mut perm = vec![0f32; data.len()];
        for row in 0..data.len() / hd {
            for i in 0..hd / 2 {
                for j in 0..2 {
                    perm[row * hd + 2 * i + j] = data[row * hd + j * hd / 2 + i];
                }
            }
        }
        let xp = Tensor::<B, 4>::from_data(TensorData::new(perm, [2, 3, 5, hd]), &dev);
        let pos = vec![vec![0, 1, 2, 3, 4], vec![7, 8, 9, 10, 11]];
        let half = Rope {
            theta: 10_000.0,
            scale: 1.0,
            layout: RopeLayout::Half,
        };
        let inter = Rope {
            layout: RopeLayout::Interleaved,
            ..half
        };
        let (c, s) = half.tables::<B>(&pos, hd, &dev);
        let a = half
            .apply(x, &c, &s)
            .to_data()
            .into_vec::<f32>()
            .expect("vec");
        let b = inter
            .apply(xp, &c, &s)
            .to_data()
            .into_vec::<f32>()
            .expect("vec");
        for row in 0..a.len() / hd {
            for i in 0..hd / 2 {
                for j in 0..2 {
                    let d = a[row * hd + j * hd / 2 + i] - b[row * hd + 2 * i + j];
                    assert!(d.abs() < 1e-5, "mismatch {d}");
                }
            }
        }
        let _ = Tolerance::<f32>::default();
    }
}
