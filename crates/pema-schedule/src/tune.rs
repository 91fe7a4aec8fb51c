//! Choosing λmax on the dev memory, without decoding: the token-level negative log-likelihood of
//! the dev values under λ·P_PEMA + (1−λ)·P_LM, where P_LM = softmax(W_hd·norm(f(c))) is the
//! PLM's own distribution for the dev context and P_PEMA the adapter's (paper §4's mixture at a
//! constant λ). The paper fixes λmax = 0.9; this is the leak-free way to pick it for an adapter
//! trained on another budget.
//!
//! Gradual Unrolling decodes with λ_k = (λmax·(1 − k/L))², far below λmax for most steps, so the
//! λmax that is best for a constant λ is not the best λmax for GU. Given each dev entry's
//! position ([`GuPosition`]: its step k and its sequence's leak-free horizon L), the same pass
//! also scores every λmax under the GU schedule, and the GU rows take that choice.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use pema_adapter::{FusedHead, PemaAdapter, PemaLogits};
use pema_memory::MemorySource;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ScheduleError};
use crate::knn_lm::{evenly_spaced, mix_pair};
use crate::schedule::Schedule;

/// NLL of the dev values at one λ.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LambdaPoint {
    /// The mixture weight of P_PEMA.
    pub lambda: f64,
    /// Mean NLL (nats per token).
    pub nll: f64,
}

/// Where a dev entry sits in its sequence: what Gradual Unrolling's λ_k needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuPosition {
    /// Step k within the target (0 = the first target token).
    pub step: usize,
    /// The sequence's horizon L (leak-free: ⌈source tokens × ratio⌉).
    pub horizon: f64,
}

/// λmax scored under the Gradual Unrolling schedule (each dev entry mixed at its own λ_k).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuTune {
    /// The λmax with the lowest dev NLL under GU.
    pub best: LambdaPoint,
    /// Every λmax evaluated under GU.
    pub grid: Vec<LambdaPoint>,
}

/// The outcome of [`tune_lambda`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LambdaTuneReport {
    /// The λ with the lowest dev NLL (constant λ).
    pub best: LambdaPoint,
    /// Every λ evaluated at a constant λ (λ = 0 is the PLM alone).
    pub grid: Vec<LambdaPoint>,
    /// The same grid as λmax of Gradual Unrolling, when the dev positions were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gu: Option<GuTune>,
    /// Top-1 accuracy of P_PEMA alone on the dev values.
    pub pema_top1: f64,
    /// Top-1 accuracy of P_LM alone on the dev values.
    pub plm_top1: f64,
    /// Dev entries evaluated.
    pub dev_entries: usize,
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .unwrap_or_default()
}

fn hits<B: Backend>(top1: Tensor<B, 1, Int>, y: Tensor<B, 1, Int>) -> usize {
    host(top1.equal(y).float().sum())
        .first()
        .map_or(0, |c| *c as usize)
}

/// The grid point with the lowest finite NLL.
fn lowest(grid: &[LambdaPoint]) -> Result<LambdaPoint> {
    grid.iter()
        .filter(|p| p.nll.is_finite())
        .min_by(|a, b| a.nll.total_cmp(&b.nll))
        .copied()
        .ok_or_else(|| ScheduleError::Config("every λ gave an infinite dev NLL".into()))
}

