//! chrF (Popović, 2015) and chrF++ (Popović, 2017) exactly as sacreBLEU 2.x computes them.
//!
//! For each character n-gram order n ≤ `char_order` (and word order ≤ `word_order`), the
//! clipped matches give a precision P_n and recall R_n; chrFβ = (1+β²)·P·R / (β²·P + R) on
//! the averages over orders (sacreBLEU's default "effective order" averaging) or the average
//! of per-order F scores with ε-smoothing (`eps_smoothing`).

use std::cell::RefCell;

use rustc_hash::FxHashMap;

use crate::error::{MetricsError, Result};
use crate::metric::{Metric, corpus_stats};
use crate::ngram::{ABSENT, Interner, clipped_matches, intern_all, lookup_all};
use crate::signature::{Signature, yes_no};
use crate::text::{is_py_space, py_lower, py_split};

/// chrF options (sacreBLEU's `CHRF(...)` arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChrfConfig {
    /// Character n-gram order (default 6, `nc:`).
    pub char_order: usize,
    /// Word n-gram order (0 for chrF, 2 for chrF++, `nw:`).
    pub word_order: usize,
    /// β: recall is β times as important as precision (default 2).
    pub beta: u32,
    /// Lowercase first (`case:lc`).
    pub lowercase: bool,
    /// Keep whitespace inside character n-grams (`space:yes`).
    pub whitespace: bool,
    /// chrF++.py-style ε-smoothing instead of effective-order averaging (`eff:no`).
    pub eps_smoothing: bool,
}

