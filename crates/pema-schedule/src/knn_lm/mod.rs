//! The kNN-LM baseline (Khandelwal et al., 2020) on the same external memory as PEMA.
//!
//! At each step the context representation f(c) retrieves its k nearest keys (exact search,
//! squared L2 distance d_i) and the neighbours' values vote:
//!
//! ```text
//! P_kNN(y|c) = Σ_{i: v_i = y} exp(−d_i/T) / Σ_i exp(−d_i/T)
//! P(y|c)     = λ·P_kNN(y|c) + (1−λ)·P_LM(y|c)          (in log space)
//! ```
//!
//! Keys are compared after the same per-dimension standardisation PEMA uses (μ, σ from the
//! training memory; see `pema_adapter::KeyNorm`): Gemma's pre-norm residual stream has a few
//! dimensions of magnitude ~10⁴ that would otherwise decide every distance. k, T and λ are chosen
//! on the dev memory by the token-level negative log-likelihood of the gold values
//! ([`tune_knn_lm`]), as kNN-LM tunes on validation perplexity; P_LM there is the head applied to
//! the dev key itself, W_hd·norm(f(c)), which is exactly the PLM's distribution for that context.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use pema_adapter::FusedHead;
use pema_backbone::{StepOutput, StepPolicy};
use pema_memory::{ExactKnn, MemoryError, MemorySource, Neighbor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ScheduleError};

/// The three hyper-parameters of kNN-LM.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnLmParams {
    /// Neighbours retrieved per step.
    pub k: usize,
    /// Softmax temperature T over −d (squared L2 distances of standardised keys).
    pub temperature: f64,
    /// Interpolation weight λ of P_kNN.
    pub lambda: f64,
}

impl KnnLmParams {
    /// Checks k ≥ 1, T > 0 and λ ∈ [0, 1].
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(ScheduleError::Config(format!(
                "kNN-LM needs k ≥ 1 and T > 0, got k {} and T {}",
                self.k, self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.lambda) {
            return Err(ScheduleError::Config(format!(
                "kNN-LM λ must be in [0, 1], got {}",
                self.lambda
            )));
        }
        Ok(())
    }
}

/// A memory whose keys are read standardised, x = (f − μ)/σ per dimension.
pub struct StandardizedSource<'a> {
    inner: &'a dyn MemorySource,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl<'a> StandardizedSource<'a> {
    /// Wraps `inner` with statistics μ, σ (length d, σ > 0).
    pub fn new(inner: &'a dyn MemorySource, mean: Vec<f32>, std: Vec<f32>) -> Result<Self> {
        let d = inner.hidden_size();
        if mean.len() != d || std.len() != d || std.iter().any(|s| s.is_nan() || *s <= 0.0) {
            return Err(ScheduleError::Config(format!(
                "key statistics of width {}/{} (σ > 0 required) do not fit keys of width {d}",
                mean.len(),
                std.len()
            )));
        }
        Ok(Self { inner, mean, std })
    }

    /// Standardises row-major keys in place.
    pub fn apply(&self, keys: &mut [f32]) {
        let d = self.mean.len();
        for row in keys.chunks_exact_mut(d.max(1)) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
            }
        }
    }
}

impl MemorySource for StandardizedSource<'_> {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn hidden_size(&self) -> usize {
        self.inner.hidden_size()
    }
    fn gather(
        &self,
        ids: &[u64],
        keys: &mut Vec<f32>,
        values: &mut Vec<u32>,
    ) -> std::result::Result<(), MemoryError> {
        let start = keys.len();
        self.inner.gather(ids, keys, values)?;
        self.apply(&mut keys[start..]);
        Ok(())
    }
    fn fingerprint(&self) -> String {
        format!("standardized:{}", self.inner.fingerprint())
    }
    fn meta(&self) -> Option<&pema_memory::MemoryMeta> {
        self.inner.meta()
    }
}

/// Checks a kNN datastore (`keys` and its `index`) against a model of width `d` and
/// vocabulary `vocab` (and its tokenizer, when known) before any tensor operation: key width,
/// the recorded vocabulary and tokenizer, and every value inside the vocabulary.
pub fn check_datastore<B: Backend>(
    index: &ExactKnn<B>,
    keys: &StandardizedSource<'_>,
    d: usize,
    vocab: usize,
    tokenizer_fingerprint: Option<&str>,
) -> Result<()> {
    let check = pema_memory::ModelCheck {
        hidden_size: d,
        vocab_size: vocab,
        tokenizer_fingerprint,
        model_sha256: None,
    };
    pema_memory::compat::check_source(keys, &check)?;
    if index.hidden_size() != d {
        return Err(ScheduleError::Config(format!(
            "the kNN index has key width {}, the model's hidden size is {d}",
            index.hidden_size()
        )));
    }
    index.check_values(vocab)?;
    Ok(())
}

