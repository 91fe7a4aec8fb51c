//! Causal (optionally sliding-window) grouped-query attention over a ragged batch, two ways:
//! burn tensor ops on a tensor KV store (the reference, any backend, differentiable) and a host
//! kernel on a host KV store (CPU). Both append the new keys/values to each sequence's cache.

use std::ops::{Add, AddAssign, Div, Mul, Sub};

use burn::tensor::{DType, Tensor, TensorData, activation, backend::Backend};
use rayon::prelude::*;

use crate::cache::{HostKv, LayerKv};
use crate::kernels::{AttnSpec, Ragged};

/// Masked-out attention logit (finite, so no row is ever all −∞).
const MASKED: f32 = -1.0e30;

/// Work (multiply-adds) below which the host kernel stays on the calling thread.
const PARALLEL_WORK: usize = 1 << 17;

/// Whether the query at position `q` sees the key at position `k`.
fn visible(q: usize, k: usize, window: Option<usize>) -> bool {
    k <= q && window.is_none_or(|w| q - k < w)
}

/// The reference: per sequence, append to the tensor store, then `softmax(q·Kᵀ·s + mask)·V`.
pub fn attention_tensor<B: Backend>(
    layer: usize,
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    batch: Ragged<'_, '_, B>,
    spec: &AttnSpec,
) -> Tensor<B, 2> {
    let (nh, nkv, hd) = (spec.n_heads, spec.n_kv_heads, spec.head_dim);
    let g = nh / nkv;
    let device = q.device();
    let mut outs = Vec::with_capacity(batch.new.len());
    let mut off = 0;
    for (seq, &t) in batch.seqs.iter_mut().zip(batch.new) {
        let past = seq.len;
        let qi = q
            .clone()
            .narrow(0, off, t)
            .swap_dims(0, 1)
            .reshape([nkv, g * t, hd]);
        let ki = k.clone().narrow(0, off, t).swap_dims(0, 1);
        let vi = v.clone().narrow(0, off, t).swap_dims(0, 1);
        let (kk, vv) = seq.layers[layer].append_tensor(past, ki, vi);
        let s = past + t;
        let mut scores = qi.matmul(kk.swap_dims(1, 2)).mul_scalar(spec.scale);
        let needs_mask = (0..t).any(|j| (0..s).any(|c| !visible(past + j, c, spec.window)));
        if needs_mask {
            let mut m = Vec::with_capacity(g * t * s);
            for _ in 0..g {
                for j in 0..t {
                    m.extend((0..s).map(|c| {
                        if visible(past + j, c, spec.window) {
                            0.0
                        } else {
                            MASKED
                        }
                    }));
                }
            }
            let mask = Tensor::<B, 3>::from_data(TensorData::new(m, [1, g * t, s]), &device);
            scores = scores + mask;
        }
        let o = activation::softmax(scores, 2)
            .matmul(vv)
            .reshape([nh, t, hd])
            .swap_dims(0, 1)
            .reshape([t, nh * hd]);
        outs.push(o);
        off += t;
    }
    Tensor::cat(outs, 0)
}

/// Host floating-point types the host kernel runs in.
trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + AddAssign
    + 'static
{
    const ZERO: Self;
    fn exp(self) -> Self;
    fn from_f64(x: f64) -> Self;

    /// `Σ a·b`, in AVX2 and FMA where this type has a kernel ([`dot`] otherwise).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline(always)]
    unsafe fn dot_avx2(a: &[Self], b: &[Self]) -> Self {
        dot(a, b)
    }

    /// `out += p·v`, in AVX2 and FMA where this type has a kernel ([`axpy`] otherwise).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline(always)]
    unsafe fn axpy_avx2(out: &mut [Self], p: Self, v: &[Self]) {
        axpy(out, p, v)
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    unsafe fn dot_avx2(a: &[Self], b: &[Self]) -> Self {
        // SAFETY: this method's contract.
        unsafe { simd_f32::dot(a, b) }
    }
    #[inline(always)]
    unsafe fn axpy_avx2(out: &mut [Self], p: Self, v: &[Self]) {
        // SAFETY: this method's contract.
        unsafe { simd_f32::axpy(out, p, v) }
    }
}

/// AVX2 + FMA forms of the f32 inner loops (8 lanes, fused multiply-adds, one horizontal sum
/// per dot product).
#[cfg(target_arch = "x86_64")]
mod simd_f32 {
    use std::arch::x86_64::*;

    /// `Σ a·b` over `min(len)` elements.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        // SAFETY: every load reads 8 floats below `n` in both slices (unaligned loads).
        unsafe {
            while i + 16 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(a.as_ptr().add(i + 8 * j));
                    let y = _mm256_loadu_ps(b.as_ptr().add(i + 8 * j));
                    *acc = _mm256_fmadd_ps(x, y, *acc);
                }
                i += 16;
            }
            while i + 8 <= n {
                let x = _mm256_loadu_ps(a.as_ptr().add(i));
                let y = _mm256_loadu_ps(b.as_ptr().add(i));
                acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
                i += 8;
            }
        }
        let v = _mm256_add_ps(acc[0], acc[1]);
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_movehdup_ps(h));
        let mut s = _mm_cvtss_f32(h);
        for k in i..n {
            s += a[k] * b[k];
        }
        s
    }

    /// `out += p·v` over `min(len)` elements.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn axpy(out: &mut [f32], p: f32, v: &[f32]) {
        let n = out.len().min(v.len());
        let pv = _mm256_set1_ps(p);
        let mut i = 0;
        // SAFETY: every load and store touches 8 floats below `n` (unaligned).
        unsafe {
            while i + 8 <= n {
                let o = out.as_mut_ptr().add(i);
                let x = _mm256_loadu_ps(v.as_ptr().add(i));
                _mm256_storeu_ps(o, _mm256_fmadd_ps(pv, x, _mm256_loadu_ps(o)));
                i += 8;
            }
        }
        for k in i..n {
            out[k] += p * v[k];
        }
    }
}

