//! `pema memory build | info | verify`: the external memory (paper §2) from the command line.
//!
//! `info` and `verify` need no model and run through [`run`]; `build` needs a loaded PLM and
//! tokenizer, so the binary loads them for the chosen backend and calls [`build`].

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use pema_backbone::Plm;
use pema_memory::{
    BuildConfig, BuildMode, BuildSummary, KeyDtype, Manifest, MemoryStore, ModelInfo,
    PairTokenizer, PairsFile, PromptTemplate, build_memory, verify,
};

/// Construction mode on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// The paper's: the PLM decodes greedily on its own; keys f(prompt + ŵ_<t).
    Free,
    /// kNN-LM style teacher forcing: keys f(prompt + y_<t).
    Teacher,
}

/// Key storage type on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// 4 bytes per component.
    F32,
    /// 2 bytes per component (half the disk; converted to f32 on read).
    F16,
}

/// Arguments of `pema memory build`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Model, training pairs and prompt template.
    #[command(flatten)]
    pub input: crate::args::TaskInput,
    /// Construction mode.
    #[arg(long, value_enum, default_value_t = ModeArg::Free)]
    pub mode: ModeArg,
    /// Output memory directory (an interrupted build there is resumed).
    #[arg(long)]
    pub out: PathBuf,
    /// Key storage type.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    /// Most sequences the PLM runs at once (continuous batching within each shard).
    #[arg(long, default_value_t = 8, value_parser = crate::values::count)]
    pub batch_size: usize,
    /// Serving options (shared prefix).
    #[command(flatten)]
    pub serve: crate::args::ServeArgs,
    /// Pairs per shard (the commit unit: at most this much work is lost in a crash).
    #[arg(long, default_value_t = 256, value_parser = crate::values::steps)]
    pub pairs_per_shard: u64,
    /// Free-running step budget beyond the target length (paper: 10).
    #[arg(long, default_value_t = 10)]
    pub max_extra_steps: usize,
    /// Use only the first N pairs.
    #[arg(long, value_parser = crate::values::count)]
    pub limit: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// With `--plm` and `--mode teacher`: accept that teacher forcing sends the training
    /// targets to the PLM owner (free-running, the default, never does).
    #[arg(long, requires = "plm")]
    pub disclose_targets: bool,
}

impl BuildArgs {
    /// The builder configuration these arguments describe (reads a template file if given).
    pub fn config(&self) -> Result<BuildConfig> {
        Ok(BuildConfig {
            mode: match self.mode {
                ModeArg::Free => BuildMode::FreeRunning,
                ModeArg::Teacher => BuildMode::TeacherForced,
            },
            dtype: match self.dtype {
                DtypeArg::F32 => KeyDtype::F32,
                DtypeArg::F16 => KeyDtype::F16,
            },
            template: PromptTemplate::resolve(&self.input.template)?,
            batch_size: self.batch_size,
            pairs_per_shard: self.pairs_per_shard,
            max_extra_steps: self.max_extra_steps,
            limit: self.limit,
            progress: !self.no_progress,
        })
    }
}

/// `pema memory …` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum MemoryCmd {
    /// Build (or resume) a memory: run the PLM over the pairs, one entry per target token.
    Build(BuildArgs),
    /// Print what a memory holds and how it was built.
    Info {
        /// Memory directory.
        dir: PathBuf,
        /// Print the manifest as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Check sizes and sha256 of every shard; lists every problem, exits non-zero if any.
    Verify {
        /// Memory directory.
        dir: PathBuf,
    },
}

/// Runs `info` and `verify`; `build` must go through [`build`] with a loaded model.
pub fn run(cmd: &MemoryCmd) -> Result<()> {
    match cmd {
        MemoryCmd::Build(_) => {
            bail!("`memory build` needs a loaded model: call memory_cmd::build with a backend")
        }
        MemoryCmd::Info { dir, json } => {
            let manifest = Manifest::load(dir)?;
            if *json {
                print!("{}", String::from_utf8_lossy(&manifest.to_bytes()));
            } else {
                print!("{}", manifest.summary());
                match MemoryStore::open(dir) {
                    Ok(s) => println!(
                        "{:<22}{}",
                        "fingerprint",
                        pema_memory::MemorySource::fingerprint(&s)
                    ),
                    Err(e) => println!("{:<22}cannot open: {e}", "store"),
                }
            }
            Ok(())
        }
        MemoryCmd::Verify { dir } => {
            let report = verify(dir);
            for w in &report.warnings {
                println!("warning: {w}");
            }
            if report.is_ok() {
                println!(
                    "OK: {} shards, {} entries, {:.1} MiB checked",
                    report.shards_checked,
                    report.manifest.as_ref().map_or(0, |m| m.entries),
                    report.bytes_checked as f64 / 1048576.0
                );
                Ok(())
            } else {
                for p in &report.problems {
                    println!("{p}");
                }
                bail!(
                    "memory {} has {} problem(s)",
                    dir.display(),
                    report.problems.len()
                )
            }
        }
    }
}

