//! Packed quantised matmul: every block type and every SIMD kernel this CPU has, against the
//! scalar kernel and against an f64 product of the dequantised weights with the quantised
//! activations (what the kernels compute exactly, up to f32 summation order).

use pema_backbone::gguf::{GgmlType, dequantize, quantize};
use pema_backbone::packed::PackedMatrix;
use pema_backbone::packed::act::QuantAct;
use pema_backbone::packed::simd::Simd;
use pema_backbone::packed::unpack::{Unpacked, unpack_row};
use pema_backbone::testing::pseudo_random;

const TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn cols_for(ty: GgmlType) -> Vec<usize> {
    if ty.block_elems() == 256 {
        vec![256, 768]
    } else {
        // 96 leaves a 32-element tail after the 64-wide AVX-512 loop.
        vec![32, 96, 640]
    }
}

#[test]
fn unpacked_rows_are_the_dequantised_weights() {
    for ty in TYPES {
        for cols in cols_for(ty) {
            let w: Vec<f32> = pseudo_random(3, 4 * cols).iter().map(|v| v * 0.7).collect();
            let bytes = quantize(ty, &w).expect("quantize");
            let deq = dequantize(ty, &bytes, w.len()).expect("dequantize");
            let row_bytes = bytes.len() / 4;
            let mut u = Unpacked::new(cols);
            for r in 0..4 {
                unpack_row(ty, &bytes[r * row_bytes..(r + 1) * row_bytes], &mut u);
                for i in 0..cols {
                    let v = u.ws[i / 4] * f32::from(u.u[i]) - u.wb[i / 4];
                    let want = deq[r * cols + i];
                    assert!(
                        (v - want).abs() <= 1e-6 * (1.0 + want.abs()) + 1e-4 * u.ws[i / 4].abs(),
                        "{ty:?} cols {cols} row {r} col {i}: {v} vs {want}"
                    );
                }
            }
        }
    }
}

/// The kernels this CPU can run.
fn available_kernels() -> Vec<Simd> {
    [Simd::Scalar, Simd::Avx2, Simd::Avx512Vnni]
        .into_iter()
        .filter(|s| s.available())
        .collect()
}

#[test]
fn every_kernel_matches_the_exact_product() {
    let kernels = available_kernels();
    eprintln!("kernels tested: {kernels:?}");
    for ty in TYPES {
        for cols in cols_for(ty) {
            let rows = 37;
            let w: Vec<f32> = pseudo_random(11, rows * cols).to_vec();
            let bytes = quantize(ty, &w).expect("quantize");
            let deq = dequantize(ty, &bytes, w.len()).expect("dequantize");
            let m = PackedMatrix::new(ty, rows, cols, bytes).expect("packed");
            for n in [1, 3, 9] {
                let x: Vec<f32> = pseudo_random(5 + n as u64, n * cols)
                    .iter()
                    .map(|v| v * 3.0)
                    .collect();
                // The activations the kernels see: a·q per block of 32.
                let qa = QuantAct::quantize_blocks(&x, n, cols, ty.block_elems());
                let xq: Vec<f64> = (0..n * cols)
                    .map(|i| f64::from(qa.q[i]) * f64::from(qa.lane[i / 4]))
                    .collect();
                let mut exact = vec![0f64; n * rows];
                for r in 0..n {
                    for o in 0..rows {
                        exact[r * rows + o] = (0..cols)
                            .map(|i| f64::from(deq[o * cols + i]) * xq[r * cols + i])
                            .sum();
                    }
                }
                let scale = exact.iter().fold(0f64, |a, v| a.max(v.abs()));
                let reference = m.matmul(&x, n, Simd::Scalar);
                for &k in &kernels {
                    let y = m.matmul(&x, n, k);
                    for i in 0..n * rows {
                        let d = (f64::from(y[i]) - exact[i]).abs();
                        assert!(
                            d <= 1e-5 * scale,
                            "{ty:?} {k:?} cols {cols} n {n} [{i}]: {} vs {}",
                            y[i],
                            exact[i]
                        );
                        let ds = (y[i] - reference[i]).abs() as f64;
                        assert!(
                            ds <= 1e-5 * scale,
                            "{ty:?} {k:?} vs scalar [{i}]: {} vs {}",
                            y[i],
                            reference[i]
                        );
                    }
                }
                // And the quantised activations are close to the real ones: the true product.
                let mut err = 0f64;
                for r in 0..n {
                    for o in 0..rows {
                        let t: f64 = (0..cols)
                            .map(|i| f64::from(deq[o * cols + i]) * f64::from(x[r * cols + i]))
                            .sum();
                        err = err.max((t - f64::from(reference[r * rows + o])).abs());
                    }
                }
                assert!(
                    err <= 0.02 * scale,
                    "{ty:?} activation rounding error {err} vs {scale}"
                );
            }
        }
    }
}

/// Continuous batching relies on it: every kernel gives an activation row the same bits alone
/// (decoding, where some kernels decode weights in registers) as inside a batch (tiles of 4).
#[test]
fn a_row_alone_equals_its_row_in_a_batch() {
    let kernels = available_kernels();
    for ty in TYPES {
        for cols in cols_for(ty) {
            let rows = 13;
            let w: Vec<f32> = pseudo_random(21, rows * cols).to_vec();
            let bytes = quantize(ty, &w).expect("quantize");
            let m = PackedMatrix::new(ty, rows, cols, bytes).expect("packed");
            let n = 6;
            let x: Vec<f32> = pseudo_random(7, n * cols).iter().map(|v| v * 2.0).collect();
            for &k in &kernels {
                let batch = m.matmul(&x, n, k);
                for r in 0..n {
                    let alone = m.matmul(&x[r * cols..(r + 1) * cols], 1, k);
                    for o in 0..rows {
                        assert_eq!(
                            alone[o].to_bits(),
                            batch[r * rows + o].to_bits(),
                            "{ty:?} {k:?} cols {cols} row {r} out {o}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    assert!(PackedMatrix::new(GgmlType::Q4_K, 2, 128, vec![0; 2 * 72]).is_err());
    assert!(PackedMatrix::new(GgmlType::Q8_0, 2, 64, vec![0; 10]).is_err());
    assert!(PackedMatrix::new(GgmlType::F16, 2, 64, vec![0; 256]).is_err());
    assert!(PackedMatrix::new(GgmlType::Q8_0, 2, 64, vec![0; 2 * 68]).is_ok());
}
