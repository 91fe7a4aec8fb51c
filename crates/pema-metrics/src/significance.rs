//! Paired significance tests between two systems scored against the same references, and
//! bootstrap confidence intervals, following sacreBLEU's `--paired-bs`, `--paired-ar` and
//! `--confidence`.
//!
//! * Paired bootstrap resampling (Koehn, 2004): resample segments with replacement
//!   `n` times (same indices for both systems), score both; the p-value is
//!   `(#{ |Δ_s| − mean|Δ| > |Δ| } + 1) / (n + 1)` where Δ is the observed score difference.
//! * Approximate randomisation (Riezler & Maxwell, 2005): in each of `n` trials swap each
//!   segment's statistics between the systems with probability ½; the p-value is
//!   `(#{ |score(A') − score(B')| > |Δ| } + 1) / (n + 1)`.
//! * Confidence intervals: the 95% interval half-width of bootstrap scores,
//!   `(s_(n − ⌊n/40⌋ − 1) − s_(⌊n/40⌋)) / 2`, with their mean.
//!
//! **Random streams differ from sacreBLEU's.** sacreBLEU draws indices with NumPy's PCG64
//! `default_rng(12345)`; this crate uses xoshiro256++ seeded through SplitMix64, with one
//! independent stream per resample/trial so results do not depend on the thread count. With
//! the same seed, results are bit-for-bit reproducible here, but p-values, means and
//! intervals agree with sacreBLEU's only statistically (within Monte-Carlo error), which the
//! conformance tests check. Statistics are also summed exactly in `f64` rather than in
//! NumPy's `float32`.

use rayon::prelude::*;

use crate::error::{MetricsError, Result};
use crate::metric::{Metric, SegmentStats};
use pema_common::SplitMix64;

/// sacreBLEU's default seed (`SACREBLEU_SEED`).
pub const DEFAULT_SEED: u64 = 12345;

/// xoshiro256++ pseudo-random generator (Blackman & Vigna), seeded with SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// The generator for `stream` (e.g. the resample index) under `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        let stream = SplitMix64(stream.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64();
        let mut x = SplitMix64(seed ^ stream);
        let s = [x.next_u64(), x.next_u64(), x.next_u64(), x.next_u64()];
        Self { s }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform integer in `0..n` (Lemire's unbiased multiply-shift method); `n > 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        let mut low = m as u64;
        if low < n {
            let threshold = n.wrapping_neg() % n;
            while low < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
                low = m as u64;
            }
        }
        (m >> 64) as u64
    }
}

/// Mean and 95% confidence half-width of bootstrap scores (sacreBLEU's `estimate_ci`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfidenceInterval {
    /// Mean of the resampled scores (μ).
    pub mean: f64,
    /// Half-width of the 95% interval (± value).
    pub ci: f64,
}

/// sacreBLEU's `estimate_ci` on a set of scores.
pub fn estimate_ci(scores: &[f64]) -> ConfidenceInterval {
    if scores.is_empty() {
        return ConfidenceInterval {
            mean: f64::NAN,
            ci: f64::NAN,
        };
    }
    let mut s = scores.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let lower = n / 40;
    let upper = n - lower - 1;
    ConfidenceInterval {
        mean: s.iter().sum::<f64>() / n as f64,
        ci: 0.5 * (s[upper] - s[lower]),
    }
}

fn resample_scores<M: Metric + ?Sized>(
    metric: &M,
    systems: &[&SegmentStats],
    n_samples: usize,
    seed: u64,
) -> Vec<Vec<f64>> {
    let n_seg = systems.first().map_or(0, |s| s.len());
    let k = metric.num_stats();
    let per_sample: Vec<Vec<f64>> = (0..n_samples)
        .into_par_iter()
        .map(|s| {
            let mut rng = Rng::new(seed, s as u64);
            let idx: Vec<usize> = (0..n_seg)
                .map(|_| rng.below(n_seg as u64) as usize)
                .collect();
            let mut buf = vec![0.0; k];
            systems
                .iter()
                .map(|st| {
                    st.sum_indices(idx.iter().copied(), &mut buf);
                    metric.score_from_stats(&buf)
                })
                .collect()
        })
        .collect();
    (0..systems.len())
        .map(|j| per_sample.iter().map(|v| v[j]).collect())
        .collect()
}

/// Bootstrap confidence interval of one system's corpus score (`--confidence`).
pub fn bootstrap_ci<M: Metric + ?Sized>(
    metric: &M,
    stats: &SegmentStats,
    n_samples: usize,
    seed: u64,
) -> ConfidenceInterval {
    let scores = resample_scores(metric, &[stats], n_samples, seed);
    estimate_ci(&scores[0])
}

