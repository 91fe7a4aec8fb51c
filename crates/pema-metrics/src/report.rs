//! The scoring pipeline behind `pema score`: read files, compute the requested metrics,
//! optional bootstrap confidence or paired significance, and render text or JSON lines.

use std::path::PathBuf;
use std::str::FromStr;

use serde_json::{Map, Value, json};

use crate::bleu::{Bleu, BleuConfig};
use crate::chrf::{Chrf, ChrfConfig};
use crate::error::{MetricsError, Result};
use crate::io::read_eval_files;
use crate::metric::{Metric, SegmentStats, corpus_stats};
use crate::significance::{
    ConfidenceInterval, bootstrap_ci, paired_approximate_randomization, paired_bootstrap,
};
use crate::ter::{Ter, TerConfig};

/// A metric selectable on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// `bleu`
    Bleu,
    /// `chrf` (word order 0)
    Chrf,
    /// `chrf++` (word order 2)
    ChrfPlusPlus,
    /// `ter`
    Ter,
}

impl FromStr for MetricKind {
    type Err = MetricsError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bleu" => Ok(MetricKind::Bleu),
            "chrf" => Ok(MetricKind::Chrf),
            "chrf++" | "chrfpp" => Ok(MetricKind::ChrfPlusPlus),
            "ter" => Ok(MetricKind::Ter),
            other => Err(MetricsError::InvalidConfig(format!(
                "unknown metric {other:?} (expected bleu, chrf, chrf++ or ter)"
            ))),
        }
    }
}

/// Parses a comma-separated metric list such as `bleu,chrf,chrf++,ter`.
pub fn parse_metric_list(s: &str) -> Result<Vec<MetricKind>> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(MetricKind::from_str)
        .collect()
}

/// Significance test between the first (baseline) and the other hypothesis files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairedTest {
    /// Paired bootstrap resampling with this many resamples.
    Bootstrap(usize),
    /// Approximate randomisation with this many trials.
    ApproximateRandomization(usize),
}

/// Everything `pema score` can be asked for.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// Metrics, in output order.
    pub metrics: Vec<MetricKind>,
    /// BLEU options.
    pub bleu: BleuConfig,
    /// chrF options (`word_order` is overridden: 0 for chrF, 2 for chrF++).
    pub chrf: ChrfConfig,
    /// TER options.
    pub ter: TerConfig,
    /// Short signatures in text output (JSON always uses long keys).
    pub short_signature: bool,
    /// Decimals in text output (default 1, as sacreBLEU).
    pub width: usize,
    /// Single-system bootstrap confidence interval with this many resamples.
    pub confidence: Option<usize>,
    /// Paired test (requires at least two hypothesis files).
    pub paired: Option<PairedTest>,
    /// RNG seed for resampling.
    pub seed: u64,
}