/// log P_kNN(y) for every value y among `neighbors` (the first `k` are used), from their
/// distances at temperature `t`: a sparse distribution as (token, log-probability) pairs.
pub fn knn_log_probs(neighbors: &[Neighbor], k: usize, t: f64) -> Vec<(u32, f64)> {
    let nb = &neighbors[..k.min(neighbors.len())];
    if nb.is_empty() {
        return Vec::new();
    }
    let scores: Vec<f64> = nb.iter().map(|n| -f64::from(n.distance) / t).collect();
    let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = scores.iter().map(|s| (s - m).exp()).sum();
    let log_z = m + total.ln();
    let mut out: Vec<(u32, f64)> = Vec::new();
    for (n, s) in nb.iter().zip(&scores) {
        let w = (s - m).exp();
        match out.iter_mut().find(|(v, _)| *v == n.value) {
            Some((_, acc)) => *acc += w,
            None => out.push((n.value, w)),
        }
    }
    for (_, acc) in &mut out {
        *acc = m + acc.ln() - log_z;
    }
    out
}

/// log(λ·exp(a) + (1−λ)·exp(b)) for log-probabilities a (kNN) and b (LM), −∞-safe.
pub fn mix_pair(log_knn: f64, log_lm: f64, lambda: f64) -> f64 {
    let a = if lambda > 0.0 {
        lambda.ln() + log_knn
    } else {
        f64::NEG_INFINITY
    };
    let b = if lambda < 1.0 {
        (-lambda).ln_1p() + log_lm
    } else {
        f64::NEG_INFINITY
    };
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// Greedy kNN-LM decoding as a [`StepPolicy`]: argmax of λ·P_kNN + (1−λ)·P_LM.
///
/// P_kNN is sparse, so the argmax is either the PLM's own argmax or one of the neighbours'
/// values: only those columns of log P_LM are read back from the device.
///
/// A step where the datastore cannot be used (a search error, a shape mismatch) does not fall
/// back to the PLM silently: the policy records the first such error ([`KnnLmPolicy::error`])
/// and the caller must fail the decoding with it.
pub struct KnnLmPolicy<'a, B: Backend> {
    index: &'a ExactKnn<B>,
    keys: &'a StandardizedSource<'a>,
    params: KnnLmParams,
    error: Option<String>,
}

impl<'a, B: Backend> KnnLmPolicy<'a, B> {
    /// A policy over `index` (built on `keys`, the standardised training memory) for a model
    /// of hidden size `d` and vocabulary `vocab`: checks the parameters and the datastore
    /// against the model ([`check_datastore`]) before any step.
    pub fn new(
        index: &'a ExactKnn<B>,
        keys: &'a StandardizedSource<'a>,
        params: KnnLmParams,
        d: usize,
        vocab: usize,
    ) -> Result<Self> {
        params.validate()?;
        check_datastore(index, keys, d, vocab, None)?;
        Ok(Self {
            index,
            keys,
            params,
            error: None,
        })
    }

    /// The first step error, if any: decoding must fail with it (see the type's docs).
    pub fn error(&self) -> Option<ScheduleError> {
        self.error.clone().map(ScheduleError::Knn)
    }

    /// Records a step error and returns the PLM's choice so the batch can end; the caller
    /// fails on [`KnnLmPolicy::error`].
    fn fail(&mut self, message: String, fallback: Vec<u32>) -> Vec<u32> {
        self.error.get_or_insert(message);
        fallback
    }
}

fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

