//! One run of `reproduce-paper`: its options, the stage cache (a marker file per finished
//! stage, so a rerun resumes), and the `pema` invocations every stage goes through.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::profile::Profile;

/// Options of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Profile.
    pub profile: Profile,
    /// Directory holding the paper's WMT22 files.
    pub wmt22: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// `cpu`, `wgpu` or `cuda`.
    pub device: String,
    /// Tasks to run (`wmt22`, `ding`, `formality`).
    pub tasks: Vec<String>,
    /// Independent stages run side by side, at most this many at once (each `pema` process
    /// then gets `cores / lanes` threads).
    pub lanes: usize,
    /// A `pema` binary built beforehand (e.g. with `--features cuda` on another machine):
    /// neither cargo nor the asset fetchers are run; the assets must be in place.
    pub pema_bin: Option<PathBuf>,
}

/// Default lanes: on the CPU one per core up to 2 (measured before the host element-wise
/// kernels: a `pema decode` kept ~1.2 of 2 cores busy, and two single-threaded processes side
/// by side finished two jobs in 29 s instead of 49 s); 1 on a GPU.
pub fn default_lanes(device: &str) -> usize {
    if device != "cpu" {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// A stage that can run side by side with others (see [`Run::side_by_side`]).
pub(crate) type Job<'a> = Box<dyn FnOnce() -> Result<()> + Send + 'a>;

/// Seed of the Ding splits (fixed: every run uses the same split).
pub(crate) const SPLIT_SEED: u64 = 20_240_616;

pub(crate) struct Run {
    /// Set when a stage run side by side failed (waiting stages give up).
    pub(crate) failed: AtomicBool,
    pub(crate) root: PathBuf,
    pub(crate) pema: PathBuf,
    pub(crate) model: String,
    pub(crate) head: String,
    pub(crate) opts: Options,
}

/// One task's files and settings.
pub(crate) struct Task {
    pub(crate) key: &'static str,
    pub(crate) title: &'static str,
    pub(crate) dir: PathBuf,
    /// The paper's zero-shot prompt (`mt` or `formality`).
    pub(crate) zero_template: &'static str,
    /// The few-shot template file used for the PLM baseline, the memories and every method.
    pub(crate) few_template: String,
    /// Every method and ablation (main table) or the core set.
    pub(crate) full: bool,
}

impl Task {
    pub(crate) fn p(&self, rel: &str) -> String {
        self.dir.join(rel).to_string_lossy().into_owned()
    }
}

/// A decoded method of a task.
pub(crate) struct Row {
    pub(crate) method: String,
    pub(crate) label: String,
    pub(crate) group: &'static str,
    pub(crate) train: Option<Value>,
}

impl Run {
    pub(crate) fn pema_cmd(&self, args: &[&str]) -> Command {
        eprintln!("$ pema {}", args.join(" "));
        let mut c = Command::new(&self.pema);
        c.args(args).current_dir(&self.root);
        if self.opts.lanes > 1 {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            c.env(
                "RAYON_NUM_THREADS",
                (cores / self.opts.lanes).max(1).to_string(),
            );
        }
        c
    }

    /// Runs independent stages, at most `lanes` at once, in the given order (put the longest
    /// first). Every started job finishes; the first error is returned.
    pub(crate) fn side_by_side(&self, jobs: Vec<Job<'_>>) -> Result<()> {
        let lanes = self.opts.lanes.min(jobs.len());
        if lanes <= 1 {
            return jobs.into_iter().try_for_each(|job| job());
        }
        let queue = Mutex::new(jobs.into_iter());
        let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..lanes {
                s.spawn(|| {
                    loop {
                        if failed.lock().map_or(true, |f| f.is_some()) {
                            break;
                        }
                        let Some(job) = queue.lock().ok().and_then(|mut q| q.next()) else {
                            break;
                        };
                        if let Err(e) = job() {
                            self.failed.store(true, Ordering::SeqCst);
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        match failed.into_inner() {
            Ok(Some(e)) => Err(e),
            Ok(None) => Ok(()),
            Err(_) => bail!("a stage panicked"),
        }
    }

    pub(crate) fn pema(&self, args: &[&str]) -> Result<()> {
        let status = self
            .pema_cmd(args)
            .status()
            .with_context(|| format!("running {}", self.pema.display()))?;
        if !status.success() {
            bail!("`pema {}` failed ({status})", args.join(" "));
        }
        Ok(())
    }

    pub(crate) fn pema_stdout(&self, args: &[&str]) -> Result<String> {
        let out = self
            .pema_cmd(args)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", self.pema.display()))?;
        if !out.status.success() {
            bail!("`pema {}` failed ({})", args.join(" "), out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` unless the task's `marker` exists; writes the marker (seconds) afterwards.
    pub(crate) fn stage(
        &self,
        task: &Task,
        marker: &str,
        what: &str,
        f: impl FnOnce() -> Result<()>,
    ) -> Result<f64> {
        let path = task.dir.join("stages").join(marker);
        if path.exists() {
            eprintln!("== [{}] {what}: cached", task.key);
            return Ok(fs::read_to_string(&path)?.trim().parse().unwrap_or(0.0));
        }
        eprintln!("== [{}] {what}", task.key);
        let t = Instant::now();
        f()?;
        let secs = t.elapsed().as_secs_f64();
        fs::create_dir_all(path.parent().unwrap_or(&task.dir))?;
        fs::write(&path, format!("{secs:.1}\n"))?;
        Ok(secs)
    }

    /// Waits until the adapter `donor` of `task` has written its phase-1 result (it trains side
    /// by side); returns its directory, or `None` when the donor finished without one (a
    /// cached run of older code): phase 1 is then trained again.
    pub(crate) fn phase1_of(&self, task: &Task, donor: &str) -> Result<Option<String>> {
        let dir = task.dir.join("adapters").join(donor);
        let done = task.dir.join("stages").join(format!("train-{donor}"));
        loop {
            if dir.join(pema_pipeline::train::PHASE1_STATE).exists() {
                return Ok(Some(dir.to_string_lossy().into_owned()));
            }
            if done.exists() {
                return Ok(None);
            }
            if self.failed.load(Ordering::SeqCst) {
                bail!("adapter `{donor}` failed before its phase 1 was written");
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    }

    /// Decodes `pairs` (default: the test subset) into `hyp/<name>.txt` (+ summary JSON).
    pub(crate) fn decode(
        &self,
        task: &Task,
        name: &str,
        template: &str,
        extra: &[&str],
    ) -> Result<()> {
        self.decode_pairs(task, name, template, extra, "data/test.jsonl")
    }

    pub(crate) fn decode_pairs(
        &self,
        task: &Task,
        name: &str,
        template: &str,
        extra: &[&str],
        pairs: &str,
    ) -> Result<()> {
        self.stage(
            task,
            &format!("decode-{name}"),
            &format!("decode {name}"),
            || {
                let (hyp, refs, summary) = (
                    task.p(&format!("hyp/{name}.txt")),
                    task.p(&format!("hyp/{name}.ref.txt")),
                    task.p(&format!("hyp/{name}.summary.json")),
                );
                let test = task.p(pairs);
                let bs = self.opts.profile.decode_batch.to_string();
                let mut args = vec![
                    "decode",
                    "--model",
                    &self.model,
                    "--pairs",
                    &test,
                    "--template",
                    template,
                    "--out",
                    &hyp,
                    "--refs-out",
                    &refs,
                    "--summary",
                    &summary,
                    "--batch-size",
                    &bs,
                    "--device",
                    &self.opts.device,
                    // The memories' keys come from the f32 weights: decode with the same f(c).
                    "--weights",
                    "f32",
                ];
                args.extend_from_slice(extra);
                self.pema(&args)
            },
        )?;
        Ok(())
    }

    /// Trains `adapters/<name>` on `memory/{train,dev}<suffix>`.
    pub(crate) fn train_on(
        &self,
        task: &Task,
        name: &str,
        suffix: &str,
        extra: &[&str],
        ratio: f64,
        max_steps2: Option<u64>,
    ) -> Result<String> {
        let dir = task.p(&format!("adapters/{name}"));
        let prof = self.opts.profile;
        self.stage(
            task,
            &format!("train-{name}"),
            &format!("train {name}"),
            || {
                let (rank, b1, b2, ep, ve, ratio_s) = (
                    prof.rank.to_string(),
                    prof.batch1.to_string(),
                    prof.batch2.to_string(),
                    prof.epochs.to_string(),
                    prof.validate_every.to_string(),
                    format!("{ratio:.4}"),
                );
                let (mem, dev) = (
                    task.p(&format!("memory/train{suffix}")),
                    task.p(&format!("memory/dev{suffix}")),
                );
                let mut args = vec![
                    "train",
                    "--memory",
                    &mem,
                    "--dev-memory",
                    &dev,
                    "--head",
                    &self.head,
                    "--out",
                    &dir,
                    "--rank",
                    &rank,
                    "--batch1",
                    &b1,
                    "--batch2",
                    &b2,
                    "--epochs",
                    &ep,
                    "--validate-every",
                    &ve,
                    "--length-ratio",
                    &ratio_s,
                    "--device",
                    &self.opts.device,
                ];
                args.extend_from_slice(&self.head_precision_args(false));
                let cap = max_steps2.map(|s| s.to_string());
                if let Some(cap) = &cap {
                    args.extend_from_slice(&["--max-steps2", cap]);
                }
                let cap1 = prof.max_steps1.map(|s| s.to_string());
                if let Some(cap) = &cap1 {
                    args.extend_from_slice(&["--max-steps1", cap]);
                }
                let dev_max = prof.dev_max.to_string();
                if prof.dev_max != usize::MAX {
                    args.extend_from_slice(&["--dev-max", &dev_max]);
                }
                args.extend_from_slice(extra);
                self.pema(&args)
            },
        )?;
        Ok(dir)
    }
}

pub(crate) fn take_lines(src: &Path, dst: &Path, n: usize) -> Result<usize> {
    let text = fs::read_to_string(src).with_context(|| format!("reading {}", src.display()))?;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .collect();
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(dst, lines.join("\n") + "\n")?;
    Ok(lines.len())
}

pub(crate) fn read_json(path: &Path) -> Option<Value> {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

impl Run {
    /// `--head-precision` (and, for decoding on the CPU, `--head-kernel cpu`: decoding's
    /// default is the tensor kernel) for the profile's PEMA head; nothing for f32.
    pub(crate) fn head_precision_args(&self, decoding: bool) -> Vec<&'static str> {
        let p = self.opts.profile.head_precision;
        if p == "f32" {
            return Vec::new();
        }
        let mut a = vec!["--head-precision", p];
        if decoding && self.opts.device == "cpu" {
            a.extend(["--head-kernel", "cpu"]);
        }
        a
    }
}

/// `pema decode` arguments of a PEMA row: adapter, λmax, schedule (`gu`/`constant`) and length
/// mode (`ratio`/`oracle`).
pub(crate) fn pema_args<'a>(
    adapter: &'a str,
    lambda_max: &'a str,
    schedule: &'a str,
    length: &'a str,
) -> [&'a str; 8] {
    [
        "--adapter",
        adapter,
        "--lambda-max",
        lambda_max,
        "--schedule",
        schedule,
        "--length",
        length,
    ]
}

pub(crate) fn kappa_name(k: f64) -> String {
    format!("pema-kappa-{k}")
}
