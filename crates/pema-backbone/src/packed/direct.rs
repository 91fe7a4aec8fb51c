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
        for (b, blk) in row.chunks_exact(BB).enumerate() {
            // SAFETY: AVX2 (this function's contract); `blk` is one whole block; `u` holds 32
            // bytes at 32b (unaligned store).
            unsafe {
                let (codes, s, bias) = legacy_block::<MIN, HIGH>(blk);
                std::arch::x86_64::_mm256_storeu_si256(
                    self.u.as_mut_ptr().add(32 * b).cast(),
                    codes,
                );
                self.s[b] = s;
                self.b[b] = bias;
            }
        }
    }
}

/// One Q4_0, Q4_1, Q5_0 or Q5_1 block (`MIN`: has a min, `HIGH`: 5-bit codes): its 32 codes
/// `u` (≤ 31) in one register, its scale `s` and its bias `b` (`w = s·u − b`).
///
/// # Safety
/// The CPU must support AVX2; `blk` holds one whole block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn legacy_block<const MIN: bool, const HIGH: bool>(
    blk: &[u8],
) -> (std::arch::x86_64::__m256i, f32, f32) {
    use std::arch::x86_64::*;
    let d = f16_at(blk, 0);
    let at = if MIN { 4 } else { 2 };
    let bias = if MIN {
        -f16_at(blk, 2)
    } else if HIGH {
        16.0 * d
    } else {
        8.0 * d
    };
    let qs_at = if HIGH { at + 4 } else { at };
    // SAFETY: a block holds its 16 nibble bytes at `qs_at` (and Q5's mask at `at`) (unaligned
    // load).
    let codes = unsafe {
        let m4 = _mm_set1_epi8(0xF);
        let qs = _mm_loadu_si128(blk.as_ptr().add(qs_at).cast());
        let lo = _mm_and_si128(qs, m4);
        let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m4);
        _mm256_set_m128i(hi, lo)
    };
    if !HIGH {
        return (codes, d, bias);
    }
    // Byte i of a block takes bit i of Q5's 32-bit mask: bytes 0–7 read the mask's byte 0,
    // 8–15 its byte 1, …
    let spread = _mm256_setr_epi64x(
        0,
        0x0101_0101_0101_0101,
        0x0202_0202_0202_0202,
        0x0303_0303_0303_0303,
    );
    // … and are all ones exactly where their own bit (i mod 8) is set, once every other bit
    // is or-ed in.
    let others = _mm256_set1_epi64x(0x7FBF_DFEF_F7FB_FDFE);
    let qh = u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
    let rep = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), spread);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(rep, others), _mm256_set1_epi8(-1));
    let fifth = _mm256_and_si256(set, _mm256_set1_epi8(0x10));
    (_mm256_or_si256(codes, fifth), d, bias)
}

/// The scales `s` = d·sc and biases `b` = dmin·m of a Q4_K/Q5_K block's 8 sub-blocks.
fn k_scales(blk: &[u8]) -> ([f32; 8], [f32; 8]) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    let (mut s, mut b) = ([0f32; 8], [0f32; 8]);
    for sb in 0..8 {
        let (sc, m) = scale_min_k4(sb, &blk[4..16]);
        s[sb] = d * f32::from(sc);
        b[sb] = dmin * f32::from(m);
    }
    (s, b)
}

