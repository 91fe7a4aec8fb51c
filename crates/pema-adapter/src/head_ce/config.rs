//! Settings of the blockwise head: which kernel, which exact path, W_hd's storage precision,
//! chunk sizes and the optional gradient filter.

use serde::{Deserialize, Serialize};

use crate::error::{AdapterError, Result};

/// Which implementation evaluates the blockwise head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKernel {
    /// burn tensor operations on the backend's device (any backend).
    #[default]
    Tensor,
    /// The host CPU kernel (W_hd held in host memory; inputs and outputs cross as host data).
    /// For CPU backends only: on a GPU it would copy every chunk to the host.
    Cpu,
}

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
    /// f16 storage (half the memory): the tensor kernel multiplies f16 operands, the CPU
    /// kernel converts W_hd to f32 block by block and multiplies in f32.
    F16,
    /// bf16 products with f32 accumulation: the CPU kernel holds W_hd packed twice for
    /// AVX-512 BF16 (V·d·4 bytes, as f32) and rounds X and G = softmax − onehot to bf16 for
    /// its two products (twice f32's rate per instruction, half its memory traffic); the
    /// tensor kernel multiplies bf16 operands on backends that hold bf16.
    Bf16,
}

impl HeadPrecision {
    /// The tensor element type of a reduced precision (None for f32).
    pub fn reduced_dtype(self) -> Option<burn::tensor::FloatDType> {
        match self {
            Self::F32 => None,
            Self::F16 => Some(burn::tensor::FloatDType::F16),
            Self::Bf16 => Some(burn::tensor::FloatDType::BF16),
        }
    }
}

/// Settings of the blockwise head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadCeConfig {
    /// Largest number of logits held at once (rows of a chunk × V). Default 2²⁴ (64 MiB f32:
    /// 64 rows of Gemma 3's vocabulary, enough rows for the products to run at full speed).
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
    /// Tensor operations or the host CPU kernel.
    #[serde(default)]
    pub kernel: HeadKernel,
}

impl Default for HeadCeConfig {
    fn default() -> Self {
        Self {
            chunk_elems: 1 << 24,
            path: CePath::Auto,
            low_rank_max_bytes: 160 << 20,
            filter_eps: None,
            filter_block: 4096,
            precision: HeadPrecision::F32,
            kernel: HeadKernel::Tensor,
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
