//! The one place where concrete burn backends are named.
//!
//! Library crates are generic over `B: Backend`; the binary picks one here. Every task runs on
//! an autodiff backend `B` (training needs it); inference code uses `B::InnerBackend`.

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum DeviceArg {
    /// CPU: burn-flex (the default feature `flex`; measured 3–6× faster than burn-ndarray here,
    /// whose matmul copies both operands on every call), or burn-ndarray when built with
    /// `--no-default-features --features ndarray`.
    #[default]
    Cpu,
    /// Any GPU through wgpu (Vulkan/Metal); needs `--features wgpu`.
    Wgpu,
    /// NVIDIA GPU through CUDA; needs `--features cuda` and a driver at run time.
    Cuda,
}

/// A piece of work that can run on any autodiff backend.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs the task on backend `B` and `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Runs `task` on the backend selected by `device`.
pub fn dispatch<T: BackendTask>(device: DeviceArg, task: T) -> Result<T::Output> {
    match device {
        DeviceArg::Cpu => run_cpu(task),
        DeviceArg::Wgpu => run_wgpu(task),
        DeviceArg::Cuda => run_cuda(task),
    }
}

#[cfg(not(feature = "flex"))]
fn run_cpu<T: BackendTask>(task: T) -> Result<T::Output> {
    use burn::backend::{Autodiff, NdArray};
    task.run::<Autodiff<NdArray<f32>>>(Default::default())
}

#[cfg(feature = "flex")]
fn run_cpu<T: BackendTask>(task: T) -> Result<T::Output> {
    use burn::backend::{Autodiff, Flex};
    task.run::<Autodiff<Flex>>(Default::default())
}

#[cfg(feature = "wgpu")]
fn run_wgpu<T: BackendTask>(task: T) -> Result<T::Output> {
    use burn::backend::{Autodiff, Wgpu};
    task.run::<Autodiff<Wgpu>>(Default::default())
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu<T: BackendTask>(_task: T) -> Result<T::Output> {
    anyhow::bail!("this pema binary was built without GPU support: rebuild with `--features wgpu`")
}

#[cfg(feature = "cuda")]
fn run_cuda<T: BackendTask>(task: T) -> Result<T::Output> {
    use burn::backend::{Autodiff, Cuda};
    // Selecting the CUDA device without a driver panics inside cudarc: check first.
    let found = ["libcuda.so.1", "libcuda.so"].iter().any(|lib| {
        // SAFETY: loading the driver library only runs its initialisers, as cudarc would.
        unsafe { libloading_probe(lib) }
    });
    if !found {
        anyhow::bail!(
            "no CUDA driver found (libcuda.so.1 is not loadable); use `--device cpu` or run on a GPU machine \
             (and put /usr/local/cuda/lib64 on LD_LIBRARY_PATH for NVRTC)"
        );
    }
    task.run::<Autodiff<Cuda>>(Default::default())
}

#[cfg(feature = "cuda")]
unsafe fn libloading_probe(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    unsafe extern "C" {
        fn dlopen(filename: *const std::ffi::c_char, flag: i32) -> *mut std::ffi::c_void;
    }
    // RTLD_LAZY = 1
    let h = unsafe { dlopen(c.as_ptr(), 1) };
    !h.is_null()
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<T: BackendTask>(_task: T) -> Result<T::Output> {
    anyhow::bail!("this pema binary was built without CUDA support: rebuild with `--features cuda`")
}

/// An engine over `model` for `device`: CPU kernels on the CPU (with the packed weights of
/// `model_dir/model.gguf` unless `--weights f32` or `model_dir` is `None`, e.g. after a LoRA
/// merge), the reference elsewhere; at most `max_batch` sequences at once; the template's
/// prefix shared unless disabled.
#[allow(clippy::too_many_arguments)]
pub fn engine<'m, B: burn::tensor::backend::Backend>(
    model: &'m pema_backbone::Transformer<B>,
    model_dir: Option<&std::path::Path>,
    tok: &pema_backbone::PemaTokenizer,
    template: &pema_memory::PromptTemplate,
    device: DeviceArg,
    serve: &crate::args::ServeArgs,
    default_weights: crate::args::WeightsArg,
    max_batch: usize,
) -> anyhow::Result<pema_backbone::Engine<'m, B>> {
    let mut e = pema_backbone::Engine::new(model).with_max_batch(max_batch);
    if device == DeviceArg::Cpu {
        let gguf = model_dir
            .map(|d| d.join("model.gguf"))
            .filter(|p| p.is_file());
        let kernels = match (serve.weights.unwrap_or(default_weights), gguf) {
            (crate::args::WeightsArg::Packed, Some(path)) => {
                let file = pema_backbone::gguf::GgufFile::open(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let packed =
                    pema_backbone::packed::PackedModel::from_gguf(&file, model.config.n_layers)?;
                let (n, bytes) = packed.summary();
                eprintln!(
                    "packed weights: {n} matrices, {:.0} MB, {:?} kernels",
                    bytes as f64 / 1e6,
                    packed.simd()
                );
                pema_backbone::CpuKernels::with_packed(std::sync::Arc::new(packed))
            }
            _ => pema_backbone::CpuKernels::new(),
        };
        e = e.with_kernels(Box::new(kernels));
    }
    if !serve.no_shared_prefix {
        e.set_prefix(&template_prefix(tok, template)?)?;
    }
    Ok(e)
}

/// The template's fixed beginning (everything before `{source}`) as prompt tokens.
pub fn template_prefix(
    tok: &pema_backbone::PemaTokenizer,
    template: &pema_memory::PromptTemplate,
) -> anyhow::Result<Vec<u32>> {
    let head = template
        .text
        .split(pema_memory::template::SOURCE_PLACEHOLDER)
        .next()
        .unwrap_or("");
    Ok(tok.encode_prompt(head)?)
}
