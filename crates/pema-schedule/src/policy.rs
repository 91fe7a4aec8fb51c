//! PEMA decoding as a [`StepPolicy`]: at every step, mix the PLM's distribution with the
//! adapter's (in log space, λ from the schedule and each sequence's horizon) and take the
//! argmax (greedy, as the official code). Optionally records a [`StepTrace`] per sequence and
//! step.

use std::path::Path;

use burn::tensor::{Tensor, backend::Backend};
use pema_adapter::PemaLogits;
use pema_adapter::head_ce::cpu::{log_sum_exp, mixture_argmax};
use pema_backbone::{StepOutput, StepPolicy};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ScheduleError};
use crate::schedule::Schedule;

/// Which weighted distribution gave the chosen token more mass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Winner {
    /// (1−λ)·P_LM(token) ≥ λ·P_PEMA(token).
    Plm,
    /// λ·P_PEMA(token) > (1−λ)·P_LM(token).
    Pema,
}

/// One decoding step of one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepTrace {
    /// Sequence index (batch row plus the policy's offset).
    pub seq: usize,
    /// Step k (0 = first generated token).
    pub step: usize,
    /// λ used at this step.
    pub lambda: f64,
    /// The chosen token.
    pub token: u32,
    /// P_LM(token).
    pub p_lm: f64,
    /// P_PEMA(token).
    pub p_pema: f64,
    /// The mixture's probability of the token.
    pub p_mix: f64,
    /// Which weighted term was larger for the chosen token.
    pub winner: Winner,
}

/// Greedy PEMA decoding: argmax of (1−λ_k)·P_LM + λ_k·P_PEMA.
pub struct PemaPolicy<'a, B: Backend> {
    pema: PemaLogits<'a, B>,
    schedule: Schedule,
    horizons: Vec<f64>,
    seq_offset: usize,
    traces: Option<Vec<StepTrace>>,
}

impl<'a, B: Backend> PemaPolicy<'a, B> {
    /// A policy for one `generate` call; `horizons[i]` is the GU horizon L of its sequence i
    /// (see [`crate::plan_lengths`]; ignored by the constant schedule, a single value is
    /// broadcast). λ_k uses each row's own step k (continuous batching).
    pub fn new(pema: PemaLogits<'a, B>, schedule: Schedule, horizons: Vec<f64>) -> Result<Self> {
        schedule.validate()?;
        Ok(Self {
            pema,
            schedule,
            horizons,
            seq_offset: 0,
            traces: None,
        })
    }

    /// Records a [`StepTrace`] for every row and step; `seq_offset` is added to sequence
    /// numbers (the index of the call's first sequence in the whole test set).
    pub fn with_traces(mut self, seq_offset: usize) -> Self {
        self.seq_offset = seq_offset;
        self.traces = Some(Vec::new());
        self
    }

    /// The traces recorded so far (empty unless [`PemaPolicy::with_traces`] was called).
    pub fn take_traces(&mut self) -> Vec<StepTrace> {
        self.traces.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn horizon(&self, i: usize) -> f64 {
        self.horizons
            .get(i)
            .or(self.horizons.last())
            .copied()
            .unwrap_or(0.0)
    }
}

impl<B: Backend> StepPolicy<B> for PemaPolicy<'_, B> {
    /// argmax_v (1−λ)·P_LM(v) + λ·P_PEMA(v) per row, evaluated on the host in two vectorised
    /// passes per distribution (log-partition, then the mixture's argmax): the argmax of the
    /// log-space mixture is the argmax of the mixture itself, so no `[n, V]` log tensor is built.
    fn next_tokens(&mut self, out: &StepOutput<B>) -> Vec<u32> {
        let [n, v] = out.logits.dims();
        let lambdas: Vec<f64> = (0..n)
            .map(|i| {
                let (seq, step) = (out.seqs.get(i).copied(), out.steps.get(i).copied());
                self.schedule
                    .lambda(step.unwrap_or(0), self.horizon(seq.unwrap_or(i)))
                    .clamp(0.0, 1.0)
            })
            .collect();
        let lm = host_rows(out.logits.clone());
        let pe = if lambdas.iter().all(|&l| l == 0.0) && self.traces.is_none() {
            Vec::new()
        } else {
            host_rows(self.pema.logits(out.context.0.clone()))
        };
        let rows: Vec<(u32, f64, f64, f64)> = (0..n)
            .into_par_iter()
            .map(|i| {
                let b = &lm[i * v..(i + 1) * v];
                let lse_b = log_sum_exp(b);
                if pe.is_empty() {
                    let (t, p) = mixture_argmax(b, lse_b, 0.0, b, lse_b, 1.0);
                    return (t as u32, f64::from(p), 0.0, f64::from(p));
                }
                let a = &pe[i * v..(i + 1) * v];
                let lse_a = log_sum_exp(a);
                let l = lambdas[i] as f32;
                let (t, p_mix) = mixture_argmax(a, lse_a, l, b, lse_b, 1.0 - l);
                let p_lm = f64::from((b[t] - lse_b).exp());
                let p_pema = f64::from((a[t] - lse_a).exp());
                (t as u32, p_lm, p_pema, f64::from(p_mix))
            })
            .collect();
        let ids: Vec<u32> = rows.iter().map(|r| r.0).collect();
        if let Some(traces) = self.traces.as_mut() {
            for (i, &(token, p_lm, p_pema, p_mix)) in rows.iter().enumerate() {
                let lambda = lambdas[i];
                traces.push(StepTrace {
                    seq: self.seq_offset + out.seqs.get(i).copied().unwrap_or(i),
                    step: out.steps.get(i).copied().unwrap_or(0),
                    lambda,
                    token,
                    p_lm,
                    p_pema,
                    p_mix,
                    winner: if lambda * p_pema > (1.0 - lambda) * p_lm {
                        Winner::Pema
                    } else {
                        Winner::Plm
                    },
                });
            }
        }
        ids
    }
}

