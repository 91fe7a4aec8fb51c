//! Unpacking one row of GGUF blocks into the common integer form the dot kernels read:
//! unsigned 8-bit codes `u` with, per group of 16 elements, a scale `s` and a bias `b` such
//! that the weight is exactly `w = s·u − b` (the value ggml's dequantisation gives).
//!
//! | type | `u` | `s` | `b` |
//! |---|---|---|---|
//! | Q4_0 | nibble | d | 8·d |
//! | Q4_1 | nibble | d | −m |
//! | Q5_0 | 5-bit code | d | 16·d |
//! | Q5_1 | 5-bit code | d | −m |
//! | Q8_0 | q + 128 | d | 128·d |
//! | Q4_K, Q5_K | 4/5-bit code | d·sc (sub-block) | dmin·m (sub-block) |
//! | Q6_K | 6-bit code | d·sc (group) | 32·d·sc |
//!
//! Scales and biases are written once per 4 elements (`ws`, `wb`: the lane layout of the
//! SIMD kernels).

use crate::gguf::GgmlType;

/// Elements sharing one scale/bias.
pub const GROUP: usize = 16;

/// f16 → f32 for every bit pattern (256 KiB, built once): a load instead of a call.
fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect()
    })
}

#[inline(always)]
fn f16_in(t: &[f32], b: &[u8], i: usize) -> f32 {
    t[usize::from(u16::from_le_bytes([b[i], b[i + 1]]))]
}

/// The f16 at byte `i` of `b`, as f32 (a table load).
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_in(f16_table(), b, i)
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Scratch for one unpacked row.
#[derive(Debug, Default, Clone)]
pub struct Unpacked {
    /// Codes, one per element.
    pub u: Vec<u8>,
    /// Scale per 4 elements (each group's scale repeated 4 times).
    pub ws: Vec<f32>,
    /// Bias per 4 elements (each group's bias repeated 4 times).
    pub wb: Vec<f32>,
    /// Codes are signed values offset by 128 with `wb = 128·ws` exactly (Q8_0): kernels may
    /// multiply `u − 128` and skip the bias.
    pub offset128: bool,
}

impl Unpacked {
    /// Scratch for rows of `cols` elements.
    pub fn new(cols: usize) -> Self {
        Self {
            u: vec![0; cols],
            ws: vec![0.0; cols / 4],
            wb: vec![0.0; cols / 4],
            offset128: false,
        }
    }
}

/// Whether rows of this type can be unpacked.
pub fn supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
    )
}

/// Unpacks one row (`row.len()` = blocks × block bytes) into `out`. Unsupported types leave
/// `out` untouched ([`supported`] is checked when a matrix is packed).
#[inline(always)]
pub fn unpack_row(ty: GgmlType, row: &[u8], out: &mut Unpacked) {
    let t = f16_table();
    out.offset128 = ty == GgmlType::Q8_0;
    match ty {
        GgmlType::Q4_0 => legacy::<18, false, false>(t, row, out),
        GgmlType::Q4_1 => legacy::<20, true, false>(t, row, out),
        GgmlType::Q5_0 => legacy::<22, false, true>(t, row, out),
        GgmlType::Q5_1 => legacy::<24, true, true>(t, row, out),
        GgmlType::Q8_0 => q8_0(t, row, out),
        GgmlType::Q4_K => k_4_5::<144, false>(t, row, out),
        GgmlType::Q5_K => k_4_5::<176, true>(t, row, out),
        GgmlType::Q6_K => q6_k(t, row, out),
        _ => {}
    }
}

