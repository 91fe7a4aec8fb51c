//! Interpolation of the PLM's and PEMA's next-token distributions in log space (paper §4):
//!
//! ```text
//! log P = logsumexp( log(1−λ) + log P_LM,  log λ + log P_PEMA )
//! ```
//!
//! evaluated per row with its own λ, with log(0) = −∞ handled so that λ = 0 gives exactly
//! log P_LM, λ = 1 exactly log P_PEMA, and no NaN appears even where both terms are −∞.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Tensor, TensorData, backend::Backend};

/// Mixes log-probabilities `[batch, vocab]` row by row: row i uses `lambdas[i]` (the last value
/// is repeated when `lambdas` is shorter than the batch). λ is clamped to [0, 1].
pub fn mix_log_probs<B: Backend>(
    log_p_lm: Tensor<B, 2>,
    log_p_pema: Tensor<B, 2>,
    lambdas: &[f64],
) -> Tensor<B, 2> {
    let [n, _] = log_p_lm.dims();
    let lam: Vec<f64> = (0..n)
        .map(|i| {
            lambdas
                .get(i)
                .or(lambdas.last())
                .copied()
                .unwrap_or(0.0)
                .clamp(0.0, 1.0)
        })
        .collect();
    // Exact shortcuts (also the cheap path for a whole batch at λ = 0 or 1).
    if lam.iter().all(|&l| l == 0.0) {
        return log_p_lm;
    }
    if lam.iter().all(|&l| l == 1.0) {
        return log_p_pema;
    }
    let device = log_p_lm.device();
    let column = |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [n, 1]), &device);
    // ln_1p(−λ) is accurate for small λ; both give −∞ at the ends.
    let la = column(lam.iter().map(|&l| (-l).ln_1p() as f32).collect());
    let lb = column(lam.iter().map(|&l| l.ln() as f32).collect());
    let a = log_p_lm + la;
    let b = log_p_pema + lb;
    let m = a.clone().max_pair(b.clone());
    // Where both terms are −∞ the maximum is −∞; shifting by 0 there keeps the result −∞.
    let m = m.clone().mask_fill(m.is_inf(), 0.0);
    m.clone() + ((a - m.clone()).exp() + (b - m).exp()).log()
}

/// [`mix_log_probs`] from raw logits: log_softmax is applied to both first.
pub fn mix_logits<B: Backend>(
    plm_logits: Tensor<B, 2>,
    pema_logits: Tensor<B, 2>,
    lambdas: &[f64],
) -> Tensor<B, 2> {
    mix_log_probs(
        log_softmax(plm_logits, 1),
        log_softmax(pema_logits, 1),
        lambdas,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::activation::softmax;

    type B = NdArray<f32>;

    fn logits(seed: f32, n: usize, v: usize) -> Tensor<B, 2> {
        let x: Vec<f32> = (0..n * v)
            .map(|i| 3.0 * ((i as f32 + seed) * 1.37).sin())
            .collect();
        Tensor::from_data(TensorData::new(x, [n, v]), &Default::default())
    }

    fn host(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().into_vec::<f32>().expect("f32")
    }

    #[test]
    fn log_space_mixture_equals_direct_mixture() {
        let (n, v) = (6, 50);
        let (lm, pe) = (logits(0.0, n, v), logits(7.0, n, v));
        let lambdas = [0.0, 1e-9, 0.2025, 0.5625, 0.9, 1.0];
        let mixed = host(mix_logits(lm.clone(), pe.clone(), &lambdas).exp());
        let (p, q) = (host(softmax(lm, 1)), host(softmax(pe, 1)));
        for i in 0..n {
            let l = lambdas[i] as f32;
            for j in 0..v {
                let direct = (1.0 - l) * p[i * v + j] + l * q[i * v + j];
                let got = mixed[i * v + j];
                assert!(
                    (got - direct).abs() < 1e-6,
                    "row {i} col {j}: {got} vs {direct}"
                );
            }
        }
    }

    #[test]
    fn safe_at_the_ends_and_with_minus_infinity() {
        let (n, v) = (2, 5);
        let lm = log_softmax(logits(1.0, n, v), 1);
        let pe = log_softmax(logits(2.0, n, v), 1);
        // λ = 0 and λ = 1 for a whole batch: exactly the inputs.
        assert_eq!(
            host(mix_log_probs(lm.clone(), pe.clone(), &[0.0])),
            host(lm.clone())
        );
        assert_eq!(
            host(mix_log_probs(lm.clone(), pe.clone(), &[1.0])),
            host(pe.clone())
        );
        // Mixed batch (row 0 at λ = 0, row 1 at λ = 1): no NaN, each row its own input.
        let out = host(mix_log_probs(lm.clone(), pe.clone(), &[0.0, 1.0]));
        let (l, p) = (host(lm), host(pe));
        for j in 0..v {
            assert!((out[j] - l[j]).abs() < 1e-6);
            assert!((out[v + j] - p[v + j]).abs() < 1e-6);
        }
        // Both distributions give a token zero probability: the mixture is −∞, not NaN.
        let ninf = f32::NEG_INFINITY;
        let a = Tensor::<B, 2>::from_data(
            TensorData::new(vec![0.0, ninf], [1, 2]),
            &Default::default(),
        );
        let out = host(mix_log_probs(a.clone(), a, &[0.5]));
        assert!(out[0].abs() < 1e-6 && out[1] == ninf, "{out:?}");
    }
}
