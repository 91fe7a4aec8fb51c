//! `--head-*` options shared by every command that reads the frozen LM head on the data
//! owner's side (train, tune-lambda, knn-tune, decode): the blockwise head of
//! [`pema_adapter::head_ce`].

use pema_adapter::{CePath, FusedHead, HeadCeConfig, HeadKernel, HeadPrecision};
use pema_backbone::LmHead;

/// How the blockwise head evaluates W_hd · norm(h).
#[derive(clap::Args, Debug, Clone)]
pub struct HeadArgs {
    /// Storage precision of W_hd: `f32` (exact), `f16` (half the memory: the CPU kernel
    /// multiplies in f32 on the f16-rounded weights; the tensor kernel needs a backend that
    /// holds f16) or `bf16` (bf16 products with f32 accumulation: AVX-512 BF16 on the CPU
    /// kernel, about twice f32's speed; bf16 tensors on GPUs).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub head_precision: PrecisionArg,
    /// Cross-entropy algorithm: `auto` (the cheaper exact one), `dense` or `low-rank`.
    #[arg(long, value_enum, default_value_t = PathArg::Auto)]
    pub ce_path: PathArg,
    /// Gradient filtering ε (Cut Cross-Entropy): vocabulary blocks where every |softmax −
    /// onehot| < ε are skipped in the backward product. Off (exact) by default.
    #[arg(long)]
    pub grad_filter: Option<f64>,
    /// Most logits held at once (rows of a chunk × vocabulary size).
    #[arg(long, default_value_t = 1 << 24, value_parser = crate::values::count)]
    pub head_chunk: usize,
    /// Implementation: `cpu` (host kernel: AVX-512/AVX2 products, fused softmax; the default
    /// on `--device cpu` for training and dev scoring), `tensor` (burn operations on the
    /// device; the default on GPUs and for decoding, where it shares the model's W_hd).
    #[arg(long, value_enum)]
    pub head_kernel: Option<KernelArg>,
}

/// `--head-kernel` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelArg {
    /// Host CPU kernel.
    Cpu,
    /// burn tensor operations.
    Tensor,
}

/// `--head-precision` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionArg {
    /// f32 (exact).
    F32,
    /// f16 storage.
    F16,
    /// bf16 products, f32 accumulation (AVX-512 BF16 on the CPU kernel).
    Bf16,
}

/// `--ce-path` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathArg {
    /// The cheaper exact path.
    Auto,
    /// norm(h) · W_hdᵀ.
    Dense,
    /// PEMA's rank-r form.
    LowRank,
}

impl HeadArgs {
    /// The configuration these options describe; `cpu_default` is the kernel used when
    /// `--head-kernel` is not given (true: the host CPU kernel).
    pub fn config(&self, cpu_default: bool) -> HeadCeConfig {
        let kernel = match self.head_kernel {
            Some(KernelArg::Cpu) => HeadKernel::Cpu,
            Some(KernelArg::Tensor) => HeadKernel::Tensor,
            None if cpu_default => HeadKernel::Cpu,
            None => HeadKernel::Tensor,
        };
        HeadCeConfig {
            kernel,
            chunk_elems: self.head_chunk,
            path: match self.ce_path {
                PathArg::Auto => CePath::Auto,
                PathArg::Dense => CePath::Dense,
                PathArg::LowRank => CePath::LowRank,
            },
            filter_eps: self.grad_filter,
            precision: match self.head_precision {
                PrecisionArg::F32 => HeadPrecision::F32,
                PrecisionArg::F16 => HeadPrecision::F16,
                PrecisionArg::Bf16 => HeadPrecision::Bf16,
            },
            ..HeadCeConfig::default()
        }
    }

    /// The blockwise view of a model's head for decoding: the tensor kernel unless
    /// `--head-kernel cpu` (it shares the model's W_hd instead of copying it).
    pub fn fused<B: burn::tensor::backend::Backend>(
        &self,
        head: &LmHead<B>,
    ) -> anyhow::Result<FusedHead<B>> {
        Ok(FusedHead::new(head, self.config(false))?)
    }

    /// Loads an exported head file into the blockwise head, W_hd held once in its storage
    /// (with the CPU kernel and f16, read from the file straight into f16).
    pub fn load<B: burn::tensor::backend::Backend>(
        &self,
        path: &std::path::Path,
        device: &B::Device,
        on_cpu: bool,
    ) -> anyhow::Result<FusedHead<B>> {
        use anyhow::Context;
        FusedHead::load(path, self.config(on_cpu), device)
            .with_context(|| format!("loading the LM head {}", path.display()))
    }
}