/// Q4_0, Q4_1, Q5_0, Q5_1 (`BB` bytes per block of 32; `MIN`: has a min; `HIGH`: 5-bit).
#[inline(always)]
fn legacy<const BB: usize, const MIN: bool, const HIGH: bool>(
    t: &[f32],
    row: &[u8],
    out: &mut Unpacked,
) {
    for (bi, (b, u)) in row
        .chunks_exact(BB)
        .zip(out.u.chunks_exact_mut(32))
        .enumerate()
    {
        let d = f16_in(t, b, 0);
        let o = if MIN { 4 } else { 2 };
        let bias = if MIN {
            -f16_in(t, b, 2)
        } else if HIGH {
            16.0 * d
        } else {
            8.0 * d
        };
        let (qh, qs) = if HIGH {
            (
                u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]),
                &b[o + 4..o + 20],
            )
        } else {
            (0, &b[o..o + 16])
        };
        for j in 0..16 {
            u[j] = qs[j] & 0xF;
            u[j + 16] = qs[j] >> 4;
        }
        if HIGH {
            for (j, x) in u.iter_mut().enumerate() {
                *x |= (((qh >> j) & 1) as u8) << 4;
            }
        }
        out.ws[8 * bi..8 * bi + 8].fill(d);
        out.wb[8 * bi..8 * bi + 8].fill(bias);
    }
}

#[inline(always)]
fn q8_0(t: &[f32], row: &[u8], out: &mut Unpacked) {
    for (bi, (b, u)) in row
        .chunks_exact(34)
        .zip(out.u.chunks_exact_mut(32))
        .enumerate()
    {
        let d = f16_in(t, b, 0);
        for (x, &q) in u.iter_mut().zip(&b[2..34]) {
            *x = q ^ 0x80;
        }
        out.ws[8 * bi..8 * bi + 8].fill(d);
        out.wb[8 * bi..8 * bi + 8].fill(128.0 * d);
    }
}

/// Q4_K and Q5_K (`BB` bytes per block of 256; `HIGH`: Q5_K's fifth bits).
#[inline(always)]
fn k_4_5<const BB: usize, const HIGH: bool>(t: &[f32], row: &[u8], out: &mut Unpacked) {
    for (bi, (b, ub)) in row
        .chunks_exact(BB)
        .zip(out.u.chunks_exact_mut(256))
        .enumerate()
    {
        let d = f16_in(t, b, 0);
        let dmin = f16_in(t, b, 2);
        let scales = &b[4..16];
        let (qh, qs) = if HIGH {
            (&b[16..48], &b[48..176])
        } else {
            (&b[0..0], &b[16..144])
        };
        for g in 0..4 {
            let q = &qs[32 * g..32 * g + 32];
            let u = &mut ub[64 * g..64 * g + 64];
            for l in 0..32 {
                u[l] = q[l] & 0xF;
                u[l + 32] = q[l] >> 4;
            }
            if HIGH {
                for l in 0..32 {
                    u[l] |= ((qh[l] >> (2 * g)) & 1) << 4;
                    u[l + 32] |= ((qh[l] >> (2 * g + 1)) & 1) << 4;
                }
            }
        }
        for sb in 0..8 {
            let (sc, m) = scale_min_k4(sb, scales);
            let (s, bias) = (d * f32::from(sc), dmin * f32::from(m));
            let k = 16 * bi + 2 * sb;
            out.ws[4 * k..4 * k + 8].fill(s);
            out.wb[4 * k..4 * k + 8].fill(bias);
        }
    }
}

#[inline(always)]
fn q6_k(t: &[f32], row: &[u8], out: &mut Unpacked) {
    for (bi, (b, ub)) in row
        .chunks_exact(210)
        .zip(out.u.chunks_exact_mut(256))
        .enumerate()
    {
        let d = f16_in(t, b, 208);
        for h in 0..2 {
            let ql = &b[64 * h..64 * h + 64];
            let qh = &b[128 + 32 * h..128 + 32 * h + 32];
            let u = &mut ub[128 * h..128 * h + 128];
            for l in 0..32 {
                u[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                u[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                u[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                u[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
        for k in 0..16 {
            let s = d * f32::from(b[192 + k] as i8);
            let g = 16 * bi + k;
            out.ws[4 * g..4 * g + 4].fill(s);
            out.wb[4 * g..4 * g + 4].fill(32.0 * s);
        }
    }
}
