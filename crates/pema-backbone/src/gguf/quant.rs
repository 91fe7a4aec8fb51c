//! ggml block formats: dequantisation (bit-exact with ggml's `dequantize_row_*`) and simple
//! reference quantisers (round-to-nearest; K-quants with a plain min/max scale choice).
//!
//! Block layouts (all little-endian, `f16` = IEEE binary16):
//! - Q4_0 (32 elems, 18 B): `d: f16, qs: [u8; 16]`; element j < 16 is the low nibble of
//!   `qs[j]`, element j + 16 the high nibble; x = d·(q − 8).
//! - Q4_1 (32, 20 B): `d: f16, m: f16, qs: [u8; 16]`; x = d·q + m.
//! - Q5_0 (32, 22 B): `d: f16, qh: u32, qs: [u8; 16]`; bit j of `qh` is the fifth bit of
//!   element j, bit j + 16 that of element j + 16; x = d·(q − 16).
//! - Q5_1 (32, 24 B): `d: f16, m: f16, qh: u32, qs: [u8; 16]`; x = d·q + m.
//! - Q8_0 (32, 34 B): `d: f16, qs: [i8; 32]`; x = d·q. Q8_1 (36 B) adds `s: f16` after `d`.
//! - Q4_K (256, 144 B): `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`; eight sub-blocks of
//!   32 with 6-bit scale `sc` and min `m` packed in `scales`; x = d·sc·q − dmin·m. Each group of
//!   64 elements shares 32 bytes of `qs`: low nibbles are the first 32, high nibbles the next 32.
//! - Q5_K (256, 176 B): `d, dmin, scales[12], qh: [u8; 32], qs: [u8; 128]`; as Q4_K with a fifth
//!   bit per element from `qh` (bit 2g for the low half of group g, bit 2g + 1 for the high).
//! - Q6_K (256, 210 B): `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`; sixteen
//!   sub-blocks of 16 with an i8 scale each; x = d·scale·(q − 32).

use rayon::prelude::*;

use super::{GgmlType, GgufError};

/// Below this many elements (de)quantisation runs on the calling thread.
pub(super) const PARALLEL_THRESHOLD: usize = 1 << 16;
/// Elements per parallel task.
pub(super) const ELEMS_PER_TASK: usize = 1 << 14;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

#[inline]
pub(super) fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// ggml's fp32 → bf16 conversion: round to nearest even, NaN kept quiet.
pub(super) fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block (ggml `get_scale_min_k4`).
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// A kernel turning whole blocks `src` into `dst` (`dst.len()` = blocks × block_elems).
type DequantKernel = fn(&[u8], &mut [f32]);

fn kernel_for(ty: GgmlType) -> Option<DequantKernel> {
    Some(match ty {
        GgmlType::F32 => deq_f32,
        GgmlType::F16 => deq_f16,
        GgmlType::BF16 => deq_bf16,
        GgmlType::F64 => deq_f64,
        GgmlType::I8 => deq_i8,
        GgmlType::I16 => deq_i16,
        GgmlType::I32 => deq_i32,
        GgmlType::I64 => deq_i64,
        GgmlType::Q4_0 => deq_q4_0,
        GgmlType::Q4_1 => deq_q4_1,
        GgmlType::Q5_0 => deq_q5_0,
        GgmlType::Q5_1 => deq_q5_1,
        GgmlType::Q8_0 => deq_q8_0,
        GgmlType::Q8_1 => deq_q8_1,
        GgmlType::Q4_K => deq_q4_k,
        GgmlType::Q5_K => deq_q5_k,
        GgmlType::Q6_K => deq_q6_k,
        _ => return None,
    })
}

/// Dequantises `n_elements` values of type `ty` from `bytes` (exactly `ty.bytes_for(n)` long)
/// into row-major `f32`, as ggml's `dequantize_row_*` does. Large inputs run in parallel.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>, GgufError> {
    let kernel = kernel_for(ty).ok_or_else(|| GgufError::UnsupportedType {
        tensor: format!("<{ty} buffer>"),
        type_id: ty.id(),
    })?;
    let expected = ty
        .bytes_for(n_elements)
        .ok_or_else(|| GgufError::BadLength {
            what: format!(
                "{ty} element count (must be a multiple of {})",
                ty.block_elems()
            ),
            expected: (n_elements / ty.block_elems() * ty.block_elems()) as u64,
            actual: n_elements as u64,
        })?;
    if bytes.len() != expected {
        return Err(GgufError::BadLength {
            what: format!("{ty} data bytes for {n_elements} elements"),
            expected: expected as u64,
            actual: bytes.len() as u64,
        });
    }
    let mut out = vec![0f32; n_elements];
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    if n_elements < PARALLEL_THRESHOLD {
        kernel(bytes, &mut out);
    } else {
        let blocks_per_task = (ELEMS_PER_TASK / be).max(1);
        out.par_chunks_mut(blocks_per_task * be)
            .zip(bytes.par_chunks(blocks_per_task * bb))
            .for_each(|(dst, src)| kernel(src, dst));
    }
    Ok(out)
}

fn deq_f32(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn deq_f16(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = f16_at(b, 0);
    }
}

fn deq_bf16(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}