/// Outcome of a paired test of `system` against `baseline`.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedResult {
    /// Corpus score of the baseline.
    pub baseline_score: f64,
    /// Corpus score of the system.
    pub system_score: f64,
    /// p-value of the null hypothesis "the systems are equally good".
    pub p_value: f64,
    /// Bootstrap mean and 95% CI of the baseline (paired bootstrap, or AR with confidence).
    pub baseline_ci: Option<ConfidenceInterval>,
    /// Bootstrap mean and 95% CI of the system.
    pub system_ci: Option<ConfidenceInterval>,
    /// Number of resamples / trials.
    pub n_samples: usize,
    /// Seed used.
    pub seed: u64,
}

fn check_pair(baseline: &SegmentStats, system: &SegmentStats, n_samples: usize) -> Result<()> {
    if baseline.len() != system.len() {
        return Err(MetricsError::LengthMismatch {
            what: "system statistics".into(),
            expected: baseline.len(),
            found: system.len(),
        });
    }
    if baseline.is_empty() || n_samples == 0 {
        return Err(MetricsError::InvalidConfig(
            "paired tests need segments and at least one sample".into(),
        ));
    }
    Ok(())
}

fn p_value(stats: impl Iterator<Item = f64>, real: f64, n: usize) -> f64 {
    let c = stats.filter(|s| *s > real).count();
    (c + 1) as f64 / (n + 1) as f64
}

/// Paired bootstrap resampling (`--paired-bs`, default 1000 resamples).
pub fn paired_bootstrap<M: Metric + ?Sized>(
    metric: &M,
    baseline: &SegmentStats,
    system: &SegmentStats,
    n_samples: usize,
    seed: u64,
) -> Result<PairedResult> {
    check_pair(baseline, system, n_samples)?;
    let bl_score = metric.score_from_stats(&baseline.sum());
    let sys_score = metric.score_from_stats(&system.sum());
    let scores = resample_scores(metric, &[baseline, system], n_samples, seed);
    let diffs: Vec<f64> = scores[0]
        .iter()
        .zip(&scores[1])
        .map(|(b, s)| (s - b).abs())
        .collect();
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let real = (bl_score - sys_score).abs();
    Ok(PairedResult {
        baseline_score: bl_score,
        system_score: sys_score,
        p_value: p_value(diffs.iter().map(|d| d - mean), real, n_samples),
        baseline_ci: Some(estimate_ci(&scores[0])),
        system_ci: Some(estimate_ci(&scores[1])),
        n_samples,
        seed,
    })
}

/// Paired approximate randomisation (`--paired-ar`, default 10000 trials); with
/// `n_confidence > 0`, also bootstrap CIs from that many resamples.
pub fn paired_approximate_randomization<M: Metric + ?Sized>(
    metric: &M,
    baseline: &SegmentStats,
    system: &SegmentStats,
    n_trials: usize,
    seed: u64,
    n_confidence: usize,
) -> Result<PairedResult> {
    check_pair(baseline, system, n_trials)?;
    let bl_score = metric.score_from_stats(&baseline.sum());
    let sys_score = metric.score_from_stats(&system.sum());
    let real = (bl_score - sys_score).abs();
    let k = metric.num_stats();
    let n_seg = baseline.len();
    // Stream ids above n_confidence's range keep AR draws independent of bootstrap draws.
    let trial_diffs: Vec<f64> = (0..n_trials)
        .into_par_iter()
        .map(|t| {
            let mut rng = Rng::new(seed, (1u64 << 40) + t as u64);
            let (mut a, mut b) = (vec![0.0; k], vec![0.0; k]);
            let mut bits = 0u64;
            for i in 0..n_seg {
                if i % 64 == 0 {
                    bits = rng.next_u64();
                }
                let swap = (bits >> (i % 64)) & 1 == 1;
                let (x, y) = if swap {
                    (system.row(i), baseline.row(i))
                } else {
                    (baseline.row(i), system.row(i))
                };
                for j in 0..k {
                    a[j] += x[j];
                    b[j] += y[j];
                }
            }
            (metric.score_from_stats(&a) - metric.score_from_stats(&b)).abs()
        })
        .collect();
    let (baseline_ci, system_ci) = if n_confidence > 0 {
        let scores = resample_scores(metric, &[baseline, system], n_confidence, seed);
        (Some(estimate_ci(&scores[0])), Some(estimate_ci(&scores[1])))
    } else {
        (None, None)
    };
    Ok(PairedResult {
        baseline_score: bl_score,
        system_score: sys_score,
        p_value: p_value(trial_diffs.into_iter(), real, n_trials),
        baseline_ci,
        system_ci,
        n_samples: n_trials,
        seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = Rng::new(DEFAULT_SEED, 0);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[rng.below(7) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn ci_indices_follow_sacrebleu() {
        let scores: Vec<f64> = (0..1000).map(f64::from).collect();
        let ci = estimate_ci(&scores);
        assert_eq!(ci.ci, 0.5 * (974.0 - 25.0));
        assert_eq!(ci.mean, 499.5);
    }
}
