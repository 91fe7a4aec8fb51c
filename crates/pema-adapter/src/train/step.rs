//! One optimiser step of a phase, and which of the adapter's matrices each phase trains.

use super::*;

/// One of the adapter's matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Param {
    A,
    BRct,
    BPd,
}

/// The matrices a phase trains under `plan`: (A, B_rct) in phase 1, (A, B_pd) in phase 2
/// (paper); (A, B_rct, B_pd) in phase 2 for `joint`; B_pd alone in phase 2 for `bpd-only`.
pub(super) fn trained_params(phase: Phase, plan: PhasePlan) -> &'static [Param] {
    match (phase, plan) {
        (Phase::Reconstruction, _) => &[Param::A, Param::BRct],
        (Phase::Prediction, PhasePlan::TwoPhase) => &[Param::A, Param::BPd],
        (Phase::Prediction, PhasePlan::Joint) => &[Param::A, Param::BRct, Param::BPd],
        (Phase::Prediction, PhasePlan::BpdOnly) => &[Param::BPd],
    }
}

pub(super) fn param<B: Backend>(a: &PemaAdapter<B>, p: Param) -> &Tensor<B, 2> {
    match p {
        Param::A => &a.a,
        Param::BRct => &a.b_rct,
        Param::BPd => &a.b_pd,
    }
}

pub(super) fn trained<B: Backend>(
    a: &PemaAdapter<B>,
    phase: Phase,
    plan: PhasePlan,
) -> Vec<Tensor<B, 2>> {
    trained_params(phase, plan)
        .iter()
        .map(|p| param(a, *p).clone())
        .collect()
}

pub(super) fn with_trained<B: Backend>(
    a: &PemaAdapter<B>,
    phase: Phase,
    plan: PhasePlan,
    values: Vec<Tensor<B, 2>>,
) -> PemaAdapter<B> {
    let mut out = a.clone();
    for (p, v) in trained_params(phase, plan).iter().zip(values) {
        match p {
            Param::A => out.a = v,
            Param::BRct => out.b_rct = v,
            Param::BPd => out.b_pd = v,
        }
    }
    out
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
/// dropout, backward, Adam, training the matrices `plan` assigns to `phase`. Returns the
/// updated adapter and the batch loss (detached). This is exactly what [`train`] runs per
/// step; it is public for benchmarks.
pub fn train_step<B: AutodiffBackend>(
    adapter: &PemaAdapter<B::InnerBackend>,
    adam: &mut Adam<B::InnerBackend>,
    head: &FusedHead<B>,
    keys: Tensor<B::InnerBackend, 2>,
    values: Tensor<B::InnerBackend, 1, Int>,
    phase: Phase,
    plan: PhasePlan,
) -> Result<StepOutcome<B::InnerBackend>> {
    let which = trained_params(phase, plan);
    let lift = |t: &Tensor<B::InnerBackend, 2>, p: Param| {
        let t = Tensor::<B, 2>::from_inner(t.clone());
        if which.contains(&p) {
            t.require_grad()
        } else {
            t
        }
    };
    let ad = PemaAdapter::<B> {
        config: adapter.config,
        a: lift(&adapter.a, Param::A),
        b_rct: lift(&adapter.b_rct, Param::BRct),
        b_pd: lift(&adapter.b_pd, Param::BPd),
        key_stats: adapter.key_stats.as_ref().map(|s| KeyStats {
            mean: Tensor::from_inner(s.mean.clone()),
            std: Tensor::from_inner(s.std.clone()),
        }),
    };
    let f = Tensor::<B, 2>::from_inner(keys);
    let y = Tensor::<B, 1, Int>::from_inner(values);
    let losses = ad.losses(head, f, y, phase, true);
    let grads = losses.total.backward();
    let params = trained(&ad, phase, plan);
    let mut g = Vec::with_capacity(params.len());
    for p in &params {
        g.push(p.grad(&grads).ok_or_else(|| {
            AdapterError::Config("a trained parameter received no gradient".into())
        })?);
    }
    let updated = adam.step(trained(adapter, phase, plan), g);
    Ok(StepOutcome {
        adapter: with_trained(adapter, phase, plan, updated),
        loss: losses.total.inner(),
    })
}
