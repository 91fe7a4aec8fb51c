//! Packed quantised weights on the CPU: GGUF blocks kept as stored and multiplied directly.
//!
//! `y = x·Wᵀ` runs as llama.cpp does it: the activations are quantised to 8 bits per block of
//! 32 ([`act::QuantAct`]), each weight row is unpacked from its blocks into 8-bit codes with
//! a scale and a bias per 16 elements ([`unpack`]), and the products are integer dot products
//! ([`simd`]: AVX-512 VNNI, AVX2 or scalar, chosen at run time). Weights are exact; the only
//! approximation is the 8-bit activations (llama.cpp's as well).
//!
//! Supported: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K. Other types (F32, F16, …) stay on
//! the f32 path. Used through [`crate::kernels::CpuKernels`].

pub mod act;
#[cfg(target_arch = "x86_64")]
pub mod direct;
pub mod simd;
pub mod unpack;

use std::collections::HashMap;

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use rayon::prelude::*;

use crate::error::{BackboneError, Result};
use crate::gguf::{GgmlType, GgufFile};
use crate::kernels::Proj;
use act::QuantAct;
use simd::Simd;
use unpack::Unpacked;

/// A weight matrix `[rows (out), cols (in)]` kept in its GGUF blocks.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl PackedMatrix {
    /// Wraps the GGUF bytes of a `[rows, cols]` matrix of type `ty`.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let bad = |m: String| BackboneError::Weight {
            name: format!("packed {ty:?} [{rows}, {cols}]"),
            message: m,
        };
        if !unpack::supported(ty) {
            return Err(bad("type has no packed kernel".into()));
        }
        if cols == 0 || !cols.is_multiple_of(ty.block_elems()) {
            return Err(bad(format!(
                "{cols} columns is not a multiple of {}",
                ty.block_elems()
            )));
        }
        let row_bytes = cols / ty.block_elems() * ty.block_bytes();
        if data.len() != rows * row_bytes {
            return Err(bad(format!(
                "{} bytes, expected {}",
                data.len(),
                rows * row_bytes
            )));
        }
        Ok(Self {
            ty,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    /// Output size.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input size.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Block type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Bytes of the packed weights.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The GGUF blocks, row after row (what [`PackedMatrix::new`] takes back).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// `x · Wᵀ` for `x: [n, cols]` row-major → `[n, rows]`, with `simd` (falls back to scalar
    /// when the CPU lacks it).
    pub fn matmul(&self, x: &[f32], n: usize, simd: Simd) -> Vec<f32> {
        assert_eq!(
            x.len(),
            n * self.cols,
            "packed matmul: input is not [n, cols]"
        );
        let simd = if simd.available() { simd } else { Simd::Scalar };
        // As llama.cpp: one activation scale per 256 for K-quants (Q8_K), per 32 otherwise.
        let act = QuantAct::quantize_blocks(x, n, self.cols, self.ty.block_elems());
        let mut y = vec![0f32; n * self.rows];
        let work = self.rows * self.cols * n.max(4);
        let chunk_rows = if work < (1 << 20) {
            self.rows
        } else {
            (self.rows / (8 * rayon::current_num_threads().max(1))).clamp(8, 1024)
        };
        let chunks = self.rows.div_ceil(chunk_rows);
        let rows = self.rows;
        let dst = OutPtr(y.as_mut_ptr());
        let run = |ci: usize| {
            let r0 = ci * chunk_rows;
            let nr = chunk_rows.min(rows - r0);
            let bytes = &self.data[r0 * self.row_bytes..(r0 + nr) * self.row_bytes];
            // Results of this task's weight rows, [nr, n]; scattered into y [n, rows].
            let mut local = vec![0f32; nr * n];
            chunk(
                simd,
                self.ty,
                self.cols,
                bytes,
                self.row_bytes,
                &act,
                &mut local,
            );
            for (o, col) in local.chunks_exact(n).enumerate() {
                for (r, &v) in col.iter().enumerate() {
                    // SAFETY: `r·rows + r0 + o` < n·rows = y.len(), and each task writes only
                    // columns r0..r0+nr of y, disjoint from every other task's; y outlives the
                    // parallel loop.
                    unsafe { *dst.get().add(r * rows + r0 + o) = v };
                }
            }
        };
        if chunks == 1 {
            run(0);
        } else {
            (0..chunks).into_par_iter().for_each(run);
        }
        y
    }
}

/// The output pointer shared by the tasks of [`PackedMatrix::matmul`] (disjoint writes).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: tasks write disjoint elements through the pointer (see `matmul`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Unpacks each weight row of `bytes` and dots it with every activation row.
#[inline(always)]
fn chunk_generic(
    ty: GgmlType,
    cols: usize,
    bytes: &[u8],
    row_bytes: usize,
    act: &QuantAct,
    out: &mut [f32],
    dot: impl Fn(&Unpacked, &QuantAct, &mut [f32]),
) {
    let n = act.rows;
    let mut w = Unpacked::new(cols);
    for (row, o) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
        unpack::unpack_row(ty, row, &mut w);
        dot(&w, act, o);
    }
}

/// Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K: the types [`direct`] reads without unpacking.
#[cfg(target_arch = "x86_64")]
fn is_direct(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q4_K
            | GgmlType::Q5_K
    )
}

/// The [`direct`] kernel for `ty` ([`is_direct`]): AVX-512 VNNI when `wide`, else AVX2.
///
/// # Safety
/// The CPU must have the kernel's features; the arguments as [`direct::legacy_rows_avx2`].
#[cfg(target_arch = "x86_64")]
unsafe fn direct_rows(
    wide: bool,
    ty: GgmlType,
    cols: usize,
    bytes: &[u8],
    row_bytes: usize,
    act: &QuantAct,
    out: &mut [f32],
) {
    // Block bytes, has a min, 5-bit codes, K-quant sub-blocks.
    macro_rules! run {
        ($bb:literal, $min:literal, $high:literal, $k:literal) => {
            if wide {
                // SAFETY: this function's contract.
                unsafe {
                    direct::legacy_rows_avx512::<$bb, $min, $high, $k>(
                        cols, bytes, row_bytes, act, out,
                    )
                }
            } else {
                // SAFETY: this function's contract.
                unsafe {
                    direct::legacy_rows_avx2::<$bb, $min, $high, $k>(
                        cols, bytes, row_bytes, act, out,
                    )
                }
            }
        };
    }
    match ty {
        GgmlType::Q4_0 => run!(18, false, false, false),
        GgmlType::Q4_1 => run!(20, true, false, false),
        GgmlType::Q5_0 => run!(22, false, true, false),
        GgmlType::Q5_1 => run!(24, true, true, false),
        GgmlType::Q4_K => run!(144, true, false, true),
        GgmlType::Q5_K => run!(176, true, true, true),
        _ => unreachable!("direct_rows is only called for is_direct types"),
    }
}