/// Row-major host copy of a `[n, V]` tensor.
fn host_rows<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

/// Writes traces as JSON lines (one [`StepTrace`] object per line).
pub fn write_traces_jsonl(path: &Path, traces: &[StepTrace]) -> Result<()> {
    let io = |source| ScheduleError::Io(pema_common::FileError::new(path.to_path_buf(), source));
    let mut text = String::new();
    for t in traces {
        let line = serde_json::to_string(t).map_err(|e| io(std::io::Error::other(e)))?;
        text.push_str(&line);
        text.push('\n');
    }
    Ok(pema_common::write_atomic(path, text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::module::Param;
    use burn::tensor::TensorData;
    use pema_adapter::{AdapterConfig, FusedHead, PemaAdapter};
    use pema_backbone::seam::argmax_rows;
    use pema_backbone::{ContextRepr, LmHead};

    type B = NdArray<f32>;

    fn setup() -> (PemaAdapter<B>, FusedHead<B>) {
        let dev = Default::default();
        let (d, v, r) = (4, 6, 2);
        let w: Vec<f32> = (0..v * d).map(|i| ((i as f32) * 0.91).sin()).collect();
        let head = LmHead::<B>::from_host(vec![1.0; d], 1e-6, w, v, "t", &dev).expect("head");
        let head = FusedHead::new(&head, Default::default()).expect("fused");
        let cfg = AdapterConfig {
            d,
            vocab: v,
            rank: r,
            dropout: 0.2,
            kappa: 0.2,
            form: Default::default(),
        };
        let mut ad = PemaAdapter::<B>::new(cfg, 5, &dev).expect("adapter");
        let bpd: Vec<f32> = (0..r * d)
            .map(|i| ((i as f32) * 1.7).cos() * 50.0)
            .collect();
        ad.b_pd = Param::from_tensor(Tensor::from_data(TensorData::new(bpd, [r, d]), &dev));
        (ad, head)
    }

    fn step_output(step: usize, plm_logits: Vec<f32>, n: usize) -> StepOutput<B> {
        let dev = Default::default();
        let f: Vec<f32> = (0..n * 4).map(|i| ((i as f32) * 0.37).cos()).collect();
        StepOutput {
            seqs: (0..n).collect(),
            steps: vec![step; n],
            context: ContextRepr(Tensor::from_data(TensorData::new(f, [n, 4]), &dev)),
            logits: Tensor::from_data(TensorData::new(plm_logits, [n, 6]), &dev),
        }
    }

    #[test]
    fn lambda_extremes_pick_each_distribution() {
        let (ad, head) = setup();
        let n = 2;
        // The PLM strongly prefers token 5 in both rows.
        let mut plm = vec![0.0f32; n * 6];
        plm[5] = 20.0;
        plm[11] = 20.0;
        let out = step_output(3, plm, n);
        let pema_choice = argmax_rows(ad.logits(&head, out.context.0.clone()));
        let mut only_plm = PemaPolicy::new(
            PemaLogits::new(&ad, &head).expect("pema"),
            Schedule::Constant { lambda: 0.0 },
            vec![10.0],
        )
        .expect("policy");
        assert_eq!(only_plm.next_tokens(&out), vec![5, 5]);
        let mut only_pema = PemaPolicy::new(
            PemaLogits::new(&ad, &head).expect("pema"),
            Schedule::Constant { lambda: 1.0 },
            vec![10.0],
        )
        .expect("policy")
        .with_traces(100);
        assert_eq!(only_pema.next_tokens(&out), pema_choice);
        let traces = only_pema.take_traces();
        assert_eq!(traces.len(), 2);
        assert_eq!(traces[1].seq, 101);
        assert!(
            traces
                .iter()
                .all(|t| t.winner == Winner::Pema && t.lambda == 1.0)
        );
        assert!(traces.iter().all(|t| (t.p_mix - t.p_pema).abs() < 1e-6));
        // GU past its horizon hands decoding back to the PLM.
        let mut gu = PemaPolicy::new(
            PemaLogits::new(&ad, &head).expect("pema"),
            Schedule::gradual_unrolling(0.9),
            vec![2.0],
        )
        .expect("policy")
        .with_traces(0);
        assert_eq!(gu.next_tokens(&out), vec![5, 5]);
        let t = gu.take_traces();
        assert!(t.iter().all(|t| t.lambda == 0.0 && t.winner == Winner::Plm));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trace.jsonl");
        write_traces_jsonl(&path, &t).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let first: StepTrace =
            serde_json::from_str(text.lines().next().expect("line")).expect("json");
        assert_eq!(first, t[0]);
    }
}