/// Portable stand-ins where there is no AVX2 (never called: [`has_avx2`] is false there).
#[cfg(not(target_arch = "x86_64"))]
mod simd_f32 {
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::dot(a, b)
    }
    pub(super) unsafe fn axpy(out: &mut [f32], p: f32, v: &[f32]) {
        super::axpy(out, p, v)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// Dot product with 16 independent accumulators (vectorises).
#[inline(always)]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    // Pairwise: lane-wise vector adds (a left-to-right sum of the 16 lanes would be 15
    // dependent scalar adds, more than the products at head_dim 64).
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    let mut s = acc[0];
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    s
}

/// [`attend_row`] compiled for AVX2 and FMA (its dot products and weighted sums vectorise 8
/// wide instead of SSE2's 4; chosen at run time, as the packed kernels are).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_row_avx2<T: Real>(
    out: &mut [T],
    q: &[T],
    keys: &[T],
    values: &[T],
    span: (usize, usize),
    kvh: usize,
    spec: &AttnSpec,
    scores: &mut Vec<T>,
) {
    attend_row::<T, true>(out, q, keys, values, span, kvh, spec, scores)
}

/// Whether [`attend_row_avx2`] may run here.
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out += p·v`.
#[inline(always)]
fn axpy<T: Real>(out: &mut [T], p: T, v: &[T]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += p * x;
    }
}

/// One (token, head) output row of host attention (`AVX2`: with [`Real::dot_avx2`] and
/// [`Real::axpy_avx2`]; only from [`attend_row_avx2`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_row<T: Real, const AVX2: bool>(
    out: &mut [T],
    q: &[T],
    keys: &[T],
    values: &[T],
    (lo, hi): (usize, usize),
    kvh: usize,
    spec: &AttnSpec,
    scores: &mut Vec<T>,
) {
    let (nkv, hd) = (spec.n_kv_heads, spec.head_dim);
    let scale = T::from_f64(spec.scale);
    scores.clear();
    let mut max = None::<T>;
    for s in lo..hi {
        let base = (s * nkv + kvh) * hd;
        let k = &keys[base..base + hd];
        // SAFETY: AVX2 is only set by `attend_row_avx2`, whose contract is the CPU's support.
        let x = if AVX2 {
            unsafe { T::dot_avx2(q, k) }
        } else {
            dot(q, k)
        } * scale;
        max = Some(match max {
            Some(m) if m >= x => m,
            _ => x,
        });
        scores.push(x);
    }
    let max = max.unwrap_or(T::ZERO);
    let mut sum = T::ZERO;
    for x in scores.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    out.iter_mut().for_each(|o| *o = T::ZERO);
    for (i, &p) in scores.iter().enumerate() {
        let base = ((lo + i) * nkv + kvh) * hd;
        let v = &values[base..base + hd];
        if AVX2 {
            // SAFETY: as for the dot products above.
            unsafe { T::axpy_avx2(out, p, v) }
        } else {
            axpy(out, p, v)
        }
    }
    let inv = sum;
    out.iter_mut().for_each(|o| *o = *o / inv);
}

/// Host stores of one layer, viewed as slices of `T`.
trait HostSlices<T> {
    fn append(&mut self, k: &[T], v: &[T]);
    fn slices(&self) -> (&[T], &[T]);
}

macro_rules! host_slices {
    ($t:ty, $variant:ident) => {
        impl HostSlices<$t> for HostKv {
            fn append(&mut self, kn: &[$t], vn: &[$t]) {
                if let HostKv::$variant { k, v } = self {
                    k.extend_from_slice(kn);
                    v.extend_from_slice(vn);
                }
            }
            fn slices(&self) -> (&[$t], &[$t]) {
                match self {
                    HostKv::$variant { k, v } => (k, v),
                    _ => (&[], &[]),
                }
            }
        }
    };
}
host_slices!(f32, F32);
host_slices!(f64, F64);

/// The host kernel: appends to host stores (converting a tensor store once if needed) and
/// attends in the backend's precision (f64 for f64 backends, f32 otherwise).
pub fn attention_host<B: Backend>(
    layer: usize,
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    batch: Ragged<'_, '_, B>,
    spec: &AttnSpec,
) -> Tensor<B, 2> {
    let device = q.device();
    let n = q.dims()[0];
    let width = spec.n_heads * spec.head_dim;
    let is_f64 = q.dtype() == DType::F64;
    let data = if is_f64 {
        let out = host_attend::<B, f64>(
            layer,
            [q.into_data(), k.into_data(), v.into_data()],
            batch,
            spec,
            true,
        );
        TensorData::new(out, [n, width])
    } else {
        let out = host_attend::<B, f32>(
            layer,
            [q.into_data(), k.into_data(), v.into_data()],
            batch,
            spec,
            false,
        );
        TensorData::new(out, [n, width])
    };
    Tensor::from_data(data, &device)
}

pub(crate) fn host_vec<T: burn::tensor::Element>(d: TensorData) -> Vec<T> {
    d.convert::<T>().into_vec::<T>().unwrap_or_default()
}

fn host_attend<B: Backend, T: Real + burn::tensor::Element>(
    layer: usize,
    [q, k, v]: [TensorData; 3],
    batch: Ragged<'_, '_, B>,
    spec: &AttnSpec,
    is_f64: bool,
) -> Vec<T>
where
    HostKv: HostSlices<T>,
{
    let (nh, nkv, hd) = (spec.n_heads, spec.n_kv_heads, spec.head_dim);
    let g = nh / nkv;
    let (q, k, v) = (host_vec::<T>(q), host_vec::<T>(k), host_vec::<T>(v));
    let kv_row = nkv * hd;
    // 1. Append the new keys/values; remember (first row, past length) per sequence.
    let mut segs = Vec::with_capacity(batch.new.len());
    let mut off = 0;
    for (seq, &t) in batch.seqs.iter_mut().zip(batch.new) {
        let past = seq.len;
        let slot = &mut seq.layers[layer];
        if !matches!(slot, LayerKv::Host(_)) {
            *slot = LayerKv::Host(to_host(slot, past, nkv, hd, is_f64));
        }
        if let LayerKv::Host(h) = slot {
            h.append(
                &k[off * kv_row..(off + t) * kv_row],
                &v[off * kv_row..(off + t) * kv_row],
            );
        }
        segs.push((off, t, past));
        off += t;
    }
    let stores: Vec<(&[T], &[T])> = batch
        .seqs
        .iter()
        .map(|s| match &s.layers[layer] {
            LayerKv::Host(h) => h.slices(),
            _ => (&[][..], &[][..]),
        })
        .collect();
    // 2. One task per (token, head).
    let mut row_seg = Vec::with_capacity(off);
    for (i, &(_, t, _)) in segs.iter().enumerate() {
        row_seg.extend(std::iter::repeat_n(i, t));
    }
    let mut out = vec![T::ZERO; off * nh * hd];
    let avx2 = has_avx2();
    let task = |r: usize, o: &mut [T], scores: &mut Vec<T>| {
        let (tok, h) = (r / nh, r % nh);
        let i = row_seg[tok];
        let (first, _, past) = segs[i];
        let pos = past + tok - first;
        let lo = spec.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let qrow = &q[(tok * nh + h) * hd..(tok * nh + h + 1) * hd];
        let (keys, values) = stores[i];
        let span = (lo, pos + 1);
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: `avx2` says the CPU has AVX2 and FMA.
            unsafe { attend_row_avx2(o, qrow, keys, values, span, h / g, spec, scores) };
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = avx2;
        attend_row::<T, false>(o, qrow, keys, values, span, h / g, spec, scores);
    };
    let work: usize = segs
        .iter()
        .map(|&(_, t, past)| t * (past + t) * nh * hd)
        .sum();
    if work < PARALLEL_WORK {
        let mut scores = Vec::new();
        for (r, o) in out.chunks_mut(hd).enumerate() {
            task(r, o, &mut scores);
        }
    } else {
        out.par_chunks_mut(hd)
            .enumerate()
            .for_each_init(Vec::new, |scores, (r, o)| task(r, o, scores));
    }
    out
}

/// Converts a layer store to host form (first use of a prefix built by other kernels).
fn to_host<B: Backend>(
    slot: &LayerKv<B>,
    len: usize,
    nkv: usize,
    hd: usize,
    is_f64: bool,
) -> HostKv {
    let mut h = HostKv::empty(is_f64);
    if let LayerKv::Tensor { k, v } = slot {
        let rows = |x: &Tensor<B, 3>| x.clone().narrow(1, 0, len).swap_dims(0, 1).into_data();
        match &mut h {
            HostKv::F32 { k: hk, v: hv } => {
                *hk = host_vec::<f32>(rows(k));
                *hv = host_vec::<f32>(rows(v));
            }
            HostKv::F64 { k: hk, v: hv } => {
                *hk = host_vec::<f64>(rows(k));
                *hv = host_vec::<f64>(rows(v));
            }
        }
    }
    let _ = (nkv, hd);
    h
}
