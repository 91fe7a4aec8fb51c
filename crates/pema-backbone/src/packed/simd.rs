//! Integer dot products of an unpacked weight row with 8-bit quantised activation rows:
//! a scalar reference, AVX2 (`vpmaddwd` on widened codes) and AVX-512 VNNI (`vpdpbusd`),
//! chosen at run time. Integer sums are exact; kernels differ from each other only by the
//! order of the f32 accumulation.

use super::act::QuantAct;
use super::unpack::{GROUP, Unpacked, f16_at};

/// The dot-product implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    /// Portable scalar code (the reference).
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512 F/BW + VNNI.
    Avx512Vnni,
}

impl Simd {
    /// The best implementation this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                return Simd::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Scalar
    }

    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        match self {
            Simd::Scalar => true,
            Simd::Avx2 => matches!(Self::detect(), Simd::Avx2 | Simd::Avx512Vnni),
            Simd::Avx512Vnni => Self::detect() == Simd::Avx512Vnni,
        }
    }
}

/// `Σ_{k≥from} (Σ_{i∈k} u_i q_i)·s_k·a_k − Σ_{lanes ≥ 4·from} b·A` for activation row `r`:
/// the groups from `from` on, by scalar code (A = a·Σq per 4 elements).
#[inline(always)]
fn scalar_groups(w: &Unpacked, act: &QuantAct, r: usize, from: usize) -> f32 {
    let cols = act.cols;
    let q = &act.q[r * cols..(r + 1) * cols];
    let al = &act.lane[r * cols / 4..(r + 1) * cols / 4];
    let mut acc = 0f32;
    for k in from..cols / GROUP {
        let g = k * GROUP..(k + 1) * GROUP;
        let isum: i32 = w.u[g.clone()]
            .iter()
            .zip(&q[g])
            .map(|(&u, &x)| i32::from(u) * i32::from(x))
            .sum();
        acc += isum as f32 * (w.ws[4 * k] * al[4 * k]);
    }
    acc - bias_from(w, act, r, from)
}

/// `Σ_{lanes ≥ 4·from} b·A` for activation row `r` (the offsets/mins of the groups `from..`).
#[inline(always)]
fn bias_from(w: &Unpacked, act: &QuantAct, r: usize, from: usize) -> f32 {
    let cols = act.cols;
    let ls = &act.lsum[r * cols / 4..(r + 1) * cols / 4];
    let mut b = [0f32; 8];
    let (cw, cl) = (
        w.wb[4 * from..].chunks_exact(8),
        ls[4 * from..].chunks_exact(8),
    );
    let (rw, rl) = (cw.remainder(), cl.remainder());
    for (x, y) in cw.zip(cl) {
        for l in 0..8 {
            b[l] += x[l] * y[l];
        }
    }
    let tail: f32 = rw.iter().zip(rl).map(|(x, y)| x * y).sum();
    b.iter().sum::<f32>() + tail
}

/// Scalar reference: `out[r] = w · x_r` for every activation row.
#[inline(always)]
pub fn dot_rows_scalar(w: &Unpacked, act: &QuantAct, out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = scalar_groups(w, act, r, 0);
    }
}

/// Calls `four(r, out[r..r+4])` while 4 activation rows remain, then `one(r, out[r..r+1])` for
/// each row left (every kernel's tiling; inlined into the caller's target features).
#[inline(always)]
pub(super) fn in_tiles_of_4(
    out: &mut [f32],
    mut four: impl FnMut(usize, &mut [f32]),
    mut one: impl FnMut(usize, &mut [f32]),
) {
    let mut r = 0;
    while r + 4 <= out.len() {
        four(r, &mut out[r..r + 4]);
        r += 4;
    }
    while r < out.len() {
        one(r, &mut out[r..r + 1]);
        r += 1;
    }
}

/// AVX2 kernel: 32 codes per `vpmaddubsw`, per-lane scales, activation rows in tiles of 4
/// (each weight load serves 4 rows).
///
/// `vpmaddubsw` adds two u8·i8 products into an i16, which holds for codes ≤ 127 (every type
/// but Q8_0). Q8_0's offset codes (q + 128, up to 255) are multiplied in their signed form
/// (`|q|` times `x` with `q`'s sign, as llama.cpp does); its bias 128·d then cancels the offset
/// exactly and is skipped.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`Simd::available`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_rows_avx2(w: &Unpacked, act: &QuantAct, out: &mut [f32]) {
    // SAFETY (both calls): this function's contract.
    if w.offset128 {
        unsafe { rows_avx2::<true>(w, act, out) }
    } else {
        unsafe { rows_avx2::<false>(w, act, out) }
    }
}

