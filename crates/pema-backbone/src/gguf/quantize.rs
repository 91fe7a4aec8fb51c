//! Reference quantisers into ggml block formats (the layouts are described in `quant.rs`):
//! round-to-nearest for the legacy quants, a plain min/max choice of sub-block scales for the
//! K-quants. Used to write test fixtures and to pack f32 weights for the packed kernels.

use rayon::prelude::*;

use super::quant::{ELEMS_PER_TASK, PARALLEL_THRESHOLD, f16_bytes, f32_to_bf16_bits};
use super::{GgmlType, GgufError};

/// A kernel encoding one block of `block_elems` values into `block_bytes` bytes.
type QuantKernel = fn(&[f32], &mut [u8]);

/// Quantises `values` (row-major, length a multiple of the block size) into ggml blocks of type
/// `ty`. Legacy quants follow ggml's reference round-to-nearest quantisers; the K-quants use a
/// plain min/max choice of sub-block scales (no iterative search), which is within a small factor
/// of ggml's error.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, GgufError> {
    let n = values.len();
    let n_bytes = ty.bytes_for(n).ok_or_else(|| GgufError::BadLength {
        what: format!(
            "{ty} value count (must be a multiple of {})",
            ty.block_elems()
        ),
        expected: (n / ty.block_elems() * ty.block_elems()) as u64,
        actual: n as u64,
    })?;
    let plain = |f: &dyn Fn(f32, &mut Vec<u8>)| {
        let mut out = Vec::with_capacity(n_bytes);
        for &x in values {
            f(x, &mut out);
        }
        out
    };
    let kernel: QuantKernel = match ty {
        GgmlType::F32 => return Ok(plain(&|x, o| o.extend_from_slice(&x.to_le_bytes()))),
        GgmlType::F16 => return Ok(plain(&|x, o| o.extend_from_slice(&f16_bytes(x)))),
        GgmlType::BF16 => {
            return Ok(plain(&|x, o| {
                o.extend_from_slice(&f32_to_bf16_bits(x).to_le_bytes())
            }));
        }
        GgmlType::F64 => {
            return Ok(plain(&|x, o| {
                o.extend_from_slice(&f64::from(x).to_le_bytes())
            }));
        }
        GgmlType::I8 => return Ok(plain(&|x, o| o.push(x.round() as i8 as u8))),
        GgmlType::I16 => {
            return Ok(plain(&|x, o| {
                o.extend_from_slice(&(x.round() as i16).to_le_bytes())
            }));
        }
        GgmlType::I32 => {
            return Ok(plain(&|x, o| {
                o.extend_from_slice(&(x.round() as i32).to_le_bytes())
            }));
        }
        GgmlType::I64 => {
            return Ok(plain(&|x, o| {
                o.extend_from_slice(&(x.round() as i64).to_le_bytes())
            }));
        }
        GgmlType::Q4_0 => q_q4_0,
        GgmlType::Q4_1 => q_q4_1,
        GgmlType::Q5_0 => q_q5_0,
        GgmlType::Q5_1 => q_q5_1,
        GgmlType::Q8_0 => q_q8_0,
        GgmlType::Q8_1 => q_q8_1,
        GgmlType::Q4_K => q_q4_k,
        GgmlType::Q5_K => q_q5_k,
        GgmlType::Q6_K => q_q6_k,
        _ => {
            return Err(GgufError::UnsupportedType {
                tensor: format!("<{ty} quantisation>"),
                type_id: ty.id(),
            });
        }
    };
    let mut out = vec![0u8; n_bytes];
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    if n < PARALLEL_THRESHOLD {
        for (x, o) in values.chunks_exact(be).zip(out.chunks_exact_mut(bb)) {
            kernel(x, o);
        }
    } else {
        out.par_chunks_mut(bb)
            .zip(values.par_chunks(be))
            .with_min_len((ELEMS_PER_TASK / be).max(1))
            .for_each(|(o, x)| kernel(x, o));
    }
    Ok(out)
}

/// The value of largest magnitude (with its sign) and that magnitude.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

