//! One optimiser step of a phase, and which of the adapter's matrices each phase trains.

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};

use super::*;

/// One of the adapter's matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Matrix {
    A,
    BRct,
    BPd,
}

/// The matrices a phase trains under `plan`: (A, B_rct) in phase 1, (A, B_pd) in phase 2
/// (paper); (A, B_rct, B_pd) in phase 2 for `joint`; B_pd alone in phase 2 for `bpd-only`.
pub(super) fn trained_matrices(phase: Phase, plan: PhasePlan) -> &'static [Matrix] {
    match (phase, plan) {
        (Phase::Reconstruction, _) => &[Matrix::A, Matrix::BRct],
        (Phase::Prediction, PhasePlan::TwoPhase) => &[Matrix::A, Matrix::BPd],
        (Phase::Prediction, PhasePlan::Joint) => &[Matrix::A, Matrix::BRct, Matrix::BPd],
        (Phase::Prediction, PhasePlan::BpdOnly) => &[Matrix::BPd],
    }
}

/// The burn parameter behind `p`.
pub(super) fn weight_of<B: Backend>(a: &PemaAdapter<B>, p: Matrix) -> &Param<Tensor<B, 2>> {
    match p {
        Matrix::A => &a.a,
        Matrix::BRct => &a.b_rct,
        Matrix::BPd => &a.b_pd,
    }
}

/// The adapter lifted onto the autodiff backend with `require_grad` set on exactly the
/// matrices `plan` trains in `phase` (the others stay constants of the graph).
pub fn trainable<B: AutodiffBackend>(
    adapter: &PemaAdapter<B::InnerBackend>,
    phase: Phase,
    plan: PhasePlan,
) -> PemaAdapter<B> {
    let which = trained_matrices(phase, plan);
    let mut ad = PemaAdapter::<B>::from_inner(adapter.clone());
    ad.a = ad.a.set_require_grad(which.contains(&Matrix::A));
    ad.b_rct = ad.b_rct.set_require_grad(which.contains(&Matrix::BRct));
    ad.b_pd = ad.b_pd.set_require_grad(which.contains(&Matrix::BPd));
    ad
}

/// The optimiser of a phase: PyTorch's Adam with the run's β₁, β₂, ε.
pub fn adam_for<B: AutodiffBackend>(cfg: &TrainConfig) -> AdamOptimizer<PemaAdapter<B>, B> {
    TorchAdam {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        epsilon: cfg.epsilon,
    }
    .into()
}

/// What one [`train_step`] returns.
#[derive(Debug, Clone)]
pub struct StepOutcome<B: Backend> {
    /// The adapter after the Adam update.
    pub adapter: PemaAdapter<B>,
    /// The batch loss before the update (detached, shape `[1]`).
    pub loss: Tensor<B, 1>,
}

/// One optimiser step of `phase` on a batch (`keys: [n, d]`, `values: [n]`): forward with
/// dropout, backward, Adam at learning rate `lr`, training the matrices `plan` assigns to
/// `phase`. Returns the updated adapter and the batch loss (detached). This is exactly what
/// [`train`] runs per step; it is public for benchmarks.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: AutodiffBackend>(
    adapter: &PemaAdapter<B::InnerBackend>,
    optim: &mut AdamOptimizer<PemaAdapter<B>, B>,
    lr: f64,
    head: &FusedHead<B>,
    keys: Tensor<B::InnerBackend, 2>,
    values: Tensor<B::InnerBackend, 1, Int>,
    phase: Phase,
    plan: PhasePlan,
) -> Result<StepOutcome<B::InnerBackend>> {
    let ad = trainable::<B>(adapter, phase, plan);
    let f = Tensor::<B, 2>::from_inner(keys);
    let y = Tensor::<B, 1, Int>::from_inner(values);
    let losses = ad.losses(head, f, y, phase, true);
    let grads = GradientsParams::from_grads(losses.total.backward(), &ad);
    if grads.len() != trained_matrices(phase, plan).len() {
        return Err(AdapterError::Config(
            "a trained parameter received no gradient".into(),
        ));
    }
    let updated = optim.step(lr, ad, grads);
    Ok(StepOutcome {
        adapter: updated.valid(),
        loss: losses.total.inner(),
    })
}
