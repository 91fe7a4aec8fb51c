//! Arguments shared by the commands that run the PLM over a pairs file.

use std::path::PathBuf;

/// The model, the pairs and the prompt template: what `decode`, `memory build` and
/// `lora train` read.
#[derive(clap::Args, Debug, Clone)]
pub struct TaskInput {
    /// Model directory (`model.gguf` + `tokenizer.json`, or the Hugging Face layout).
    #[arg(long, required_unless_present = "plm", conflicts_with = "plm")]
    pub model: Option<PathBuf>,
    /// The PLM owner's service (`pema serve`), e.g. `http://10.0.0.5:7878`, instead of
    /// `--model`: the PLM runs there and only prompts, f(c) and chosen token ids cross the
    /// wire. The bearer token comes from `--plm-token-file` or `PEMA_TOKEN`.
    #[arg(long)]
    pub plm: Option<String>,
    /// File holding the bearer token for `--plm` (default: the `PEMA_TOKEN` variable).
    #[arg(long, requires = "plm")]
    pub plm_token_file: Option<PathBuf>,
    /// PEM CA certificate to trust for an `https://` `--plm` (default: the web's roots).
    #[arg(long, requires = "plm")]
    pub plm_ca: Option<PathBuf>,
    /// Take P_LM from the server instead of computing it from the head: `K` (the top-K
    /// log-probabilities per row and step, 8·K bytes; the rest of the vocabulary gets no PLM
    /// mass) or `full` (4·V bytes per row and step). `1` is exact for greedy memory building
    /// and saves the client's head product. Default: computed here, exactly.
    #[arg(long, requires = "plm", value_parser = parse_log_probs)]
    pub plm_log_probs: Option<u32>,
    /// Pairs file: JSON lines with `source`/`target` (or the paper's `en`/`du`), or TSV.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Prompt template: `mt`, `formality`, or a file containing `{source}` (few-shot allowed).
    #[arg(long, default_value = "mt")]
    pub template: String,
}

/// `--plm-log-probs`: a positive count, or `full` (`u32::MAX`, the protocol's value for all).
fn parse_log_probs(s: &str) -> Result<u32, String> {
    match s {
        "full" => Ok(u32::MAX),
        k => match k.parse::<u32>() {
            Ok(k) if k > 0 && k < u32::MAX => Ok(k),
            _ => Err(format!("`{s}`: give a positive number of tokens or `full`")),
        },
    }
}

impl TaskInput {
    /// The model directory (`--model`), or an error naming the command that needs one.
    pub fn model_dir(&self, command: &str) -> anyhow::Result<&std::path::Path> {
        self.model.as_deref().ok_or_else(|| {
            anyhow::anyhow!("`{command}` needs the model's weights: give --model (not --plm)")
        })
    }
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
