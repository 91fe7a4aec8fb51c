//! Packed quantised weights on the CPU (work in progress).

use std::collections::HashMap;

use burn::tensor::{Tensor, backend::Backend};

use crate::kernels::Proj;

/// A weight matrix kept in its GGUF blocks.
#[derive(Debug)]
pub struct PackedMatrix {
    rows: usize,
}

/// Packed weights of a model.
#[derive(Debug, Default)]
pub struct PackedModel {
    linears: HashMap<(usize, Proj), PackedMatrix>,
    head: Option<PackedMatrix>,
}

impl PackedModel {
    /// The packed weight of projection `proj` of block `layer`, if packed.
    pub fn linear(&self, layer: usize, proj: Proj) -> Option<&PackedMatrix> {
        self.linears.get(&(layer, proj))
    }

    /// The packed LM head, if packed.
    pub fn head(&self) -> Option<&PackedMatrix> {
        self.head.as_ref()
    }
}

/// `x · Wᵀ` with packed `W`.
pub fn matmul_tensor<B: Backend>(m: &PackedMatrix, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let _ = m.rows;
    x
}
