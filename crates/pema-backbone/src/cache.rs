//! The key/value cache: one growable store per sequence ([`SeqKv`]), so that sequences of a
//! batch can have different lengths, join and leave at any step (continuous batching) and start
//! from a copy of a shared prefix.
//!
//! Appending never copies what is already cached: host stores grow like `Vec` (amortised O(1)
//! per token) and tensor stores keep spare capacity that new keys are written into
//! (`slice_assign`), doubling when full. [`KvCache`] is the batch-level view kept for the
//! left-padded [`crate::model::Transformer::forward`] API.

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// Keys and values of one layer of one sequence.
#[derive(Debug, Clone)]
pub enum LayerKv<B: Backend> {
    /// Nothing cached yet.
    Empty,
    /// Burn tensors `[n_kv, capacity, head_dim]`; slots `0..len` are valid (any backend).
    Tensor {
        /// Keys.
        k: Tensor<B, 3>,
        /// Values.
        v: Tensor<B, 3>,
    },
    /// Host memory, row-major `[len, n_kv, head_dim]` (CPU kernels).
    Host(HostKv),
}

/// Host keys/values in the backend's float precision.
#[derive(Debug, Clone)]
pub enum HostKv {
    /// f32 (and f16/bf16 backends, computed in f32).
    F32 {
        /// Keys `[len, n_kv, head_dim]`.
        k: Vec<f32>,
        /// Values `[len, n_kv, head_dim]`.
        v: Vec<f32>,
    },
    /// f64 backends.
    F64 {
        /// Keys `[len, n_kv, head_dim]`.
        k: Vec<f64>,
        /// Values `[len, n_kv, head_dim]`.
        v: Vec<f64>,
    },
}

/// The cache of one sequence: every layer's keys and values for positions `0..len`.
#[derive(Debug, Clone)]
pub struct SeqKv<B: Backend> {
    /// Per layer.
    pub layers: Vec<LayerKv<B>>,
    /// Number of cached positions.
    pub len: usize,
}

impl<B: Backend> SeqKv<B> {
    /// An empty cache for `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![LayerKv::Empty; n_layers],
            len: 0,
        }
    }

    /// A copy holding only the first `n` positions (`n ≤ len`): a shared prefix's cache cut to
    /// the part a prompt has in common with it. Keys and values at positions `< n` depend only
    /// on tokens `< n`, so the copy is exact.
    pub fn truncated(&self, n: usize) -> Self {
        let n = n.min(self.len);
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                LayerKv::Empty => LayerKv::Empty,
                LayerKv::Tensor { k, v } => LayerKv::Tensor {
                    k: k.clone().narrow(1, 0, n),
                    v: v.clone().narrow(1, 0, n),
                },
                LayerKv::Host(h) => LayerKv::Host(h.truncated(n, self.len)),
            })
            .collect();
        Self { layers, len: n }
    }
}

impl HostKv {
    /// An empty store in the precision of `dtype`.
    pub fn empty(f64: bool) -> Self {
        if f64 {
            HostKv::F64 {
                k: Vec::new(),
                v: Vec::new(),
            }
        } else {
            HostKv::F32 {
                k: Vec::new(),
                v: Vec::new(),
            }
        }
    }

    fn truncated(&self, n: usize, len: usize) -> Self {
        fn cut<T: Clone>(x: &[T], n: usize, len: usize) -> Vec<T> {
            let row = x.len().checked_div(len).unwrap_or(0);
            x[..n * row].to_vec()
        }
        match self {
            HostKv::F32 { k, v } => HostKv::F32 {
                k: cut(k, n, len),
                v: cut(v, n, len),
            },
            HostKv::F64 { k, v } => HostKv::F64 {
                k: cut(k, n, len),
                v: cut(v, n, len),
            },
        }
    }
}

