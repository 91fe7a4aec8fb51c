//! The common interface of corpus metrics and the parallel extraction of sufficient
//! statistics.
//!
//! Every metric reduces a segment (one hypothesis against its references) to a fixed-length
//! vector of sufficient statistics; the corpus score is a function of the element-wise sum of
//! those vectors. Statistics are stored as `f64`: BLEU and chrF statistics are integers (exact
//! in `f64` below 2^53) and TER's average reference length is fractional, exactly as in
//! sacreBLEU.

use rayon::prelude::*;

use crate::error::{MetricsError, Result};
use crate::signature::Signature;

/// A corpus-level metric with additive sufficient statistics.
pub trait Metric: Sync {
    /// Display name as sacreBLEU prints it (`BLEU`, `chrF2`, `chrF2++`, `TER`).
    fn name(&self) -> String;
    /// Number of sufficient statistics per segment.
    fn num_stats(&self) -> usize;
    /// Writes the statistics of one segment into `out` (length [`Metric::num_stats`]).
    ///
    /// `refs` are the segment's references (at least one for a meaningful score).
    /// Implementations may panic if `out` has the wrong length.
    fn segment_stats_into(&self, hyp: &str, refs: &[&str], out: &mut [f64]);
    /// The score computed from (summed) statistics; `stats.len()` must be
    /// [`Metric::num_stats`].
    fn score_from_stats(&self, stats: &[f64]) -> f64;
    /// The reproducibility signature for `nrefs` references.
    fn signature(&self, nrefs: usize) -> Signature;
    /// `true` if larger scores are better (BLEU, chrF); `false` for TER.
    fn higher_is_better(&self) -> bool {
        true
    }

    /// The statistics of one segment as a fresh vector.
    fn segment_stats(&self, hyp: &str, refs: &[&str]) -> Vec<f64> {
        let mut out = vec![0.0; self.num_stats()];
        self.segment_stats_into(hyp, refs, &mut out);
        out
    }
}

/// Row-major matrix of per-segment sufficient statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentStats {
    num_stats: usize,
    data: Vec<f64>,
}

impl SegmentStats {
    /// Wraps row-major data with `num_stats` columns.
    pub fn from_rows(num_stats: usize, data: Vec<f64>) -> Self {
        Self { num_stats, data }
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.num_stats).unwrap_or(0)
    }

    /// `true` when there are no segments.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of statistics per segment.
    pub fn num_stats(&self) -> usize {
        self.num_stats
    }

    /// The statistics of segment `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.num_stats..(i + 1) * self.num_stats]
    }

    /// Iterates over segments.
    pub fn rows(&self) -> impl Iterator<Item = &[f64]> {
        self.data.chunks_exact(self.num_stats.max(1))
    }

    /// Element-wise sum over all segments, accumulated in segment order (as sacreBLEU's
    /// `sum_of_lists`, so floating-point statistics round identically).
    pub fn sum(&self) -> Vec<f64> {
        let mut total = vec![0.0; self.num_stats];
        for row in self.rows() {
            for (t, v) in total.iter_mut().zip(row) {
                *t += v;
            }
        }
        total
    }

    /// Element-wise sum over the segments listed in `idx` (repetitions allowed).
    pub fn sum_indices(&self, idx: impl IntoIterator<Item = usize>, out: &mut [f64]) {
        out.iter_mut().for_each(|v| *v = 0.0);
        for i in idx {
            for (t, v) in out.iter_mut().zip(self.row(i)) {
                *t += v;
            }
        }
    }
}

/// Checks that every reference stream has as many segments as the hypotheses.
pub fn check_streams<H, R>(hyps: &[H], refs: &[Vec<R>]) -> Result<()> {
    if refs.is_empty() {
        return Err(MetricsError::NoReferences);
    }
    for (k, stream) in refs.iter().enumerate() {
        if stream.len() != hyps.len() {
            return Err(MetricsError::LengthMismatch {
                what: format!("reference stream {}", k + 1),
                expected: hyps.len(),
                found: stream.len(),
            });
        }
    }
    Ok(())
}

/// Extracts the statistics of every segment, in parallel for large corpora.
///
/// `refs` holds reference *streams*: `refs[k][i]` is the `k`-th reference of segment `i`
/// (sacreBLEU's layout).
pub fn corpus_stats<M, H, R>(metric: &M, hyps: &[H], refs: &[Vec<R>]) -> Result<SegmentStats>
where
    M: Metric + ?Sized,
    H: AsRef<str> + Sync,
    R: AsRef<str> + Sync,
{
    check_streams(hyps, refs)?;
    let k = metric.num_stats();
    let mut data = vec![0.0; hyps.len() * k];
    let one = |(i, out): (usize, &mut [f64])| {
        let seg_refs: Vec<&str> = refs.iter().map(|s| s[i].as_ref()).collect();
        metric.segment_stats_into(hyps[i].as_ref(), &seg_refs, out);
    };
    if k > 0 {
        if hyps.len() >= 256 {
            data.par_chunks_mut(k)
                .with_min_len(64)
                .enumerate()
                .for_each(one);
        } else {
            data.chunks_mut(k).enumerate().for_each(one);
        }
    }
    Ok(SegmentStats::from_rows(k, data))
}

/// Corpus score of `hyps` against reference streams `refs`.
pub fn corpus_score<M, H, R>(metric: &M, hyps: &[H], refs: &[Vec<R>]) -> Result<f64>
where
    M: Metric + ?Sized,
    H: AsRef<str> + Sync,
    R: AsRef<str> + Sync,
{
    let stats = corpus_stats(metric, hyps, refs)?;
    Ok(metric.score_from_stats(&stats.sum()))
}