impl<B: Backend> StepPolicy<B> for KnnLmPolicy<'_, B> {
    fn next_tokens(&mut self, out: &StepOutput<B>) -> Vec<u32> {
        let [n, d] = out.context.0.dims();
        let mut q = host_f32(out.context.0.clone());
        let lm_argmax = pema_backbone::seam::argmax_rows(out.logits.clone());
        if q.len() != n * d || lm_argmax.len() != n {
            return self.fail(
                format!("step output of {n} rows × {d} could not be read back"),
                lm_argmax,
            );
        }
        self.keys.apply(&mut q);
        let neigh = match self.index.search_host(&q, self.params.k) {
            Ok(neigh) => neigh,
            Err(e) => return self.fail(format!("kNN search: {e}"), lm_argmax),
        };
        let vocab = out.logits.dims()[1];
        if let Some(v) = neigh.iter().flatten().find(|nb| nb.value as usize >= vocab) {
            return self.fail(
                format!(
                    "datastore entry {} has value {}, outside the vocabulary of {vocab}",
                    v.id, v.value
                ),
                lm_argmax,
            );
        }
        let knn: Vec<Vec<(u32, f64)>> = neigh
            .iter()
            .map(|nb| knn_log_probs(nb, self.params.k, self.params.temperature))
            .collect();
        // Candidate columns per row: the PLM's argmax, then the neighbours' values.
        let width = 1 + knn.iter().map(Vec::len).max().unwrap_or(0);
        let mut idx = Vec::with_capacity(n * width);
        for (i, row) in knn.iter().enumerate() {
            idx.push(i64::from(lm_argmax[i]));
            idx.extend(row.iter().map(|(v, _)| i64::from(*v)));
            idx.extend(std::iter::repeat_n(
                i64::from(lm_argmax[i]),
                width - 1 - row.len(),
            ));
        }
        let device = out.logits.device();
        let idx_t = Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [n, width]), &device);
        let lp = host_f32(log_softmax(out.logits.clone(), 1).gather(1, idx_t));
        if lp.len() != n * width {
            return self.fail(
                "P_LM of the candidates could not be read back".into(),
                lm_argmax,
            );
        }
        let lambda = self.params.lambda;
        (0..n)
            .map(|i| {
                let row = &lp[i * width..(i + 1) * width];
                let mut best = (
                    lm_argmax[i],
                    mix_pair(f64::NEG_INFINITY, row[0] as f64, lambda),
                );
                for (j, (v, lk)) in knn[i].iter().enumerate() {
                    let s = mix_pair(*lk, row[1 + j] as f64, lambda);
                    if s > best.1 {
                        best = (*v, s);
                    }
                }
                best.0
            })
            .collect()
    }
}

pub(crate) use pema_memory::evenly_spaced;

/// One point of the dev grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnGridPoint {
    /// The setting.
    pub params: KnnLmParams,
    /// Mean negative log-likelihood (nats per token) of the dev values under the mixture.
    pub nll: f64,
}

/// The outcome of [`tune_knn_lm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnnTuneReport {
    /// The setting with the lowest dev NLL.
    pub best: KnnGridPoint,
    /// The PLM alone on the same dev entries (λ = 0).
    pub plm_nll: f64,
    /// Mean squared distance of the nearest neighbour (the temperature grid is relative to it).
    pub mean_nearest_distance: f64,
    /// Every evaluated setting.
    pub grid: Vec<KnnGridPoint>,
    /// Dev entries evaluated.
    pub dev_entries: usize,
}