impl ScoreOptions {
    /// Checks the options: at least one metric, resample/trial counts ≥ 1, BLEU smoothing
    /// value finite and ≥ 0.
    pub fn validate(&self) -> Result<()> {
        if self.metrics.is_empty() {
            return Err(MetricsError::InvalidConfig("no metric to compute".into()));
        }
        if self.confidence == Some(0) {
            return Err(MetricsError::InvalidConfig(
                "the confidence interval needs at least 1 bootstrap resample (--confidence-n), got 0"
                    .into(),
            ));
        }
        match self.paired {
            Some(PairedTest::Bootstrap(0)) => {
                return Err(MetricsError::InvalidConfig(
                    "paired bootstrap needs at least 1 resample (--paired-bs-n), got 0".into(),
                ));
            }
            Some(PairedTest::ApproximateRandomization(0)) => {
                return Err(MetricsError::InvalidConfig(
                    "approximate randomization needs at least 1 trial (--paired-ar-n), got 0"
                        .into(),
                ));
            }
            _ => {}
        }
        self.bleu.smoothing.validate()?;
        if self.bleu.max_ngram_order == 0 {
            return Err(MetricsError::InvalidConfig(
                "max_ngram_order must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            metrics: vec![
                MetricKind::Bleu,
                MetricKind::Chrf,
                MetricKind::ChrfPlusPlus,
                MetricKind::Ter,
            ],
            bleu: BleuConfig::default(),
            chrf: ChrfConfig::default(),
            ter: TerConfig::default(),
            short_signature: false,
            width: 1,
            confidence: None,
            paired: None,
            seed: crate::significance::DEFAULT_SEED,
        }
    }
}

/// One metric's result for one system.
#[derive(Debug, Clone)]
pub struct MetricReport {
    /// `BLEU`, `chrF2`, `chrF2++` or `TER`.
    pub name: String,
    /// The hypothesis file.
    pub system: String,
    /// `true` for the baseline of a paired test.
    pub is_baseline: bool,
    /// Corpus score.
    pub score: f64,
    /// Long signature.
    pub signature: String,
    /// Short signature.
    pub short_signature: String,
    /// Signature key/value pairs (long keys).
    pub signature_pairs: Vec<(String, String)>,
    /// Summed sufficient statistics.
    pub stats: Vec<f64>,
    /// Metric-specific details (counts, precisions, BP, … for BLEU).
    pub details: Map<String, Value>,
    /// sacreBLEU's verbose tail (BLEU only).
    pub verbose: Option<String>,
    /// Bootstrap mean and CI, when requested.
    pub confidence: Option<ConfidenceInterval>,
    /// p-value against the baseline (paired tests, non-baseline systems).
    pub p_value: Option<f64>,
}

fn num(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

impl MetricReport {
    /// One JSON object on one line: `{"name", "score", "signature", …stats}`.
    pub fn to_json_line(&self) -> String {
        let mut m = Map::new();
        m.insert("system".into(), json!(self.system));
        for (k, v) in &self.signature_pairs {
            m.insert(k.clone(), json!(v));
        }
        m.insert(
            "stats".into(),
            Value::Array(self.stats.iter().map(|v| num(*v)).collect()),
        );
        for (k, v) in &self.details {
            m.insert(k.clone(), v.clone());
        }
        if let Some(v) = &self.verbose {
            m.insert("verbose_score".into(), json!(v));
        }
        if let Some(ci) = self.confidence {
            m.insert("confidence_mean".into(), json!(ci.mean));
            m.insert("confidence_ci95".into(), json!(ci.ci));
        }
        if self.is_baseline {
            m.insert("baseline".into(), json!(true));
        }
        if let Some(p) = self.p_value {
            m.insert("p_value".into(), json!(p));
        }
        // `name`, `score` and `signature` first, the rest in key order.
        let head = format!(
            "{{\"name\":{},\"score\":{},\"signature\":{}",
            json!(self.name),
            json!(self.score),
            json!(self.signature)
        );
        let rest = Value::Object(m).to_string();
        format!("{head},{}", &rest[1..])
    }

    /// sacreBLEU-style text line, e.g. `BLEU|nrefs:1|…|version:2.6.0 = 34.12 65.1/… (BP = …)`.
    pub fn to_text_line(&self, width: usize, short: bool, with_system: bool) -> String {
        let sig = if short {
            &self.short_signature
        } else {
            &self.signature
        };
        let mut line = String::new();
        if with_system {
            line.push_str(&self.system);
            if self.is_baseline {
                line.push_str(" (baseline)");
            }
            line.push_str(": ");
        }
        line.push_str(&format!("{}|{} = {:.*}", self.name, sig, width, self.score));
        if let Some(ci) = self.confidence {
            line.push_str(&format!(
                " (μ = {:.*} ± {:.*})",
                width, ci.mean, width, ci.ci
            ));
        }
        if let Some(v) = &self.verbose {
            line.push(' ');
            line.push_str(v);
        }
        if let Some(p) = self.p_value {
            line.push_str(&format!(" (p = {p:.4}){}", if p < 0.05 { "*" } else { "" }));
        }
        line
    }
}

fn build(kind: MetricKind, opts: &ScoreOptions) -> Result<Box<dyn Metric>> {
    Ok(match kind {
        MetricKind::Bleu => Box::new(Bleu::new(opts.bleu.clone())?),
        MetricKind::Chrf => Box::new(Chrf::new(ChrfConfig {
            word_order: 0,
            ..opts.chrf.clone()
        })?),
        MetricKind::ChrfPlusPlus => Box::new(Chrf::new(ChrfConfig {
            word_order: 2,
            ..opts.chrf.clone()
        })?),
        MetricKind::Ter => Box::new(Ter::new(opts.ter.clone())),
    })
}

fn details(
    kind: MetricKind,
    opts: &ScoreOptions,
    stats: &[f64],
) -> Result<(Map<String, Value>, Option<String>)> {
    let mut m = Map::new();
    match kind {
        MetricKind::Bleu => {
            let d = Bleu::new(opts.bleu.clone())?.score_details(stats);
            m.insert("counts".into(), json!(d.counts));
            m.insert("totals".into(), json!(d.totals));
            m.insert("precisions".into(), json!(d.precisions));
            m.insert("bp".into(), json!(d.bp));
            m.insert("sys_len".into(), json!(d.sys_len));
            m.insert("ref_len".into(), json!(d.ref_len));
            m.insert("ratio".into(), json!(d.ratio()));
            Ok((m, Some(d.verbose())))
        }
        MetricKind::Chrf | MetricKind::ChrfPlusPlus => {
            m.insert("char_order".into(), json!(opts.chrf.char_order));
            m.insert(
                "word_order".into(),
                json!(if kind == MetricKind::Chrf { 0 } else { 2 }),
            );
            m.insert("beta".into(), json!(opts.chrf.beta));
            Ok((m, None))
        }
        MetricKind::Ter => {
            m.insert("num_edits".into(), num(stats[0]));
            m.insert("ref_length".into(), json!(stats[1]));
            Ok((m, None))
        }
    }
}

/// Scores hypothesis files against reference files.
///
/// With one hypothesis file: one report per metric. With several: one report per metric and
/// system, the first file being the baseline; with [`ScoreOptions::paired`], non-baseline
/// reports carry p-values. Reports are ordered by metric, then system.
pub fn score_files(
    hyps: &[PathBuf],
    refs: &[PathBuf],
    opts: &ScoreOptions,
) -> Result<Vec<MetricReport>> {
    opts.validate()?;
    if opts.paired.is_some() && hyps.len() < 2 {
        return Err(MetricsError::InvalidConfig(
            "paired tests need two or more hypothesis files".into(),
        ));
    }
    let files = read_eval_files(hyps, refs)?;
    let nrefs = files.refs.len();
    let mut out = Vec::new();
    for &kind in &opts.metrics {
        let metric = build(kind, opts)?;
        let all_stats: Vec<SegmentStats> = files
            .systems
            .iter()
            .map(|s| corpus_stats(metric.as_ref(), s, &files.refs))
            .collect::<Result<_>>()?;
        let mut sig = metric.signature(nrefs);
        match opts.paired {
            Some(PairedTest::Bootstrap(n)) => {
                sig = sig.with_bootstrap(n).with_seed(opts.seed.to_string())
            }
            Some(PairedTest::ApproximateRandomization(n)) => {
                sig = sig
                    .with_approximate_randomization(n)
                    .with_seed(opts.seed.to_string())
            }
            None => {
                if let Some(n) = opts.confidence {
                    sig = sig.with_bootstrap(n).with_seed(opts.seed.to_string());
                }
            }
        }
        for (i, stats) in all_stats.iter().enumerate() {
            let sum = stats.sum();
            let score = metric.score_from_stats(&sum);
            let (det, verbose) = details(kind, opts, &sum)?;
            let (confidence, p_value) = match opts.paired {
                Some(test) => {
                    let res = match test {
                        PairedTest::Bootstrap(n) => {
                            paired_bootstrap(metric.as_ref(), &all_stats[0], stats, n, opts.seed)?
                        }
                        PairedTest::ApproximateRandomization(n) => {
                            paired_approximate_randomization(
                                metric.as_ref(),
                                &all_stats[0],
                                stats,
                                n,
                                opts.seed,
                                0,
                            )?
                        }
                    };
                    if i == 0 {
                        (res.baseline_ci, None)
                    } else {
                        (res.system_ci, Some(res.p_value))
                    }
                }
                None => (
                    opts.confidence
                        .map(|n| bootstrap_ci(metric.as_ref(), stats, n, opts.seed)),
                    None,
                ),
            };
            out.push(MetricReport {
                name: metric.name(),
                system: hyps[i].display().to_string(),
                is_baseline: opts.paired.is_some() && i == 0,
                score,
                signature: sig.format(false),
                short_signature: sig.format(true),
                signature_pairs: sig
                    .pairs(false)
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
                stats: sum,
                details: det,
                verbose,
                confidence,
                p_value,
            });
        }
    }
    Ok(out)
}
