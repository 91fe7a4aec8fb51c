//! The PEMA rows of a task: the paper-exact adapter (Gradual Unrolling and constant λ, at the
//! paper's λmax = 0.9 and at the λmax chosen on the dev memory before any test decoding), the
//! official oracle-length GU (labelled), the ablations, and pema's residual extension
//! (labelled, next to the paper-exact rows).
//!
//! A row whose λmax is 0 is the PLM itself (every step takes the PLM's argmax): its
//! hypotheses are copied from the 3-shot PLM row instead of decoding again, and the row says so.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::run::{Row, Run, Task, kappa_name, pema_args, read_json};

/// Candidate λmax values of `tune-lambda` (λ = 1 is P_PEMA alone).
const LAMBDA_GRID: &str = "0,0.02,0.05,0.1,0.2,0.3,0.5,0.7,0.9,1";

/// What the sweep and the plots need from the PEMA rows.
pub(crate) struct PemaOutcome {
    /// The paper-exact adapter directory.
    pub main: String,
}

/// Chooses λmax for `adapter` on the task's dev memory (mixture NLL, no decoding); returns
/// (λmax, the tuning report).
fn tune(run: &Run, task: &Task, name: &str, adapter: &str) -> Result<(f64, Option<Value>)> {
    let out = task.p(&format!("adapters/{name}/lambda.json"));
    let max_dev = run.opts.profile.dev_max.to_string();
    run.stage(
        task,
        &format!("tune-lambda-{name}"),
        &format!("{name}: choose λmax on dev"),
        || {
            run.pema(&[
                "tune-lambda",
                "--adapter",
                adapter,
                "--head",
                &run.head,
                "--dev-memory",
                &task.p("memory/dev"),
                "--out",
                &out,
                "--lambda",
                LAMBDA_GRID,
                "--max-dev",
                &max_dev,
                "--device",
                &run.opts.device,
            ])
        },
    )?;
    let report = read_json(Path::new(&out));
    let lambda = report
        .as_ref()
        .and_then(|v| v["best"]["lambda"].as_f64())
        .context("tune-lambda wrote no best λ")?;
    Ok((lambda, report))
}

/// Decodes a PEMA row, or copies the 3-shot PLM's hypotheses when λmax = 0 (identical output).
#[allow(clippy::too_many_arguments)]
fn decode_pema(
    run: &Run,
    task: &Task,
    name: &str,
    adapter: &str,
    lambda: f64,
    schedule: &str,
    length: &str,
    trace: bool,
) -> Result<bool> {
    if lambda == 0.0 {
        let hyp = |n: &str, ext: &str| task.dir.join(format!("hyp/{n}{ext}"));
        for ext in [".txt", ".ref.txt"] {
            fs::copy(hyp("plm-3-shot", ext), hyp(name, ext))
                .with_context(|| format!("copying the PLM hypotheses to {name}"))?;
        }
        let note = json!({"identical_to": "plm-3-shot", "reason": "λmax = 0"});
        fs::write(hyp(name, ".summary.json"), note.to_string() + "\n")?;
        return Ok(false);
    }
    let ls = lambda.to_string();
    let trace_path = task.p(&format!("hyp/{name}.trace.jsonl"));
    let mut args: Vec<&str> = pema_args(adapter, &ls, schedule, length).to_vec();
    if trace {
        args.extend_from_slice(&["--trace", &trace_path]);
    }
    run.decode(task, name, task.few_template.as_str(), &args)?;
    Ok(true)
}

fn row(method: &str, label: String, group: &'static str, train: Option<Value>) -> Row {
    Row {
        method: method.into(),
        label,
        group,
        train,
    }
}

fn train_summary(dir: &str) -> Option<Value> {
    read_json(&Path::new(dir).join("train_summary.json"))
}

fn lambda_label(lambda: f64) -> String {
    if lambda == 0.0 {
        "λmax = 0 chosen on dev: identical to the PLM".into()
    } else {
        format!("λmax = {lambda} chosen on dev")
    }
}

