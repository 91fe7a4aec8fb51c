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

use crate::run::{Job, Row, Run, Task, kappa_name, pema_args, read_json};

/// Candidate λmax values of `tune-lambda` (λ = 1 is P_PEMA alone).
const LAMBDA_GRID: &str = "0,0.02,0.05,0.1,0.2,0.3,0.5,0.7,0.9,1";

/// How the dev NLL scored λmax for the GU rows: each dev entry at its own λ_k.
const GU_SCORED: &str = "scored under GU";
/// How the dev NLL scored λ for the constant rows.
const CONSTANT_SCORED: &str = "scored at constant λ";

/// What the sweep and the plots need from the PEMA rows.
pub(crate) struct PemaOutcome {
    /// The paper-exact adapter directory.
    pub main: String,
}

/// λmax chosen on dev for each schedule, and the tuning report.
struct Tuned {
    /// Best constant λ (dev NLL with every entry at λ).
    constant: f64,
    /// Best λmax of Gradual Unrolling (dev NLL with each entry at its own λ_k).
    gu: f64,
    report: Option<Value>,
}

/// Chooses λmax for `adapter` on the task's dev memory (mixture NLL, no decoding), for the
/// constant schedule and for Gradual Unrolling.
fn tune(run: &Run, task: &Task, name: &str, adapter: &str) -> Result<Tuned> {
    let out = task.p(&format!("adapters/{name}/lambda.json"));
    let max_dev = run.opts.profile.dev_max.to_string();
    let tokenizer = Path::new(&run.model).join("tokenizer.json");
    let tokenizer = tokenizer.to_string_lossy();
    run.stage(
        task,
        &format!("tune-lambda-{name}"),
        &format!("{name}: choose λmax on dev"),
        || {
            run.pema(
                &[
                    "tune-lambda",
                    "--adapter",
                    adapter,
                    "--head",
                    &run.head,
                    "--dev-memory",
                    &task.p("memory/dev"),
                    "--dev-pairs",
                    &task.p("data/dev.jsonl"),
                    "--tokenizer",
                    &tokenizer,
                    "--out",
                    &out,
                    "--lambda",
                    LAMBDA_GRID,
                    "--max-dev",
                    &max_dev,
                    "--device",
                    &run.opts.device,
                ]
                .into_iter()
                .chain(run.head_precision_args(false))
                .collect::<Vec<_>>(),
            )
        },
    )?;
    let report = read_json(Path::new(&out));
    let best = |v: &Value| v["best"]["lambda"].as_f64();
    let constant = report
        .as_ref()
        .and_then(best)
        .context("tune-lambda wrote no best λ")?;
    let gu = report
        .as_ref()
        .and_then(|v| best(&v["gu"]))
        .context("tune-lambda wrote no best λmax under GU")?;
    Ok(Tuned {
        constant,
        gu,
        report,
    })
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
    args.extend(run.head_precision_args(true));
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

fn lambda_label(lambda: f64, schedule: &str) -> String {
    if lambda == 0.0 {
        format!("λmax = 0 chosen on dev ({schedule}): identical to the PLM")
    } else {
        format!("λmax = {lambda} chosen on dev ({schedule})")
    }
}

/// One adapter of a task: its name (`adapters/<name>`), extra `pema train` arguments, memory
/// suffix, phase-2 step cap, and the adapter whose phase 1 it shares (same keys and phase-1
/// settings: phase 1 does not read κ, the plan's phase 2 or the form of h_pd).
pub(crate) struct Adapter {
    name: String,
    label: String,
    extra: Vec<String>,
    suffix: &'static str,
    steps: Option<u64>,
    phase1_from: Option<&'static str>,
}

impl Adapter {
    fn dir(&self, task: &Task) -> String {
        task.p(&format!("adapters/{}", self.name))
    }
}

/// Every adapter `task` trains, in the order [`Run::side_by_side`] takes them: the
/// paper-exact one first (its phase 1 is shared), the raw-keys ablation (its own phase 1),
/// then the adapters that wait for the shared phase 1.
pub(crate) fn adapters(run: &Run, task: &Task) -> Vec<Adapter> {
    let prof = run.opts.profile;
    let main_steps = if task.full {
        prof.max_steps2
    } else {
        prof.side_steps2.or(prof.max_steps2)
    };
    let steps = prof.ablation_steps2.or(prof.max_steps2);
    let a = |name: &str, label: &str, extra: &[&str], steps, phase1_from| Adapter {
        name: name.into(),
        label: label.into(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        suffix: "",
        steps,
        phase1_from,
    };
    let shared = Some("pema");
    let ablations = task.full && prof.ablations;
    let mut out = vec![a("pema", "", &[], main_steps, None)];
    if ablations {
        out.push(a(
            "pema-raw-keys",
            "Paper-exact keys: raw f(c), no standardisation",
            &["--key-norm", "none"],
            steps,
            None,
        ));
    }
    if task.full && prof.free_running_row {
        out.push(Adapter {
            suffix: "-free",
            ..a(
                "pema-free",
                "PEMA on a free-running memory (the paper's construction)",
                &[],
                prof.max_steps2,
                None,
            )
        });
    }
    if prof.residual {
        let residual = &["--form", "residual"];
        out.push(a("pema-residual", "", residual, main_steps, shared));
    }
    if ablations {
        out.push(a(
            "pema-kappa-0",
            "Ablation: κ = 0 (no reconstruction loss)",
            &["--kappa", "0"],
            steps,
            shared,
        ));
        out.push(a(
            "pema-bpd-only",
            "Ablation: B_pd only (phase 2 on phase 1's frozen A₁)",
            &["--plan", "bpd-only"],
            steps,
            shared,
        ));
        if prof.joint_ablation {
            out.push(a(
                "pema-joint",
                "Ablation: phase 2 only (A, B_rct, B_pd trained jointly)",
                &["--plan", "joint"],
                steps,
                None,
            ));
        }
        for &k in prof.extra_kappas {
            let ks = k.to_string();
            out.push(a(
                &kappa_name(k),
                &format!("κ sweep: κ = {k}"),
                &["--kappa", &ks],
                steps,
                shared,
            ));
        }
    }
    out
}

/// The training stages of `adapters` (independent of each other).
pub(crate) fn train_jobs<'a>(
    run: &'a Run,
    task: &'a Task,
    ratio: f64,
    adapters: &'a [Adapter],
) -> Vec<Job<'a>> {
    adapters
        .iter()
        .map(|a| -> Job<'a> {
            Box::new(move || {
                let donor = match a.phase1_from {
                    Some(donor) => run.phase1_of(task, donor)?,
                    None => None,
                };
                let mut extra: Vec<&str> = a.extra.iter().map(String::as_str).collect();
                if let Some(dir) = &donor {
                    extra.extend_from_slice(&["--phase1-from", dir]);
                }
                run.train_on(task, &a.name, a.suffix, &extra, ratio, a.steps)
                    .map(|_| ())
            })
        })
        .collect()
}

