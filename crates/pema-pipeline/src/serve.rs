//! Serving the PLM over a pairs file: the [`Engine`] with its CPU kernels, batch size and the
//! few-shot template's shared prefix. Used by decoding and memory construction alike.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use pema_backbone::packed::PackedModel;
use pema_backbone::{CpuKernels, Engine, PemaTokenizer, Transformer, gguf::GgufFile};
use pema_memory::PromptTemplate;
use pema_memory::template::SOURCE_PLACEHOLDER;

use crate::error::Result;

/// Which weights the CPU kernels multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuWeights {
    /// The GGUF's quantised blocks with integer dot products (8-bit activations, as
    /// llama.cpp): faster generation.
    #[default]
    Packed,
    /// The dequantised f32 weights (the exact reference; faster for prefill-bound work).
    F32,
}

/// How the PLM is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// CPU weights; `None` takes the use case's default.
    pub weights: Option<CpuWeights>,
    /// Run the template's fixed beginning once and share its keys/values (same outputs).
    pub shared_prefix: bool,
    /// Most sequences in one batch (continuous batching).
    pub max_batch: usize,
    /// Whether the model runs on the CPU (CPU kernels; elsewhere the reference path).
    pub on_cpu: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            weights: None,
            shared_prefix: true,
            max_batch: 8,
            on_cpu: true,
        }
    }
}

/// What an engine was built with (for logs and summaries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// The packed weights, described ("N matrices, M MB, … kernels"), when they are used.
    pub packed: Option<String>,
    /// Shared prefix length in tokens.
    pub prefix_tokens: usize,
}

/// An engine over `model`: CPU kernels on the CPU, with the packed weights of
/// `model_dir/model.gguf` when the weights are packed and the file exists (a LoRA-merged model
/// passes `None`: its weights are not the GGUF's), the reference path elsewhere; the template's
/// prefix shared unless disabled. `default_weights` applies when `serve.weights` is `None`.
pub fn engine<'m, B: Backend>(
    model: &'m Transformer<B>,
    model_dir: Option<&Path>,
    tok: &PemaTokenizer,
    template: &PromptTemplate,
    serve: &ServeOptions,
    default_weights: CpuWeights,
) -> Result<(Engine<'m, B>, EngineInfo)> {
    pema_memory::validate_batch_size(serve.max_batch)?;
    let mut e = Engine::new(model).with_max_batch(serve.max_batch);
    let mut info = EngineInfo {
        packed: None,
        prefix_tokens: 0,
    };
    if serve.on_cpu {
        let gguf = model_dir
            .map(|d| d.join("model.gguf"))
            .filter(|p| p.is_file());
        let kernels = match (serve.weights.unwrap_or(default_weights), gguf) {
            (CpuWeights::Packed, Some(path)) => {
                let file =
                    GgufFile::open(&path).map_err(|source| pema_backbone::BackboneError::Gguf {
                        path: path.clone(),
                        source,
                    })?;
                let packed = PackedModel::from_gguf(&file, model.config.n_layers)?;
                let (n, bytes) = packed.summary();
                info.packed = Some(format!(
                    "{n} matrices, {:.0} MB, {:?} kernels",
                    bytes as f64 / 1e6,
                    packed.simd()
                ));
                CpuKernels::with_packed(Arc::new(packed))
            }
            _ => CpuKernels::new(),
        };
        e = e.with_kernels(Box::new(kernels));
    }
    if serve.shared_prefix {
        e.set_prefix(&template_prefix(tok, template)?)?;
        info.prefix_tokens = e.prefix_len();
    }
    Ok((e, info))
}

/// The template's fixed beginning (everything before `{source}`) as prompt tokens.
pub fn template_prefix(tok: &PemaTokenizer, template: &PromptTemplate) -> Result<Vec<u32>> {
    let head = template.text.split(SOURCE_PLACEHOLDER).next().unwrap_or("");
    Ok(tok.encode_prompt(head)?)
}
