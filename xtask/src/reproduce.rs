//! `cargo xtask reproduce-paper`: the paper's experiments end to end on real models and real
//! data, through the `pema` binary, with baselines, ablations, tables and plots.
//!
//! Tasks: EN→DE on the paper's own WMT22 files (main table, every method), EN→DE on the Ding
//! dictionary's sentence pairs (second domain) and a SYNTHETIC informal→formal task built from
//! Ding (see `pema_pipeline::datasets`).
//!
//! Per task, each stage cached under `results/<run>/<task>/stages/` so that a rerun after a
//! failure resumes: data → PLM baselines (zero-shot paper prompt, 3-shot) → external memories
//! (train, dev; teacher-forced with the 3-shot prompt, see below) → kNN-LM (k, T, λ tuned on the
//! dev memory) → adapters (the paper's two phases; ablations κ = 0, phase 2 only, B_pd only, raw
//! keys; a κ sweep) → PEMA decoding (Gradual Unrolling with the leak-free length, constant λ,
//! and the official oracle-length GU, labelled) → LoRA → scores (raw and post-processed, paired
//! bootstrap against the 3-shot PLM) → plots → `report.md` + `results.json`.
//!
//! Memory construction: Gemma 3 270M base copies the English source for most news sentences
//! when it runs free (the paper's construction pairs position t of that copy with German gold
//! token t, so the keys do not describe the gold token's context); the memories are therefore
//! built teacher-forced (kNN-LM style, a mode the paper's code also supports), and the report
//! says so. The `full` profile adds a free-running-memory PEMA row for comparison.
//!
//! Modules: `profile` (run sizes), `run` (the stage cache and the `pema` invocations),
//! `pema_rows` (the PEMA rows), `scores` (scores, sweep, plots), `report` (`report.md`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use pema_pipeline::LoraSummary;
use serde_json::{Value, json};

pub use crate::profile::{FULL, QUICK, STANDARD};
pub use crate::run::Options;
use crate::run::{Job, Row, Run, SPLIT_SEED, Task, pema_args, read_json, take_lines};

/// Builds the release `pema` binary with the device's feature; returns its path.
fn build_pema(root: &Path, device: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(&cargo);
    build
        .args(["build", "--release", "-p", "pema-cli"])
        .current_dir(root);
    match device {
        "cuda" => {
            build.args(["--features", "cuda"]);
        }
        "wgpu" => {
            build.args(["--features", "wgpu"]);
        }
        _ => {}
    }
    eprintln!("== building the pema binary (release)");
    if !build.status().context("running cargo build")?.success() {
        bail!("building pema failed");
    }
    // Where `cargo build` put the binary (it follows CARGO_TARGET_DIR).
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |d| root.join(d))
        .join("release/pema"))
}

/// A prebuilt `pema` (`--pema-bin`): it must exist, and so must the assets the profile reads.
fn prebuilt(root: &Path, bin: &Path) -> Result<PathBuf> {
    let bin = if bin.is_absolute() {
        bin.to_path_buf()
    } else {
        std::env::current_dir()?.join(bin)
    };
    if !bin.is_file() {
        bail!("--pema-bin {}: no such file", bin.display());
    }
    let model = root.join("assets/gemma-3-270m");
    for f in ["model.gguf", "tokenizer.json"] {
        if !model.join(f).is_file() {
            bail!(
                "{} is missing: with --pema-bin the assets are not fetched (copy assets/ from a \
                 machine that ran `cargo xtask fetch-assets`)",
                model.join(f).display()
            );
        }
    }
    eprintln!("== using the prebuilt pema binary {}", bin.display());
    Ok(bin)
}

