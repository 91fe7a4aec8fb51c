//! Kernels that read GGUF blocks directly, without [`super::unpack`]'s per-4-element scale and
//! bias arrays: Q8_0 (AVX2; AVX-512 in [`super::simd`]) and the legacy 4/5-bit types (Q4_0,
//! Q4_1, Q5_0, Q5_1; AVX2 and AVX-512 VNNI), whose 32 codes per block decode into one
//! register with one scale and one bias per block; Q4_K and Q5_K, whose sub-blocks of 32 have
//! the same form. Integer products are exact (`vpmaddubsw` +
//! `vpmaddwd` per 32 codes, or `vpdpbusd` per 64), then scaled by `d·a` per block, minus the
//! bias `b·A` (A = a·Σq per 4 elements, as in [`super::unpack`]). Activation rows go in tiles
//! of 4: each decoded block serves 4 rows. At batch 1 (decoding) unpacking costs more than the
//! products; these kernels remove most of it.

use super::act::QuantAct;
use super::simd::{in_tiles_of_4, vnni_row_step};
use super::unpack::{f16_at, scale_min_k4};

/// AVX2 kernel reading Q8_0 blocks directly (no unpacked copy): per block of 32, `|q|`
/// times the activations with `q`'s sign in one `vpmaddubsw` (exact: the pair sums stay
/// within i16), scaled by `d·a`. `out` is `[weight rows, act rows]`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `bytes` must hold whole Q8_0 rows of `cols` elements
/// (`row_bytes` = cols / 32 · 34) and `out` one value per (weight row, act row).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_0_rows_avx2(
    cols: usize,
    bytes: &[u8],
    row_bytes: usize,
    act: &QuantAct,
    out: &mut [f32],
) {
    let n = act.rows;
    let mut d = vec![0f32; cols / 32];
    for (row, o) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
        for (b, db) in d.iter_mut().enumerate() {
            *db = f16_at(row, 34 * b);
        }
        // SAFETY (both tiles): this function's contract; the rows of each tile exist.
        in_tiles_of_4(
            o,
            |r, t| unsafe { q8_0_tile_avx2::<4>(row, &d, act, r, t) },
            |r, t| unsafe { q8_0_tile_avx2::<1>(row, &d, act, r, t) },
        );
    }
}

/// Activation rows `r0..r0+T` of [`q8_0_rows_avx2`] for one weight row.
///
/// # Safety
/// As [`q8_0_rows_avx2`]; `row` is one whole Q8_0 row with scales `d`, `r0 + T ≤ act.rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn q8_0_tile_avx2<const T: usize>(
    row: &[u8],
    d: &[f32],
    act: &QuantAct,
    r0: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let cols = act.cols;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, &db) in d.iter().enumerate() {
        // SAFETY: block b lies within `row` (34 bytes, codes at +2), each `q` row holds 32
        // codes at 32b and each `lane` row 8 scales at 8b (unaligned loads).
        unsafe {
            let w = _mm256_loadu_si256(row.as_ptr().add(34 * b + 2).cast());
            let mag = _mm256_sign_epi8(w, w);
            let dv = _mm256_set1_ps(db);
            for (j, a) in acc.iter_mut().enumerate() {
                let r = r0 + j;
                let x = _mm256_loadu_si256(act.q.as_ptr().add(r * cols + 32 * b).cast());
                let pairs = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(x, w));
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                let al = _mm256_loadu_ps(act.lane.as_ptr().add(r * cols / 4 + 8 * b));
                *a = _mm256_fmadd_ps(p, _mm256_mul_ps(dv, al), *a);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum(a);
    }
}

/// One row of Q4_0, Q4_1, Q5_0 or Q5_1 blocks decoded: codes `u` (≤ 31) and, per block of
/// 32, the scale `s` and bias `b` (`w = s·u − b`, as [`super::unpack`]).
#[derive(Debug)]
pub struct LegacyRow {
    u: Vec<u8>,
    s: Vec<f32>,
    b: Vec<f32>,
}

