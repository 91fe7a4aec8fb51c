//! `report.md`: the tables, the paper's claims with their verdicts, and the plots.

use std::fmt::Write as _;

use serde_json::Value;

fn metric<'a>(scores: &'a Value, name: &str) -> Option<&'a Value> {
    scores
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
}

fn fmt_score(scores: &Value, name: &str) -> String {
    metric(scores, name)
        .and_then(|s| s["score"].as_f64())
        .map_or("–".into(), |v| format!("{v:.2}"))
}

pub(crate) fn report(summary: &Value) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# pema reproduce-paper ({} profile, device {})\n",
        summary["profile"].as_str().unwrap_or("?"),
        summary["device"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        r,
        "Model {}. Adapter r = {}, κ = 0.2, keys standardised per dimension (pema; the paper-exact raw \
         keys are an ablation row), phase batches {}/{}, ≤ {} epochs, step caps {}/{} (phase 1/2), \
         validation every {} steps on {} dev entries (early stopping: the paper's rule, best weights \
         kept); phase 1 is trained once per memory and shared by the adapters that read the \
         same keys (their \"train s\" counts phase 2 only); PEMA's head products (training, λ \
         tuning, the PEMA rows' P_PEMA) in {} (f32 accumulation; the PLM and the baselines in f32). \
         λ chosen on dev (mixture NLL of the dev memory's gold tokens, before any test decoding): \
         the constant rows score each λ with every dev token at λ, the GU rows score each λmax \
         with every dev token at its own λ_k (step k, leak-free horizon L of its sentence). \
         Memories: teacher-forced with the task's 3-shot prompt. Decoding: greedy, f32 \
         weights (as the memories), stop at the newline. Wall time of this invocation {:.0} s \
         ({} stage(s) side by side); the stages' own times add up to {:.0} s (cached stages \
         included).\n",
        summary["model"].as_str().unwrap_or("?"),
        summary["adapter"]["rank"],
        summary["adapter"]["batch1"],
        summary["adapter"]["batch2"],
        summary["adapter"]["epochs"],
        summary["adapter"]["max_steps1"],
        summary["adapter"]["max_steps2"],
        summary["adapter"]["validate_every"],
        summary["adapter"]["dev_max"],
        summary["pema_head_precision"].as_str().unwrap_or("f32"),
        summary["wall_seconds_this_invocation"]
            .as_f64()
            .unwrap_or(0.0),
        summary["lanes"].as_u64().unwrap_or(1),
        summary["stage_seconds_total"].as_f64().unwrap_or(0.0),
    );
    for t in summary["tasks"].as_array().into_iter().flatten() {
        let d = &t["data"];
        let _ = writeln!(
            r,
            "## {}\n\n{} train / {} dev / {} test pairs; length ratio {:.3}.\n",
            t["title"].as_str().unwrap_or("?"),
            d["train"],
            d["dev"],
            d["test"],
            t["length_ratio"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(
            r,
            "| method | BLEU | chrF2 | chrF2++ | TER | BLEU post-proc. | p BLEU | p chrF2 | train s | peak RSS MiB | trainable params | decode tok/s |"
        );
        let _ = writeln!(r, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for m in t["methods"].as_array().into_iter().flatten() {
            let raw = &m["raw"];
            let pv = |name: &str| {
                metric(raw, name)
                    .and_then(|s| s["p_value"].as_f64())
                    .map_or("–".into(), |p| format!("{p:.4}"))
            };
            let (p, pc) = (pv("BLEU"), pv("chrF2"));
            let train = &m["train"];
            let _ = writeln!(
                r,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                m["label"].as_str().unwrap_or("?"),
                fmt_score(raw, "BLEU"),
                fmt_score(raw, "chrF2"),
                fmt_score(raw, "chrF2++"),
                fmt_score(raw, "TER"),
                fmt_score(&m["post"], "BLEU"),
                p,
                pc,
                train["seconds"]
                    .as_f64()
                    .map_or("–".into(), |v| format!("{v:.0}")),
                train["peak_rss_bytes"]
                    .as_f64()
                    .map_or("–".into(), |v| format!("{:.0}", v / 1048576.0)),
                train["trainable_params"]
                    .as_u64()
                    .map_or("–".into(), |v| v.to_string()),
                m["decode"]["tokens_per_s"]
                    .as_f64()
                    .map_or("–".into(), |v| format!("{v:.1}")),
            );
        }
        let _ = writeln!(r);
        lambda_choices(&mut r, t);
        let _ = writeln!(
            r,
            "The paper's claims on this task (p < 0.05 on BLEU and chrF2 for \"beats\"):\n\n{}",
            crate::claims::claims_table(t)
        );
        if let Some(sw) = t["lambda_sweep"].as_array().filter(|a| !a.is_empty()) {
            let _ = writeln!(r, "λmax sweep ({} test sentences), BLEU:\n", d["sweep"]);
            let _ = writeln!(r, "| λmax | GU | constant |\n|---|---|---|");
            let mut lambdas: Vec<f64> =
                sw.iter().filter_map(|v| v["lambda_max"].as_f64()).collect();
            lambdas.dedup();
            for l in lambdas {
                let get = |s: &str| {
                    sw.iter()
                        .find(|v| v["schedule"] == s && v["lambda_max"].as_f64() == Some(l))
                        .and_then(|v| v["bleu"].as_f64())
                        .map_or("–".into(), |b| format!("{b:.2}"))
                };
                let _ = writeln!(r, "| {l} | {} | {} |", get("gu"), get("constant"));
            }
            if let Some(p) = sw.iter().find(|v| v["schedule"] == "plm") {
                let _ = writeln!(
                    r,
                    "\nPLM alone (3-shot) on the same sentences: {:.2}.",
                    p["bleu"].as_f64().unwrap_or(0.0)
                );
            }
            let _ = writeln!(r);
        }
        for p in t["plots"].as_array().into_iter().flatten() {
            if let Some(p) = p.as_str() {
                let _ = writeln!(r, "![]({p})");
            }
        }
        let _ = writeln!(r);
    }
    let _ = writeln!(
        r,
        "Scores are sacreBLEU-compatible (signatures in results.json); raw = the decoded line as is, \
         post-proc. = pema-metrics `postprocess` (echoed prompt labels cut, repeated words collapsed). \
         p: paired bootstrap (1000 resamples) of BLEU against the 3-shot PLM. The oracle row reads \
         the reference length at test time (the official code's behaviour) and is not a fair result. \
         Peak RSS is the whole training process (PEMA: head + memory; LoRA: the whole model)."
    );
    r
}

/// The λ each tuned row decodes with, as chosen on the dev memory (no test decoding): the best
/// constant λ and the best λmax under Gradual Unrolling, with their dev NLL.
fn lambda_choices(r: &mut String, task: &Value) {
    let tunings: Vec<(&str, &Value)> = task["methods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let who = match m["method"].as_str()? {
                "pema-gu-tuned" => "PEMA (paper)",
                "residual-gu-tuned" => "pema extension (residual h_pd)",
                _ => return None,
            };
            Some((who, &m["train"]["lambda_tuning"])).filter(|(_, v)| v.is_object())
        })
        .collect();
    let Some((_, first)) = tunings.first() else {
        return;
    };
    let plm = first["grid"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["lambda"].as_f64() == Some(0.0))
        .and_then(|p| p["nll"].as_f64());
    let _ = writeln!(
        r,
        "λ chosen on the dev memory ({} dev tokens; NLL in nats/token, the PLM alone {}):\n\n\
         | adapter | constant λ (NLL) | GU λmax (NLL under GU) | top-1 P_PEMA / P_LM |\n|---|---|---|---|",
        first["dev_entries"],
        plm.map_or("–".into(), |v| format!("{v:.4}")),
    );
    let point = |p: &Value| match (p["lambda"].as_f64(), p["nll"].as_f64()) {
        (Some(l), Some(n)) => format!("{l} ({n:.4})"),
        _ => "–".into(),
    };
    for (who, t) in tunings {
        let _ = writeln!(
            r,
            "| {who} | {} | {} | {:.1}% / {:.1}% |",
            point(&t["best"]),
            point(&t["gu"]["best"]),
            100.0 * t["pema_top1"].as_f64().unwrap_or(f64::NAN),
            100.0 * t["plm_top1"].as_f64().unwrap_or(f64::NAN),
        );
    }
    let _ = writeln!(r);
}
