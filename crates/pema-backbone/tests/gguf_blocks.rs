//! Hand-built ggml blocks checked against values computed by hand from the block layouts, and
//! quantise → dequantise round trips of every supported type.

use pema_backbone::gguf::{GgmlType, GgufError, dequantize, quantize};

const D_HALF: [u8; 2] = [0x00, 0x38]; // f16 0.5
const D_QUARTER: [u8; 2] = [0x00, 0x34]; // f16 0.25
const D_ONE: [u8; 2] = [0x00, 0x3C]; // f16 1.0
const D_MINUS_ONE: [u8; 2] = [0x00, 0xBC]; // f16 -1.0

#[test]
fn q8_0_block_by_hand() {
    let mut b = D_HALF.to_vec();
    b.extend((0..32).map(|j| (j as i8 - 16) as u8));
    let y = dequantize(GgmlType::Q8_0, &b, 32).expect("valid Q8_0 block");
    for (j, v) in y.iter().enumerate() {
        assert_eq!(*v, 0.5 * (j as f32 - 16.0), "element {j}");
    }
    assert_eq!(y[0], -8.0);
    assert_eq!(y[31], 7.5);
}

#[test]
fn q4_0_block_by_hand() {
    // qs[j] = j | (15 - j) << 4  →  element j = d(j − 8), element j+16 = d(15 − j − 8).
    let mut b = D_HALF.to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize(GgmlType::Q4_0, &b, 32).expect("valid Q4_0 block");
    assert_eq!(y[0], -4.0);
    assert_eq!(y[15], 3.5);
    assert_eq!(y[16], 3.5);
    assert_eq!(y[31], -4.0);
}

#[test]
fn q4_1_block_by_hand() {
    // d = 0.25, m = −1; low nibbles are elements 0–15, high nibbles 16–31; x = d·q + m.
    let mut b = D_QUARTER.to_vec();
    b.extend_from_slice(&D_MINUS_ONE);
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize(GgmlType::Q4_1, &b, 32).expect("valid Q4_1 block");
    let expect: Vec<f32> = (0..16)
        .map(|j| 0.25 * j as f32 - 1.0)
        .chain((0..16).map(|j| 0.25 * (15 - j) as f32 - 1.0))
        .collect();
    assert_eq!(y, expect);
    assert_eq!(y[0], -1.0);
    assert_eq!(y[15], 2.75);
}

#[test]
fn q5_0_block_by_hand() {
    // d = 1, qh bits 0, 17 and 31 set, qs[j] = j | (15 − j) << 4; x = q − 16 with
    // q = nibble + 16·bit.
    let mut b = D_ONE.to_vec();
    let qh: u32 = 1 | (1 << 17) | (1 << 31);
    b.extend_from_slice(&qh.to_le_bytes());
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize(GgmlType::Q5_0, &b, 32).expect("valid Q5_0 block");
    assert_eq!(y[0], 0.0); // nibble 0 + 16 − 16
    assert_eq!(y[1], -15.0); // nibble 1 − 16
    assert_eq!(y[15], -1.0); // nibble 15 − 16
    assert_eq!(y[16], -1.0); // high nibble of qs[0] = 15, no fifth bit
    assert_eq!(y[17], 14.0); // high nibble of qs[1] = 14, fifth bit (bit 17) set
    assert_eq!(y[31], 0.0); // high nibble of qs[15] = 0, fifth bit (bit 31) set
    assert_eq!(y[30], -15.0); // high nibble of qs[14] = 1
}

#[test]
fn q5_1_block_by_hand() {
    let mut b = D_HALF.to_vec();
    b.extend_from_slice(&D_ONE); // m = 1
    let qh: u32 = 1 << 3 | 1 << 20;
    b.extend_from_slice(&qh.to_le_bytes());
    b.extend([0x21u8; 16]); // low nibble 1, high nibble 2
    let y = dequantize(GgmlType::Q5_1, &b, 32).expect("valid Q5_1 block");
    assert_eq!(y[0], 1.5); // 0.5·1 + 1
    assert_eq!(y[3], 0.5 * 17.0 + 1.0);
    assert_eq!(y[16], 2.0); // 0.5·2 + 1
    assert_eq!(y[20], 0.5 * 18.0 + 1.0);
}

/// Element → (byte, shift) of its 4 low bits and (byte, shift) of its 2 high bits in a Q6_K
/// block, written from the layout: halves of 128; within a half, quarter k = r / 32 and
/// lane l = r % 32; quarters 0/1 use the low nibble of ql[l] / ql[l + 32], quarters 2/3 the high
/// nibble; the high bits sit in qh[l] at bit 2k.
fn q6k_location(e: usize) -> ((usize, u32), (usize, u32)) {
    let (h, r) = (e / 128, e % 128);
    let (k, l) = (r / 32, r % 32);
    let ql = 64 * h + l + 32 * (k & 1);
    let shift = if k >= 2 { 4 } else { 0 };
    ((ql, shift), (128 + 32 * h + l, 2 * k as u32))
}