impl<B: Backend> LayerKv<B> {
    /// Appends `k, v: [n_kv, t, hd]` after `len` cached slots (tensor store) and returns the
    /// keys and values of all `len + t` slots.
    pub fn append_tensor(
        &mut self,
        len: usize,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [nkv, t, hd] = k.dims();
        let total = len + t;
        let (mut kb, mut vb) = match std::mem::replace(self, LayerKv::Empty) {
            LayerKv::Tensor { k, v } => (k, v),
            LayerKv::Host(h) => host_to_tensor::<B>(&h, len, nkv, hd, &k.device()),
            LayerKv::Empty => {
                // The first chunk is stored as is (no spare capacity): a single full forward,
                // e.g. training through the model, never copies.
                *self = LayerKv::Tensor {
                    k: k.clone(),
                    v: v.clone(),
                };
                return (k, v);
            }
        };
        let cap = kb.dims()[1];
        if total > cap {
            let new_cap = (2 * cap).max(total).max(16);
            let device = kb.device();
            let grow = |x: Tensor<B, 3>| {
                let pad = Tensor::<B, 3>::zeros([nkv, new_cap - len, hd], &device);
                Tensor::cat(vec![x.narrow(1, 0, len), pad], 1)
            };
            kb = grow(kb);
            vb = grow(vb);
        }
        let kb = kb.slice_assign([0..nkv, len..total, 0..hd], k);
        let vb = vb.slice_assign([0..nkv, len..total, 0..hd], v);
        let out = (
            kb.clone().narrow(1, 0, total),
            vb.clone().narrow(1, 0, total),
        );
        *self = LayerKv::Tensor { k: kb, v: vb };
        out
    }
}

fn host_to_tensor<B: Backend>(
    h: &HostKv,
    len: usize,
    nkv: usize,
    hd: usize,
    device: &B::Device,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let make = |data: TensorData| {
        Tensor::<B, 3>::from_data(data, device)
            .reshape([len, nkv, hd])
            .swap_dims(0, 1)
    };
    match h {
        HostKv::F32 { k, v } => (
            make(TensorData::new(k.clone(), [len, nkv, hd])),
            make(TensorData::new(v.clone(), [len, nkv, hd])),
        ),
        HostKv::F64 { k, v } => (
            make(TensorData::new(k.clone(), [len, nkv, hd])),
            make(TensorData::new(v.clone(), [len, nkv, hd])),
        ),
    }
}

/// The cache of a left-padded batch for [`crate::model::Transformer::forward`]: one
/// [`SeqKv`] per sequence, plus each sequence's left padding (padding is never cached).
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// Per sequence.
    pub seqs: Vec<SeqKv<B>>,
    /// Number of left-padding slots of each sequence.
    pub pad: Vec<usize>,
    /// Number of slots fed so far (padding included).
    pub len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `n_layers` layers and a batch with the given left padding.
    pub fn new(n_layers: usize, pad: Vec<usize>) -> Self {
        Self {
            seqs: pad.iter().map(|_| SeqKv::new(n_layers)).collect(),
            pad,
            len: 0,
        }
    }

    /// Batch size.
    pub fn batch_size(&self) -> usize {
        self.pad.len()
    }

    /// Keeps only the sequences at `keep` (batch indices), e.g. to drop finished ones.
    pub fn retain(&mut self, keep: &[usize]) {
        self.seqs = keep.iter().map(|&i| self.seqs[i].clone()).collect();
        self.pad = keep.iter().map(|&i| self.pad[i]).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn t(vals: Vec<f32>, shape: [usize; 3]) -> Tensor<B, 3> {
        Tensor::from_data(TensorData::new(vals, shape), &Default::default())
    }

    #[test]
    fn tensor_store_appends_in_place_and_grows() {
        let mut l = LayerKv::<B>::Empty;
        let mut len = 0;
        let mut want: Vec<f32> = Vec::new();
        for step in 0..40 {
            let n = if step == 0 { 3 } else { 1 };
            let vals: Vec<f32> = (0..2 * n * 2).map(|i| (step * 100 + i) as f32).collect();
            let (k, v) =
                l.append_tensor(len, t(vals.clone(), [2, n, 2]), t(vals.clone(), [2, n, 2]));
            // expected: per head h, slots appended in order
            let mut heads: Vec<Vec<f32>> = (0..2)
                .map(|h| {
                    want.chunks(2)
                        .skip(h)
                        .step_by(2)
                        .flatten()
                        .copied()
                        .collect()
                })
                .collect();
            for h in 0..2 {
                heads[h].extend_from_slice(&vals[h * n * 2..(h + 1) * n * 2]);
            }
            len += n;
            let got = k.into_data().into_vec::<f32>().expect("vec");
            assert_eq!(got, heads.concat(), "step {step}");
            assert_eq!(v.dims(), [2, len, 2]);
            // rebuild `want` as [len, head, hd] interleaving
            want = (0..len)
                .flat_map(|s| (0..2).flat_map(move |h| [(h, s, 0), (h, s, 1)]))
                .map(|(h, s, i)| heads[h][s * 2 + i])
                .collect();
        }
        let LayerKv::Tensor { k, .. } = &l else {
            panic!("tensor store expected")
        };
        assert!(k.dims()[1] >= len && k.dims()[1] < 2 * len + 16);
    }
}
