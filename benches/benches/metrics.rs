//! criterion bench: corpus BLEU and chrF over 100k synthetic segment pairs, with sacreBLEU
//! timed on the same data in the same run (`benches/sacrebleu_baseline.py`, needs
//! `pip install 'sacrebleu==2.*'`; skipped with a note when unavailable).
//!
//! Run: `cargo bench -p pema-benches --bench metrics`. Besides criterion's report it prints
//! the pema and sacreBLEU wall times and their ratio, and writes them to
//! `$CARGO_TARGET_DIR/criterion/metrics_vs_sacrebleu.json`. `PEMA_BENCH_SEGMENTS` overrides
//! the corpus size.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_main};
use pema_metrics::{Bleu, Chrf};

const WORDS: &[&str] = &[
    "der",
    "die",
    "das",
    "und",
    "ist",
    "nicht",
    "ein",
    "eine",
    "zu",
    "den",
    "mit",
    "sich",
    "von",
    "auf",
    "für",
    "im",
    "dem",
    "des",
    "es",
    "auch",
    "als",
    "an",
    "wir",
    "sie",
    "er",
    "wie",
    "aber",
    "noch",
    "nach",
    "bei",
    "Regierung",
    "Wirtschaft",
    "Unternehmen",
    "Gesellschaft",
    "Entwicklung",
    "Universität",
    "Straße",
    "größer",
    "Präsident",
    "Millionen",
    "Prozent",
    "Menschen",
    "Kinder",
    "Polizei",
    "Gericht",
    "Energie",
    "Klima",
    "Jahr",
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "was",
    "on",
    "with",
    "government",
    "company",
    "market",
    "energy",
    "climate",
    "police",
    "court",
    "people",
    "children",
    "year",
    "percent",
    "million",
    "president",
    "minister",
    "research",
    "results",
    "negotiations",
    "development",
    "society",
    "price",
    "costs",
    "\"",
    "(",
    ")",
    "-",
    "&amp;",
    "3.5",
    "1,000",
    "2024",
    "50%",
    "$5",
    "€10",
    "„so“",
    "it's",
    "U.S.",
];

/// SplitMix64: a tiny deterministic generator so the data is identical on every run.
struct Gen(pema_common::SplitMix64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Zipf-like word choice: small indices are much more frequent.
    fn word(&mut self) -> &'static str {
        let a = self.below(WORDS.len());
        let b = self.below(WORDS.len());
        WORDS[a.min(b)]
    }
}

/// `n` (hypothesis, reference) pairs of 5–45 words; hypotheses are edited references.
fn corpus(n: usize) -> (Vec<String>, Vec<String>) {
    let mut g = Gen(pema_common::SplitMix64(20_241_127));
    let mut hyps = Vec::with_capacity(n);
    let mut refs = Vec::with_capacity(n);
    for _ in 0..n {
        let len = 5 + g.below(41);
        let mut r: Vec<&str> = (0..len).map(|_| g.word()).collect();
        r.push(if g.below(4) == 0 { "!" } else { "." });
        let mut h = r.clone();
        for _ in 0..g.below(6) {
            let i = g.below(h.len());
            match g.below(3) {
                0 => {
                    h.remove(i);
                }
                1 => h[i] = g.word(),
                _ => {
                    let j = g.below(h.len());
                    h.swap(i, j);
                }
            }
            if h.is_empty() {
                break;
            }
        }
        refs.push(r.join(" ").replace(" .", "."));
        hyps.push(h.join(" ").replace(" .", "."));
    }
    (hyps, refs)
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(path, s).expect("write bench corpus");
}

fn median_secs(mut f: impl FnMut(), runs: usize) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn bench_metrics(c: &mut Criterion) {
    let n: usize = std::env::var("PEMA_BENCH_SEGMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let (hyps, refs) = corpus(n);
    let refs = vec![refs];
    let bleu = Bleu::default();
    let chrf = Chrf::default();

    let mut group = c.benchmark_group("metrics_100k");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    group.bench_function("corpus_bleu", |b| {
        b.iter(|| black_box(bleu.corpus_score(&hyps, &refs).expect("bleu")))
    });
    group.bench_function("corpus_chrf", |b| {
        b.iter(|| black_box(chrf.corpus_score(&hyps, &refs).expect("chrf")))
    });
    group.finish();

    // Same-run comparison with sacreBLEU on identical files.
    let bleu_score = bleu.corpus_score(&hyps, &refs).expect("bleu").score;
    let chrf_score = chrf.corpus_score(&hyps, &refs).expect("chrf");
    let pema_bleu_s = median_secs(|| drop(black_box(bleu.corpus_score(&hyps, &refs))), 5);
    let pema_chrf_s = median_secs(|| drop(black_box(chrf.corpus_score(&hyps, &refs))), 5);
    let dir = std::env::temp_dir().join(format!("pema-metrics-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (hp, rp) = (dir.join("hyp.txt"), dir.join("ref.txt"));
    write_lines(&hp, &hyps);
    write_lines(&rp, &refs[0]);
    let script = workspace_root()
        .join("benches")
        .join("sacrebleu_baseline.py");
    let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(&script)
        .arg(&hp)
        .arg(&rp)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "pema-metrics ({threads} threads, {n} segments): BLEU {pema_bleu_s:.3} s, chrF {pema_chrf_s:.3} s, BLEU+chrF {:.3} s",
        pema_bleu_s + pema_chrf_s
    );
    let mut record = format!(
        "{{\"segments\":{n},\"threads\":{threads},\"pema_bleu_s\":{pema_bleu_s},\"pema_chrf_s\":{pema_chrf_s},\"pema_bleu\":{bleu_score},\"pema_chrf\":{chrf_score}"
    );
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            let f = |k: &str| json_number(&text, k).unwrap_or(f64::NAN);
            let (sb, sc) = (f("bleu_s"), f("chrf_s"));
            let ratio = (sb + sc) / (pema_bleu_s + pema_chrf_s);
            println!(
                "sacreBLEU: BLEU {sb:.3} s, chrF {sc:.3} s, BLEU+chrF {:.3} s  =>  pema-metrics is {ratio:.1}x faster (BLEU {:.1}x, chrF {:.1}x)",
                sb + sc,
                sb / pema_bleu_s,
                sc / pema_chrf_s
            );
            let same = (f("bleu") - bleu_score).abs() <= 1e-9 * bleu_score.abs()
                && (f("chrf") - chrf_score).abs() <= 1e-9 * chrf_score.abs();
            println!("scores identical to sacreBLEU (1e-9 relative): {same}");
            record.push_str(&format!(
                ",\"sacrebleu\":{text},\"ratio_bleu_plus_chrf\":{ratio},\"scores_match\":{same}"
            ));
        }
        Ok(o) => println!(
            "sacreBLEU baseline failed (pip install 'sacrebleu==2.*'): {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => println!("sacreBLEU baseline not run ({e})"),
    }
    record.push('}');
    let target = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| workspace_root().join("target"), PathBuf::from);
    let out_dir = target.join("criterion");
    if std::fs::create_dir_all(&out_dir).is_ok() {
        let _ = std::fs::write(out_dir.join("metrics_vs_sacrebleu.json"), record);
    }
}

/// The number after `"key":` in a flat one-line JSON object.
fn json_number(text: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let start = text.find(&pat)? + pat.len();
    let rest = text[start..].trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// criterion's generated entry points (private, so they need no docs).
mod harness {
    criterion::criterion_group!(benches, super::bench_metrics);
}
criterion_main!(harness::benches);