/// One PEMA decode: hypothesis name, adapter, λmax, schedule, length mode, trace.
struct PemaDecode {
    name: String,
    adapter: String,
    lambda: f64,
    schedule: &'static str,
    length: &'static str,
    trace: bool,
}

impl PemaDecode {
    fn job<'a>(self, run: &'a Run, task: &'a Task) -> Job<'a> {
        Box::new(move || {
            decode_pema(
                run,
                task,
                &self.name,
                &self.adapter,
                self.lambda,
                self.schedule,
                self.length,
                self.trace,
            )
            .map(|_| ())
        })
    }
}

/// Tunes λmax of the trained adapters on dev, appends every PEMA row to `rows` and returns
/// the decoding stages (to run side by side with the task's other decodes).
pub(crate) fn pema_rows<'a>(
    run: &'a Run,
    task: &'a Task,
    adapters: &[Adapter],
    rows: &mut Vec<Row>,
) -> Result<(PemaOutcome, Vec<Job<'a>>)> {
    let paper = 0.9;
    let mut decodes = Vec::new();
    let mut add = |rows: &mut Vec<Row>,
                   d: PemaDecode,
                   label: String,
                   group: &'static str,
                   train: Option<Value>| {
        rows.push(row(&d.name, label, group, train));
        decodes.push(d.job(run, task));
    };
    let pd = |name: &str, adapter: &str, lambda, schedule, length, trace| PemaDecode {
        name: name.into(),
        adapter: adapter.into(),
        lambda,
        schedule,
        length,
        trace,
    };

    // Paper-exact adapter (with pema's key standardisation; raw keys are an ablation row).
    let main = task.p("adapters/pema");
    let tuned = tune(run, task, "pema", &main)?;
    let tuning = tuned.report.map(|v| json!({"lambda_tuning": v}));
    add(
        rows,
        pd("pema-gu", &main, paper, "gu", "ratio", true),
        "PEMA (paper), GU, λmax 0.9, leak-free length (source × ratio)".into(),
        "pema",
        train_summary(&main),
    );
    add(
        rows,
        pd("pema-constant", &main, paper, "constant", "ratio", false),
        "PEMA (paper), constant λ = 0.9".into(),
        "pema",
        None,
    );
    add(
        rows,
        pd("pema-gu-tuned", &main, tuned.gu, "gu", "ratio", false),
        format!("PEMA (paper), GU, {}", lambda_label(tuned.gu, GU_SCORED)),
        "pema",
        tuning,
    );
    add(
        rows,
        pd(
            "pema-constant-tuned",
            &main,
            tuned.constant,
            "constant",
            "ratio",
            false,
        ),
        format!(
            "PEMA (paper), constant λ, {}",
            lambda_label(tuned.constant, CONSTANT_SCORED)
        ),
        "pema",
        None,
    );
    if task.full {
        add(
            rows,
            pd("pema-gu-oracle", &main, paper, "gu", "oracle", false),
            "PEMA (paper), GU with the official ORACLE length (reads the reference: not a fair \
             result)"
                .into(),
            "oracle",
            None,
        );
    }

    // pema's extension: h_pd = f(c) + σ ⊙ B_pd·z (P_PEMA starts as P_LM).
    if let Some(res) = adapters.iter().find(|a| a.name == "pema-residual") {
        let dir = res.dir(task);
        let tuned = tune(run, task, "pema-residual", &dir)?;
        let summary = train_summary(&dir).map(|mut s| {
            s["lambda_tuning"] = tuned.report.clone().unwrap_or(Value::Null);
            s
        });
        add(
            rows,
            pd("residual-gu-tuned", &dir, tuned.gu, "gu", "ratio", true),
            format!(
                "pema extension: residual h_pd = f + σ⊙B_pd·z, GU, {}",
                lambda_label(tuned.gu, GU_SCORED)
            ),
            "extension",
            summary,
        );
        add(
            rows,
            pd(
                "residual-constant-tuned",
                &dir,
                tuned.constant,
                "constant",
                "ratio",
                false,
            ),
            format!(
                "pema extension: residual h_pd, constant λ, {}",
                lambda_label(tuned.constant, CONSTANT_SCORED)
            ),
            "extension",
            None,
        );
    }

    // Ablations of the paper-exact adapter, each decoded with leak-free GU at λmax 0.9.
    for a in adapters.iter().filter(|a| !a.label.is_empty()) {
        let dir = a.dir(task);
        add(
            rows,
            pd(&a.name, &dir, paper, "gu", "ratio", false),
            a.label.clone(),
            "ablation",
            train_summary(&dir),
        );
    }
    Ok((PemaOutcome { main }, decodes))
}