#[test]
fn q6_k_block_by_hand() {
    let mut b = vec![0u8; 210];
    let level = |e: usize| ((e * 7 + 3) % 64) as u8;
    for e in 0..256 {
        let ((qi, qs), (hi, hs)) = q6k_location(e);
        b[qi] |= (level(e) & 0xF) << qs;
        b[hi] |= (level(e) >> 4) << hs;
    }
    let scale = |s: usize| s as i8 - 8;
    for s in 0..16 {
        b[192 + s] = scale(s) as u8;
    }
    b[208..210].copy_from_slice(&D_HALF);
    let y = dequantize(GgmlType::Q6_K, &b, 256).expect("valid Q6_K block");
    for (e, v) in y.iter().enumerate() {
        let expect = 0.5 * f32::from(scale(e / 16)) * (f32::from(level(e)) - 32.0);
        assert_eq!(*v, expect, "element {e}");
    }
}

/// Packs eight 6-bit scales and mins the way the K-quant layout stores them: bytes 0–3 hold
/// scales 0–3 (low 6 bits) and the top 2 bits of scales 4–7; bytes 4–7 the same for mins;
/// bytes 8–11 the low 4 bits of scales 4–7 (low nibble) and mins 4–7 (high nibble).
fn k4_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for j in 0..4 {
        out[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
    out
}

#[test]
fn q4_k_block_by_hand() {
    let sc: [u8; 8] = std::array::from_fn(|j| 8 * j as u8 + 5); // 5..61, high bits used
    let m: [u8; 8] = std::array::from_fn(|j| 63 - 7 * j as u8); // 63..14
    let level = |e: usize| ((e * 5 + 1) % 16) as u8;
    let mut b = D_HALF.to_vec(); // d = 0.5
    b.extend_from_slice(&D_QUARTER); // dmin = 0.25
    b.extend_from_slice(&k4_scales(sc, m));
    let mut qs = [0u8; 128];
    for e in 0..256 {
        // Sub-block s = e / 32; group g = e / 64 shares qs[32g..32g+32]: even sub-blocks in the
        // low nibble, odd ones in the high nibble.
        let (s, l) = (e / 32, e % 32);
        let idx = 32 * (s / 2) + l;
        qs[idx] |= level(e) << if s % 2 == 1 { 4 } else { 0 };
    }
    b.extend_from_slice(&qs);
    assert_eq!(b.len(), 144);
    let y = dequantize(GgmlType::Q4_K, &b, 256).expect("valid Q4_K block");
    for (e, v) in y.iter().enumerate() {
        let s = e / 32;
        let expect = 0.5 * f32::from(sc[s]) * f32::from(level(e)) - 0.25 * f32::from(m[s]);
        assert_eq!(*v, expect, "element {e}");
    }
}

#[test]
fn q5_k_block_by_hand() {
    let sc: [u8; 8] = std::array::from_fn(|j| 7 * j as u8 + 9);
    let m: [u8; 8] = std::array::from_fn(|j| 5 * j as u8 + 20);
    let level = |e: usize| ((e * 11 + 2) % 32) as u8;
    let mut b = D_QUARTER.to_vec(); // d = 0.25
    b.extend_from_slice(&D_HALF); // dmin = 0.5
    b.extend_from_slice(&k4_scales(sc, m));
    let mut qh = [0u8; 32];
    let mut qs = [0u8; 128];
    for e in 0..256 {
        // Fifth bit of sub-block s lives in qh[l] bit s.
        let (s, l) = (e / 32, e % 32);
        qs[32 * (s / 2) + l] |= (level(e) & 0xF) << if s % 2 == 1 { 4 } else { 0 };
        qh[l] |= (level(e) >> 4) << s;
    }
    b.extend_from_slice(&qh);
    b.extend_from_slice(&qs);
    assert_eq!(b.len(), 176);
    let y = dequantize(GgmlType::Q5_K, &b, 256).expect("valid Q5_K block");
    for (e, v) in y.iter().enumerate() {
        let s = e / 32;
        let expect = 0.25 * f32::from(sc[s]) * f32::from(level(e)) - 0.5 * f32::from(m[s]);
        assert_eq!(*v, expect, "element {e}");
    }
}

#[test]
fn plain_types_by_hand() {
    let f16: Vec<u8> = [0x3C00u16, 0xC000, 0x7BFF, 0x0001]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    let y = dequantize(GgmlType::F16, &f16, 4).expect("F16");
    assert_eq!(y, vec![1.0, -2.0, 65504.0, 2f32.powi(-24)]);
    let bf16: Vec<u8> = [0x3F80u16, 0xC040, 0x0000]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    let y = dequantize(GgmlType::BF16, &bf16, 3).expect("BF16");
    assert_eq!(y, vec![1.0, -3.0, 0.0]);
    let f32b: Vec<u8> = [1.5f32, -0.25]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(
        dequantize(GgmlType::F32, &f32b, 2).expect("F32"),
        vec![1.5, -0.25]
    );
}

#[test]
fn length_and_type_errors() {
    assert!(matches!(
        dequantize(GgmlType::Q8_0, &[0u8; 33], 32),
        Err(GgufError::BadLength { .. })
    ));
    assert!(matches!(
        dequantize(GgmlType::Q8_0, &[0u8; 34], 31),
        Err(GgufError::BadLength { .. })
    ));
    assert!(matches!(
        dequantize(GgmlType::Q2_K, &[0u8; 84], 256),
        Err(GgufError::UnsupportedType { type_id: 10, .. })
    ));
    assert!(matches!(
        quantize(GgmlType::Q4_K, &[0.0; 255]),
        Err(GgufError::BadLength { .. })
    ));
    assert!(matches!(
        quantize(GgmlType::IQ4_XS, &[0.0; 256]),
        Err(GgufError::UnsupportedType { .. })
    ));
}

/// Deterministic pseudo-Gaussian values (sum of uniforms from a 64-bit LCG).
pub fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut u = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| (0..4).map(|_| u()).sum::<f32>() - 2.0)
        .collect()
}

