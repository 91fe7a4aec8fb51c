//! The paper's claims, each with the verdict this run's numbers give (holds / does not hold /
//! not measured), for one task's section of `results.json`.
//!
//! "Beats" means higher BLEU and higher chrF2 than the baseline with paired-bootstrap
//! p < 0.05 for both (1,000 resamples, the baseline being the 3-shot PLM for the "beats the PLM"
//! claims); differences without significance are reported as "not significant".

use std::fmt::Write as _;

use serde_json::Value;

/// Significance level of the verdicts.
const ALPHA: f64 = 0.05;

fn method<'a>(task: &'a Value, name: &str) -> Option<&'a Value> {
    task["methods"]
        .as_array()?
        .iter()
        .find(|m| m["method"] == name)
}

fn score(m: &Value, metric: &str) -> Option<(f64, Option<f64>)> {
    let s = m["raw"].as_array()?.iter().find(|s| s["name"] == metric)?;
    Some((s["score"].as_f64()?, s["p_value"].as_f64()))
}

/// (BLEU, p, chrF, p) of a method; p against the 3-shot PLM.
fn scores(task: &Value, name: &str) -> Option<(f64, Option<f64>, f64, Option<f64>)> {
    let m = method(task, name)?;
    let (b, pb) = score(m, "BLEU")?;
    let (c, pc) = score(m, "chrF2")?;
    Some((b, pb, c, pc))
}

/// Verdict of "`name` beats the 3-shot PLM".
fn beats_plm(task: &Value, name: &str) -> (String, &'static str) {
    let (Some((b, pb, c, pc)), Some((b0, _, c0, _))) =
        (scores(task, name), scores(task, "plm-3-shot"))
    else {
        return ("not decoded in this run".into(), "not measured");
    };
    let p = |p: Option<f64>| p.map_or("–".into(), |p| format!("{p:.3}"));
    let evidence = format!(
        "BLEU {b:.2} vs {b0:.2} (p {}), chrF2 {c:.2} vs {c0:.2} (p {})",
        p(pb),
        p(pc)
    );
    let significant = pb.is_some_and(|p| p < ALPHA) && pc.is_some_and(|p| p < ALPHA);
    let verdict = if b > b0 && c > c0 && significant {
        "holds"
    } else if b > b0 && c > c0 {
        "not significant"
    } else {
        "does not hold"
    };
    (evidence, verdict)
}

/// Verdict of "`a` scores higher than `b`" on BLEU (no significance test between the two).
fn higher(task: &Value, a: &str, b: &str) -> (String, &'static str) {
    match (scores(task, a), scores(task, b)) {
        (Some((ba, _, ca, _)), Some((bb, _, cb, _))) => (
            format!("BLEU {ba:.2} vs {bb:.2}, chrF2 {ca:.2} vs {cb:.2}"),
            if ba > bb && ca > cb {
                "holds"
            } else if ba > bb || ca > cb {
                "mixed"
            } else {
                "does not hold"
            },
        ),
        _ => ("not decoded in this run".into(), "not measured"),
    }
}

/// The claims table of one task (markdown).
pub fn claims_table(task: &Value) -> String {
    let mut rows: Vec<(String, String, &'static str)> = Vec::new();
    for (name, what) in [
        (
            "pema-gu",
            "PEMA (paper-exact, GU, λmax 0.9, leak-free) beats the PLM",
        ),
        (
            "pema-gu-tuned",
            "PEMA (paper-exact, GU, λmax chosen on dev) beats the PLM",
        ),
        (
            "residual-gu-tuned",
            "pema extension (residual h_pd, GU, λmax chosen on dev) beats the PLM",
        ),
        (
            "residual-constant-tuned",
            "pema extension (residual h_pd, constant λ chosen on dev) beats the PLM",
        ),
        (
            "knn-lm",
            "kNN-LM on the same memory beats the PLM (baseline)",
        ),
        ("lora", "LoRA beats the PLM (baseline)"),
    ] {
        let (e, v) = beats_plm(task, name);
        rows.push((what.into(), e, v));
    }
    for (a, b, what) in [
        (
            "pema-gu",
            "pema-constant",
            "GU beats constant λ (paper-exact, λmax 0.9)",
        ),
        (
            "residual-gu-tuned",
            "residual-constant-tuned",
            "GU beats constant λ (extension, dev λmax)",
        ),
        (
            "pema-gu",
            "pema-kappa-0",
            "the reconstruction loss helps (κ 0.2 vs 0)",
        ),
        ("residual-gu-tuned", "lora", "PEMA (extension) beats LoRA"),
        (
            "residual-gu-tuned",
            "knn-lm",
            "PEMA (extension) beats kNN-LM",
        ),
    ] {
        let (e, v) = higher(task, a, b);
        rows.push((what.into(), e, v));
    }
    // λmax sweep: GU above constant at every λmax measured.
    if let Some(sw) = task["lambda_sweep"].as_array().filter(|a| !a.is_empty()) {
        let mut wins = 0;
        let mut total = 0;
        for p in sw.iter().filter(|p| p["schedule"] == "gu") {
            let c = sw
                .iter()
                .find(|q| q["schedule"] == "constant" && q["lambda_max"] == p["lambda_max"]);
            if let (Some(g), Some(c)) = (p["bleu"].as_f64(), c.and_then(|c| c["bleu"].as_f64())) {
                total += 1;
                wins += usize::from(g > c);
            }
        }
        rows.push((
            "GU beats constant λ for every λmax of the sweep".into(),
            format!("GU higher at {wins} of {total} λmax values"),
            if total == 0 {
                "not measured"
            } else if wins == total {
                "holds"
            } else {
                "does not hold"
            },
        ));
    }
    // Training memory: PEMA's peak RSS against LoRA's.
    let rss = |name: &str| method(task, name).and_then(|m| m["train"]["peak_rss_bytes"].as_f64());
    let secs = |name: &str| method(task, name).and_then(|m| m["train"]["seconds"].as_f64());
    match (rss("pema-gu"), rss("lora")) {
        (Some(p), Some(l)) => rows.push((
            "PEMA trains in a fraction of LoRA's memory (paper: about a tenth)".into(),
            format!(
                "peak RSS {:.0} MiB vs {:.0} MiB ({:.2}×)",
                p / 1048576.0,
                l / 1048576.0,
                p / l
            ),
            if p / l <= 0.15 {
                "holds"
            } else if p < l {
                "less memory, not a tenth"
            } else {
                "does not hold"
            },
        )),
        _ => rows.push((
            "PEMA trains in a fraction of LoRA's memory".into(),
            "LoRA not trained in this run".into(),
            "not measured",
        )),
    }
    if let (Some(p), Some(l)) = (secs("pema-gu"), secs("lora")) {
        rows.push((
            "PEMA trains faster than LoRA".into(),
            format!("{p:.0} s vs {l:.0} s (budgets differ: see the rows)"),
            if p < l { "holds" } else { "does not hold" },
        ));
    }
    let mut out = String::from("| claim | evidence (this run) | verdict |\n|---|---|---|\n");
    for (c, e, v) in rows {
        let _ = writeln!(out, "| {c} | {e} | **{v}** |");
    }
    out
}