/// Runs the whole pipeline.
pub fn reproduce(root: &Path, opts: Options) -> Result<()> {
    let started = Instant::now();
    let out = opts.out.clone();
    fs::create_dir_all(&out)?;
    let pema = match &opts.pema_bin {
        Some(bin) => prebuilt(root, bin)?,
        None => {
            crate::assets::fetch_assets(&root.join("assets"))?;
            build_pema(root, &opts.device)?
        }
    };
    let model = root.join("assets/gemma-3-270m");
    let run = Run {
        failed: Default::default(),
        root: root.to_path_buf(),
        pema,
        model: model.to_string_lossy().into_owned(),
        head: out.join("head.safetensors").to_string_lossy().into_owned(),
        opts,
    };
    if !out.join("head.safetensors").exists() {
        eprintln!("== export the LM head (the PLM owner's hand-over)");
        run.pema(&["export-head", "--model", &run.model, "--out", &run.head])?;
    }
    let templates = root.join("fixtures/templates");
    let mt3 = templates
        .join("mt-3shot.txt")
        .to_string_lossy()
        .into_owned();
    let mut task_results = Vec::new();
    for key in run.opts.tasks.clone() {
        let task = match key.as_str() {
            "wmt22" => Task {
                key: "wmt22",
                title: "WMT22 EN→DE (the paper's files)",
                dir: out.join("wmt22"),
                zero_template: "mt",
                few_template: mt3.clone(),
                full: true,
            },
            "ding" => Task {
                key: "ding",
                title: "Ding EN→DE sentence pairs (second domain)",
                dir: out.join("ding"),
                zero_template: "mt",
                few_template: mt3.clone(),
                full: false,
            },
            "formality" => Task {
                key: "formality",
                title: "SYNTHETIC informal→formal (built from Ding; not GYAFC)",
                dir: out.join("formality"),
                zero_template: "formality",
                few_template: templates
                    .join("formality-3shot.txt")
                    .to_string_lossy()
                    .into_owned(),
                full: false,
            },
            other => bail!("unknown task `{other}` (wmt22, ding, formality)"),
        };
        fs::create_dir_all(task.dir.join("hyp"))?;
        let data = prepare_data(&run, &task)?;
        let decodes = decode_methods(&run, &task)?;
        let result = crate::scores::score_task(&run, &task, data, decodes)?;
        task_results.push(result);
    }
    let prof = run.opts.profile;
    let summary = json!({
        "profile": prof.name,
        "device": run.opts.device,
        "model": "gemma-3-270m (GGUF Q4_K_M, dequantised to f32)",
        "adapter": {"rank": prof.rank, "kappa": 0.2, "key_norm": "standardize",
                    "batch1": prof.batch1, "batch2": prof.batch2, "epochs": prof.epochs,
                    "max_steps1": prof.max_steps1, "max_steps2": prof.max_steps2,
                    "validate_every": prof.validate_every,
                    "dev_max": (prof.dev_max != usize::MAX).then_some(prof.dev_max)},
        "memory": {"mode": "teacher-forced", "template": "fixtures/templates/<task>-3shot.txt"},
        "pema_head_precision": prof.head_precision,
        "wall_seconds_this_invocation": started.elapsed().as_secs_f64(),
        "lanes": run.opts.lanes,
        "stage_seconds_total": stage_seconds(&out),
        "tasks": task_results,
    });
    fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    let md = crate::report::report(&summary);
    fs::write(out.join("report.md"), &md)?;
    eprintln!("report: {}", out.join("report.md").display());
    print!("{md}");
    Ok(())
}

