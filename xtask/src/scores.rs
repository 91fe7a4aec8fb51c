//! Scores of a task's decodings (raw and post-processed, paired bootstrap against the 3-shot
//! PLM), the λmax sweep, the plots, and the task's section of `results.json`.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::plots::{Series, line_chart};
use crate::reproduce::Decodes;
use crate::run::{Run, Task, kappa_name, read_json};

/// Scores every decoded method of `task` and draws its plots; returns its section of
/// `results.json`.
pub(crate) fn score_task(run: &Run, task: &Task, data: Value, decodes: Decodes) -> Result<Value> {
    let Decodes { rows, sweep, ratio } = decodes;
    let prof = run.opts.profile;
    // Scores: raw and post-processed, paired bootstrap against the 3-shot PLM.
    let methods: Vec<String> = rows.iter().map(|r| r.method.clone()).collect();
    let ordered: Vec<String> = std::iter::once("plm-3-shot".to_string())
        .chain(methods.iter().filter(|m| *m != "plm-3-shot").cloned())
        .collect();
    for name in &ordered {
        let raw = fs::read_to_string(task.dir.join(format!("hyp/{name}.txt")))?;
        let post: Vec<String> = raw
            .lines()
            .map(pema_metrics::postprocess::postprocess)
            .collect();
        fs::write(
            task.dir.join(format!("hyp/{name}.post.txt")),
            post.join("\n") + "\n",
        )?;
    }
    let refs = task.p("hyp/plm-3-shot.ref.txt");
    let score = |suffix: &str| -> Result<Vec<Value>> {
        let mut args: Vec<String> = vec!["score".into()];
        for name in &ordered {
            args.push("--hyp".into());
            args.push(task.p(&format!("hyp/{name}{suffix}.txt")));
        }
        args.extend(
            [
                "--ref",
                &refs,
                "--metrics",
                "bleu,chrf,chrf++,ter",
                "--json",
                "--paired-bs",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(run
            .pema_stdout(&argv)?
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    };
    let raw_scores = score("")?;
    let post_scores = score(".post")?;
    let pick = |scores: &[Value], name: &str| -> Vec<Value> {
        let file = task.p(&format!("hyp/{name}"));
        scores
            .iter()
            .filter(|s| {
                s["system"].as_str().is_some_and(|sys| {
                    sys.starts_with(&file) && {
                        let rest = &sys[file.len()..];
                        rest == ".txt" || rest == ".post.txt"
                    }
                })
            })
            .cloned()
            .collect()
    };
    let mut method_rows = Vec::new();
    for r in &rows {
        let decode = read_json(&task.dir.join(format!("hyp/{}.summary.json", r.method)));
        // A row copied from the PLM's output has no p-value: sacreBLEU's paired bootstrap
        // returns its floor, 1/(n+1), for two identical systems.
        let identical = decode
            .as_ref()
            .is_some_and(|d| d["identical_to"].is_string());
        let scores = |all: &[Value]| -> Vec<Value> {
            let mut v = pick(all, &r.method);
            if identical {
                for s in &mut v {
                    s["p_value"] = Value::Null;
                }
            }
            v
        };
        method_rows.push(json!({
            "method": r.method,
            "label": r.label,
            "group": r.group,
            "raw": scores(&raw_scores),
            "post": scores(&post_scores),
            "decode": decode,
            "train": r.train,
        }));
    }

    // Sweep scores and plots.
    let plots = task.dir.join("plots");
    fs::create_dir_all(&plots)?;
    let mut plot_files = Vec::new();
    let bleu_of = |hyp: &str, refs: &str| -> Result<f64> {
        let out = run.pema_stdout(&[
            "score",
            "--hyp",
            hyp,
            "--ref",
            refs,
            "--metrics",
            "bleu",
            "--json",
        ])?;
        out.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v["score"].as_f64())
            .context("no BLEU in `pema score` output")
    };
    let mut sweep_points = Vec::new();
    if !sweep.is_empty() {
        let mut gu = Vec::new();
        let mut constant = Vec::new();
        for (sched, l, name) in &sweep {
            let b = bleu_of(
                &task.p(&format!("hyp/{name}.txt")),
                &task.p(&format!("hyp/{name}.ref.txt")),
            )?;
            sweep_points.push(json!({"schedule": sched, "lambda_max": l, "bleu": b}));
            if *sched == "gu" {
                gu.push((*l, b))
            } else {
                constant.push((*l, b))
            }
        }
        let plm = bleu_of(
            &task.p("hyp/sweep-plm.txt"),
            &task.p("hyp/sweep-plm.ref.txt"),
        )?;
        sweep_points.push(json!({"schedule": "plm", "bleu": plm}));
        let xs: Vec<f64> = prof.lambda_sweep.to_vec();
        let path = plots.join("bleu_vs_lambda_max.png");
        line_chart(
            &path,
            &format!(
                "{}: BLEU vs λmax ({} sentences)",
                task.key, prof.sweep_pairs
            ),
            "λmax",
            "BLEU",
            &[
                Series {
                    label: "Gradual Unrolling".into(),
                    points: gu,
                },
                Series {
                    label: "constant λ".into(),
                    points: constant,
                },
                Series {
                    label: "PLM alone (3-shot)".into(),
                    points: xs.iter().map(|&x| (x, plm)).collect(),
                },
            ],
        )?;
        plot_files.push(path);
    }
    if task.full {
        // κ sweep: κ = 0 (ablation), 0.2 (paper), extras.
        let mut pts = Vec::new();
        let bleu_row = |m: &str| -> Option<f64> {
            raw_scores
                .iter()
                .find(|s| {
                    s["name"] == "BLEU"
                        && s["system"].as_str() == Some(task.p(&format!("hyp/{m}.txt")).as_str())
                })
                .and_then(|s| s["score"].as_f64())
        };
        for (k, m) in std::iter::once((0.0, "pema-kappa-0".to_string()))
            .chain(std::iter::once((0.2, "pema-gu".to_string())))
            .chain(prof.extra_kappas.iter().map(|&k| (k, kappa_name(k))))
        {
            if let Some(b) = bleu_row(&m) {
                pts.push((k, b));
            }
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if pts.len() >= 2 {
            let path = plots.join("bleu_vs_kappa.png");
            line_chart(
                &path,
                &format!("{}: BLEU vs κ (GU, λmax 0.9)", task.key),
                "κ",
                "BLEU",
                &[Series {
                    label: "PEMA".into(),
                    points: pts,
                }],
            )?;
            plot_files.push(path);
        }
    }
    // Training curves: phase-2 dev loss of every adapter of the task.
    let mut curves = Vec::new();
    if let Ok(entries) = fs::read_dir(task.dir.join("adapters")) {
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs {
            let Ok(log) = fs::read_to_string(d.join("train_log.jsonl")) else {
                continue;
            };
            let pts: Vec<(f64, f64)> = log
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["event"] == "dev" && v["phase"] == 2)
                .filter_map(|v| Some((v["step"].as_f64()?, v["pd"].as_f64()?)))
                .collect();
            if !pts.is_empty() {
                let name = d
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                curves.push(Series {
                    label: name,
                    points: pts,
                });
            }
        }
    }
    if !curves.is_empty() {
        let path = plots.join("training_curves.png");
        line_chart(
            &path,
            &format!("{}: phase-2 dev L_pd (nats/token)", task.key),
            "step",
            "dev L_pd",
            &curves,
        )?;
        plot_files.push(path);
    }
    // The λ schedule actually used: per-step λ of the first sequences (leak-free GU).
    if let Ok(trace) = fs::read_to_string(task.dir.join("hyp/pema-gu.trace.jsonl")) {
        let mut series: Vec<Series> = Vec::new();
        for v in trace
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            let (Some(seq), Some(step), Some(l)) =
                (v["seq"].as_u64(), v["step"].as_f64(), v["lambda"].as_f64())
            else {
                continue;
            };
            if seq >= 3 {
                continue;
            }
            let label = format!("GU, sentence {seq}");
            match series.iter_mut().find(|s| s.label == label) {
                Some(s) => s.points.push((step, l)),
                None => series.push(Series {
                    label,
                    points: vec![(step, l)],
                }),
            }
        }
        if let Some(max_step) = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .reduce(f64::max)
        {
            series.push(Series {
                label: "constant λ".into(),
                points: vec![(0.0, 0.9), (max_step, 0.9)],
            });
            let path = plots.join("lambda_schedule.png");
            line_chart(
                &path,
                "λ_k per decoding step (leak-free GU, λmax 0.9)",
                "step k",
                "λ_k",
                &series,
            )?;
            plot_files.push(path);
        }
    }
    Ok(json!({
        "task": task.key,
        "title": task.title,
        "data": data,
        "length_ratio": ratio,
        "methods": method_rows,
        "lambda_sweep": sweep_points,
        "plots": plot_files
            .iter()
            .map(|p| task.dir.parent().and_then(|o| p.strip_prefix(o).ok()).unwrap_or(p))
            .collect::<Vec<_>>(),
    }))
}