/// Evaluates every λ in `lambdas` on at most `max_dev` evenly spaced dev entries: as a
/// constant λ, and, when `positions` gives every dev entry's place (indexed like the dev
/// memory), as λmax of Gradual Unrolling.
pub fn tune_lambda<B: Backend>(
    adapter: &PemaAdapter<B>,
    head: &FusedHead<B>,
    dev: &dyn MemorySource,
    lambdas: &[f64],
    max_dev: usize,
    positions: Option<&[GuPosition]>,
) -> Result<LambdaTuneReport> {
    if lambdas.is_empty() || dev.is_empty() || lambdas.iter().any(|l| !(0.0..=1.0).contains(l)) {
        return Err(ScheduleError::Config(
            "λ tuning needs λ values in [0, 1] and a non-empty dev memory".into(),
        ));
    }
    if let Some(p) = positions
        && p.len() != dev.len()
    {
        return Err(ScheduleError::Shape(format!(
            "{} GU positions for a dev memory of {} entries",
            p.len(),
            dev.len()
        )));
    }
    let ids = evenly_spaced(dev.len(), max_dev);
    let take = ids.len();
    let d = dev.hidden_size();
    let pema = PemaLogits::new(adapter, head)
        .map_err(|e| ScheduleError::Config(format!("adapter and head: {e}")))?;
    let (mut lm, mut pe) = (Vec::with_capacity(take), Vec::with_capacity(take));
    let (mut lm_hits, mut pe_hits) = (0usize, 0usize);
    for chunk in ids.chunks(1024) {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        dev.gather(chunk, &mut k, &mut v)
            .map_err(|e| ScheduleError::Config(format!("reading the dev memory: {e}")))?;
        let m = chunk.len();
        let f = Tensor::<B, 2>::from_data(TensorData::new(k, [m, d]), &head.device());
        let y = pema_adapter::head_ce::targets::<B>(&v, &head.device());
        let plm = head.gold_log_probs(f.clone(), y.clone());
        let pem = pema.gold_log_probs(f, y.clone());
        lm_hits += hits(plm.top1, y.clone());
        pe_hits += hits(pem.top1, y);
        lm.extend(host(plm.nll));
        pe.extend(host(pem.nll));
    }
    // Mean NLL of the dev values when entry j is mixed at λ = weight(j).
    let score = |lambda: f64, weight: &dyn Fn(usize) -> f64| LambdaPoint {
        lambda,
        nll: -pe
            .iter()
            .zip(&lm)
            .enumerate()
            .map(|(j, (a, b))| mix_pair(*a, *b, weight(j)))
            .sum::<f64>()
            / take as f64,
    };
    let grid: Vec<LambdaPoint> = lambdas.iter().map(|&l| score(l, &|_| l)).collect();
    let best = lowest(&grid)?;
    let gu = match positions {
        Some(pos) => {
            let grid: Vec<LambdaPoint> = lambdas
                .iter()
                .map(|&l| {
                    let s = Schedule::gradual_unrolling(l);
                    score(l, &|j| {
                        let p = pos[ids[j] as usize];
                        s.lambda(p.step, p.horizon)
                    })
                })
                .collect();
            Some(GuTune {
                best: lowest(&grid)?,
                grid,
            })
        }
        None => None,
    };
    Ok(LambdaTuneReport {
        best,
        grid,
        gu,
        pema_top1: pe_hits as f64 / take as f64,
        plm_top1: lm_hits as f64 / take as f64,
        dev_entries: take,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use pema_adapter::AdapterConfig;
    use pema_memory::InMemory;

    type B = NdArray<f32>;

    #[test]
    fn lambda_zero_is_the_plm_and_a_useless_adapter_is_not_chosen() {
        let dev = Default::default();
        let (d, v) = (4, 6);
        let w: Vec<f32> = (0..v * d).map(|i| ((i as f32) * 0.91).sin()).collect();
        let head = pema_backbone::LmHead::<B>::from_host(vec![1.0; d], 1e-6, w, v, "t", &dev)
            .expect("head");
        let head = FusedHead::new(&head, Default::default()).expect("fused");
        let cfg = AdapterConfig {
            d,
            vocab: v,
            rank: 2,
            dropout: 0.0,
            kappa: 0.2,
            form: Default::default(),
        };
        // B_pd = 0: P_PEMA is uniform, which cannot beat the PLM on its own argmax tokens.
        let ad = PemaAdapter::<B>::new(cfg, 1, &dev).expect("adapter");
        let keys: Vec<f32> = (0..8 * d).map(|i| ((i as f32) * 0.37).cos()).collect();
        let f = Tensor::<B, 2>::from_data(TensorData::new(keys.clone(), [8, d]), &dev);
        let ys: Vec<u32> = pema_backbone::seam::argmax_rows(head.logits(f));
        let mem = InMemory {
            keys,
            values: ys,
            d,
            tag: "dev".into(),
        };
        let r = tune_lambda(&ad, &head, &mem, &[0.0, 0.5, 0.9], 100, None).expect("tune");
        assert_eq!(r.best.lambda, 0.0);
        assert_eq!(r.plm_top1, 1.0);
        assert!(r.grid[0].nll < r.grid[1].nll && r.grid[1].nll < r.grid[2].nll);
        assert!(r.gu.is_none());
        assert!(tune_lambda(&ad, &head, &mem, &[1.5], 100, None).is_err());

        // Under GU, λmax weighs the mixture less than a constant λ does (λ_k < λmax for
        // k ≥ 1), so each λmax > 0 costs the PLM's argmax tokens less; at step 0 only, GU is
        // the constant schedule.
        let late = vec![
            GuPosition {
                step: 3,
                horizon: 4.0
            };
            8
        ];
        let r = tune_lambda(&ad, &head, &mem, &[0.0, 0.5, 0.9], 100, Some(&late)).expect("gu");
        let gu = r.gu.expect("GU grid");
        assert_eq!(gu.best.lambda, 0.0);
        assert_eq!(gu.grid[0].nll, r.grid[0].nll);
        assert!(gu.grid[2].nll < r.grid[2].nll);
        let first = vec![
            GuPosition {
                step: 0,
                horizon: 4.0
            };
            8
        ];
        let r = tune_lambda(&ad, &head, &mem, &[0.9], 100, Some(&first)).expect("gu");
        assert_eq!(r.gu.expect("GU grid").grid[0].nll, r.grid[0].nll);
        assert!(tune_lambda(&ad, &head, &mem, &[0.9], 100, Some(&first[..3])).is_err());
    }
}