impl Default for ChrfConfig {
    fn default() -> Self {
        Self {
            char_order: 6,
            word_order: 0,
            beta: 2,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

impl ChrfConfig {
    /// chrF++ defaults (word order 2).
    pub fn chrf_plus_plus() -> Self {
        Self {
            word_order: 2,
            ..Self::default()
        }
    }
}

/// The chrF / chrF++ metric.
#[derive(Debug, Clone, Default)]
pub struct Chrf {
    config: ChrfConfig,
}

#[derive(Default)]
struct Scratch {
    interner: Interner,
    ref_count: Vec<u32>,
    used: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// chrF's punctuation set (Python's `string.punctuation`).
fn is_chrf_punct(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// sacreBLEU's `_remove_punctuation`: splits one leading or trailing ASCII punctuation mark
/// off each whitespace-separated word (trailing takes precedence).
pub fn remove_punctuation(sent: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for w in py_split(sent) {
        let mut chars = w.chars();
        let first = chars.next();
        let last = chars.next_back();
        match (first, last) {
            (Some(_), None) => out.push(w),
            (Some(f), Some(l)) => {
                if is_chrf_punct(l) {
                    out.push(&w[..w.len() - 1]);
                    out.push(&w[w.len() - 1..]);
                } else if is_chrf_punct(f) {
                    out.push(&w[..1]);
                    out.push(&w[1..]);
                } else {
                    out.push(w);
                }
            }
            _ => {}
        }
    }
    out
}

impl Chrf {
    /// A chrF metric with the given options.
    pub fn new(config: ChrfConfig) -> Result<Self> {
        if config.char_order + config.word_order == 0 {
            return Err(MetricsError::InvalidConfig(
                "chrF needs a character or word order".into(),
            ));
        }
        Ok(Self { config })
    }

    /// The options.
    pub fn config(&self) -> &ChrfConfig {
        &self.config
    }

    fn order(&self) -> usize {
        self.config.char_order + self.config.word_order
    }

    /// sacreBLEU's `_compute_f_score` on `3·order` statistics `[hyp, ref, match]…`.
    pub fn f_score(&self, stats: &[f64]) -> f64 {
        let eps = 1e-16;
        let factor = f64::from(self.config.beta).powi(2);
        let mut score = 0.0;
        let mut effective_order = 0usize;
        let (mut avg_prec, mut avg_rec) = (0.0, 0.0);
        for i in 0..self.order() {
            let (n_hyp, n_ref, n_match) = (stats[3 * i], stats[3 * i + 1], stats[3 * i + 2]);
            let prec = if n_hyp > 0.0 { n_match / n_hyp } else { eps };
            let rec = if n_ref > 0.0 { n_match / n_ref } else { eps };
            let denom = factor * prec + rec;
            score += if denom > 0.0 {
                (1.0 + factor) * prec * rec / denom
            } else {
                eps
            };
            if n_hyp > 0.0 && n_ref > 0.0 {
                avg_prec += prec;
                avg_rec += rec;
                effective_order += 1;
            }
        }
        if self.config.eps_smoothing {
            return 100.0 * score / self.order() as f64;
        }
        if effective_order == 0 {
            avg_prec = 0.0;
            avg_rec = 0.0;
        } else {
            avg_prec /= effective_order as f64;
            avg_rec /= effective_order as f64;
        }
        if avg_prec + avg_rec != 0.0 {
            let mut s = (1.0 + factor) * avg_prec * avg_rec;
            s /= factor * avg_prec + avg_rec;
            100.0 * s
        } else {
            0.0
        }
    }

    /// Corpus chrF; `refs[k][i]` is the k-th reference of segment i.
    pub fn corpus_score<H, R>(&self, hyps: &[H], refs: &[Vec<R>]) -> Result<f64>
    where
        H: AsRef<str> + Sync,
        R: AsRef<str> + Sync,
    {
        let stats = corpus_stats(self, hyps, refs)?;
        Ok(self.f_score(&stats.sum()))
    }

    /// Sentence chrF of one hypothesis against its references.
    pub fn sentence_score(&self, hyp: &str, refs: &[&str]) -> f64 {
        self.f_score(&self.segment_stats(hyp, refs))
    }
}

fn maybe_lower(s: &str, lower: bool) -> std::borrow::Cow<'_, str> {
    if lower {
        std::borrow::Cow::Owned(py_lower(s))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Per-segment character → unigram id map with an array fast path for ASCII.
struct CharIds {
    ascii: [u32; 128],
    other: FxHashMap<char, u32>,
}

impl CharIds {
    fn new() -> Self {
        Self {
            ascii: [ABSENT; 128],
            other: FxHashMap::default(),
        }
    }

    #[inline]
    fn get_or_insert(&mut self, c: char, interner: &mut Interner) -> u32 {
        if c.is_ascii() {
            let slot = &mut self.ascii[c as usize];
            if *slot == ABSENT {
                *slot = interner.fresh();
            }
            *slot
        } else {
            *self.other.entry(c).or_insert_with(|| interner.fresh())
        }
    }

    #[inline]
    fn get(&self, c: char) -> u32 {
        if c.is_ascii() {
            self.ascii[c as usize]
        } else {
            self.other.get(&c).copied().unwrap_or(ABSENT)
        }
    }
}

/// Per-segment n-gram ids of one side: `grams[k]` lists the ids of order-k n-grams
/// (character orders first, then word orders).
fn extract(
    text: &str,
    cfg: &ChrfConfig,
    interner: &mut Interner,
    chars: &mut CharIds,
    words: &mut FxHashMap<String, u32>,
    insert: bool,
) -> Vec<Vec<u32>> {
    let mut grams = vec![Vec::new(); cfg.char_order + cfg.word_order];
    let char_iter = text.chars().filter(|c| cfg.whitespace || !is_py_space(*c));
    let uni: Vec<u32> = if insert {
        char_iter
            .map(|c| chars.get_or_insert(c, interner))
            .collect()
    } else {
        char_iter.map(|c| chars.get(c)).collect()
    };
    let (cg, wg) = grams.split_at_mut(cfg.char_order);
    if insert {
        intern_all(interner, &uni, cfg.char_order, cg);
    } else {
        lookup_all(interner, &uni, cfg.char_order, cg);
    }
    if cfg.word_order > 0 {
        let toks = remove_punctuation(text);
        let wuni: Vec<u32> = if insert {
            toks.iter()
                .map(|t| match words.get(*t) {
                    Some(id) => *id,
                    None => {
                        let id = interner.fresh();
                        words.insert((*t).to_owned(), id);
                        id
                    }
                })
                .collect()
        } else {
            toks.iter()
                .map(|t| words.get(*t).copied().unwrap_or(ABSENT))
                .collect()
        };
        if insert {
            intern_all(interner, &wuni, cfg.word_order, wg);
        } else {
            lookup_all(interner, &wuni, cfg.word_order, wg);
        }
    }
    grams
}

impl Metric for Chrf {
    fn name(&self) -> String {
        format!(
            "chrF{}{}",
            self.config.beta,
            "+".repeat(self.config.word_order)
        )
    }

    fn num_stats(&self) -> usize {
        3 * self.order()
    }

    fn segment_stats_into(&self, hyp: &str, refs: &[&str], out: &mut [f64]) {
        let cfg = &self.config;
        let lower = |s| maybe_lower(s, cfg.lowercase);
        let hyp = lower(hyp);
        SCRATCH.with(|cell| {
            let mut sc = cell.borrow_mut();
            let sc = &mut *sc;
            sc.interner.reset(0);
            sc.interner
                .reserve(refs.iter().map(|r| r.len() * cfg.char_order).sum());
            let mut chars = CharIds::new();
            let mut words = FxHashMap::default();
            let ref_grams: Vec<Vec<Vec<u32>>> = refs
                .iter()
                .map(|r| {
                    extract(
                        &lower(r),
                        cfg,
                        &mut sc.interner,
                        &mut chars,
                        &mut words,
                        true,
                    )
                })
                .collect();
            let hyp_grams = extract(&hyp, cfg, &mut sc.interner, &mut chars, &mut words, false);
            let n_ids = sc.interner.len();
            sc.ref_count.clear();
            sc.ref_count.resize(n_ids, 0);
            sc.used.clear();
            sc.used.resize(n_ids, 0);
            let mut best_f = -1.0;
            let mut stats = vec![0.0; out.len()];
            for grams in &ref_grams {
                for (k, (rg, hg)) in grams.iter().zip(&hyp_grams).enumerate() {
                    for id in rg {
                        sc.ref_count[*id as usize] += 1;
                    }
                    let m = clipped_matches(hg, &sc.ref_count, &mut sc.used);
                    for id in rg {
                        sc.ref_count[*id as usize] = 0;
                    }
                    stats[3 * k] = if rg.is_empty() { 0.0 } else { hg.len() as f64 };
                    stats[3 * k + 1] = rg.len() as f64;
                    stats[3 * k + 2] = m as f64;
                }
                let f = self.f_score(&stats);
                if f > best_f {
                    best_f = f;
                    out.copy_from_slice(&stats);
                }
            }
        });
    }

    fn score_from_stats(&self, stats: &[f64]) -> f64 {
        self.f_score(stats)
    }

    fn signature(&self, nrefs: usize) -> Signature {
        Signature::new(nrefs)
            .with_field(
                "case",
                "c",
                if self.config.lowercase { "lc" } else { "mixed" },
            )
            .with_field("eff", "e", yes_no(!self.config.eps_smoothing))
            .with_field("nc", "nc", self.config.char_order.to_string())
            .with_field("nw", "nw", self.config.word_order.to_string())
            .with_field("space", "s", yes_no(self.config.whitespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_split() {
        assert_eq!(
            remove_punctuation("(hi) a, .b c"),
            vec!["(hi", ")", "a", ",", ".", "b", "c"]
        );
    }

    #[test]
    fn identical_is_100() {
        let c = Chrf::default();
        assert!((c.sentence_score("Das ist gut.", &["Das ist gut."]) - 100.0).abs() < 1e-12);
        assert_eq!(c.name(), "chrF2");
        assert_eq!(
            Chrf::new(ChrfConfig::chrf_plus_plus())
                .expect("valid")
                .name(),
            "chrF2++"
        );
    }
}
