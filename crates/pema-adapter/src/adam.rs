//! Adam exactly as `torch.optim.Adam` (no weight decay, no amsgrad), as a burn
//! [`SimpleOptimizer`]:
//!
//! ```text
//! m ← β₁m + (1−β₁)g      v ← β₂v + (1−β₂)g²
//! p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)
//! ```
//!
//! burn's own `Adam` folds the bias corrections differently (ε scaled by √(1−β₂ᵗ), the first
//! correction multiplied into m), which is the same update in exact arithmetic but not bit for
//! bit; this one keeps PyTorch's order of operations, ε outside the square root and PyTorch's
//! default 1e-8, so runs and resumed checkpoints reproduce earlier ones exactly. Wrapped in
//! burn's [`OptimizerAdaptor`] it visits a module's parameters through `#[derive(Module)]`,
//! skips those that do not require a gradient, and keeps its state as a burn record per
//! [`burn::module::ParamId`].

use burn::optim::{LearningRate, SimpleOptimizer, adaptor::OptimizerAdaptor};
use burn::record::Record;
use burn::tensor::{Tensor, backend::Backend};

/// The hyper-parameters of [`TorchAdam`] (the learning rate is passed per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TorchAdam {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε (outside the square root).
    pub epsilon: f64,
}

/// The optimiser state of one parameter: its step count t and moments m, v.
#[derive(Record, Clone)]
pub struct AdamState<B: Backend, const D: usize> {
    /// Number of updates of this parameter so far (t).
    pub t: usize,
    /// First moment m.
    pub m: Tensor<B, D>,
    /// Second moment v.
    pub v: Tensor<B, D>,
}

/// [`TorchAdam`] over the parameters of module `M` trained on the autodiff backend `B`.
pub type AdamOptimizer<M, B> = OptimizerAdaptor<TorchAdam, M, B>;

impl<B: Backend> SimpleOptimizer<B> for TorchAdam {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        // Moments start at zero, as in PyTorch (0·β + x is x exactly).
        let AdamState { t, m, v } = state.unwrap_or_else(|| AdamState {
            t: 0,
            m: grad.zeros_like(),
            v: grad.zeros_like(),
        });
        let t = t + 1;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.epsilon);
        let bc1 = 1.0 - b1.powi(t as i32);
        let bc2_sqrt = (1.0 - b2.powi(t as i32)).sqrt();
        let m = m.mul_scalar(b1) + grad.clone().mul_scalar(1.0 - b1);
        let v = v.mul_scalar(b2) + (grad.clone() * grad).mul_scalar(1.0 - b2);
        let denom = v.clone().sqrt().div_scalar(bc2_sqrt).add_scalar(eps);
        let p = tensor - (m.clone() / denom).mul_scalar(lr / bc1);
        (p, Some(AdamState { t, m, v }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        AdamState {
            t: state.t,
            m: state.m.to_device(device),
            v: state.v.to_device(device),
        }
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
        let adam = TorchAdam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        };
        let mut p = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0, -2.0], [1, 2]), &dev);
        let mut state = None;
        // Scalar reference implementation of torch.optim.Adam.
        let (mut rp, mut rm, mut rv) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        for step in 1..=5 {
            let g = [0.5 * step as f64, -0.25];
            let gt = Tensor::<B, 2>::from_data(TensorData::new(g.to_vec(), [1, 2]), &dev);
            (p, state) = SimpleOptimizer::<B>::step(&adam, 1e-3, p, gt, state);
            for i in 0..2 {
                rm[i] = 0.9 * rm[i] + 0.1 * g[i];
                rv[i] = 0.999 * rv[i] + 0.001 * g[i] * g[i];
                let bc1 = 1.0 - 0.9f64.powi(step);
                let bc2 = 1.0 - 0.999f64.powi(step);
                rp[i] -= 1e-3 / bc1 * rm[i] / (rv[i].sqrt() / bc2.sqrt() + 1e-8);
            }
        }
        assert_eq!(state.as_ref().map(|s| s.t), Some(5));
        let got = p.to_data().into_vec::<f64>().expect("f64 data");
        for i in 0..2 {
            assert!((got[i] - rp[i]).abs() < 1e-12, "{} vs {}", got[i], rp[i]);
        }
    }
}
