//! W_hd in bf16 for the host kernel ([`super::HeadPrecision::Bf16`]), packed twice for
//! AVX-512 BF16's `vdpbf16ps`, which multiplies 16 pairs of bf16 values and adds each pair's
//! sum to an f32 lane (32 multiply-adds per instruction, twice f32 FMA's rate):
//!
//! - `nt`, for the logits ℓ = X·Wᵀ: tiles of [`TILE`] vocabulary rows; within a tile, for each
//!   column pair p, the 32 rows' (W[j, 2p], W[j, 2p+1]) side by side (64 values, two vectors);
//! - `nn`, for ∂X = G·W: tiles of [`TILE`] columns; within a tile, for each vocabulary pair q,
//!   the 32 columns' (W[2q, k], W[2q+1, k]).
//!
//! A product rounds its other operand (X or G) to bf16 (nearest even), broadcasts one of its
//! pairs per step and accumulates in f32: an 8-row × 32-column register tile (16 vectors).
//! Both copies together take V·d·4 bytes, what the f32 weight takes. Shapes need not be
//! multiples of the tile: the packed copies are zero-padded to V and d rounded up to
//! [`TILE`]. Where the CPU lacks AVX-512 BF16 the same products run in f32 on the widened
//! bf16 weights and bf16-rounded operands (the same values multiplied; only the summation
//! order differs).

use rayon::prelude::*;

use super::cpu::HostMat;

/// Rows (or columns) of a packed tile: two 16-lane vectors.
pub const TILE: usize = 32;
/// Rows of the register tile.
const MR: usize = 8;
/// Vocabulary pairs per block of the backward product (its W panel, 256 × 64 × 2 bytes =
/// 32 KiB, stays in L1 while every row tile passes over it).
const KB: usize = 256;

/// f32 → bf16 bits, round to nearest even (NaN stays NaN).
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// bf16 bits → f32 (exact).
#[inline]
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// W_hd `[V, d]` in bf16, packed for both products.
#[derive(Debug, Clone)]
pub struct PackedBf16 {
    rows: usize,
    cols: usize,
    rows_p: usize,
    cols_p: usize,
    nt: Vec<u16>,
    nn: Vec<u16>,
}

fn round_up(n: usize) -> usize {
    n.div_ceil(TILE) * TILE
}