/// The codes of sub-blocks 2g (low nibbles) and 2g + 1 (high nibbles) of a Q4_K block (or
/// Q5_K, `HIGH`: 5-bit codes), 32 each.
///
/// # Safety
/// The CPU must support AVX2; `blk` holds one whole block, `g < 4`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn k_group<const HIGH: bool>(
    blk: &[u8],
    g: usize,
) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    let m4 = _mm256_set1_epi8(0xF);
    let qs_at = if HIGH { 48 } else { 16 };
    // SAFETY: a block holds 4 × 32 nibble bytes at `qs_at` (and Q5_K's 32 fifth-bit bytes at
    // 16) (unaligned loads).
    unsafe {
        let q = _mm256_loadu_si256(blk.as_ptr().add(qs_at + 32 * g).cast());
        let lo = _mm256_and_si256(q, m4);
        let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if !HIGH {
            return (lo, hi);
        }
        let qh = _mm256_loadu_si256(blk.as_ptr().add(16).cast());
        let one = _mm256_set1_epi8(1);
        // Bit 2g (2g + 1) of each qh byte is the fifth bit of sub-block 2g (2g + 1).
        let bit = |k: usize| {
            let shifted = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(k as i32));
            _mm256_slli_epi16(_mm256_and_si256(shifted, one), 4)
        };
        (
            _mm256_or_si256(lo, bit(2 * g)),
            _mm256_or_si256(hi, bit(2 * g + 1)),
        )
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
        for (bi, blk) in row.chunks_exact(BB).enumerate() {
            let (s, b) = k_scales(blk);
            self.s[8 * bi..8 * bi + 8].copy_from_slice(&s);
            self.b[8 * bi..8 * bi + 8].copy_from_slice(&b);
            for g in 0..4 {
                // SAFETY: AVX2 (this function's contract); `blk` is one whole block; `u` holds
                // 256 codes at 256·bi (unaligned stores).
                unsafe {
                    let (lo, hi) = k_group::<HIGH>(blk, g);
                    let at = self.u.as_mut_ptr().add(256 * bi + 64 * g);
                    std::arch::x86_64::_mm256_storeu_si256(at.cast(), lo);
                    std::arch::x86_64::_mm256_storeu_si256(at.add(32).cast(), hi);
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
    if n == 1 {
        for (row, o) in bytes.chunks_exact(row_bytes).zip(out.iter_mut()) {
            // SAFETY: this function's contract (whole rows, one activation row).
            *o = unsafe { legacy_row1_avx2::<BB, MIN, HIGH, K>(row, act) };
        }
        return;
    }
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
    if n == 1 {
        for (row, o) in bytes.chunks_exact(row_bytes).zip(out.iter_mut()) {
            // SAFETY: this function's contract (whole rows, one activation row).
            *o = unsafe { legacy_row1_avx512::<BB, MIN, HIGH, K>(row, act) };
        }
        return;
    }
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

/// One weight row times a single activation row (decoding, batch 1), the blocks decoded in
/// registers: the arithmetic of [`legacy_tile_avx512`] step for step (same results, so batch
/// size still changes nothing) without storing the decoded row and reading it back.
///
/// # Safety
/// As [`legacy_rows_avx512`], with `row` one whole weight row and `act.rows` = 1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
unsafe fn legacy_row1_avx512<const BB: usize, const MIN: bool, const HIGH: bool, const K: bool>(
    row: &[u8],
    act: &QuantAct,
) -> f32 {
    use std::arch::x86_64::*;
    let pair = |a: f32, b: f32| _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b));
    let join = |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
    let mut acc = _mm512_setzero_ps();
    let mut tail = 0f32;
    if K {
        for (bi, blk) in row.chunks_exact(BB).enumerate() {
            let (s, b) = k_scales(blk);
            for g in 0..4 {
                // SAFETY: this function's contract: a whole block; the activation row holds
                // 64 codes at 256·bi + 64g.
                acc = unsafe {
                    let (lo, hi) = k_group::<HIGH>(blk, g);
                    let (sv, bv) = (pair(s[2 * g], s[2 * g + 1]), pair(b[2 * g], b[2 * g + 1]));
                    vnni_row_step(acc, join(lo, hi), sv, bv, act, 0, 256 * bi + 64 * g)
                };
            }
        }
    } else {
        let blocks = row.len() / BB;
        for p in 0..blocks / 2 {
            // SAFETY: as above (blocks 2p and 2p + 1 exist; 64 codes at 64p).
            acc = unsafe {
                let (c0, s0, b0) = legacy_block::<MIN, HIGH>(&row[2 * p * BB..]);
                let (c1, s1, b1) = legacy_block::<MIN, HIGH>(&row[(2 * p + 1) * BB..]);
                vnni_row_step(
                    acc,
                    join(c0, c1),
                    pair(s0, s1),
                    pair(b0, b1),
                    act,
                    0,
                    64 * p,
                )
            };
        }
        if blocks % 2 == 1 {
            let mut u = [0u8; 32];
            // SAFETY: the last block exists; `u` holds 32 bytes (unaligned store).
            let (s, b) = unsafe {
                let (c, s, b) = legacy_block::<MIN, HIGH>(&row[(blocks - 1) * BB..]);
                _mm256_storeu_si256(u.as_mut_ptr().cast(), c);
                (s, b)
            };
            tail = odd_block_term(&u, s, b, act, 0, blocks - 1);
        }
    }
    _mm512_reduce_add_ps(acc) + tail
}

/// The term of an odd last block `blk` (codes `u`, scale `s`, bias `b`) for activation row `r`,
/// by scalar code (the AVX-512 kernels take blocks in pairs).
fn odd_block_term(u: &[u8], s: f32, b: f32, act: &QuantAct, r: usize, blk: usize) -> f32 {
    let cols = act.cols;
    let q = &act.q[r * cols + 32 * blk..r * cols + 32 * blk + 32];
    let isum: i32 = u
        .iter()
        .zip(q)
        .map(|(&u, &x)| i32::from(u) * i32::from(x))
        .sum();
    let lanes = r * cols / 4 + 8 * blk;
    let a = act.lane[lanes];
    let asum: f32 = act.lsum[lanes..lanes + 8].iter().sum();
    isum as f32 * (s * a) - b * asum
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
            let u = &w.u[32 * blk..32 * blk + 32];
            tail += odd_block_term(u, w.s[blk], w.b[blk], act, r, blk);
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
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, (&sb, &bb)) in s.iter().zip(bias).enumerate() {
        // SAFETY: `u` holds 32 codes at 32b (unaligned load); the rows of the tile exist.
        unsafe {
            let uv = _mm256_loadu_si256(u.as_ptr().add(32 * b).cast());
            for (j, a) in acc.iter_mut().enumerate() {
                *a = avx2_block_step(*a, uv, sb, bb, act, r0 + j, b);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum(a);
    }
}

/// One weight row times a single activation row (decoding, batch 1) with the blocks decoded
/// in registers: [`legacy_tile`]'s arithmetic step for step (same results) without storing
/// the decoded row.
///
/// # Safety
/// As [`legacy_rows_avx2`], with `row` one whole weight row and `act.rows` = 1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn legacy_row1_avx2<const BB: usize, const MIN: bool, const HIGH: bool, const K: bool>(
    row: &[u8],
    act: &QuantAct,
) -> f32 {
    let mut acc = std::arch::x86_64::_mm256_setzero_ps();
    for (bi, blk) in row.chunks_exact(BB).enumerate() {
        // SAFETY (all steps): this function's contract: whole blocks; the activation row
        // holds the codes of every block.
        if K {
            let (s, b) = k_scales(blk);
            for g in 0..4 {
                unsafe {
                    let (lo, hi) = k_group::<HIGH>(blk, g);
                    let sb = 8 * bi + 2 * g;
                    acc = avx2_block_step(acc, lo, s[2 * g], b[2 * g], act, 0, sb);
                    acc = avx2_block_step(acc, hi, s[2 * g + 1], b[2 * g + 1], act, 0, sb + 1);
                }
            }
        } else {
            unsafe {
                let (c, s, b) = legacy_block::<MIN, HIGH>(blk);
                acc = avx2_block_step(acc, c, s, b, act, 0, bi);
            }
        }
    }
    hsum(acc)
}

/// `acc + (s·a)·(u·x) − b·A` over block `blk` (32 codes `u`, scale `s`, bias `b`) of
/// activation row `r`, in 8 lanes: the AVX2 step of [`legacy_tile`] and [`legacy_row1_avx2`].
///
/// # Safety
/// The CPU must support AVX2 and FMA; activation row `r` has block `blk`; `u` ≤ 127.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_block_step(
    acc: std::arch::x86_64::__m256,
    u: std::arch::x86_64::__m256i,
    s: f32,
    b: f32,
    act: &QuantAct,
    r: usize,
    blk: usize,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let cols = act.cols;
    // SAFETY: the `q` row holds 32 codes at 32·blk, the `lane`/`lsum` rows 8 floats at 8·blk
    // (unaligned loads).
    unsafe {
        let x = _mm256_loadu_si256(act.q.as_ptr().add(r * cols + 32 * blk).cast());
        let pairs = _mm256_maddubs_epi16(u, x);
        let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
        let al = _mm256_loadu_ps(act.lane.as_ptr().add(r * cols / 4 + 8 * blk));
        let ls = _mm256_loadu_ps(act.lsum.as_ptr().add(r * cols / 4 + 8 * blk));
        let sv = _mm256_set1_ps(s);
        _mm256_fnmadd_ps(
            _mm256_set1_ps(b),
            ls,
            _mm256_fmadd_ps(p, _mm256_mul_ps(sv, al), acc),
        )
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
