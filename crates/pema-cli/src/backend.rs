//! The one place where concrete burn backends are named.
//!
//! Library crates are generic over `B: Backend`; the binary picks one here. Every task runs on
//! an autodiff backend `B` (training needs it); inference code uses `B::InnerBackend`.

use anyhow::Result;
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

/// The CPU backend this binary is built with (inference; training wraps it in `Autodiff`).
#[cfg(feature = "flex")]
pub type CpuBackend = burn::backend::Flex;
/// The CPU backend this binary is built with (inference; training wraps it in `Autodiff`).
#[cfg(not(feature = "flex"))]
pub type CpuBackend = burn::backend::NdArray<f32>;

fn run_cpu<T: BackendTask>(task: T) -> Result<T::Output> {
    task.run::<burn::backend::Autodiff<CpuBackend>>(Default::default())
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