/// Whether this CPU runs the packed products natively.
pub fn native() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl PackedBf16 {
    /// Rounds `w` (`[rows, cols]` row-major f32) to bf16 and packs it.
    pub fn pack(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "weight size");
        let (rows_p, cols_p) = (round_up(rows), round_up(cols));
        let (hp, vp) = (cols_p / 2, rows_p / 2);
        let at = |j: usize, k: usize| {
            if j < rows && k < cols {
                to_bf16(w[j * cols + k])
            } else {
                0
            }
        };
        let mut nt = vec![0u16; rows_p * cols_p];
        nt.par_chunks_mut(hp * 2 * TILE)
            .enumerate()
            .for_each(|(t, tile)| {
                for p in 0..hp {
                    for l in 0..TILE {
                        for e in 0..2 {
                            tile[(p * TILE + l) * 2 + e] = at(t * TILE + l, 2 * p + e);
                        }
                    }
                }
            });
        let mut nn = vec![0u16; rows_p * cols_p];
        nn.par_chunks_mut(vp * 2 * TILE)
            .enumerate()
            .for_each(|(t, tile)| {
                for q in 0..vp {
                    for l in 0..TILE {
                        for e in 0..2 {
                            tile[(q * TILE + l) * 2 + e] = at(2 * q + e, t * TILE + l);
                        }
                    }
                }
            });
        Self {
            rows,
            cols,
            rows_p,
            cols_p,
            nt,
            nn,
        }
    }

    /// V.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// d.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held (both packed copies).
    pub fn bytes(&self) -> usize {
        (self.nt.len() + self.nn.len()) * 2
    }

    /// Rows `start..start + len` of W as f32 (the bf16 values, exactly) into `dst`.
    pub fn widen_rows(&self, start: usize, len: usize, dst: &mut [f32]) {
        let (k, hp) = (self.cols, self.cols_p / 2);
        dst[..len * k]
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(i, row)| {
                let j = start + i;
                let (t, l) = (j / TILE, j % TILE);
                let tile = &self.nt[t * hp * 2 * TILE..];
                for (c, v) in row.iter_mut().enumerate() {
                    *v = from_bf16(tile[((c / 2) * TILE + l) * 2 + c % 2]);
                }
            });
    }

    /// ℓ = x · Wᵀ for x `[m, d]` into `out` (`[m, V]`, row stride V).
    pub fn logits(&self, x: HostMat<'_>, out: &mut [f32]) {
        assert_eq!(x.cols, self.cols, "x width");
        let (m, v) = (x.rows, self.rows);
        assert!(out.len() >= m * v, "logits buffer");
        let hp = self.cols_p / 2;
        let xb = pairs(x.data, m, x.cols, hp);
        if !native() {
            return self.logits_fallback(&xb, m, out);
        }
        let out_ptr = SendPtr(out.as_mut_ptr());
        let tiles = self.rows_p / TILE;
        // Tasks of 8 vocabulary tiles (256 rows): many per thread, each writing its own
        // columns of `out`.
        (0..tiles.div_ceil(8)).into_par_iter().for_each(|task| {
            let out_ptr = &out_ptr;
            let mut acc = [0f32; MR * TILE];
            for t in task * 8..((task + 1) * 8).min(tiles) {
                let panel = &self.nt[t * hp * 2 * TILE..(t + 1) * hp * 2 * TILE];
                let c0 = t * TILE;
                let width = TILE.min(v - c0);
                for r0 in (0..m).step_by(MR) {
                    let mr = MR.min(m - r0);
                    acc.fill(0.0);
                    // SAFETY: AVX-512F and BF16 are present (native()); the A rows r0..r0+mr
                    // each hold hp pairs, the panel holds hp × 64 values, acc holds MR × 32.
                    unsafe { tile_kernel(&xb[r0 * hp..], hp, panel, hp, mr, &mut acc) };
                    for r in 0..mr {
                        // SAFETY: row r0 + r < m and columns c0..c0 + width < V: inside
                        // `out` (m × V, checked above); tasks write disjoint column ranges.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                acc[r * TILE..].as_ptr(),
                                out_ptr.0.add((r0 + r) * v + c0),
                                width,
                            );
                        }
                    }
                }
            }
        });
    }

    /// out `[m, d]` = g · W for g `[m, V]` (row stride `g_rs`).
    pub fn times(&self, g: &[f32], g_rs: usize, m: usize, out: &mut [f32]) {
        let (v, k) = (self.rows, self.cols);
        assert!(out.len() >= m * k, "output buffer");
        let vp = self.rows_p / 2;
        let gb = pairs_strided(g, m, v, g_rs, vp);
        if !native() {
            return self.times_fallback(&gb, m, out);
        }
        let out_ptr = SendPtr(out.as_mut_ptr());
        let tiles = self.cols_p / TILE;
        (0..tiles).into_par_iter().for_each(|t| {
            let out_ptr = &out_ptr;
            let c0 = t * TILE;
            let width = TILE.min(k - c0);
            let slab = &self.nn[t * vp * 2 * TILE..(t + 1) * vp * 2 * TILE];
            // The tile's output rows, accumulated over vocabulary blocks.
            let mut tile_out = vec![0f32; m.div_ceil(MR) * MR * TILE];
            for q0 in (0..vp).step_by(KB) {
                let kb = KB.min(vp - q0);
                let panel = &slab[q0 * 2 * TILE..(q0 + kb) * 2 * TILE];
                for r0 in (0..m).step_by(MR) {
                    let mr = MR.min(m - r0);
                    let acc = &mut tile_out[r0 * TILE..(r0 + MR) * TILE];
                    // SAFETY: as in `logits`: A rows r0..r0+mr start at pair q0 and hold
                    // ≥ kb pairs each (row stride vp), the panel holds kb × 64 values.
                    unsafe { tile_kernel_acc(&gb[r0 * vp + q0..], vp, panel, kb, mr, acc) };
                }
            }
            for r in 0..m {
                // SAFETY: row r < m and columns c0..c0 + width ≤ d: inside `out` (m × d,
                // checked above); tasks write disjoint column ranges.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        tile_out[r * TILE..].as_ptr(),
                        out_ptr.0.add(r * k + c0),
                        width,
                    );
                }
            }
        });
    }

    fn logits_fallback(&self, xb: &[u32], m: usize, out: &mut [f32]) {
        let (v, k, hp) = (self.rows, self.cols, self.cols_p / 2);
        let x: Vec<f32> = unpairs(xb, m, hp, k);
        out[..m * v]
            .par_chunks_mut(v)
            .enumerate()
            .for_each(|(i, row)| {
                let mut w = vec![0f32; k];
                for (j, o) in row.iter_mut().enumerate() {
                    self.widen_rows(j, 1, &mut w);
                    *o = dot(&x[i * k..(i + 1) * k], &w);
                }
            });
    }

    fn times_fallback(&self, gb: &[u32], m: usize, out: &mut [f32]) {
        let (v, k, vp) = (self.rows, self.cols, self.rows_p / 2);
        let g: Vec<f32> = unpairs(gb, m, vp, v);
        let mut w = vec![0f32; v * k];
        self.widen_rows(0, v, &mut w);
        out[..m * k]
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(i, row)| {
                row.fill(0.0);
                for j in 0..v {
                    let gij = g[i * v + j];
                    for (o, wj) in row.iter_mut().zip(&w[j * k..(j + 1) * k]) {
                        *o += gij * wj;
                    }
                }
            });
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A raw pointer that rayon tasks share to write disjoint parts of one buffer.
struct SendPtr(*mut f32);
// SAFETY: every task writes a range of the buffer that no other task touches (see the
// callers), and the buffer outlives the parallel loop.
unsafe impl Sync for SendPtr {}

