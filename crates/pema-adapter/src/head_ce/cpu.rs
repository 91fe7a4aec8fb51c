//! The blockwise head on the host CPU: the same algorithm as the tensor path
//! ([`super::tensor`]), with the two products done by the `gemm` crate (AVX-512 or AVX2 chosen
//! at run time) and the softmax of a row chunk fused into two vectorised passes over a reused
//! buffer, instead of one tensor allocation per elementwise operation.
//!
//! A row chunk of c rows: ℓ = X_c · Wᵀ into the buffer (`[c, V]`); per row, pass 1 finds the
//! maximum m and the argmax, pass 2 writes e = exp(ℓ − m) and sums it (s); the NLL is
//! m + ln s − ℓ_y; with the gradient, pass 3 scales e by 1/s and subtracts 1 at y, giving
//! G = softmax − onehot in place, and ∂X_c = G · W. W is `[V, k]` row-major: W_hd for the dense
//! path (k = d), Mᵀ for the low-rank one (k = r).
//!
//! W_hd may be held in bf16 ([`Weight::Bf16`]): the two dense products then run on AVX-512
//! BF16 ([`super::bf16`]). Or in f16 ([`Weight::F16`]): every product then walks W in blocks of
//! [`F16_BLOCK_ROWS`] rows, each converted to f32 (F16C when the CPU has it) into a small
//! reused buffer and multiplied in f32, so the arithmetic is the f32 kernel's on the f16-rounded
//! weights. A chunk of c rows pays one conversion of W per product against 2·c multiply-adds
//! per weight, a few per cent of the step at c = 64.

use gemm::Parallelism;
use rayon::prelude::*;

/// A row-major matrix on the host.
#[derive(Debug, Clone, Copy)]
pub struct HostMat<'a> {
    /// Values, `rows × cols`.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