/// Chooses k, T and λ on the dev memory by the NLL of its gold values under
/// λ·P_kNN + (1−λ)·P_LM. Temperatures are `temp_factors` × the mean nearest-neighbour distance.
/// At most `max_dev` dev entries are used (evenly spaced).
///
/// Every candidate k must be ≥ 1, every temperature factor finite and > 0, every λ in [0, 1].
/// Candidate k values above the datastore's size N are clamped to N (k > N retrieves the same
/// N neighbours), so the reported best k never exceeds N. Before any tensor operation the
/// datastore and the dev memory are checked against the head: key width d = the head's hidden
/// size, recorded vocabulary = the head's, and every value inside the head's vocabulary.
#[allow(clippy::too_many_arguments)]
pub fn tune_knn_lm<B: Backend>(
    index: &ExactKnn<B>,
    keys: &StandardizedSource<'_>,
    dev: &dyn MemorySource,
    head: &FusedHead<B>,
    ks: &[usize],
    temp_factors: &[f64],
    lambdas: &[f64],
    max_dev: usize,
) -> Result<KnnTuneReport> {
    if ks.is_empty() || temp_factors.is_empty() || lambdas.is_empty() || dev.is_empty() {
        return Err(ScheduleError::Config(
            "kNN-LM tuning needs non-empty k, temperature and λ grids and a non-empty dev memory"
                .into(),
        ));
    }
    if let Some(k) = ks.iter().find(|&&k| k == 0) {
        return Err(ScheduleError::Config(format!(
            "kNN-LM candidate k must be ≥ 1, got {k}"
        )));
    }
    if let Some(t) = temp_factors.iter().find(|t| !(t.is_finite() && **t > 0.0)) {
        return Err(ScheduleError::Config(format!(
            "kNN-LM temperature factors must be finite and > 0, got {t}"
        )));
    }
    if let Some(l) = lambdas.iter().find(|l| !(0.0..=1.0).contains(*l)) {
        return Err(ScheduleError::Config(format!(
            "kNN-LM λ values must be in [0, 1], got {l}"
        )));
    }
    if index.is_empty() {
        return Err(ScheduleError::Config("the kNN datastore is empty".into()));
    }
    let (hd, vocab) = (head.hidden_size(), head.vocab_size());
    check_datastore(index, keys, hd, vocab, None)?;
    let dev_check = pema_memory::ModelCheck {
        hidden_size: hd,
        vocab_size: vocab,
        tokenizer_fingerprint: None,
        model_sha256: None,
    };
    pema_memory::compat::check_source(dev, &dev_check)?;
    // k > N retrieves the same N neighbours: clamp, keeping the grid's order without repeats.
    let mut ks_eff: Vec<usize> = Vec::with_capacity(ks.len());
    for k in ks.iter().map(|&k| k.min(index.len())) {
        if !ks_eff.contains(&k) {
            ks_eff.push(k);
        }
    }
    let ks = ks_eff.as_slice();
    let kmax = ks.iter().copied().max().unwrap_or(1);
    let ids = evenly_spaced(dev.len(), max_dev);
    let take = ids.len();
    let d = dev.hidden_size();
    let device = head.device();
    let mut lm = Vec::with_capacity(take);
    let mut neigh = Vec::with_capacity(take);
    let mut gold = Vec::with_capacity(take);
    for chunk in ids.chunks(256) {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        dev.gather(chunk, &mut k, &mut v)
            .map_err(|e| ScheduleError::Config(format!("reading the dev memory: {e}")))?;
        if let Some(j) = v.iter().position(|&y| y as usize >= vocab) {
            return Err(ScheduleError::Config(format!(
                "dev memory entry {} has value {}, outside the head's vocabulary of {vocab}",
                chunk[j], v[j]
            )));
        }
        let m = chunk.len();
        let f = Tensor::<B, 2>::from_data(TensorData::new(k.clone(), [m, d]), &device);
        let y = pema_adapter::head_ce::targets::<B>(&v, &device);
        lm.extend(
            host_f32(head.gold_log_probs(f, y).nll)
                .into_iter()
                .map(f64::from),
        );
        keys.apply(&mut k);
        neigh.extend(
            index
                .search_host(&k, kmax)
                .map_err(|e| ScheduleError::Config(format!("kNN search: {e}")))?,
        );
        gold.extend(v);
    }
    let mean_d1 = neigh
        .iter()
        .filter_map(|nb| nb.first().map(|x| f64::from(x.distance)))
        .sum::<f64>()
        / take as f64;
    let scale = if mean_d1 > 0.0 { mean_d1 } else { 1.0 };
    let plm_nll = -lm.iter().sum::<f64>() / take as f64;
    let mut grid = Vec::new();
    for &k in ks {
        for &tf in temp_factors {
            let t = tf * scale;
            let lk: Vec<f64> = neigh
                .iter()
                .zip(&gold)
                .map(|(nb, y)| {
                    knn_log_probs(nb, k, t)
                        .iter()
                        .find(|(v, _)| v == y)
                        .map_or(f64::NEG_INFINITY, |(_, l)| *l)
                })
                .collect();
            for &lambda in lambdas {
                let nll = -lk
                    .iter()
                    .zip(&lm)
                    .map(|(a, b)| mix_pair(*a, *b, lambda))
                    .sum::<f64>()
                    / take as f64;
                grid.push(KnnGridPoint {
                    params: KnnLmParams {
                        k,
                        temperature: t,
                        lambda,
                    },
                    nll,
                });
            }
        }
    }
    let best = *grid
        .iter()
        .filter(|g| g.nll.is_finite())
        .min_by(|a, b| a.nll.total_cmp(&b.nll))
        .ok_or_else(|| ScheduleError::Config("every kNN-LM setting gave an infinite NLL".into()))?;
    Ok(KnnTuneReport {
        best,
        plm_nll,
        mean_nearest_distance: mean_d1,
        grid,
        dev_entries: take,
    })
}

#[cfg(test)]
mod tests;