/// Rows of `x` (`[m, k]`) rounded to bf16, as pairs: `[m, hp]` u32 (zero-padded).
fn pairs(x: &[f32], m: usize, k: usize, hp: usize) -> Vec<u32> {
    pairs_strided(x, m, k, k, hp)
}

/// As [`pairs`] for rows of `k` values at row stride `rs`.
fn pairs_strided(x: &[f32], m: usize, k: usize, rs: usize, hp: usize) -> Vec<u32> {
    let mut out = vec![0u32; m * hp];
    out.par_chunks_mut(hp.max(1))
        .enumerate()
        .for_each(|(i, row)| round_row(&x[i * rs..i * rs + k], row));
    out
}

fn round_row(src: &[f32], dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: AVX-512F and BF16 are present (native()).
        unsafe { round_row_avx512(src, dst) };
        return;
    }
    round_row_scalar(src, dst);
}

fn round_row_scalar(src: &[f32], dst: &mut [u32]) {
    for (p, d) in dst.iter_mut().enumerate() {
        let lo = src.get(2 * p).map_or(0, |&x| to_bf16(x));
        let hi = src.get(2 * p + 1).map_or(0, |&x| to_bf16(x));
        *d = u32::from(lo) | (u32::from(hi) << 16);
    }
}

/// 32 values per `vcvtne2ps2bf16` (round to nearest even, as [`to_bf16`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn round_row_avx512(src: &[f32], dst: &mut [u32]) {
    use std::arch::x86_64::{__m512i, _mm512_cvtne2ps_pbh, _mm512_loadu_ps, _mm512_storeu_si512};
    let full = (src.len() / 32).min(dst.len() / 16);
    for b in 0..full {
        // SAFETY: b < full, so src[32b..32b+32] and dst[16b..16b+16] are in range (unaligned
        // forms); the bf16 vector is 64 bytes, written as 16 u32 pairs (low half first).
        unsafe {
            let lo = _mm512_loadu_ps(src.as_ptr().add(32 * b));
            let hi = _mm512_loadu_ps(src.as_ptr().add(32 * b + 16));
            let v = _mm512_cvtne2ps_pbh(hi, lo);
            let bits: __m512i = std::mem::transmute(v);
            _mm512_storeu_si512(dst.as_mut_ptr().add(16 * b).cast(), bits);
        }
    }
    round_row_scalar(&src[(32 * full).min(src.len())..], &mut dst[16 * full..]);
}

