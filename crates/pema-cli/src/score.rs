//! `pema score`: sacreBLEU-compatible BLEU, chrF, chrF++ and TER with signatures, bootstrap
//! confidence intervals and paired significance tests.
//!
//! ```text
//! pema score --hyp out.txt --ref ref.txt [--ref ref2.txt] [--metrics bleu,chrf,chrf++,ter] [--json]
//! pema score --hyp base.txt --hyp new.txt --ref ref.txt --paired-bs
//! ```
//!
//! With `--json`, every metric (and system) is printed as one JSON object per line:
//! `{"name": "BLEU"|"chrF2"|"chrF2++"|"TER", "score": …, "signature": "…", "stats": […], …}`.

use std::path::PathBuf;

use anyhow::Context;
use pema_metrics::report::{PairedTest, ScoreOptions, parse_metric_list, score_files};
use pema_metrics::{BleuConfig, ChrfConfig, Smoothing, TerConfig, Tokenizer};

/// Arguments of `pema score`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScoreArgs {
    /// Hypothesis file, one segment per line. Give it twice (or more) with --paired-bs /
    /// --paired-ar; the first file is the baseline.
    #[arg(long = "hyp", required = true)]
    pub hyp: Vec<PathBuf>,
    /// Reference file; repeat for multiple references.
    #[arg(long = "ref", required = true)]
    pub refs: Vec<PathBuf>,
    /// Comma-separated metrics: bleu, chrf, chrf++, ter.
    #[arg(long, default_value = "bleu,chrf,chrf++,ter")]
    pub metrics: String,
    /// BLEU tokeniser: 13a, none, intl or char.
    #[arg(long, default_value = "13a")]
    pub tokenize: String,
    /// Lowercase before computing BLEU and chrF (TER has --ter-case-sensitive).
    #[arg(long, short = 'l')]
    pub lowercase: bool,
    /// BLEU smoothing: exp, floor, add-k or none.
    #[arg(long, default_value = "exp")]
    pub smooth_method: String,
    /// Value for floor (default 0.1) or add-k (default 1) smoothing.
    #[arg(long, value_parser = crate::values::non_negative)]
    pub smooth_value: Option<f64>,
    /// Maximum BLEU n-gram order.
    #[arg(long, default_value_t = 4, value_parser = crate::values::count)]
    pub max_ngram_order: usize,
    /// BLEU effective order (for sentence-level style scoring).
    #[arg(long)]
    pub effective_order: bool,
    /// chrF character n-gram order.
    #[arg(long, default_value_t = 6, value_parser = crate::values::count)]
    pub chrf_char_order: usize,
    /// chrF β.
    #[arg(long, default_value_t = 2)]
    pub chrf_beta: u32,
    /// Include whitespace in chrF character n-grams.
    #[arg(long)]
    pub chrf_whitespace: bool,
    /// chrF++.py-style epsilon smoothing.
    #[arg(long)]
    pub chrf_eps_smoothing: bool,
    /// Case-sensitive TER.
    #[arg(long)]
    pub ter_case_sensitive: bool,
    /// tercom normalisation for TER.
    #[arg(long)]
    pub ter_normalized: bool,
    /// Remove punctuation for TER.
    #[arg(long)]
    pub ter_no_punct: bool,
    /// CJK support for TER.
    #[arg(long)]
    pub ter_asian_support: bool,
    /// One JSON object per metric (and system) per line.
    #[arg(long)]
    pub json: bool,
    /// Short signatures in text output.
    #[arg(long)]
    pub short: bool,
    /// Decimals in text output (sacreBLEU's default is 1).
    #[arg(long, default_value_t = 1)]
    pub width: usize,
    /// Bootstrap 95% confidence interval for a single system.
    #[arg(long)]
    pub confidence: bool,
    /// Resamples for --confidence.
    #[arg(long, default_value_t = 1000, value_parser = crate::values::count)]
    pub confidence_n: usize,
    /// Paired bootstrap resampling test against the first --hyp.
    #[arg(long, conflicts_with = "paired_ar")]
    pub paired_bs: bool,
    /// Paired approximate randomisation test against the first --hyp.
    #[arg(long)]
    pub paired_ar: bool,
    /// Resamples for --paired-bs.
    #[arg(long, default_value_t = 1000, value_parser = crate::values::count)]
    pub paired_bs_n: usize,
    /// Trials for --paired-ar.
    #[arg(long, default_value_t = 10000, value_parser = crate::values::count)]
    pub paired_ar_n: usize,
    /// RNG seed for resampling (results are reproducible; streams differ from sacreBLEU's
    /// NumPy RNG, so p-values agree with sacreBLEU only statistically).
    #[arg(long, default_value_t = 12345)]
    pub seed: u64,
}

impl ScoreArgs {
    /// The library options these arguments describe.
    pub fn options(&self) -> anyhow::Result<ScoreOptions> {
        let tokenizer: Tokenizer = self.tokenize.parse()?;
        let paired = match (self.paired_bs, self.paired_ar) {
            (true, _) => Some(PairedTest::Bootstrap(self.paired_bs_n)),
            (false, true) => Some(PairedTest::ApproximateRandomization(self.paired_ar_n)),
            _ => None,
        };
        Ok(ScoreOptions {
            metrics: parse_metric_list(&self.metrics)?,
            bleu: BleuConfig {
                lowercase: self.lowercase,
                tokenizer,
                smoothing: Smoothing::from_name(&self.smooth_method, self.smooth_value)?,
                max_ngram_order: self.max_ngram_order,
                effective_order: self.effective_order,
            },
            chrf: ChrfConfig {
                char_order: self.chrf_char_order,
                word_order: 0,
                beta: self.chrf_beta,
                lowercase: self.lowercase,
                whitespace: self.chrf_whitespace,
                eps_smoothing: self.chrf_eps_smoothing,
            },
            ter: TerConfig {
                normalized: self.ter_normalized,
                no_punct: self.ter_no_punct,
                asian_support: self.ter_asian_support,
                case_sensitive: self.ter_case_sensitive,
            },
            short_signature: self.short,
            width: self.width,
            confidence: self.confidence.then_some(self.confidence_n),
            paired,
            seed: self.seed,
        })
    }
}

/// Runs `pema score`, printing text (or JSON lines) to stdout.
pub fn run(args: &ScoreArgs) -> anyhow::Result<()> {
    let opts = args.options()?;
    let reports = score_files(&args.hyp, &args.refs, &opts).context("pema score")?;
    let multi = args.hyp.len() > 1;
    for r in &reports {
        if args.json {
            println!("{}", r.to_json_line());
        } else {
            println!(
                "{}",
                r.to_text_line(opts.width, opts.short_signature, multi)
            );
        }
    }
    Ok(())
}