impl LegacyRow {
    fn new(cols: usize) -> Self {
        Self {
            u: vec![0; cols],
            s: vec![0.0; cols / 32],
            b: vec![0.0; cols / 32],
        }
    }

    /// Decodes `row` (`BB` bytes per block; `MIN`: has a min, `HIGH`: 5-bit codes).
    ///
    /// # Safety
    /// The CPU must support AVX2; `row` holds exactly `u.len() / 32` blocks.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn decode<const BB: usize, const MIN: bool, const HIGH: bool>(&mut self, row: &[u8]) {
        use std::arch::x86_64::*;
        let m4 = _mm_set1_epi8(0xF);
        // Byte i of a block takes bit i of Q5's 32-bit mask: bytes 0–7 read the mask's byte
        // 0, 8–15 its byte 1, …
        let spread = _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        );
        // … and are all ones exactly where their own bit (i mod 8) is set, once every other
        // bit is or-ed in.
        let others = _mm256_set1_epi64x(0x7FBF_DFEF_F7FB_FDFE);
        let fifth = _mm256_set1_epi8(0x10);
        for (b, blk) in row.chunks_exact(BB).enumerate() {
            let d = f16_at(blk, 0);
            let at = if MIN { 4 } else { 2 };
            self.s[b] = d;
            self.b[b] = if MIN {
                -f16_at(blk, 2)
            } else if HIGH {
                16.0 * d
            } else {
                8.0 * d
            };
            let qs_at = if HIGH { at + 4 } else { at };
            // SAFETY: a block holds its 16 nibble bytes at `qs_at` (and Q5's mask at `at`);
            // `u` holds 32 bytes at 32b (unaligned loads and store).
            unsafe {
                let qs = _mm_loadu_si128(blk.as_ptr().add(qs_at).cast());
                let lo = _mm_and_si128(qs, m4);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m4);
                let mut codes = _mm256_set_m128i(hi, lo);
                if HIGH {
                    let qh = u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
                    let rep = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), spread);
                    let set = _mm256_cmpeq_epi8(_mm256_or_si256(rep, others), _mm256_set1_epi8(-1));
                    codes = _mm256_or_si256(codes, _mm256_and_si256(set, fifth));
                }
                _mm256_storeu_si256(self.u.as_mut_ptr().add(32 * b).cast(), codes);
            }
        }
    }
}

impl LegacyRow {
    /// Decodes a row of Q4_K (`BB` = 144) or Q5_K (`BB` = 176, `HIGH`) blocks: each block's 8
    /// sub-blocks of 32 have one 6-bit scale and min, so they take the same form (`s` = d·sc,
    /// `b` = dmin·m).
    ///
    /// # Safety
    /// The CPU must support AVX2; `row` holds exactly `u.len() / 256` blocks.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn decode_k<const BB: usize, const HIGH: bool>(&mut self, row: &[u8]) {
        use std::arch::x86_64::*;
        let m4 = _mm256_set1_epi8(0xF);
        let one = _mm256_set1_epi8(1);
        let qs_at = if HIGH { 48 } else { 16 };
        for (bi, blk) in row.chunks_exact(BB).enumerate() {
            let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
            for sb in 0..8 {
                let (sc, m) = scale_min_k4(sb, &blk[4..16]);
                self.s[8 * bi + sb] = d * f32::from(sc);
                self.b[8 * bi + sb] = dmin * f32::from(m);
            }
            // SAFETY: a block holds 4 × 32 nibble bytes at `qs_at` (and Q5_K's 32 fifth-bit
            // bytes at 16); `u` holds 256 codes at 256·bi (unaligned loads and stores).
            unsafe {
                let qh = if HIGH {
                    _mm256_loadu_si256(blk.as_ptr().add(16).cast())
                } else {
                    _mm256_setzero_si256()
                };
                for g in 0..4 {
                    let q = _mm256_loadu_si256(blk.as_ptr().add(qs_at + 32 * g).cast());
                    // Sub-block 2g: the low nibbles; 2g + 1: the high ones.
                    let mut lo = _mm256_and_si256(q, m4);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    if HIGH {
                        // Bit 2g (2g + 1) of each qh byte is the fifth bit of sub-block 2g (2g + 1).
                        let bit = |k: usize| {
                            let shifted = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(k as i32));
                            _mm256_slli_epi16(_mm256_and_si256(shifted, one), 4)
                        };
                        lo = _mm256_or_si256(lo, bit(2 * g));
                        hi = _mm256_or_si256(hi, bit(2 * g + 1));
                    }
                    let at = self.u.as_mut_ptr().add(256 * bi + 64 * g);
                    _mm256_storeu_si256(at.cast(), lo);
                    _mm256_storeu_si256(at.add(32).cast(), hi);
                }
            }
        }
    }

    /// [`LegacyRow::decode`] (`K` false) or [`LegacyRow::decode_k`] (`K` true).
    ///
    /// # Safety
    /// As the decoder chosen.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn decode_any<const BB: usize, const MIN: bool, const HIGH: bool, const K: bool>(
        &mut self,
        row: &[u8],
    ) {
        // SAFETY: this function's contract.
        unsafe {
            if K {
                self.decode_k::<BB, HIGH>(row)
            } else {
                self.decode::<BB, MIN, HIGH>(row)
            }
        }
    }
}