/// Pairs back to f32 rows of `k` values (the bf16-rounded operand, for the fallback).
fn unpairs(p: &[u32], m: usize, hp: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * k];
    for i in 0..m {
        for c in 0..k {
            let w = p[i * hp + c / 2];
            out[i * k + c] = from_bf16(if c % 2 == 0 {
                w as u16
            } else {
                (w >> 16) as u16
            });
        }
    }
    out
}

/// acc (MR × 32, row-major) = Σ_p A[r][p] · panel[p] for the first `mr` rows: A rows of `np`
/// pairs at stride `a_rs` (u32 pairs), the panel `np` × 64 bf16.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512 BF16; `a` must hold rows `0..mr` of `np` pairs at
/// stride `a_rs`, `panel` `np · 64` values, `acc` `MR · 32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_kernel(
    a: &[u32],
    a_rs: usize,
    panel: &[u16],
    np: usize,
    mr: usize,
    acc: &mut [f32],
) {
    // SAFETY: forwarded (same contract).
    unsafe { tile_kernel_acc(a, a_rs, panel, np, mr, acc) }
}

/// As [`tile_kernel`], adding to `acc` instead of overwriting it.
///
/// # Safety
/// As [`tile_kernel`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_kernel_acc(
    a: &[u32],
    a_rs: usize,
    panel: &[u16],
    np: usize,
    mr: usize,
    acc: &mut [f32],
) {
    // SAFETY: forwarded; each arm's MR_ equals mr ≤ MR.
    unsafe {
        match mr {
            8 => kernel::<8>(a, a_rs, panel, np, acc),
            7 => kernel::<7>(a, a_rs, panel, np, acc),
            6 => kernel::<6>(a, a_rs, panel, np, acc),
            5 => kernel::<5>(a, a_rs, panel, np, acc),
            4 => kernel::<4>(a, a_rs, panel, np, acc),
            3 => kernel::<3>(a, a_rs, panel, np, acc),
            2 => kernel::<2>(a, a_rs, panel, np, acc),
            1 => kernel::<1>(a, a_rs, panel, np, acc),
            _ => {}
        }
    }
}