/// Sum of the recorded stage times of every task under `out` (cached stages included): the cost
/// of the whole run, however many invocations it took.
fn stage_seconds(out: &Path) -> f64 {
    let mut total = 0.0;
    for task in fs::read_dir(out).into_iter().flatten().flatten() {
        for st in fs::read_dir(task.path().join("stages"))
            .into_iter()
            .flatten()
            .flatten()
        {
            total += fs::read_to_string(st.path())
                .ok()
                .and_then(|t| t.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    total
}

/// Prepares `data/{train,dev,test,sweep}.jsonl` of a task; returns their sizes and provenance.
fn prepare_data(run: &Run, task: &Task) -> Result<Value> {
    let prof = run.opts.profile;
    let data = task.dir.join("data");
    let (src_dir, names, sizes, provenance): (PathBuf, [&str; 3], [usize; 3], Value) =
        match task.key {
            "wmt22" => (
                run.opts.wmt22.clone(),
                [
                    "news_commentary_16_en_de_train_0.json",
                    "dev.json",
                    "test.json",
                ],
                [prof.train_pairs, prof.dev_pairs, prof.test_pairs],
                json!({"source": run.opts.wmt22}),
            ),
            key => {
                let ding = run.root.join("assets/ding/de-en");
                let split_dir = run.root.join("assets/ding/splits").join(key);
                let info = if key == "ding" {
                    pema_pipeline::datasets::prepare_ding_mt(&ding, &split_dir, SPLIT_SEED)?
                } else {
                    pema_pipeline::datasets::prepare_formality(&ding, &split_dir, SPLIT_SEED)?
                };
                (
                    split_dir.clone(),
                    ["train.jsonl", "dev.jsonl", "test.jsonl"],
                    if key == "ding" {
                        prof.ding_sizes
                    } else {
                        prof.formality_sizes
                    },
                    json!({"split": split_dir.join("split.json"), "info": format!("{info:?}")}),
                )
            }
        };
    let mut n = [0usize; 3];
    for (i, split) in ["train", "dev", "test"].iter().enumerate() {
        n[i] = take_lines(
            &src_dir.join(names[i]),
            &data.join(format!("{split}.jsonl")),
            sizes[i],
        )?;
    }
    let n_sweep = take_lines(
        &data.join("test.jsonl"),
        &data.join("sweep.jsonl"),
        prof.sweep_pairs,
    )?;
    eprintln!(
        "[{}] data: {} train, {} dev, {} test ({} in the λ sweep)",
        task.key, n[0], n[1], n[2], n_sweep
    );
    Ok(
        json!({"train": n[0], "dev": n[1], "test": n[2], "sweep": n_sweep, "provenance": provenance}),
    )
}

/// Σ target tokens / Σ source tokens over the training pairs (Gemma's tokenizer): the length
/// ratio recorded in the adapter for leak-free Gradual Unrolling.
fn length_ratio(model: &Path, pairs: &Path) -> Result<f64> {
    let tok = pema_backbone::PemaTokenizer::from_file(
        &model.join("tokenizer.json"),
        false,
        None,
        vec![],
    )?;
    let pairs = pema_pipeline::pairs::PairsFile::read(pairs)?;
    pema_pipeline::pairs::length_ratio(&tok, &pairs.pairs)
        .with_context(|| format!("length ratio of {}", pairs.path.display()))
}

/// What the decoding stages of a task leave for scoring.
pub(crate) struct Decodes {
    /// Every decoded method (main table order).
    pub(crate) rows: Vec<Row>,
    /// The λmax sweep: (schedule, λmax, hypothesis name).
    pub(crate) sweep: Vec<(&'static str, f64, String)>,
    /// The task's target/source length ratio.
    pub(crate) ratio: f64,
}

/// Every stage of one task after its data: PLM baselines, memories, kNN-LM, adapters, PEMA
/// rows, the λmax sweep and LoRA. Independent stages run side by side in three waves: what
/// needs only the data (memories, PLM baselines, LoRA's training), what needs the memories
/// (kNN-LM tuning, the adapters), and every decode.
fn decode_methods(run: &Run, task: &Task) -> Result<Decodes> {
    let prof = run.opts.profile;
    let few = task.few_template.as_str();
    let mut rows: Vec<Row> = Vec::new();
    let add = |rows: &mut Vec<Row>,
               method: &str,
               label: &str,
               group: &'static str,
               train: Option<Value>| {
        rows.push(Row {
            method: method.into(),
            label: label.into(),
            group,
            train,
        })
    };
    let lora_dir = task.p("lora");
    let lora_summary = task.dir.join("lora/summary.json");
    let knn_json = task.p("knn.json");

    // Wave 1: external memories (teacher-forced; see the module docs), LoRA, PLM baselines.
    let modes: &[(&str, &str)] = if task.full && prof.free_running_row {
        &[("teacher", ""), ("free", "-free")]
    } else {
        &[("teacher", "")]
    };
    let mut wave: Vec<Job<'_>> = Vec::new();
    for split in ["train", "dev"] {
        for &(mode, suffix) in modes {
            wave.push(Box::new(move || {
                run.stage(
                    task,
                    &format!("memory-{split}{suffix}"),
                    &format!("memory {split} ({mode})"),
                    || {
                        run.pema(&[
                            "memory",
                            "build",
                            "--model",
                            &run.model,
                            "--pairs",
                            &task.p(&format!("data/{split}.jsonl")),
                            "--template",
                            few,
                            "--mode",
                            mode,
                            "--out",
                            &task.p(&format!("memory/{split}{suffix}")),
                        ])
                    },
                )
                .map(|_| ())
            }));
        }
        if split == "train" && task.full {
            wave.push(Box::new(|| train_lora(run, task, &lora_dir, &lora_summary)));
        }
    }
    wave.push(Box::new(|| run.decode(task, "plm-3-shot", few, &[])));
    wave.push(Box::new(|| {
        run.decode(task, "plm-zero-shot", task.zero_template, &[])
    }));
    run.side_by_side(wave)?;
    add(
        &mut rows,
        "plm-zero-shot",
        "PLM alone, the paper's zero-shot prompt",
        "baseline",
        None,
    );
    add(
        &mut rows,
        "plm-3-shot",
        "PLM alone, 3-shot prompt",
        "baseline",
        None,
    );
    let ratio = length_ratio(Path::new(&run.model), &task.dir.join("data/train.jsonl"))?;

    // Wave 2: the adapters and the kNN-LM tuning (each needs only the memories).
    let adapters = crate::pema_rows::adapters(run, task);
    // kNN-LM tuning goes first: an adapter that shares phase 1 waits for its donor, and the
    // lane would idle through that phase 1 if this job were queued behind it.
    let mut wave: Vec<Job<'_>> = Vec::new();
    wave.push(Box::new(|| {
        run.stage(task, "knn-tune", "kNN-LM: tune k, T, λ on dev", || {
            run.pema(&[
                "knn-tune",
                "--memory",
                &task.p("memory/train"),
                "--dev-memory",
                &task.p("memory/dev"),
                "--head",
                &run.head,
                "--out",
                &knn_json,
                "--device",
                &run.opts.device,
            ])
        })
        .map(|_| ())
    }));
    wave.extend(crate::pema_rows::train_jobs(run, task, ratio, &adapters));
    run.side_by_side(wave)?;

    // Wave 3: every decode (λmax is chosen on dev first, inside `pema_rows`).
    let mut wave: Vec<Job<'_>> = Vec::new();
    wave.push(Box::new(|| {
        run.decode(
            task,
            "knn-lm",
            few,
            &[
                "--knn-memory",
                &task.p("memory/train"),
                "--knn-params",
                &knn_json,
            ],
        )
    }));
    add(
        &mut rows,
        "knn-lm",
        "kNN-LM on the same memory (k, T, λ tuned on dev)",
        "baseline",
        read_json(Path::new(&knn_json))
            .map(|v| json!({"tuned": v["best"], "plm_dev_nll": v["plm_nll"]})),
    );
    let (outcome, pema_decodes) = crate::pema_rows::pema_rows(run, task, &adapters, &mut rows)?;
    wave.extend(pema_decodes);

    // λmax sweep (GU vs constant) on the sweep subset.
    let mut sweep = Vec::new();
    if task.full {
        for &l in prof.lambda_sweep {
            for sched in ["gu", "constant"] {
                let name = format!("sweep-{sched}-{l}");
                sweep.push((sched, l, name));
            }
        }
        for (sched, l, name) in sweep.clone() {
            let main = outcome.main.clone();
            wave.push(Box::new(move || {
                let ls = l.to_string();
                run.decode_pairs(
                    task,
                    &name,
                    few,
                    &pema_args(&main, &ls, sched, "ratio"),
                    "data/sweep.jsonl",
                )
            }));
        }
        wave.push(Box::new(|| {
            run.decode_pairs(task, "sweep-plm", few, &[], "data/sweep.jsonl")
        }));
        wave.push(Box::new(|| {
            run.decode(task, "lora", few, &["--lora", &lora_dir])
        }));
        add(
            &mut rows,
            "lora",
            "LoRA fine-tuning of the backbone (q, v)",
            "baseline",
            read_json(&lora_summary),
        );
    }
    run.side_by_side(wave)?;
    Ok(Decodes { rows, sweep, ratio })
}

/// LoRA fine-tuning of the backbone (the standard PEFT baseline), its typed summary checked.
fn train_lora(run: &Run, task: &Task, lora_dir: &str, lora_summary: &Path) -> Result<()> {
    let [steps, batch, rank, dev_pairs] = run.opts.profile.lora;
    let lora_dev = task.p("data/dev-lora.jsonl");
    run.stage(task, "lora-train", "LoRA fine-tuning", || {
        take_lines(
            Path::new(&task.p("data/dev.jsonl")),
            Path::new(&lora_dev),
            dev_pairs,
        )?;
        let (s, b, r) = (steps.to_string(), batch.to_string(), rank.to_string());
        run.pema(&[
            "lora",
            "--model",
            &run.model,
            "--pairs",
            &task.p("data/train.jsonl"),
            "--dev-pairs",
            &lora_dev,
            "--template",
            &task.few_template,
            "--out",
            lora_dir,
            "--rank",
            &r,
            "--batch-size",
            &b,
            "--max-steps",
            &s,
            "--validate-every",
            "8",
            "--device",
            &run.opts.device,
            "--summary",
            &lora_summary.to_string_lossy(),
        ])?;
        // The typed summary must parse: a silent `{}` would drop LoRA's row data.
        let _: LoraSummary = pema_pipeline::summary::read_json(lora_summary)?;
        Ok(())
    })
    .map(|_| ())
}