/// AVX2 kernel for Q4_0, Q4_1, Q5_0, Q5_1 (`BB`, `MIN`, `HIGH` as [`LegacyRow::decode`]) and,
/// with `K`, Q4_K and Q5_K ([`LegacyRow::decode_k`]):
/// each weight row is decoded once, then dotted with every activation row; `out` is
/// `[weight rows, act rows]`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `bytes` must hold whole rows of `cols` elements
/// (`row_bytes` = cols / 32 · BB) and `out` one value per (weight row, act row).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn legacy_rows_avx2<
    const BB: usize,
    const MIN: bool,
    const HIGH: bool,
    const K: bool,
>(
    cols: usize,
    bytes: &[u8],
    row_bytes: usize,
    act: &QuantAct,
    out: &mut [f32],
) {
    let n = act.rows;
    let mut w = LegacyRow::new(cols);
    for (row, o) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
        // SAFETY: this function's contract (AVX2; whole blocks).
        unsafe { w.decode_any::<BB, MIN, HIGH, K>(row) };
        // SAFETY (both tiles): this function's contract; the rows of each tile exist.
        in_tiles_of_4(
            o,
            |r, t| unsafe { legacy_tile::<4>(&w.u, &w.s, &w.b, act, r, t) },
            |r, t| unsafe { legacy_tile::<1>(&w.u, &w.s, &w.b, act, r, t) },
        );
    }
}

/// AVX-512 VNNI kernel for Q4_0, Q4_1, Q5_0, Q5_1 (and Q4_K, Q5_K): as [`legacy_rows_avx2`] with two blocks
/// (64 codes) per `vpdpbusd`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; as [`legacy_rows_avx2`] otherwise.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
pub unsafe fn legacy_rows_avx512<
    const BB: usize,
    const MIN: bool,
    const HIGH: bool,
    const K: bool,
>(
    cols: usize,
    bytes: &[u8],
    row_bytes: usize,
    act: &QuantAct,
    out: &mut [f32],
) {
    let n = act.rows;
    let mut w = LegacyRow::new(cols);
    for (row, o) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
        // SAFETY: this function's contract (AVX-512 implies AVX2; whole blocks).
        unsafe { w.decode_any::<BB, MIN, HIGH, K>(row) };
        // SAFETY (both tiles): this function's contract; the rows of each tile exist.
        in_tiles_of_4(
            o,
            |r, t| unsafe { legacy_tile_avx512::<4>(&w, act, r, t) },
            |r, t| unsafe { legacy_tile_avx512::<1>(&w, act, r, t) },
        );
    }
}