fn chunk(
    simd: Simd,
    ty: GgmlType,
    cols: usize,
    bytes: &[u8],
    row_bytes: usize,
    act: &QuantAct,
    out: &mut [f32],
) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512Vnni if ty == GgmlType::Q8_0 => {
            // SAFETY: `matmul` only passes a `simd` the CPU has (`Simd::available`).
            unsafe { simd::q8_0_rows_avx512(cols, bytes, row_bytes, act, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512Vnni | Simd::Avx2 if is_direct(ty) => {
            // SAFETY: `matmul` only passes a `simd` the CPU has (`Simd::available`).
            unsafe {
                direct_rows(
                    simd == Simd::Avx512Vnni,
                    ty,
                    cols,
                    bytes,
                    row_bytes,
                    act,
                    out,
                )
            }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512Vnni => {
            // SAFETY: `matmul` only passes a `simd` the CPU has (`Simd::available`).
            unsafe { chunk_avx512(ty, cols, bytes, row_bytes, act, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 if ty == GgmlType::Q8_0 => {
            // SAFETY: `matmul` only passes a `simd` the CPU has (`Simd::available`).
            unsafe { direct::q8_0_rows_avx2(cols, bytes, row_bytes, act, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => {
            // SAFETY: as above.
            unsafe { chunk_avx2(ty, cols, bytes, row_bytes, act, out) }
        }
        _ => chunk_generic(ty, cols, bytes, row_bytes, act, out, simd::dot_rows_scalar),
    }
}

/// [`chunk_generic`] compiled for AVX-512 (the unpacking vectorises with it too).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
unsafe fn chunk_avx512(
    ty: GgmlType,
    cols: usize,
    bytes: &[u8],
    row_bytes: usize,
    act: &QuantAct,
    out: &mut [f32],
) {
    chunk_generic(ty, cols, bytes, row_bytes, act, out, |w, a, o| {
        // SAFETY: this function's contract (the CPU has AVX-512 F/BW/VNNI).
        unsafe { simd::dot_rows_avx512(w, a, o) }
    })
}

/// [`chunk_generic`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chunk_avx2(
    ty: GgmlType,
    cols: usize,
    bytes: &[u8],
    row_bytes: usize,
    act: &QuantAct,
    out: &mut [f32],
) {
    chunk_generic(ty, cols, bytes, row_bytes, act, out, |w, a, o| {
        // SAFETY: this function's contract (the CPU has AVX2 and FMA).
        unsafe { simd::dot_rows_avx2(w, a, o) }
    })
}

/// The packed weights of a model: every block projection and the head whose GGUF type has a
/// kernel.
#[derive(Debug, Default)]
pub struct PackedModel {
    linears: HashMap<(usize, Proj), PackedMatrix>,
    head: Option<PackedMatrix>,
    simd: Option<Simd>,
}

impl PackedModel {
    /// Reads the quantised projections (and the head: `output.weight`, else the tied
    /// `token_embd.weight`) of an `n_layers`-block model from `file`.
    pub fn from_gguf(file: &GgufFile, n_layers: usize) -> Result<Self> {
        let load = |name: &str| -> Result<Option<PackedMatrix>> {
            let Some(info) = file.tensor(name) else {
                return Ok(None);
            };
            let shape = info.shape();
            if shape.len() != 2 || !unpack::supported(info.ggml_type) {
                return Ok(None);
            }
            let bytes = file.tensor_bytes(name).map_err(|e| BackboneError::Weight {
                name: name.to_string(),
                message: e.to_string(),
            })?;
            PackedMatrix::new(info.ggml_type, shape[0], shape[1], bytes.to_vec()).map(Some)
        };
        let mut linears = HashMap::new();
        for layer in 0..n_layers {
            for proj in Proj::ALL {
                if let Some(m) = load(&proj.gguf_name(layer))? {
                    linears.insert((layer, proj), m);
                }
            }
        }
        let head = match load("output.weight")? {
            Some(m) => Some(m),
            None if file.tensor("output.weight").is_none() => load("token_embd.weight")?,
            None => None,
        };
        Ok(Self {
            linears,
            head,
            simd: None,
        })
    }

    /// Only a packed LM head (what a data owner receives to compute P_LM from f(c) exactly as
    /// the PLM owner's engine does).
    pub fn head_only(head: PackedMatrix) -> Self {
        Self {
            linears: HashMap::new(),
            head: Some(head),
            simd: None,
        }
    }

    /// Forces a kernel (tests, measurements); by default the best the CPU has.
    pub fn with_simd(mut self, simd: Simd) -> Self {
        self.simd = Some(simd);
        self
    }

    /// The kernel in use.
    pub fn simd(&self) -> Simd {
        self.simd.unwrap_or_else(Simd::detect)
    }

    /// The packed weight of projection `proj` of block `layer`, if packed.
    pub fn linear(&self, layer: usize, proj: Proj) -> Option<&PackedMatrix> {
        self.linears.get(&(layer, proj))
    }

    /// The packed LM head, if packed.
    pub fn head(&self) -> Option<&PackedMatrix> {
        self.head.as_ref()
    }

    /// Number of packed matrices and their bytes.
    pub fn summary(&self) -> (usize, usize) {
        let all = self.linears.values().chain(self.head.iter());
        all.fold((0, 0), |(n, b), m| (n + 1, b + m.bytes()))
    }
}

/// `x · Wᵀ` on any backend through host memory: `x: [n, cols]` → `[n, rows]` in `x`'s dtype.
pub fn matmul_tensor<B: Backend>(m: &PackedMatrix, simd: Simd, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let [n, cols] = x.dims();
    assert_eq!(
        cols, m.cols,
        "packed matmul: {cols} inputs for a [{}, {}] weight",
        m.rows, m.cols
    );
    let device = x.device();
    let is_f64 = x.dtype() == DType::F64;
    let host = x
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default();
    let y = m.matmul(&host, n, simd);
    let data = if is_f64 {
        TensorData::new(
            y.into_iter().map(f64::from).collect::<Vec<_>>(),
            [n, m.rows],
        )
    } else {
        TensorData::new(y, [n, m.rows])
    };
    Tensor::from_data(data, &device)
}
