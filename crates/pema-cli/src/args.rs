//! Arguments shared by the commands that run the PLM over a pairs file.

use std::path::PathBuf;

/// The model, the pairs and the prompt template: what `decode`, `memory build` and
/// `lora train` read.
#[derive(clap::Args, Debug, Clone)]
pub struct TaskInput {
    /// Model directory (`model.gguf` + `tokenizer.json`, or the Hugging Face layout).
    #[arg(long)]
    pub model: PathBuf,
    /// Pairs file: JSON lines with `source`/`target` (or the paper's `en`/`du`), or TSV.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Prompt template: `mt`, `formality`, or a file containing `{source}` (few-shot allowed).
    #[arg(long, default_value = "mt")]
    pub template: String,
}

/// How the PLM is served: shared prefix and kernels (`decode`, `memory build`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// CPU weights: `packed` multiplies the GGUF's quantised blocks directly (8-bit
    /// activations, as llama.cpp); `f32` uses the dequantised weights (the exact reference).
    /// Default: packed for `decode` (faster generation), f32 for `memory build` (prefill-bound,
    /// where the f32 GEMM is faster). GPU devices and HF-layout models always use f32.
    #[arg(long, value_enum)]
    pub weights: Option<WeightsArg>,
    /// Recompute the template's fixed beginning for every prompt instead of running it once
    /// and sharing its keys/values (same outputs; for measurements).
    #[arg(long)]
    pub no_shared_prefix: bool,
}

/// Which weights the CPU kernels multiply.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightsArg {
    /// Quantised GGUF blocks with integer dot products.
    #[default]
    Packed,
    /// Dequantised f32 weights.
    F32,
}