/// W_hd on the host, `[rows, cols]` row-major, in its storage precision.
#[derive(Debug, Clone, Copy)]
pub enum Weight<'a> {
    /// f32 values (used in place).
    F32(HostMat<'a>),
    /// bf16 values packed for AVX-512 BF16 products (see [`super::bf16`]); other products
    /// widen blocks to f32.
    Bf16(&'a super::bf16::PackedBf16),
    /// f16 values, converted block by block for each product.
    F16 {
        /// Values, `rows × cols`.
        data: &'a [half::f16],
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
}

/// Rows of an f16 weight converted at once (Gemma 3: 2,048 × 640 f32 = 5 MiB).
pub const F16_BLOCK_ROWS: usize = 2048;

impl<'a> Weight<'a> {
    /// Rows (V).
    pub fn rows(&self) -> usize {
        match self {
            Self::F32(m) => m.rows,
            Self::Bf16(p) => p.rows(),
            Self::F16 { rows, .. } => *rows,
        }
    }

    /// Columns (d).
    pub fn cols(&self) -> usize {
        match self {
            Self::F32(m) => m.cols,
            Self::Bf16(p) => p.cols(),
            Self::F16 { cols, .. } => *cols,
        }
    }

    /// Calls `f(first_row, block)` for consecutive row blocks of W as f32 that together cover
    /// every row: the whole matrix at once when it is f32 (no copy), blocks of at most
    /// `block_rows` rows converted into `scratch` when it is f16. `keep(first, len)` false
    /// skips a block (its rows are not converted).
    fn for_each_block(
        &self,
        block_rows: usize,
        scratch: &mut Vec<f32>,
        mut keep: impl FnMut(usize, usize) -> bool,
        mut f: impl FnMut(usize, HostMat<'_>),
    ) {
        match *self {
            Self::F32(m) if block_rows >= m.rows => {
                if keep(0, m.rows) {
                    f(0, m);
                }
            }
            Self::F32(m) => {
                let mut start = 0;
                while start < m.rows {
                    let len = block_rows.min(m.rows - start);
                    if keep(start, len) {
                        let data = &m.data[start * m.cols..(start + len) * m.cols];
                        f(
                            start,
                            HostMat {
                                data,
                                rows: len,
                                cols: m.cols,
                            },
                        );
                    }
                    start += len;
                }
            }
            Self::Bf16(p) => widened_blocks(
                p.rows(),
                p.cols(),
                block_rows,
                scratch,
                keep,
                f,
                |start, len, dst| p.widen_rows(start, len, dst),
            ),
            Self::F16 { data, rows, cols } => widened_blocks(
                rows,
                cols,
                block_rows,
                scratch,
                keep,
                f,
                |start, len, dst| widen(&data[start * cols..(start + len) * cols], dst),
            ),
        }
    }

    /// The block size products use: all rows for f32, [`F16_BLOCK_ROWS`] for f16 (and for
    /// the bf16 weight's widened blocks).
    fn product_block(&self) -> usize {
        match self {
            Self::F32(m) => m.rows.max(1),
            Self::F16 { .. } | Self::Bf16(_) => F16_BLOCK_ROWS,
        }
    }
}

/// Calls `f` on consecutive blocks of at most `block_rows` rows of a `[rows, cols]` weight
/// held in a reduced precision, each widened to f32 into `scratch` by `widen(first, len,
/// dst)`; blocks that `keep` rejects are neither widened nor passed on.
#[allow(clippy::too_many_arguments)]
fn widened_blocks(
    rows: usize,
    cols: usize,
    block_rows: usize,
    scratch: &mut Vec<f32>,
    mut keep: impl FnMut(usize, usize) -> bool,
    mut f: impl FnMut(usize, HostMat<'_>),
    widen: impl Fn(usize, usize, &mut [f32]),
) {
    let bw = block_rows.clamp(1, rows.max(1));
    let mut start = 0;
    while start < rows {
        let len = bw.min(rows - start);
        if keep(start, len) {
            scratch.resize(len * cols, 0.0);
            widen(start, len, &mut scratch[..len * cols]);
            f(
                start,
                HostMat {
                    data: &scratch[..len * cols],
                    rows: len,
                    cols,
                },
            );
        }
        start += len;
    }
}

/// f16 → f32, in parallel pieces (F16C instructions when the CPU has them).
fn widen(src: &[half::f16], dst: &mut [f32]) {
    const PIECE: usize = 1 << 16;
    dst.par_chunks_mut(PIECE)
        .zip(src.par_chunks(PIECE))
        .for_each(|(d, s)| widen_piece(s, d));
}

fn widen_piece(src: &[half::f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports F16C and AVX (checked just above).
        unsafe { widen_f16c(src, dst) };
        return;
    }
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

/// One `vcvtph2ps` per 8 values in a plain loop (`half`'s slice conversion calls a function
/// pointer per 8 values, several times slower on this hot path).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
fn widen_f16c(src: &[half::f16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm256_cvtph_ps, _mm256_storeu_ps};
    let n = src.len().min(dst.len());
    let full = n / 8 * 8;
    let mut i = 0;
    while i < full {
        // SAFETY: i + 8 ≤ n ≤ both lengths, so the 16-byte load and the 32-byte store stay
        // inside `src` and `dst` (unaligned forms); f16 is a plain 2-byte value.
        unsafe {
            let v = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(v));
        }
        i += 8;
    }
    for j in full..n {
        dst[j] = src[j].to_f32();
    }
}

/// f32 → f16 (round to nearest even), in parallel pieces.
pub fn narrow(src: &[f32]) -> Vec<half::f16> {
    use half::slice::HalfFloatSliceExt;
    const PIECE: usize = 1 << 16;
    let mut out = vec![half::f16::ZERO; src.len()];
    out.par_chunks_mut(PIECE)
        .zip(src.par_chunks(PIECE))
        .for_each(|(d, s)| d.convert_from_f32_slice(s));
    out
}

/// Per-row results and the optional gradient of Σ nll with respect to X.
#[derive(Debug, Clone, Default)]
pub struct HostCe {
    /// −log P(y_i), one per row.
    pub nll: Vec<f32>,
    /// argmax per row.
    pub top1: Vec<u32>,
    /// ∂(Σ nll)/∂X, `[n, k]` (with the gradient).
    pub dx: Option<Vec<f32>>,
    /// ∂(Σ nll)/∂W restricted to what the low-rank path needs: Xᵀ·G, `[k, V]` (when asked).
    pub dw_t: Option<Vec<f32>>,
}

fn par() -> Parallelism {
    Parallelism::Rayon(0)
}

/// dst `[m, n]` (row stride `dst_rs`) = (acc ? dst : 0) + lhs · rhs, operands given with
/// explicit strides (row stride, col stride).
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    dst: &mut [f32],
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: (&[f32], isize, isize),
    rhs: (&[f32], isize, isize),
    acc: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst_rs >= n && dst.len() >= (m - 1) * dst_rs + n,
        "gemm destination too small"
    );
    if k == 0 {
        if !acc {
            for row in 0..m {
                dst[row * dst_rs..row * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    let max_off = |(s, rs, cs): (&[f32], isize, isize), r: usize, c: usize| {
        let last = (r as isize - 1) * rs + (c as isize - 1) * cs;
        assert!(
            rs >= 0 && cs >= 0 && (last as usize) < s.len(),
            "gemm operand out of range"
        );
    };
    max_off(lhs, m, k);
    max_off(rhs, k, n);
    // SAFETY: every index the product reads is inside the slices (checked above: strides are
    // non-negative and the last element of each operand is in range), every index it writes is
    // inside dst (m rows of n values at row stride dst_rs ≥ n, checked above), and no operand
    // aliases dst (they are distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            acc,
            lhs.0.as_ptr(),
            lhs.2,
            lhs.1,
            rhs.0.as_ptr(),
            rhs.2,
            rhs.1,
            1.0,
            1.0,
            false,
            false,
            false,
            par(),
        );
    }
}

/// `x · wᵀ` for x `[m, k]`, w `[n, k]` → `[m, n]`.
pub fn matmul_nt(x: HostMat<'_>, w: HostMat<'_>, out: &mut [f32]) {
    matmul_nt_strided(x, w, out, w.rows);
}

/// `x · wᵀ` into `out` with row stride `out_rs` (a column block of a wider matrix).
fn matmul_nt_strided(x: HostMat<'_>, w: HostMat<'_>, out: &mut [f32], out_rs: usize) {
    assert_eq!(x.cols, w.cols);
    let k = x.cols;
    gemm_into(
        out,
        out_rs,
        x.rows,
        w.rows,
        k,
        (x.data, k as isize, 1),
        (w.data, 1, k as isize),
        false,
    );
}

/// Logits `x · Wᵀ` for x `[m, k]` and the head W `[V, k]` → `[m, V]` (W block by block when f16).
pub fn logits(x: HostMat<'_>, w: Weight<'_>, out: &mut [f32]) {
    assert_eq!(x.cols, w.cols());
    if let Weight::Bf16(p) = w {
        return p.logits(x, out);
    }
    let v = w.rows();
    let mut scratch = Vec::new();
    w.for_each_block(
        w.product_block(),
        &mut scratch,
        |_, _| true,
        |start, blk| matmul_nt_strided(x, blk, &mut out[start..], v),
    );
}

/// Mᵀ = W · bᵀ for the head W `[V, d]` and b `[r, d]` → `[V, r]` (the low-rank matrix).
pub fn weight_times(w: Weight<'_>, b: HostMat<'_>, out: &mut [f32]) {
    assert_eq!(w.cols(), b.cols);
    let r = b.rows;
    let mut scratch = Vec::new();
    w.for_each_block(
        w.product_block(),
        &mut scratch,
        |_, _| true,
        |start, blk| matmul_nt(blk, b, &mut out[start * r..(start + blk.rows) * r]),
    );
}

/// `a · W` for a `[m, V]` and the head W `[V, k]` → `[m, k]` (e.g. ∂B_w = ∂M · W_hd).
pub fn times_weight(a: HostMat<'_>, w: Weight<'_>, out: &mut [f32]) {
    assert_eq!(a.cols, w.rows());
    accumulate_times_weight(a.data, a.cols, a.rows, w, out, None);
}

/// Gradient filtering's block width and its test of a block `(first row, rows)`.
type BlockFilter<'a> = (usize, &'a dyn Fn(usize, usize) -> bool);

/// out `[m, k]` = Σ over row blocks of W of g[:, block] · W_block, for g `[m, V]` with row
/// stride `g_rs`; with `keep`, blocks it rejects are skipped (gradient filtering).
fn accumulate_times_weight(
    g: &[f32],
    g_rs: usize,
    m: usize,
    w: Weight<'_>,
    out: &mut [f32],
    filter: Option<BlockFilter<'_>>,
) {
    let k = w.cols();
    if let (Weight::Bf16(p), None) = (w, filter) {
        return p.times(g, g_rs, m, out);
    }
    let block = filter.map_or(w.product_block(), |(bw, _)| bw.max(1));
    let mut scratch = Vec::new();
    let mut first = true;
    let mut zeroed = false;
    w.for_each_block(
        block,
        &mut scratch,
        |start, len| filter.is_none_or(|(_, keep)| keep(start, len)),
        |start, blk| {
            gemm_into(
                out,
                k,
                m,
                k,
                blk.rows,
                (&g[start..], g_rs as isize, 1),
                (blk.data, k as isize, 1),
                !first,
            );
            first = false;
            zeroed = true;
        },
    );
    if !zeroed {
        out[..m * k].fill(0.0);
    }
}

/// Blockwise cross-entropy of rows `x: [n, k]` against `w: [V, k]` (ℓ = x · wᵀ) for targets
/// `y`, in row chunks of `chunk_rows`. With `grad`, also ∂(Σ nll)/∂x; with `want_dw_t`,
/// xᵀ·G `[k, V]` (the low-rank path's ∂M). `filter`: (ε, block) of gradient filtering.
pub fn cross_entropy(
    x: HostMat<'_>,
    w: Weight<'_>,
    y: &[u32],
    chunk_rows: usize,
    grad: bool,
    want_dw_t: bool,
    filter: Option<(f32, usize)>,
) -> HostCe {
    let (n, k, v) = (x.rows, x.cols, w.rows());
    assert_eq!(w.cols(), k);
    assert_eq!(y.len(), n);
    let step = chunk_rows.clamp(1, n.max(1));
    let mut buf = vec![0f32; step * v];
    let mut out = HostCe {
        nll: Vec::with_capacity(n),
        top1: Vec::with_capacity(n),
        dx: grad.then(|| vec![0f32; n * k]),
        dw_t: (grad && want_dw_t).then(|| vec![0f32; k * v]),
    };
    let mut s = 0;
    while s < n {
        let c = step.min(n - s);
        let xc = HostMat {
            data: &x.data[s * k..(s + c) * k],
            rows: c,
            cols: k,
        };
        let logits_c = &mut buf[..c * v];
        logits(xc, w, logits_c);
        let ys = &y[s..s + c];
        let rows: Vec<(f32, u32)> = logits_c
            .par_chunks_mut(v)
            .zip(ys.par_iter())
            .map(|(row, &t)| softmax_row(row, t as usize, grad))
            .collect();
        for (nll, top) in rows {
            out.nll.push(nll);
            out.top1.push(top);
        }
        if let Some(dx) = out.dx.as_mut() {
            let dxc = &mut dx[s * k..(s + c) * k];
            backward_product(logits_c, c, w, dxc, filter);
        }
        if let Some(dwt) = out.dw_t.as_mut() {
            // ∂Mᵀ-shaped accumulation: dw_t [k, V] += x_cᵀ · G.
            gemm_into(
                dwt,
                v,
                k,
                v,
                c,
                (xc.data, 1, k as isize),
                (logits_c, v as isize, 1),
                true,
            );
        }
        s += c;
    }
    out
}

/// ∂X_c = G · W, skipping vocabulary blocks whose |G| stays below ε (when filtering).
fn backward_product(
    g: &[f32],
    c: usize,
    w: Weight<'_>,
    dx: &mut [f32],
    filter: Option<(f32, usize)>,
) {
    let v = w.rows();
    match filter {
        None => accumulate_times_weight(g, v, c, w, dx, None),
        Some((eps, bw)) => {
            let active = |start: usize, len: usize| {
                (0..c).any(|i| {
                    g[i * v + start..i * v + start + len]
                        .iter()
                        .any(|x| x.abs() >= eps)
                })
            };
            accumulate_times_weight(g, v, c, w, dx, Some((bw.clamp(1, v.max(1)), &active)));
        }
    }
}

/// One row of logits: returns (nll of `target`, argmax); with `grad` the row becomes
/// softmax − onehot(target).
fn softmax_row(row: &mut [f32], target: usize, grad: bool) -> (f32, u32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { softmax_row_avx512(row, target, grad) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { softmax_row_avx2(row, target, grad) };
    }
    softmax_row_generic(row, target, grad)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_row_avx512(row: &mut [f32], target: usize, grad: bool) -> (f32, u32) {
    softmax_row_generic(row, target, grad)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_row_avx2(row: &mut [f32], target: usize, grad: bool) -> (f32, u32) {
    softmax_row_generic(row, target, grad)
}

const LANES: usize = 16;

/// Written so that the compiler vectorises every loop (fixed-width lane accumulators, no
/// branches): it is compiled once per instruction set by the wrappers above.
#[inline(always)]
fn softmax_row_generic(row: &mut [f32], target: usize, grad: bool) -> (f32, u32) {
    let gold = row[target];
    // Pass 1: maximum (NaN-free inputs assumed; a NaN logit gives a NaN loss, reported above).
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            mx[l] = mx[l].max(ch[l]);
        }
    }
    let mut m = mx.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in chunks.remainder() {
        m = m.max(x);
    }
    let top = row.iter().position(|&x| x == m).unwrap_or(0) as u32;
    // Pass 2: e = exp(ℓ − m), Σ e.
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            let e = exp_neg(ch[l] - m);
            ch[l] = e;
            acc[l] += e;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        let e = exp_neg(*x - m);
        *x = e;
        sum += e;
    }
    let nll = m + sum.ln() - gold;
    if grad {
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
        row[target] -= 1.0;
    }
    (nll, top)
}

/// log Σ_v exp(row_v), vectorised (no allocation).
pub fn log_sum_exp(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { lse_avx512(row) };
    }
    lse_generic(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn lse_avx512(row: &[f32]) -> f32 {
    lse_generic(row)
}

#[inline(always)]
fn lse_generic(row: &[f32]) -> f32 {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            mx[l] = mx[l].max(ch[l]);
        }
    }
    let mut m = mx.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in chunks.remainder() {
        m = m.max(x);
    }
    if !m.is_finite() {
        return m;
    }
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            acc[l] += exp_neg(ch[l] - m);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for &x in chunks.remainder() {
        sum += exp_neg(x - m);
    }
    m + sum.ln()
}

/// argmax_v of wa·exp(a_v − lse_a) + wb·exp(b_v − lse_b) (a two-component mixture of
/// softmaxes given as logits with their log-partitions), and the mixture's value there.
pub fn mixture_argmax(
    a: &[f32],
    lse_a: f32,
    wa: f32,
    b: &[f32],
    lse_b: f32,
    wb: f32,
) -> (usize, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { mix_avx512(a, lse_a, wa, b, lse_b, wb) };
    }
    mix_generic(a, lse_a, wa, b, lse_b, wb)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn mix_avx512(a: &[f32], lse_a: f32, wa: f32, b: &[f32], lse_b: f32, wb: f32) -> (usize, f32) {
    mix_generic(a, lse_a, wa, b, lse_b, wb)
}

#[inline(always)]
fn mix_generic(a: &[f32], lse_a: f32, wa: f32, b: &[f32], lse_b: f32, wb: f32) -> (usize, f32) {
    let n = a.len().min(b.len());
    // Pass 1 (vectorised): the largest mixture value; pass 2 finds its first index.
    let val = |i: usize| wa * exp_neg(a[i] - lse_a) + wb * exp_neg(b[i] - lse_b);
    let mut mx = [f32::NEG_INFINITY; LANES];
    let full = n / LANES * LANES;
    let mut i = 0;
    while i < full {
        for (l, m) in mx.iter_mut().enumerate() {
            *m = m.max(val(i + l));
        }
        i += LANES;
    }
    let mut m = mx.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for j in full..n {
        m = m.max(val(j));
    }
    let at = (0..n).find(|&j| val(j) == m).unwrap_or(0);
    (at, m)
}

/// exp(x) for x ≤ 0 (and small positive x), branch-free: 2ⁿ·e^r with n = round(x·log₂e) and
/// |r| ≤ ln2/2, e^r by its degree-6 Taylor polynomial (relative error < 2·10⁻⁷), 2ⁿ built in
/// the exponent bits. Inputs below −87 flush to exp(−87) ≈ 1.6·10⁻³⁸ (negligible in a sum ≥ 1).
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const SHIFT: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = x.mul_add(LOG2E, SHIFT);
    let n = t - SHIFT;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_is_exact_for_every_f16() {
        let all: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
        let mut got = vec![0f32; all.len() - 3];
        widen(&all[3..], &mut got);
        for (h, g) in all[3..].iter().zip(&got) {
            let want = h.to_f32();
            assert!(
                want.to_bits() == g.to_bits() || (want.is_nan() && g.is_nan()),
                "{h}"
            );
        }
    }

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 87.5 * i as f64 / 200_000.0;
            let got = exp_neg(x as f32) as f64;
            let want = (x as f32 as f64).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    fn naive(
        x: &[f32],
        n: usize,
        k: usize,
        w: &[f32],
        v: usize,
        y: &[u32],
    ) -> (Vec<f64>, Vec<f64>) {
        let mut nll = Vec::new();
        let mut dx = vec![0f64; n * k];
        for i in 0..n {
            let l: Vec<f64> = (0..v)
                .map(|j| {
                    (0..k)
                        .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                        .sum()
                })
                .collect();
            let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = l.iter().map(|a| (a - m).exp()).sum();
            nll.push(m + s.ln() - l[y[i] as usize]);
            for j in 0..v {
                let g = (l[j] - m).exp() / s - if j == y[i] as usize { 1.0 } else { 0.0 };
                for t in 0..k {
                    dx[i * k + t] += g * w[j * k + t] as f64;
                }
            }
        }
        (nll, dx)
    }

    #[test]
    fn host_cross_entropy_matches_a_naive_f64_reference() {
        let (n, k, v) = (7, 19, 133);
        let x: Vec<f32> = (0..n * k)
            .map(|i| ((i as f32) * 0.37).sin() * 2.0)
            .collect();
        let w: Vec<f32> = (0..v * k).map(|i| ((i as f32) * 0.71).cos()).collect();
        let y: Vec<u32> = (0..n as u32).map(|i| (i * 29) % v as u32).collect();
        let (nll_ref, dx_ref) = naive(&x, n, k, &w, v, &y);
        for chunk in [1, 3, 7] {
            let out = cross_entropy(
                HostMat {
                    data: &x,
                    rows: n,
                    cols: k,
                },
                Weight::F32(HostMat {
                    data: &w,
                    rows: v,
                    cols: k,
                }),
                &y,
                chunk,
                true,
                false,
                None,
            );
            for (a, b) in out.nll.iter().zip(&nll_ref) {
                assert!(
                    (*a as f64 - b).abs() < 1e-5 * b.abs().max(1.0),
                    "{a} vs {b}"
                );
            }
            let dx = out.dx.expect("dx");
            let scale = dx_ref.iter().fold(0f64, |m, a| m.max(a.abs()));
            for (a, b) in dx.iter().zip(&dx_ref) {
                assert!((*a as f64 - b).abs() < 1e-5 * scale);
            }
        }
    }
}