/// [`dot_rows_avx2`] for one code form (`SIGNED`: Q8_0's offset codes).
///
/// # Safety
/// As [`dot_rows_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn rows_avx2<const SIGNED: bool>(w: &Unpacked, act: &QuantAct, out: &mut [f32]) {
    // SAFETY (both tiles): this function's contract; the rows of each tile exist.
    in_tiles_of_4(
        out,
        |r, t| unsafe { tile_avx2::<4, SIGNED>(w, act, r, t) },
        |r, t| unsafe { tile_avx2::<1, SIGNED>(w, act, r, t) },
    );
}

/// Rows `r0..r0+T` of [`dot_rows_avx2`].
///
/// # Safety
/// As [`dot_rows_avx2`]; `r0 + T ≤ act.rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile_avx2<const T: usize, const SIGNED: bool>(
    w: &Unpacked,
    act: &QuantAct,
    r0: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let cols = act.cols;
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(i8::MIN);
    let mut acc = [_mm256_setzero_ps(); T];
    for c in 0..cols / 32 {
        // SAFETY: `u` and each `q` row hold `cols` ≥ 32·(c+1) bytes, `ws`/`wb` and each
        // `lane`/`lsum` row `cols/4` ≥ 8·(c+1) floats; rows r0..r0+T exist (unaligned loads).
        unsafe {
            let uv = _mm256_loadu_si256(w.u.as_ptr().add(32 * c).cast());
            let wsv = _mm256_loadu_ps(w.ws.as_ptr().add(8 * c));
            let wbv = _mm256_loadu_ps(w.wb.as_ptr().add(8 * c));
            // Q8_0: the signed codes q = u − 128 and their magnitudes.
            let sv = _mm256_xor_si256(uv, flip);
            let mag = _mm256_sign_epi8(sv, sv);
            for (j, a) in acc.iter_mut().enumerate() {
                let r = r0 + j;
                let qv = _mm256_loadu_si256(act.q.as_ptr().add(r * cols + 32 * c).cast());
                let pairs = if SIGNED {
                    _mm256_maddubs_epi16(mag, _mm256_sign_epi8(qv, sv))
                } else {
                    _mm256_maddubs_epi16(uv, qv)
                };
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                let al = _mm256_loadu_ps(act.lane.as_ptr().add(r * cols / 4 + 8 * c));
                let t = _mm256_fmadd_ps(p, _mm256_mul_ps(wsv, al), *a);
                *a = if SIGNED {
                    t
                } else {
                    let ls = _mm256_loadu_ps(act.lsum.as_ptr().add(r * cols / 4 + 8 * c));
                    _mm256_fnmadd_ps(wbv, ls, t)
                };
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 f32 (unaligned store).
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
        *o = lanes.iter().sum::<f32>();
    }
}

/// One 64-code AVX-512 step of activation row `r` at code `at` (every VNNI kernel's inner step):
/// `a + cvt(Σ u·x per 4 codes)·(s·a_x) − b·A` per lane (a_x the row's scale, A = a_x·Σx per 4
/// codes).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; row `r` of `act` holds codes `at..at + 64`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn vnni_row_step(
    a: std::arch::x86_64::__m512,
    u: std::arch::x86_64::__m512i,
    s: std::arch::x86_64::__m512,
    b: std::arch::x86_64::__m512,
    act: &QuantAct,
    r: usize,
    at: usize,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let cols = act.cols;
    // SAFETY: this function's contract: `q` row r holds 64 codes at `at`, and `lane`/`lsum`
    // row r 16 floats at at/4 (unaligned loads).
    unsafe {
        let x = _mm512_loadu_si512(act.q.as_ptr().add(r * cols + at).cast());
        let prod = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, x);
        let al = _mm512_loadu_ps(act.lane.as_ptr().add((r * cols + at) / 4));
        let ls = _mm512_loadu_ps(act.lsum.as_ptr().add((r * cols + at) / 4));
        let t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(prod), _mm512_mul_ps(s, al), a);
        _mm512_fnmadd_ps(b, ls, t)
    }
}

/// AVX-512 VNNI kernel: 64 codes per `vpdpbusd`, per-lane scales, activation rows in
/// tiles of 4 (each weight load serves 4 rows).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI ([`Simd::available`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot_rows_avx512(w: &Unpacked, act: &QuantAct, out: &mut [f32]) {
    // SAFETY (both tiles): this function's contract; the rows of each tile exist.
    in_tiles_of_4(
        out,
        |r, t| unsafe { tile_avx512::<4>(w, act, r, t) },
        |r, t| unsafe { tile_avx512::<1>(w, act, r, t) },
    );
}