fn deq_f64(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        *y = f64::from_le_bytes(a) as f32;
    }
}

fn deq_i8(src: &[u8], dst: &mut [f32]) {
    for (y, &b) in dst.iter_mut().zip(src) {
        *y = f32::from(b as i8);
    }
}

fn deq_i16(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = f32::from(i16::from_le_bytes([b[0], b[1]]));
    }
}

fn deq_i32(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *y = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32;
    }
}

fn deq_i64(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        *y = i64::from_le_bytes(a) as f32;
    }
}

fn deq_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let qs = &b[2..18];
        for j in 0..16 {
            y[j] = (i32::from(qs[j] & 0xF) - 8) as f32 * d;
            y[j + 16] = (i32::from(qs[j] >> 4) - 8) as f32 * d;
        }
    }
}

fn deq_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qs = &b[4..20];
        for j in 0..16 {
            y[j] = f32::from(qs[j] & 0xF) * d + m;
            y[j + 16] = f32::from(qs[j] >> 4) * d + m;
        }
    }
}

fn deq_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        for j in 0..16 {
            let xh0 = ((qh >> j) << 4) & 0x10;
            let xh1 = (qh >> (j + 12)) & 0x10;
            let x0 = (u32::from(qs[j] & 0xF) | xh0) as i32 - 16;
            let x1 = (u32::from(qs[j] >> 4) | xh1) as i32 - 16;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    }
}

fn deq_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let qs = &b[8..24];
        for j in 0..16 {
            let xh0 = ((qh >> j) << 4) & 0x10;
            let xh1 = (qh >> (j + 12)) & 0x10;
            let x0 = u32::from(qs[j] & 0xF) | xh0;
            let x1 = u32::from(qs[j] >> 4) | xh1;
            y[j] = x0 as f32 * d + m;
            y[j + 16] = x1 as f32 * d + m;
        }
    }
}

fn deq_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
            *yj = f32::from(q as i8) * d;
        }
    }
}

fn deq_q8_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(36).zip(dst.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        for (yj, &q) in y.iter_mut().zip(&b[4..36]) {
            *yj = f32::from(q as i8) * d;
        }
    }
}

fn deq_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(256)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qs = &b[16..144];
        for g in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * g, scales);
            let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
            let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
            let q = &qs[32 * g..32 * g + 32];
            let y = &mut y[64 * g..64 * g + 64];
            for l in 0..32 {
                y[l] = d1 * f32::from(q[l] & 0xF) - m1;
                y[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

fn deq_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(176).zip(dst.chunks_exact_mut(256)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qh = &b[16..48];
        let qs = &b[48..176];
        for g in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * g, scales);
            let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
            let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
            let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
            let ql = &qs[32 * g..32 * g + 32];
            let y = &mut y[64 * g..64 * g + 64];
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * f32::from((ql[l] & 0xF) + h1) - m1;
                y[l + 32] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
            }
        }
    }
}

fn deq_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(256)) {
        let d = f16_at(b, 208);
        for h in 0..2 {
            let ql = &b[64 * h..64 * h + 64];
            let qh = &b[128 + 32 * h..128 + 32 * h + 32];
            let sc = &b[192 + 8 * h..192 + 8 * h + 8];
            let y = &mut y[128 * h..128 * h + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * f32::from(sc[is] as i8) * q1 as f32;
                y[l + 32] = d * f32::from(sc[is + 2] as i8) * q2 as f32;
                y[l + 64] = d * f32::from(sc[is + 4] as i8) * q3 as f32;
                y[l + 96] = d * f32::from(sc[is + 6] as i8) * q4 as f32;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quantisation
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::super::quantize::{pack_scale_min_k4, quantize};
    use super::*;

    #[test]
    fn k4_scale_packing_round_trips() {
        for seed in 0..64u8 {
            let ls: [u8; 8] =
                std::array::from_fn(|j| seed.wrapping_mul(7).wrapping_add(9 * j as u8) & 63);
            let lm: [u8; 8] =
                std::array::from_fn(|j| seed.wrapping_mul(13).wrapping_add(5 * j as u8) & 63);
            let mut packed = [0u8; 12];
            pack_scale_min_k4(&ls, &lm, &mut packed);
            for j in 0..8 {
                assert_eq!(
                    scale_min_k4(j, &packed),
                    (ls[j], lm[j]),
                    "seed {seed}, j {j}"
                );
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3F80);
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: rounds to the even 1.0.
        assert_eq!(f32_to_bf16_bits(1.0 + 2f32.powi(-8)), 0x3F80);
        // 1 + 3·2^-8 is a tie between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up to even.
        assert_eq!(f32_to_bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), 0x3F82);
        assert!(f32::from_bits(u32::from(f32_to_bf16_bits(f32::NAN)) << 16).is_nan());
        assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7F80);
    }

    #[test]
    fn kernels_match_can_dequantize() {
        for ty in GgmlType::ALL {
            assert_eq!(kernel_for(ty).is_some(), ty.can_dequantize(), "{ty}");
            let values = vec![0.25f32; ty.block_elems()];
            assert_eq!(quantize(ty, &values).is_ok(), ty.can_dequantize(), "{ty}");
        }
    }
}
