//! BLEU (Papineni et al., 2002) exactly as sacreBLEU 2.x computes it.
//!
//! BLEU = BP · exp( Σ_{n=1}^{N} log p_n / N ), with BP = 1 if c ≥ r else exp(1 − r/c),
//! c the hypothesis length, r the closest reference length (ties to the shorter) and p_n the
//! clipped n-gram precisions (in percent), smoothed per Chen & Cherry (2014).

use std::cell::RefCell;

use rustc_hash::FxHashMap;

use crate::error::{MetricsError, Result};
use crate::metric::{Metric, SegmentStats, corpus_stats};
use crate::ngram::{ABSENT, Interner, clipped_matches, intern_all, lookup_all};
use crate::signature::Signature;
use crate::text::{py_lower, py_rstrip, py_split};
use crate::tokenize::Tokenizer;

/// Smoothing of zero n-gram precisions (Chen & Cherry, 2014).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Smoothing {
    /// No smoothing: a zero precision makes BLEU 0.
    None,
    /// Method 1: a zero match count is replaced by the given floor (default 0.1).
    Floor(f64),
    /// Method 2: adds k (default 1) to matches and totals for n > 1.
    AddK(f64),
    /// Method 3 (mteval-v13a NIST smoothing): the k-th zero precision becomes 1/(2^k · total).
    #[default]
    Exp,
}