/// Runs `pema memory build` with a loaded PLM and tokenizer on backend `B`.
pub fn build<B, P, T>(
    args: &BuildArgs,
    plm: &P,
    tokenizer: &T,
    model: &ModelInfo,
) -> Result<BuildSummary>
where
    B: Backend,
    P: Plm<B> + ?Sized,
    T: PairTokenizer + ?Sized,
{
    let cfg = args.config()?;
    let pairs = PairsFile::read(&args.input.pairs)?;
    let summary = build_memory(plm, tokenizer, model, &pairs, &cfg, &args.out)
        .with_context(|| format!("building the memory in {}", args.out.display()))?;
    eprintln!(
        "memory {}: {} entries from {} pairs ({} already committed) in {} shards, {:.1}s",
        args.out.display(),
        summary.entries,
        summary.pairs_total,
        summary.pairs_skipped,
        summary.shards,
        summary.seconds
    );
    if summary.is_low_yield() {
        eprintln!(
            "warning: only {:.2} entries per pair: the PLM stopped almost at once on most prompts \
             (check --template and the model; the paper's targets are sentences)",
            summary.entries_per_pair
        );
    }
    Ok(summary)
}

/// Runs `pema memory build` through the PLM owner's service at `url` (`--plm`).
pub fn build_remote<B: Backend>(args: &BuildArgs, url: &str, device: &B::Device) -> Result<()> {
    if args.mode == ModeArg::Teacher && !args.disclose_targets {
        bail!(
            "--mode teacher with --plm sends the training targets to the PLM owner: pass --disclose-targets to accept that, or build free-running (the paper's mode)"
        );
    }
    let (plm, tok) = crate::remote::connect::<B>(
        &args.input,
        url,
        args.batch_size,
        !args.serve.no_shared_prefix,
        device,
    )?;
    let plm = if args.disclose_targets {
        plm.disclose_targets()
    } else {
        plm
    };
    let info = plm.info();
    let model = ModelInfo {
        name: info.model.clone(),
        weights_sha256: info.weights_sha256.clone(),
        hidden_size: info.hidden_size,
        state: pema_memory::KeyState::pre_final_norm(info.n_layers.saturating_sub(1)),
    };
    build::<B, _, _>(args, &plm, &tok, &model).map(|_| ())
}

#[cfg(test)]
mod tests {
    //! The memory commands end to end on the toy PLM: parse, build, info, verify, and a
    //! broken memory reported.

    use super::*;
    use clap::Parser;
    use pema_memory::toy::{ToyPlm, ToyTokenizer};
    use pema_memory::{KeyState, MemoryStore, ModelInfo};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: MemoryCmd,
    }

    #[test]
    fn build_info_verify() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pairs = tmp.path().join("p.tsv");
        std::fs::write(&pairs, "hello\thallo\nthank you\tdanke\n").expect("write");
        let out = tmp.path().join("mem");
        let (p, o) = (pairs.to_str().expect("utf8"), out.to_str().expect("utf8"));
        let cli = Cli::try_parse_from([
            "memory",
            "build",
            "--model",
            "m",
            "--pairs",
            p,
            "--out",
            o,
            "--template",
            "formality",
            "--mode",
            "teacher",
            "--dtype",
            "f16",
            "--no-progress",
        ])
        .expect("parse build");
        let MemoryCmd::Build(args) = &cli.cmd else {
            panic!("expected build");
        };
        assert!(run(&cli.cmd).is_err(), "build needs a model");
        let plm = ToyPlm::<crate::backend::CpuBackend>::new(8, &Default::default());
        let model = ModelInfo {
            name: "toy".into(),
            weights_sha256: "3".repeat(64),
            hidden_size: 8,
            state: KeyState::pre_final_norm(0),
        };
        let s = build(args, &plm, &ToyTokenizer, &model).expect("build");
        assert_eq!(s.entries, 5 + 5);
        assert_eq!(
            MemoryStore::open(&out)
                .expect("open")
                .manifest()
                .meta
                .template_name,
            "formality"
        );
        for argv in [
            vec!["memory", "info", o],
            vec!["memory", "info", "--json", o],
            vec!["memory", "verify", o],
        ] {
            let cli = Cli::try_parse_from(argv).expect("parse");
            run(&cli.cmd).expect("info/verify");
        }
        std::fs::remove_file(out.join("shard-000000.values")).expect("rm");
        let cli = Cli::try_parse_from(["memory", "verify", o]).expect("parse");
        let e = run(&cli.cmd).expect_err("broken memory");
        assert!(e.to_string().contains("1 problem"), "{e}");
    }
}