/// Activation rows `r0..r0+T` of [`legacy_rows_avx512`] for one decoded weight row (an odd
/// last block by scalar code).
///
/// # Safety
/// As [`legacy_rows_avx512`]; `r0 + T ≤ act.rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
#[inline]
unsafe fn legacy_tile_avx512<const T: usize>(
    w: &LegacyRow,
    act: &QuantAct,
    r0: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let cols = act.cols;
    let pairs = w.s.len() / 2;
    let mut acc = [_mm512_setzero_ps(); T];
    for p in 0..pairs {
        // SAFETY: `u` and each `q` row hold 64 codes at 64p, each `lane`/`lsum` row 16 floats
        // at 16p; rows r0..r0+T exist (unaligned loads).
        unsafe {
            let uv = _mm512_loadu_si512(w.u.as_ptr().add(64 * p).cast());
            let sv = _mm512_mask_blend_ps(
                0xFF00,
                _mm512_set1_ps(w.s[2 * p]),
                _mm512_set1_ps(w.s[2 * p + 1]),
            );
            let bv = _mm512_mask_blend_ps(
                0xFF00,
                _mm512_set1_ps(w.b[2 * p]),
                _mm512_set1_ps(w.b[2 * p + 1]),
            );
            for (j, a) in acc.iter_mut().enumerate() {
                *a = vnni_row_step(*a, uv, sv, bv, act, r0 + j, 64 * p);
            }
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        let r = r0 + j;
        let mut tail = 0f32;
        for blk in 2 * pairs..w.s.len() {
            let q = &act.q[r * cols + 32 * blk..r * cols + 32 * blk + 32];
            let isum: i32 = w.u[32 * blk..32 * blk + 32]
                .iter()
                .zip(q)
                .map(|(&u, &x)| i32::from(u) * i32::from(x))
                .sum();
            let lanes = r * cols / 4 + 8 * blk;
            let a = act.lane[lanes];
            let asum: f32 = act.lsum[lanes..lanes + 8].iter().sum();
            tail += isum as f32 * (w.s[blk] * a) - w.b[blk] * asum;
        }
        *o = _mm512_reduce_add_ps(acc[j]) + tail;
    }
}

/// Activation rows `r0..r0+T` of [`legacy_rows_avx2`] for one decoded weight row.
///
/// # Safety
/// As [`legacy_rows_avx2`]; `u` holds `act.cols` codes (≤ 31), `s`, `bias` one value per
/// block, `r0 + T ≤ act.rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn legacy_tile<const T: usize>(
    u: &[u8],
    s: &[f32],
    bias: &[f32],
    act: &QuantAct,
    r0: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let cols = act.cols;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, (&sb, &bb)) in s.iter().zip(bias).enumerate() {
        // SAFETY: `u` and each `q` row hold 32 codes at 32b, each `lane`/`lsum` row 8 floats
        // at 8b (unaligned loads).
        unsafe {
            let uv = _mm256_loadu_si256(u.as_ptr().add(32 * b).cast());
            let (sv, bv) = (_mm256_set1_ps(sb), _mm256_set1_ps(bb));
            for (j, a) in acc.iter_mut().enumerate() {
                let r = r0 + j;
                let x = _mm256_loadu_si256(act.q.as_ptr().add(r * cols + 32 * b).cast());
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(uv, x), ones));
                let al = _mm256_loadu_ps(act.lane.as_ptr().add(r * cols / 4 + 8 * b));
                let ls = _mm256_loadu_ps(act.lsum.as_ptr().add(r * cols / 4 + 8 * b));
                *a = _mm256_fnmadd_ps(bv, ls, _mm256_fmadd_ps(p, _mm256_mul_ps(sv, al), *a));
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum(a);
    }
}

/// The sum of the 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum(a: std::arch::x86_64::__m256) -> f32 {
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 f32 (unaligned store).
    unsafe { std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), a) };
    lanes.iter().sum()
}