fn rel_rms(x: &[f32], y: &[f32]) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let den: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
    (num / den).sqrt()
}

/// Relative RMS error bound per type for Gaussian-like data (measured errors are ~2× smaller).
fn bound(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 | GgmlType::F64 => 1e-9,
        GgmlType::F16 => 1e-3,
        GgmlType::BF16 => 5e-3,
        GgmlType::Q8_0 | GgmlType::Q8_1 => 0.01,
        GgmlType::Q6_K => 0.03,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 0.06,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => 0.12,
        _ => 0.0,
    }
}

#[test]
fn round_trip_every_supported_type() {
    let x = gaussian(256 * 64, 7);
    for ty in GgmlType::ALL {
        if !ty.can_dequantize()
            || matches!(
                ty,
                GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64
            )
        {
            continue;
        }
        let bytes = quantize(ty, &x).expect("quantize");
        assert_eq!(bytes.len(), ty.bytes_for(x.len()).expect("block multiple"));
        let y = dequantize(ty, &bytes, x.len()).expect("dequantize");
        let err = rel_rms(&x, &y);
        println!("{ty}: relative RMS error {err:.5}");
        assert!(
            err <= bound(ty),
            "{ty}: relative RMS error {err} > {}",
            bound(ty)
        );
    }
}

#[test]
fn round_trip_integers_and_zeros() {
    let ints: Vec<f32> = (-100..100).map(|i| i as f32).collect();
    for ty in [GgmlType::I8, GgmlType::I16, GgmlType::I32, GgmlType::I64] {
        let b = quantize(ty, &ints).expect("quantize ints");
        assert_eq!(
            dequantize(ty, &b, ints.len()).expect("dequantize ints"),
            ints
        );
    }
    // All-zero blocks must not produce NaN (zero scale).
    let zeros = vec![0f32; 512];
    for ty in GgmlType::ALL.into_iter().filter(|t| t.can_dequantize()) {
        let b = quantize(ty, &zeros).expect("quantize zeros");
        let y = dequantize(ty, &b, zeros.len()).expect("dequantize zeros");
        assert!(
            y.iter().all(|v| *v == 0.0),
            "{ty}: zeros did not round-trip"
        );
    }
}

#[test]
fn large_inputs_take_the_parallel_path() {
    // Above the parallel threshold; results must equal the serial path block by block.
    let x = gaussian(256 * 1024, 11);
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q6_K,
        GgmlType::Q4_K,
        GgmlType::F16,
    ] {
        let b = quantize(ty, &x).expect("quantize");
        let y = dequantize(ty, &b, x.len()).expect("dequantize");
        let bb = ty.bytes_for(256).expect("256 is a block multiple");
        for (i, chunk) in y.chunks(256).enumerate().step_by(97) {
            let single = dequantize(ty, &b[i * bb..(i + 1) * bb], 256).expect("one block");
            assert_eq!(chunk, &single[..], "{ty}: block {i}");
        }
    }
}

#[test]
fn non_finite_inputs_do_not_panic() {
    let mut x = gaussian(512, 3);
    x[0] = f32::NAN;
    x[40] = f32::INFINITY;
    x[300] = f32::NEG_INFINITY;
    for ty in GgmlType::ALL.into_iter().filter(|t| t.can_dequantize()) {
        let b = quantize(ty, &x).expect("quantize accepts non-finite values");
        let y = dequantize(ty, &b, x.len()).expect("dequantize");
        assert_eq!(y.len(), x.len());
    }
}
