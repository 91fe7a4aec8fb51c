//! Host kernels for the element-wise parts of a step that [`crate::kernels::CpuKernels`] takes
//! over: the gated feed-forward activation, RoPE and the transpose of the head's logits.
//!
//! On the CPU backend these run through burn's generic element-wise ops one element at a time
//! on one thread, between multi-threaded matrix products; a decoding step spent a third of its
//! time there (GELU's `powf` and `tanhf`, and strided copies of RoPE's half-views). Here they are
//! one pass over contiguous host rows, split over rayon's threads. Both are exact up to f32
//! rounding (GELU-tanh is written as `x·σ(2u)`, the same function as `½x(1 + tanh u)`).

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use rayon::prelude::*;

use crate::config::{Family, RopeLayout};

/// Rows of work per rayon task (small batches stay on one thread).
const CHUNK: usize = 16 * 1024;

fn host_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    crate::attention::host_vec(x.into_data())
}

/// `act(gate) ⊙ up` with the family's activation (GELU-tanh for Gemma 3, SiLU for Llama),
/// `gate, up: [n, ff]`. Falls back to burn's ops for f64 backends (the exact reference).
pub fn gated<B: Backend>(family: Family, gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    if gate.dtype() != DType::F32 {
        return gated_reference(family, gate, up);
    }
    let device = gate.device();
    let dims = gate.dims();
    let mut g = host_f32(gate);
    let u = host_f32(up);
    let f: fn(f32) -> f32 = match family {
        Family::Gemma3 => gelu_tanh_f32,
        Family::Llama => silu_f32,
    };
    g.par_chunks_mut(CHUNK)
        .zip(u.par_chunks(CHUNK))
        .for_each(|(g, u)| {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = f(*g) * u;
            }
        });
    Tensor::from_data(TensorData::new(g, dims), &device)
}

/// The same product through burn's ops (any backend, differentiable).
pub fn gated_reference<B: Backend>(
    family: Family,
    gate: Tensor<B, 2>,
    up: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let gate = match family {
        Family::Llama => burn::tensor::activation::silu(gate),
        Family::Gemma3 => crate::nn::gelu_tanh(gate),
    };
    gate * up
}

/// GELU with the tanh approximation: `½x(1 + tanh(√(2/π)(x + 0.044715x³))) = x·σ(2u)`.
#[inline]
pub fn gelu_tanh_f32(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    let u = K * (x + 0.044_715 * x * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

#[inline]
fn silu_f32(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Rotates `x: [n, heads, head_dim]` by the tables `cos, sin: [n, 1, head_dim/2]` in the given
/// layout, on the host (see [`crate::nn::Rope::apply_flat`] for the reference).
pub fn rope<B: Backend>(
    rope: &crate::nn::Rope,
    x: Tensor<B, 3>,
    cos: &Tensor<B, 3>,
    sin: &Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [n, h, hd] = x.dims();
    let half = hd / 2;
    if x.dtype() != DType::F32 || cos.dims() != [n, 1, half] || hd % 2 != 0 {
        return rope.apply_flat(x, cos, sin);
    }
    let layout = rope.layout;
    let device = x.device();
    let mut v = host_f32(x);
    let (c, s) = (host_f32(cos.clone()), host_f32(sin.clone()));
    let row = h * hd;
    v.par_chunks_mut(row.max(1))
        .zip(c.par_chunks(half.max(1)).zip(s.par_chunks(half.max(1))))
        .with_min_len((CHUNK / row.max(1)).max(1))
        .for_each(|(xs, (c, s))| {
            for head in xs.chunks_mut(hd) {
                for i in 0..half {
                    let (a, b) = match layout {
                        RopeLayout::Half => (i, i + half),
                        RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let (x1, x2) = (head[a], head[b]);
                    head[a] = x1 * c[i] - x2 * s[i];
                    head[b] = x2 * c[i] + x1 * s[i];
                }
            }
        });
    Tensor::from_data(TensorData::new(v, [n, h, hd]), &device)
}

/// PLM logits `[n, vocab]` as `(W_hd · norm(h)ᵀ)ᵀ` with a blocked host transpose: the product
/// keeps `W_hd` in its stored layout (the matrix library would otherwise repack 670 MB per
/// call) and the logits come out contiguous row by row, so the argmax and softmax that follow
/// read them in order instead of through a strided view.
pub fn head_logits<B: Backend>(head: &crate::head::LmHead<B>, h: Tensor<B, 2>) -> Tensor<B, 2> {
    let logits_t = head.weight.clone().matmul(head.norm(h).transpose());
    if logits_t.dtype() != DType::F32 {
        return logits_t.transpose();
    }
    let device = logits_t.device();
    let [vocab, n] = logits_t.dims();
    let src = host_f32(logits_t);
    let mut dst = vec![0f32; src.len()];
    const BLOCK: usize = 4096;
    dst.par_chunks_mut(vocab.max(1))
        .enumerate()
        .for_each(|(row, out)| {
            for (v0, block) in out.chunks_mut(BLOCK).enumerate() {
                let base = v0 * BLOCK;
                for (j, o) in block.iter_mut().enumerate() {
                    *o = src[(base + j) * n + row];
                }
            }
        });
    Tensor::from_data(TensorData::new(dst, [n, vocab]), &device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Rope;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    type B = NdArray<f32>;

    fn max_diff(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
        let a = a.into_data().into_vec::<f32>().expect("vec");
        let b = b.into_data().into_vec::<f32>().expect("vec");
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn gated_matches_burn_ops_for_both_families() {
        let dev = Default::default();
        let gate = Tensor::<B, 2>::random([7, 33], Distribution::Normal(0.0, 3.0), &dev);
        let up = Tensor::<B, 2>::random([7, 33], Distribution::Normal(0.0, 1.0), &dev);
        for family in [Family::Gemma3, Family::Llama] {
            let host = gated(family, gate.clone(), up.clone()).unsqueeze::<3>();
            let reference = gated_reference(family, gate.clone(), up.clone()).unsqueeze::<3>();
            assert!(max_diff(host, reference) < 1e-5, "{family:?}");
        }
    }

    #[test]
    fn head_logits_match_the_head_forward() {
        let dev = Default::default();
        let norm: Vec<f32> = (0..6).map(|i| 1.0 + 0.1 * i as f32).collect();
        let w: Vec<f32> = (0..37 * 6)
            .map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let head =
            crate::head::LmHead::<B>::from_host(norm, 1e-6, w, 37, "test", &dev).expect("head");
        let h = Tensor::<B, 2>::random([3, 6], Distribution::Normal(0.0, 1.0), &dev);
        let host = head_logits(&head, h.clone()).unsqueeze::<3>();
        assert!(max_diff(host, head.forward(h).unsqueeze::<3>()) < 1e-5);
    }

    #[test]
    fn host_rope_matches_the_reference_in_both_layouts() {
        let dev = Default::default();
        let (n, h, hd) = (5, 3, 8);
        let x = Tensor::<B, 3>::random([n, h, hd], Distribution::Normal(0.0, 1.0), &dev);
        for layout in [RopeLayout::Half, RopeLayout::Interleaved] {
            let r = Rope {
                theta: 10_000.0,
                scale: 1.0,
                layout,
            };
            let (c, s) = r.tables_flat::<B>(&[0, 1, 2, 9, 40], hd, &dev);
            let host = rope(&r, x.clone(), &c, &s);
            let reference = r.apply_flat(x.clone(), &c, &s);
            assert!(max_diff(host, reference) < 1e-6, "{layout:?}");
        }
    }
}