/// Rows `r0..r0+T` of [`dot_rows_avx512`].
///
/// # Safety
/// As [`dot_rows_avx512`]; `r0 + T ≤ act.rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile_avx512<const T: usize>(w: &Unpacked, act: &QuantAct, r0: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let cols = act.cols;
    let full = cols / 64;
    let mut acc = [_mm512_setzero_ps(); T];
    for c in 0..full {
        // SAFETY: `u`, each `q` row hold `cols` ≥ 64·(c+1) bytes and `ws`, each `lane` row
        // `cols/4` ≥ 16·(c+1) floats; rows r0..r0+T exist (unaligned loads).
        unsafe {
            let uv = _mm512_loadu_si512(w.u.as_ptr().add(64 * c).cast());
            let wsv = _mm512_loadu_ps(w.ws.as_ptr().add(16 * c));
            let wbv = _mm512_loadu_ps(w.wb.as_ptr().add(16 * c));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = vnni_row_step(*a, uv, wsv, wbv, act, r0 + j, 64 * c);
            }
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        let r = r0 + j;
        let tail = scalar_groups(w, act, r, full * 64 / GROUP);
        *o = _mm512_reduce_add_ps(acc[j]) + tail;
    }
}

/// AVX-512 VNNI kernel reading Q8_0 blocks directly (no unpacked copy): two blocks per
/// `vpdpbusd` with the weights offset to unsigned in registers (`q ^ 0x80` = q + 128, the
/// offset removed through the activation group sums). `out` is `[weight rows, act rows]`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; `bytes` must hold whole Q8_0 rows of `cols`
/// elements (`row_bytes` = cols / 32 · 34) and `out` one value per (weight row, act row).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
pub unsafe fn q8_0_rows_avx512(
    cols: usize,
    bytes: &[u8],
    row_bytes: usize,
    act: &QuantAct,
    out: &mut [f32],
) {
    let n = act.rows;
    let nb = cols / 32;
    let pairs = nb / 2;
    let mut d = vec![0f32; nb];
    for (row, o) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
        for (b, db) in d.iter_mut().enumerate() {
            *db = f16_at(row, 34 * b);
        }
        // SAFETY (both tiles): this function's contract; the rows of each tile exist.
        in_tiles_of_4(
            o,
            |r, t| unsafe { q8_0_tile::<4>(row, &d, pairs, act, r, t) },
            |r, t| unsafe { q8_0_tile::<1>(row, &d, pairs, act, r, t) },
        );
    }
}

/// Activation rows `r0..r0+T` of [`q8_0_rows_avx512`] for one weight row.
///
/// # Safety
/// As [`q8_0_rows_avx512`]; `row` is one whole Q8_0 row with scales `d`, `r0 + T ≤ act.rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
#[inline]
unsafe fn q8_0_tile<const T: usize>(
    row: &[u8],
    d: &[f32],
    pairs: usize,
    act: &QuantAct,
    r0: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let cols = act.cols;
    let flip = _mm512_set1_epi8(i8::MIN);
    let mut acc = [_mm512_setzero_ps(); T];
    for p in 0..pairs {
        // SAFETY: blocks 2p and 2p+1 lie within `row` (34 bytes each, codes at +2), each `q`
        // row holds 64 codes at 64p and each `lane` row 16 scales at 16p (unaligned loads).
        unsafe {
            let lo = _mm256_loadu_si256(row.as_ptr().add(68 * p + 2).cast());
            let hi = _mm256_loadu_si256(row.as_ptr().add(68 * p + 36).cast());
            let u = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), flip);
            let ds = _mm512_mask_blend_ps(
                0xFF00,
                _mm512_set1_ps(d[2 * p]),
                _mm512_set1_ps(d[2 * p + 1]),
            );
            let bs = _mm512_mul_ps(ds, _mm512_set1_ps(128.0));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = vnni_row_step(*a, u, ds, bs, act, r0 + j, 64 * p);
            }
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        let r = r0 + j;
        let q = &act.q[r * cols..(r + 1) * cols];
        let al = &act.lane[r * cols / 4..(r + 1) * cols / 4];
        let ls = &act.lsum[r * cols / 4..(r + 1) * cols / 4];
        let mut tail = 0f32;
        for (b, &db) in d.iter().enumerate().skip(2 * pairs) {
            let isum: i32 = (0..32)
                .map(|i| i32::from(row[34 * b + 2 + i] ^ 0x80) * i32::from(q[32 * b + i]))
                .sum();
            let lsum: f32 = ls[8 * b..8 * b + 8].iter().sum();
            tail += isum as f32 * (db * al[8 * b]) - 128.0 * db * lsum;
        }
        *o = _mm512_reduce_add_ps(acc[j]) + tail;
    }
}

/// Runs `simd` (which must be [`Simd::available`]; anything else falls back to scalar).
#[inline(always)]
pub fn dot_rows(simd: Simd, w: &Unpacked, act: &QuantAct, out: &mut [f32]) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512Vnni if simd.available() => {
            // SAFETY: availability checked on the line above.
            unsafe { dot_rows_avx512(w, act, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 if simd.available() => {
            // SAFETY: availability checked on the line above.
            unsafe { dot_rows_avx2(w, act, out) }
        }
        _ => dot_rows_scalar(w, act, out),
    }
}