/// Trains, tunes and decodes every PEMA row of `task`, appending them to `rows`.
pub(crate) fn pema_rows(
    run: &Run,
    task: &Task,
    ratio: f64,
    rows: &mut Vec<Row>,
) -> Result<PemaOutcome> {
    let prof = run.opts.profile;
    let paper = 0.9;

    // Paper-exact adapter (with pema's key standardisation; raw keys are an ablation row).
    let main = run.train(task, "pema", &[], ratio)?;
    decode_pema(run, task, "pema-gu", &main, paper, "gu", "ratio", true)?;
    rows.push(row(
        "pema-gu",
        "PEMA (paper), GU, λmax 0.9, leak-free length (source × ratio)".into(),
        "pema",
        train_summary(&main),
    ));
    decode_pema(
        run,
        task,
        "pema-constant",
        &main,
        paper,
        "constant",
        "ratio",
        false,
    )?;
    rows.push(row(
        "pema-constant",
        "PEMA (paper), constant λ = 0.9".into(),
        "pema",
        None,
    ));
    let (tuned, report) = tune(run, task, "pema", &main)?;
    let tuning = report.map(|v| json!({"lambda_tuning": v}));
    decode_pema(
        run,
        task,
        "pema-gu-tuned",
        &main,
        tuned,
        "gu",
        "ratio",
        false,
    )?;
    rows.push(row(
        "pema-gu-tuned",
        format!("PEMA (paper), GU, {}", lambda_label(tuned)),
        "pema",
        tuning.clone(),
    ));
    decode_pema(
        run,
        task,
        "pema-constant-tuned",
        &main,
        tuned,
        "constant",
        "ratio",
        false,
    )?;
    rows.push(row(
        "pema-constant-tuned",
        format!("PEMA (paper), constant λ, {}", lambda_label(tuned)),
        "pema",
        None,
    ));

    if task.full {
        decode_pema(
            run,
            task,
            "pema-gu-oracle",
            &main,
            paper,
            "gu",
            "oracle",
            false,
        )?;
        rows.push(row(
            "pema-gu-oracle",
            "PEMA (paper), GU with the official ORACLE length (reads the reference: not a fair \
             result)"
                .into(),
            "oracle",
            None,
        ));
    }

    // pema's extension: h_pd = f(c) + σ ⊙ B_pd·z (P_PEMA starts as P_LM).
    if prof.residual {
        let dir = run.train(task, "pema-residual", &["--form", "residual"], ratio)?;
        let (l, report) = tune(run, task, "pema-residual", &dir)?;
        let tuning = report.map(|v| json!({"lambda_tuning": v}));
        let summary = train_summary(&dir).map(|mut s| {
            s["lambda_tuning"] = tuning.clone().unwrap_or(Value::Null);
            s
        });
        decode_pema(run, task, "residual-gu-tuned", &dir, l, "gu", "ratio", true)?;
        rows.push(row(
            "residual-gu-tuned",
            format!(
                "pema extension: residual h_pd = f + σ⊙B_pd·z, GU, {}",
                lambda_label(l)
            ),
            "extension",
            summary,
        ));
        decode_pema(
            run,
            task,
            "residual-constant-tuned",
            &dir,
            l,
            "constant",
            "ratio",
            false,
        )?;
        rows.push(row(
            "residual-constant-tuned",
            format!(
                "pema extension: residual h_pd, constant λ, {}",
                lambda_label(l)
            ),
            "extension",
            None,
        ));
    }

    // Ablations of the paper-exact adapter, each decoded with leak-free GU at λmax 0.9.
    if task.full && prof.ablations {
        let mut ablations: Vec<(String, String, Vec<String>)> = vec![
            (
                "pema-kappa-0".into(),
                "Ablation: κ = 0 (no reconstruction loss)".into(),
                vec!["--kappa".into(), "0".into()],
            ),
            (
                "pema-bpd-only".into(),
                "Ablation: B_pd only (phase 2 on phase 1's frozen A₁)".into(),
                vec!["--plan".into(), "bpd-only".into()],
            ),
            (
                "pema-raw-keys".into(),
                "Paper-exact keys: raw f(c), no standardisation".into(),
                vec!["--key-norm".into(), "none".into()],
            ),
        ];
        if prof.joint_ablation {
            ablations.push((
                "pema-joint".into(),
                "Ablation: phase 2 only (A, B_rct, B_pd trained jointly)".into(),
                vec!["--plan".into(), "joint".into()],
            ));
        }
        for &k in prof.extra_kappas {
            ablations.push((
                kappa_name(k),
                format!("κ sweep: κ = {k}"),
                vec!["--kappa".into(), k.to_string()],
            ));
        }
        for (name, label, extra) in &ablations {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let steps = prof.ablation_steps2.or(prof.max_steps2);
            let dir = run.train_on(task, name, "", &extra, ratio, steps)?;
            decode_pema(run, task, name, &dir, paper, "gu", "ratio", false)?;
            rows.push(row(name, label.clone(), "ablation", train_summary(&dir)));
        }
        if prof.free_running_row {
            let dir = run.train_on(task, "pema-free", "-free", &[], ratio, prof.max_steps2)?;
            decode_pema(run, task, "pema-free", &dir, paper, "gu", "ratio", false)?;
            rows.push(row(
                "pema-free",
                "PEMA on a free-running memory (the paper's construction)".into(),
                "ablation",
                train_summary(&dir),
            ));
        }
    }
    Ok(PemaOutcome { main })
}