#[inline]
fn inv(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

fn q_q4_0(x: &[f32], o: &mut [u8]) {
    let (max, _) = signed_absmax(x);
    let d = max / -8.0;
    let id = inv(d);
    o[0..2].copy_from_slice(&f16_bytes(d));
    for j in 0..16 {
        let a = ((x[j] * id + 8.5) as i32).clamp(0, 15) as u8;
        let b = ((x[j + 16] * id + 8.5) as i32).clamp(0, 15) as u8;
        o[2 + j] = a | (b << 4);
    }
}

fn q_q4_1(x: &[f32], o: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inv(d);
    o[0..2].copy_from_slice(&f16_bytes(d));
    o[2..4].copy_from_slice(&f16_bytes(min));
    for j in 0..16 {
        let a = (((x[j] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        let b = (((x[j + 16] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        o[4 + j] = a | (b << 4);
    }
}

fn q_q5_0(x: &[f32], o: &mut [u8]) {
    let (max, _) = signed_absmax(x);
    let d = max / -16.0;
    let id = inv(d);
    o[0..2].copy_from_slice(&f16_bytes(d));
    let mut qh = 0u32;
    for j in 0..16 {
        let a = ((x[j] * id + 16.5) as i32).clamp(0, 31) as u32;
        let b = ((x[j + 16] * id + 16.5) as i32).clamp(0, 31) as u32;
        o[6 + j] = ((a & 0xF) | ((b & 0xF) << 4)) as u8;
        qh |= ((a & 0x10) >> 4) << j;
        qh |= ((b & 0x10) >> 4) << (j + 16);
    }
    o[2..6].copy_from_slice(&qh.to_le_bytes());
}

fn q_q5_1(x: &[f32], o: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inv(d);
    o[0..2].copy_from_slice(&f16_bytes(d));
    o[2..4].copy_from_slice(&f16_bytes(min));
    let mut qh = 0u32;
    for j in 0..16 {
        let a = (((x[j] - min) * id + 0.5) as i32).clamp(0, 31) as u32;
        let b = (((x[j + 16] - min) * id + 0.5) as i32).clamp(0, 31) as u32;
        o[8 + j] = ((a & 0xF) | ((b & 0xF) << 4)) as u8;
        qh |= ((a & 0x10) >> 4) << j;
        qh |= ((b & 0x10) >> 4) << (j + 16);
    }
    o[4..8].copy_from_slice(&qh.to_le_bytes());
}

fn q_q8_0(x: &[f32], o: &mut [u8]) {
    let (_, amax) = signed_absmax(x);
    let d = amax / 127.0;
    let id = inv(d);
    o[0..2].copy_from_slice(&f16_bytes(d));
    for (q, &v) in o[2..34].iter_mut().zip(x) {
        *q = ((v * id).round().clamp(-127.0, 127.0) as i8) as u8;
    }
}

fn q_q8_1(x: &[f32], o: &mut [u8]) {
    let (_, amax) = signed_absmax(x);
    let d = amax / 127.0;
    let id = inv(d);
    let mut sum = 0i32;
    for (q, &v) in o[4..36].iter_mut().zip(x) {
        let qi = (v * id).round().clamp(-127.0, 127.0) as i8;
        sum += i32::from(qi);
        *q = qi as u8;
    }
    o[0..2].copy_from_slice(&f16_bytes(d));
    o[2..4].copy_from_slice(&f16_bytes(sum as f32 * d));
}

/// Packs eight 6-bit scales and mins as ggml's `get_scale_min_k4` unpacks them.
pub(super) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], out: &mut [u8]) {
    for j in 0..4 {
        out[j] = ls[j] | ((ls[j + 4] >> 4) << 6);
        out[j + 4] = lm[j] | ((lm[j + 4] >> 4) << 6);
        out[j + 8] = (ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4);
    }
}

/// Shared Q4_K/Q5_K scale choice: per sub-block of 32, scale = (max − min)/nmax and
/// min = −min(0, min x), both quantised to 6 bits against the block's largest.
/// Returns (d, dmin, 6-bit scales, 6-bit mins, integer levels 0..=nmax).
fn k_quant_levels(x: &[f32], nmax: f32) -> (f32, f32, [u8; 8], [u8; 8], [u8; 256]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        let (lo, hi) = min_max(&x[32 * j..32 * j + 32]);
        let lo = lo.min(0.0);
        scales[j] = (hi - lo) / nmax;
        mins[j] = -lo;
    }
    let max_scale = scales.iter().copied().fold(0f32, f32::max);
    let max_min = mins.iter().copied().fold(0f32, f32::max);
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = (inv_scale * scales[j]).round().clamp(0.0, 63.0) as u8;
        lm[j] = (inv_min * mins[j]).round().clamp(0.0, 63.0) as u8;
    }
    let d = half::f16::from_f32(max_scale / 63.0).to_f32();
    let dmin = half::f16::from_f32(max_min / 63.0).to_f32();
    let mut levels = [0u8; 256];
    for j in 0..8 {
        let dj = d * f32::from(ls[j]);
        let mj = dmin * f32::from(lm[j]);
        let idj = inv(dj);
        for i in 0..32 {
            let v = (x[32 * j + i] + mj) * idj;
            levels[32 * j + i] = v.round().clamp(0.0, nmax) as u8;
        }
    }
    (d, dmin, ls, lm, levels)
}

fn q_q4_k(x: &[f32], o: &mut [u8]) {
    let (d, dmin, ls, lm, lv) = k_quant_levels(x, 15.0);
    o[0..2].copy_from_slice(&f16_bytes(d));
    o[2..4].copy_from_slice(&f16_bytes(dmin));
    pack_scale_min_k4(&ls, &lm, &mut o[4..16]);
    let qs = &mut o[16..144];
    for g in 0..4 {
        for l in 0..32 {
            qs[32 * g + l] = lv[64 * g + l] | (lv[64 * g + 32 + l] << 4);
        }
    }
}

fn q_q5_k(x: &[f32], o: &mut [u8]) {
    let (d, dmin, ls, lm, lv) = k_quant_levels(x, 31.0);
    o[0..2].copy_from_slice(&f16_bytes(d));
    o[2..4].copy_from_slice(&f16_bytes(dmin));
    pack_scale_min_k4(&ls, &lm, &mut o[4..16]);
    let (qh, qs) = o[16..176].split_at_mut(32);
    qh.fill(0);
    for g in 0..4 {
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        for l in 0..32 {
            let a = lv[64 * g + l];
            let b = lv[64 * g + 32 + l];
            qs[32 * g + l] = (a & 0xF) | ((b & 0xF) << 4);
            if a & 0x10 != 0 {
                qh[l] |= u1;
            }
            if b & 0x10 != 0 {
                qh[l] |= u2;
            }
        }
    }
}

fn q_q6_k(x: &[f32], o: &mut [u8]) {
    // Sub-block scales: the signed extreme maps to −32.
    let mut scales = [0f32; 16];
    for (j, s) in scales.iter_mut().enumerate() {
        let (max, _) = signed_absmax(&x[16 * j..16 * j + 16]);
        *s = max / -32.0;
    }
    let (max_scale, _) = signed_absmax(&scales);
    let iscale = if max_scale != 0.0 {
        -128.0 / max_scale
    } else {
        0.0
    };
    let mut sc = [0i8; 16];
    for j in 0..16 {
        sc[j] = (iscale * scales[j]).round().clamp(-128.0, 127.0) as i8;
    }
    let d = half::f16::from_f32(inv(iscale)).to_f32();
    let mut lv = [0u8; 256];
    for j in 0..16 {
        let idj = inv(d * f32::from(sc[j]));
        for i in 0..16 {
            let q = (x[16 * j + i] * idj).round().clamp(-32.0, 31.0) as i32;
            lv[16 * j + i] = (q + 32) as u8;
        }
    }
    let (ql, rest) = o.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    for h in 0..2 {
        for l in 0..32 {
            let base = 128 * h;
            let (q1, q2, q3, q4) = (
                lv[base + l],
                lv[base + l + 32],
                lv[base + l + 64],
                lv[base + l + 96],
            );
            ql[64 * h + l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            ql[64 * h + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            qh[32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    for j in 0..16 {
        rest[j] = sc[j] as u8;
    }
    rest[16..18].copy_from_slice(&f16_bytes(d));
}
