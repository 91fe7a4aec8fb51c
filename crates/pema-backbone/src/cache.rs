//! The key/value cache, passed explicitly into [`crate::model::Transformer::forward`].

use burn::tensor::{Tensor, backend::Backend};

/// Per-layer keys and values of a batch, plus the left padding of each sequence.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// Number of left-padding slots of each sequence.
    pub pad: Vec<usize>,
    /// Number of cached slots (padding included).
    pub len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `n_layers` layers and a batch with the given left padding.
    pub fn new(n_layers: usize, pad: Vec<usize>) -> Self {
        Self {
            layers: vec![None; n_layers],
            pad,
            len: 0,
        }
    }

    /// Batch size.
    pub fn batch_size(&self) -> usize {
        self.pad.len()
    }

    /// Appends `k, v: [b, n_kv, t, hd]` to layer `il` and returns the full keys and values.
    pub fn append(
        &mut self,
        il: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (k, v) = match self.layers[il].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
        };
        self.layers[il] = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Keeps only the sequences at `keep` (batch indices), e.g. to drop finished ones.
    pub fn retain(&mut self, keep: &[usize]) {
        if keep.len() == self.pad.len() {
            return;
        }
        let device = self.layers.iter().flatten().next().map(|(k, _)| k.device());
        if let Some(device) = device {
            let idx = Tensor::<B, 1, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(
                    keep.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                    [keep.len()],
                ),
                &device,
            );
            for layer in self.layers.iter_mut().flatten() {
                layer.0 = layer.0.clone().select(0, idx.clone());
                layer.1 = layer.1.clone().select(0, idx.clone());
            }
        }
        self.pad = keep.iter().map(|&i| self.pad[i]).collect();
    }
}
