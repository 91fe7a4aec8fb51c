//! Adam exactly as `torch.optim.Adam` (no weight decay, no amsgrad):
//!
//! ```text
//! m ← β₁m + (1−β₁)g      v ← β₂v + (1−β₂)g²
//! p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)
//! ```
//!
//! Written by hand (rather than burn's optimiser) so that its state is three plain tensor
//! pairs that a checkpoint stores and restores bit for bit, and ε sits outside the square root
//! with PyTorch's default 1e-8.

use burn::tensor::{Tensor, backend::Backend};

/// Moments of one parameter.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    /// First moment m.
    pub m: Tensor<B, 2>,
    /// Second moment v.
    pub v: Tensor<B, 2>,
}

/// Adam optimiser state for a fixed list of 2-D parameters.
#[derive(Debug, Clone)]
pub struct Adam<B: Backend> {
    /// Learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε (outside the square root).
    pub epsilon: f64,
    /// Number of steps taken so far (t).
    pub t: u64,
    /// Moments per parameter (zeros until the first step).
    pub moments: Vec<Moments<B>>,
}

impl<B: Backend> Adam<B> {
    /// A fresh optimiser for parameters of the given shapes.
    pub fn new(
        lr: f64,
        beta1: f64,
        beta2: f64,
        epsilon: f64,
        shapes: &[[usize; 2]],
        device: &B::Device,
    ) -> Self {
        Self {
            lr,
            beta1,
            beta2,
            epsilon,
            t: 0,
            moments: shapes
                .iter()
                .map(|&s| Moments {
                    m: Tensor::zeros(s, device),
                    v: Tensor::zeros(s, device),
                })
                .collect(),
        }
    }

    /// One update of `params` with `grads` (same order and shapes as at construction).
    /// Returns the updated parameters.
    pub fn step(
        &mut self,
        params: Vec<Tensor<B, 2>>,
        grads: Vec<Tensor<B, 2>>,
    ) -> Vec<Tensor<B, 2>> {
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        let step_size = self.lr / bc1;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.epsilon);
        params
            .into_iter()
            .zip(grads)
            .zip(self.moments.iter_mut())
            .map(|((p, g), mom)| {
                let m = mom.m.clone().mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1);
                let v = mom.v.clone().mul_scalar(b2) + (g.clone() * g).mul_scalar(1.0 - b2);
                let denom = v.clone().sqrt().div_scalar(bc2_sqrt).add_scalar(eps);
                let p = p - (m.clone() / denom).mul_scalar(step_size);
                mom.m = m;
                mom.v = v;
                p
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    type B = NdArray<f64>;

    #[test]
    fn matches_a_scalar_reference_of_torch_adam() {
        let dev = Default::default();
        let mut adam = Adam::<B>::new(1e-3, 0.9, 0.999, 1e-8, &[[1, 2]], &dev);
        let mut p = vec![Tensor::<B, 2>::from_data(
            TensorData::new(vec![1.0, -2.0], [1, 2]),
            &dev,
        )];
        // Scalar reference implementation of torch.optim.Adam.
        let (mut rp, mut rm, mut rv) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        for step in 1..=5 {
            let g = [0.5 * step as f64, -0.25];
            let gt = Tensor::<B, 2>::from_data(TensorData::new(g.to_vec(), [1, 2]), &dev);
            p = adam.step(p, vec![gt]);
            for i in 0..2 {
                rm[i] = 0.9 * rm[i] + 0.1 * g[i];
                rv[i] = 0.999 * rv[i] + 0.001 * g[i] * g[i];
                let bc1 = 1.0 - 0.9f64.powi(step);
                let bc2 = 1.0 - 0.999f64.powi(step);
                rp[i] -= 1e-3 / bc1 * rm[i] / (rv[i].sqrt() / bc2.sqrt() + 1e-8);
            }
        }
        let got = p[0].to_data().into_vec::<f64>().expect("f64 data");
        for i in 0..2 {
            assert!((got[i] - rp[i]).abs() < 1e-12, "{} vs {}", got[i], rp[i]);
        }
    }
}