/// The register tile: R rows × 32 columns in 2·R accumulators; per pair step two panel
/// loads, R broadcasts and 2·R `vdpbf16ps`.
///
/// # Safety
/// As [`tile_kernel`] with `mr = R`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn kernel<const R: usize>(
    a: &[u32],
    a_rs: usize,
    panel: &[u16],
    np: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::{
        __m512, __m512bh, _mm512_dpbf16_ps, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_set1_epi32,
        _mm512_storeu_ps,
    };
    debug_assert!(R <= MR && acc.len() >= R * TILE && panel.len() >= np * 2 * TILE);
    debug_assert!(R == 0 || a.len() >= (R - 1) * a_rs + np);
    // SAFETY: the caller guarantees the ranges (see the contract); all loads and stores are
    // unaligned forms; bf16 vectors are reinterpreted 64-byte integer vectors.
    unsafe {
        let mut c: [[__m512; 2]; R] = [[std::mem::zeroed(); 2]; R];
        for (r, cr) in c.iter_mut().enumerate() {
            cr[0] = _mm512_loadu_ps(acc.as_ptr().add(r * TILE));
            cr[1] = _mm512_loadu_ps(acc.as_ptr().add(r * TILE + 16));
        }
        let ap = a.as_ptr();
        let bp = panel.as_ptr();
        for p in 0..np {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * 64).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * 64 + 32).cast()));
            for (r, cr) in c.iter_mut().enumerate() {
                let x: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*ap.add(r * a_rs + p) as i32));
                cr[0] = _mm512_dpbf16_ps(cr[0], x, b0);
                cr[1] = _mm512_dpbf16_ps(cr[1], x, b1);
            }
        }
        for (r, cr) in c.iter().enumerate() {
            _mm512_storeu_ps(acc.as_mut_ptr().add(r * TILE), cr[0]);
            _mm512_storeu_ps(acc.as_mut_ptr().add(r * TILE + 16), cr[1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_kernel(_: &[u32], _: usize, _: &[u16], _: usize, _: usize, _: &mut [f32]) {
    unreachable!("native() is false off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_kernel_acc(_: &[u32], _: usize, _: &[u16], _: usize, _: usize, _: &mut [f32]) {
    unreachable!("native() is false off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// f64 products of the bf16-rounded operands.
    fn reference(x: &[f32], m: usize, w: &[f32], v: usize, k: usize) -> Vec<f64> {
        let r = |a: f32| from_bf16(to_bf16(a)) as f64;
        let mut out = vec![0f64; m * v];
        for i in 0..m {
            for j in 0..v {
                out[i * v + j] = (0..k).map(|c| r(x[i * k + c]) * r(w[j * k + c])).sum();
            }
        }
        out
    }

    #[test]
    fn rounding_is_nearest_even_and_widening_exact() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2⁻⁸ is halfway between bf16 1.0 and 1 + 2⁻⁷: ties to even (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(from_bf16(0xc040), -3.0);
        let x = values(70, 5);
        let mut simd = vec![0u32; 35];
        let mut scalar = vec![0u32; 35];
        round_row(&x, &mut simd);
        round_row_scalar(&x, &mut scalar);
        assert_eq!(simd, scalar);
    }

    #[test]
    fn packed_products_match_f64_on_the_rounded_operands() {
        // Shapes off the tile (V 75, d 45, m 11) exercise the padding and a partial row tile.
        for &(m, v, k) in &[(11usize, 75usize, 45usize), (8, 64, 32), (3, 33, 2)] {
            let w = values(v * k, 1);
            let x = values(m * k, 2);
            let packed = PackedBf16::pack(&w, v, k);
            let mut out = vec![f32::NAN; m * v];
            packed.logits(
                HostMat {
                    data: &x,
                    rows: m,
                    cols: k,
                },
                &mut out,
            );
            let want = reference(&x, m, &w, v, k);
            for (a, b) in out.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
            // ∂X = G·W with G [m, V] at a wider row stride.
            let rs = v + 3;
            let g = values(m * rs, 3);
            let mut dx = vec![f32::NAN; m * k];
            packed.times(&g, rs, m, &mut dx);
            let rb = |a: f32| from_bf16(to_bf16(a)) as f64;
            for i in 0..m {
                for c in 0..k {
                    let want: f64 = (0..v).map(|j| rb(g[i * rs + j]) * rb(w[j * k + c])).sum();
                    let got = dx[i * k + c] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{got} vs {want}"
                    );
                }
            }
            let mut rows = vec![0f32; 2 * k];
            packed.widen_rows(v - 2, 2, &mut rows);
            for (c, got) in rows.iter().enumerate() {
                assert_eq!(*got, from_bf16(to_bf16(w[(v - 2) * k + c])));
            }
        }
    }

    #[test]
    fn the_fallback_computes_the_same_products() {
        let (m, v, k) = (5, 40, 34);
        let w = values(v * k, 7);
        let x = values(m * k, 8);
        let packed = PackedBf16::pack(&w, v, k);
        let hp = packed.cols_p / 2;
        let xb = pairs(&x, m, k, hp);
        let mut fast = vec![0f32; m * v];
        let mut slow = vec![0f32; m * v];
        packed.logits(
            HostMat {
                data: &x,
                rows: m,
                cols: k,
            },
            &mut fast,
        );
        packed.logits_fallback(&xb, m, &mut slow);
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let vp = packed.rows_p / 2;
        let gb = pairs(&x[..], 1, k.min(v), vp);
        let mut dx_slow = vec![0f32; k];
        packed.times_fallback(&gb, 1, &mut dx_slow);
        let mut dx_fast = vec![0f32; k];
        let mut g = vec![0f32; v];
        g[..k.min(v)].copy_from_slice(&x[..k.min(v)]);
        packed.times(&g, v, 1, &mut dx_fast);
        for (a, b) in dx_fast.iter().zip(&dx_slow) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
