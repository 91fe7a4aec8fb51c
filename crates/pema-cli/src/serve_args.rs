//! The library's serving options from the command line's (kept apart from `args.rs`, which
//! `pema-memory`'s CLI-glue test compiles on its own).

use crate::args::{ServeArgs, WeightsArg};

impl ServeArgs {
    /// The serving options for `max_batch` sequences at once, on the CPU or not.
    pub fn options(&self, max_batch: usize, on_cpu: bool) -> pema_pipeline::ServeOptions {
        pema_pipeline::ServeOptions {
            weights: self.weights.map(WeightsArg::cpu_weights),
            shared_prefix: !self.no_shared_prefix,
            max_batch,
            on_cpu,
        }
    }
}

impl WeightsArg {
    /// The library's name for these weights.
    pub fn cpu_weights(self) -> pema_pipeline::CpuWeights {
        match self {
            WeightsArg::Packed => pema_pipeline::CpuWeights::Packed,
            WeightsArg::F32 => pema_pipeline::CpuWeights::F32,
        }
    }
}

/// [`pema_pipeline::engine`], telling stderr which packed weights it multiplies with.
pub fn engine<'m, B: burn::tensor::backend::Backend>(
    model: &'m pema_backbone::model::Transformer<B>,
    model_dir: Option<&std::path::Path>,
    tok: &pema_backbone::PemaTokenizer,
    template: &pema_memory::PromptTemplate,
    serve: &pema_pipeline::ServeOptions,
    default_weights: pema_pipeline::CpuWeights,
) -> pema_pipeline::Result<(pema_backbone::Engine<'m, B>, pema_pipeline::EngineInfo)> {
    let (engine, info) =
        pema_pipeline::engine(model, model_dir, tok, template, serve, default_weights)?;
    if let Some(p) = &info.packed {
        eprintln!("packed weights: {p}");
    }
    Ok((engine, info))
}