impl Smoothing {
    /// Checks the smoothing value: finite and ≥ 0 (floor, add-k).
    pub fn validate(&self) -> Result<()> {
        match *self {
            Smoothing::Floor(v) | Smoothing::AddK(v) if !(v.is_finite() && v >= 0.0) => {
                Err(MetricsError::InvalidConfig(format!(
                    "the smoothing value (--smooth-value) must be finite and ≥ 0, got {v}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Parses sacreBLEU's `--smooth-method` / `--smooth-value` pair (value `None` → default);
    /// the value must be finite and ≥ 0.
    pub fn from_name(method: &str, value: Option<f64>) -> Result<Self> {
        let s = Self::parse_name(method, value)?;
        s.validate()?;
        Ok(s)
    }

    fn parse_name(method: &str, value: Option<f64>) -> Result<Self> {
        match method {
            "none" => Ok(Smoothing::None),
            "exp" => Ok(Smoothing::Exp),
            "floor" => Ok(Smoothing::Floor(value.unwrap_or(0.1))),
            "add-k" => Ok(Smoothing::AddK(value.unwrap_or(1.0))),
            other => Err(MetricsError::InvalidConfig(format!(
                "unknown smoothing method {other:?} (expected exp, floor, add-k or none)"
            ))),
        }
    }

    /// The signature form: `exp`, `none`, `floor[0.10]`, `add-k[1.00]`.
    pub fn signature(&self) -> String {
        match self {
            Smoothing::None => "none".into(),
            Smoothing::Exp => "exp".into(),
            Smoothing::Floor(v) => format!("floor[{v:.2}]"),
            Smoothing::AddK(v) => format!("add-k[{v:.2}]"),
        }
    }
}

/// BLEU options (sacreBLEU's `BLEU(...)` arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct BleuConfig {
    /// Lowercase hypotheses and references first (`case:lc`).
    pub lowercase: bool,
    /// The tokeniser (`tok:`).
    pub tokenizer: Tokenizer,
    /// Smoothing method (`smooth:`).
    pub smoothing: Smoothing,
    /// Maximum n-gram order N (default 4).
    pub max_ngram_order: usize,
    /// Stop at the highest order with a non-zero hypothesis n-gram count (`eff:yes`);
    /// recommended for sentence-level BLEU.
    pub effective_order: bool,
}

impl Default for BleuConfig {
    fn default() -> Self {
        Self {
            lowercase: false,
            tokenizer: Tokenizer::Thirteen,
            smoothing: Smoothing::Exp,
            max_ngram_order: 4,
            effective_order: false,
        }
    }
}

/// A BLEU score with its details (sacreBLEU's `BLEUScore`).
#[derive(Debug, Clone, PartialEq)]
pub struct BleuScore {
    /// BLEU in [0, 100].
    pub score: f64,
    /// Clipped n-gram matches per order (before add-k smoothing).
    pub counts: Vec<u64>,
    /// Hypothesis n-gram totals per order (before add-k smoothing).
    pub totals: Vec<u64>,
    /// (Smoothed) precisions p_n in percent.
    pub precisions: Vec<f64>,
    /// Brevity penalty.
    pub bp: f64,
    /// Total hypothesis length c.
    pub sys_len: u64,
    /// Total (closest) reference length r.
    pub ref_len: u64,
}

impl BleuScore {
    /// c / r (0 when r = 0).
    pub fn ratio(&self) -> f64 {
        if self.ref_len > 0 {
            self.sys_len as f64 / self.ref_len as f64
        } else {
            0.0
        }
    }

    /// sacreBLEU's verbose tail: `p1/p2/p3/p4 (BP = … ratio = … hyp_len = … ref_len = …)`.
    pub fn verbose(&self) -> String {
        let prec: Vec<String> = self.precisions.iter().map(|p| format!("{p:.1}")).collect();
        format!(
            "{} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            prec.join("/"),
            self.bp,
            self.ratio(),
            self.sys_len,
            self.ref_len
        )
    }
}

/// sacreBLEU's `my_log`: log, with log(0) floored to −9 999 999 999.
fn my_log(x: f64) -> f64 {
    if x == 0.0 { -9_999_999_999.0 } else { x.ln() }
}

/// Computes BLEU from sufficient statistics (sacreBLEU's `BLEU.compute_bleu`).
#[allow(clippy::too_many_arguments)]
pub fn compute_bleu(
    correct: &[f64],
    total: &[f64],
    sys_len: f64,
    ref_len: f64,
    smoothing: Smoothing,
    effective_order: bool,
    max_ngram_order: usize,
) -> (f64, Vec<f64>, f64) {
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0.0 {
            (1.0 - ref_len / sys_len).exp()
        } else {
            0.0
        };
    }
    let mut precisions = vec![0.0; max_ngram_order];
    if correct.iter().all(|c| *c == 0.0) {
        return (0.0, precisions, bp);
    }
    let mut correct = correct.to_vec();
    let mut total = total.to_vec();
    let mut smooth_mteval = 1.0;
    let mut eff_order = max_ngram_order;
    for n in 1..=max_ngram_order {
        if let Smoothing::AddK(k) = smoothing
            && n > 1
        {
            correct[n - 1] += k;
            total[n - 1] += k;
        }
        if total[n - 1] == 0.0 {
            break;
        }
        if effective_order {
            eff_order = n;
        }
        if correct[n - 1] == 0.0 {
            match smoothing {
                Smoothing::Exp => {
                    smooth_mteval *= 2.0;
                    precisions[n - 1] = 100.0 / (smooth_mteval * total[n - 1]);
                }
                Smoothing::Floor(v) => precisions[n - 1] = 100.0 * v / total[n - 1],
                _ => {}
            }
        } else {
            precisions[n - 1] = 100.0 * correct[n - 1] / total[n - 1];
        }
    }
    let mut log_sum = 0.0;
    for p in &precisions[..eff_order] {
        log_sum += my_log(*p);
    }
    let score = bp * (log_sum / eff_order as f64).exp();
    (score, precisions, bp)
}

/// The BLEU metric.
#[derive(Debug, Clone, Default)]
pub struct Bleu {
    config: BleuConfig,
}

#[derive(Default)]
struct Scratch {
    interner: Interner,
    ref_max: Vec<u32>,
    tmp: Vec<u32>,
    used: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Bleu {
    /// A BLEU metric with the given options.
    pub fn new(config: BleuConfig) -> Result<Self> {
        if config.max_ngram_order == 0 {
            return Err(MetricsError::InvalidConfig(
                "max_ngram_order must be at least 1".into(),
            ));
        }
        config.smoothing.validate()?;
        Ok(Self { config })
    }

    /// The options.
    pub fn config(&self) -> &BleuConfig {
        &self.config
    }

    /// Lowercasing (optional), `rstrip` and tokenisation of one segment.
    pub fn preprocess(&self, sent: &str) -> String {
        if self.config.lowercase {
            self.config.tokenizer.tokenize(py_rstrip(&py_lower(sent)))
        } else {
            self.config.tokenizer.tokenize(py_rstrip(sent))
        }
    }

    /// Details of the score computed from summed statistics
    /// `[sys_len, ref_len, correct_1..N, total_1..N]`.
    ///
    /// # Panics
    /// If `stats` is shorter than [`Metric::num_stats`].
    pub fn score_details(&self, stats: &[f64]) -> BleuScore {
        let n = self.config.max_ngram_order;
        let correct = &stats[2..2 + n];
        let total = &stats[2 + n..2 + 2 * n];
        let (score, precisions, bp) = compute_bleu(
            correct,
            total,
            stats[0],
            stats[1],
            self.config.smoothing,
            self.config.effective_order,
            n,
        );
        BleuScore {
            score,
            counts: correct.iter().map(|v| *v as u64).collect(),
            totals: total.iter().map(|v| *v as u64).collect(),
            precisions,
            bp,
            sys_len: stats[0] as u64,
            ref_len: stats[1] as u64,
        }
    }

    /// Corpus BLEU with details; `refs[k][i]` is the k-th reference of segment i.
    pub fn corpus_score<H, R>(&self, hyps: &[H], refs: &[Vec<R>]) -> Result<BleuScore>
    where
        H: AsRef<str> + Sync,
        R: AsRef<str> + Sync,
    {
        let stats: SegmentStats = corpus_stats(self, hyps, refs)?;
        Ok(self.score_details(&stats.sum()))
    }

    /// Sentence BLEU of one hypothesis against its references (use `effective_order`).
    pub fn sentence_score(&self, hyp: &str, refs: &[&str]) -> BleuScore {
        self.score_details(&self.segment_stats(hyp, refs))
    }
}

/// Tokens of a tokeniser's output: single-space separated except for `none`, whose output
/// is split the Python way.
fn split_tokens(tok: Tokenizer, s: &str) -> Box<dyn Iterator<Item = &str> + '_> {
    match tok {
        Tokenizer::None => Box::new(py_split(s)),
        _ => Box::new(s.split(' ').filter(|t| !t.is_empty())),
    }
}

/// sacreBLEU's `_get_closest_ref_len`: closest length, ties broken towards the shorter.
fn closest_ref_len(hyp_len: usize, ref_lens: &[usize]) -> usize {
    let mut best: Option<(usize, usize)> = None;
    for &r in ref_lens {
        let diff = hyp_len.abs_diff(r);
        best = match best {
            None => Some((diff, r)),
            Some((d, l)) if diff < d || (diff == d && r < l) => Some((diff, r)),
            keep => keep,
        };
    }
    best.map_or(0, |(_, l)| l)
}

impl Metric for Bleu {
    fn name(&self) -> String {
        "BLEU".into()
    }

    fn num_stats(&self) -> usize {
        2 + 2 * self.config.max_ngram_order
    }

    fn segment_stats_into(&self, hyp: &str, refs: &[&str], out: &mut [f64]) {
        let n_max = self.config.max_ngram_order;
        let hyp_tok = self.preprocess(hyp);
        let ref_toks: Vec<String> = refs.iter().map(|r| self.preprocess(r)).collect();
        SCRATCH.with(|cell| {
            let mut sc = cell.borrow_mut();
            let sc = &mut *sc;
            let mut vocab: FxHashMap<&str, u32> =
                FxHashMap::with_capacity_and_hasher(64, Default::default());
            sc.interner.reset(0);
            sc.interner
                .reserve(ref_toks.iter().map(|r| r.len() / 2 * n_max).sum());
            let mut ref_lens = Vec::with_capacity(refs.len());
            let mut ref_grams: Vec<Vec<Vec<u32>>> = Vec::with_capacity(refs.len());
            for r in &ref_toks {
                let uni: Vec<u32> = split_tokens(self.config.tokenizer, r)
                    .map(|t| *vocab.entry(t).or_insert_with(|| sc.interner.fresh()))
                    .collect();
                ref_lens.push(uni.len());
                let mut grams = vec![Vec::new(); n_max];
                intern_all(&mut sc.interner, &uni, n_max, &mut grams);
                ref_grams.push(grams);
            }
            let n_ids = sc.interner.len();
            sc.ref_max.clear();
            sc.ref_max.resize(n_ids, 0);
            if ref_grams.len() == 1 {
                for id in ref_grams[0].iter().flatten() {
                    sc.ref_max[*id as usize] += 1;
                }
            } else {
                sc.tmp.clear();
                sc.tmp.resize(n_ids, 0);
                for grams in &ref_grams {
                    for id in grams.iter().flatten() {
                        sc.tmp[*id as usize] += 1;
                    }
                    for id in grams.iter().flatten() {
                        let i = *id as usize;
                        sc.ref_max[i] = sc.ref_max[i].max(sc.tmp[i]);
                    }
                    for id in grams.iter().flatten() {
                        sc.tmp[*id as usize] = 0;
                    }
                }
            }
            let uni: Vec<u32> = split_tokens(self.config.tokenizer, &hyp_tok)
                .map(|t| vocab.get(t).copied().unwrap_or(ABSENT))
                .collect();
            let mut grams = vec![Vec::new(); n_max];
            lookup_all(&sc.interner, &uni, n_max, &mut grams);
            sc.used.clear();
            sc.used.resize(n_ids, 0);
            out[0] = uni.len() as f64;
            out[1] = closest_ref_len(uni.len(), &ref_lens) as f64;
            for n in 0..n_max {
                out[2 + n] = clipped_matches(&grams[n], &sc.ref_max, &mut sc.used) as f64;
                out[2 + n_max + n] = grams[n].len() as f64;
            }
        });
    }

    fn score_from_stats(&self, stats: &[f64]) -> f64 {
        self.score_details(stats).score
    }

    fn signature(&self, nrefs: usize) -> Signature {
        Signature::new(nrefs)
            .with_field(
                "case",
                "c",
                if self.config.lowercase { "lc" } else { "mixed" },
            )
            .with_field(
                "eff",
                "e",
                crate::signature::yes_no(self.config.effective_order),
            )
            .with_field("tok", "tok", self.config.tokenizer.signature())
            .with_field("smooth", "s", self.config.smoothing.signature())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_empty() {
        let bleu = Bleu::default();
        let s = bleu.sentence_score("the cat sat on the mat", &["the cat sat on the mat"]);
        assert!((s.score - 100.0).abs() < 1e-12);
        let e = bleu.sentence_score("", &["a b c"]);
        assert_eq!(e.score, 0.0);
        assert_eq!(e.ref_len, 3);
    }

    #[test]
    fn closest_ref_ties_to_shorter() {
        assert_eq!(closest_ref_len(5, &[7, 3, 4, 6]), 4);
        assert_eq!(closest_ref_len(5, &[]), 0);
    }

    #[test]
    fn multi_ref_clips_to_max() {
        let bleu = Bleu::default();
        let st = bleu.segment_stats("a a a", &["a b", "a a c"]);
        assert_eq!(st[2], 2.0);
        assert_eq!(st[1], 3.0);
    }

    #[test]
    fn signature_string() {
        let bleu = Bleu::default();
        assert_eq!(
            bleu.signature(1).format(false),
            format!(
                "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{}",
                crate::SACREBLEU_VERSION
            )
        );
        assert_eq!(
            Smoothing::from_name("floor", None)
                .expect("valid")
                .signature(),
            "floor[0.10]"
        );
    }
}
