//! `pema`: the command line of the Rust PEMA implementation.

mod args;
mod backend;
mod bench_cmd;
mod decode_cmd;
mod head_args;
mod knn_cmd;
mod lora_cmd;
mod memory_cmd;
mod preflight;
mod remote;
mod report;
mod score;
mod serve_args;
mod train_cmd;
mod values;

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::{Parser, Subcommand};
use pema_backbone::{GenerateOptions, Greedy, LoadedModel, Plm, load_model_dir};

use backend::{BackendTask, DeviceArg, dispatch};

/// PEMA: Plug-in External Memory Adaptation for language models.
#[derive(Debug, Parser)]
#[command(name = "pema", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a continuation of a prompt with the PLM (greedy).
    Generate(GenerateArgs),
    /// Decode a pairs file (PLM alone, or PEMA with `--adapter`), one hypothesis per line.
    Decode(decode_cmd::DecodeArgs),
    /// Mean negative log-likelihood (nats per predicted token) of a text file.
    Nll(NllArgs),
    /// Score hypotheses against references (BLEU, chrF, chrF++, TER; sacreBLEU-compatible).
    Score(score::ScoreArgs),
    /// Build, inspect and verify external memories.
    #[command(subcommand)]
    Memory(memory_cmd::MemoryCmd),
    /// Train a PEMA adapter on a memory (two phases).
    Train(TrainCli),
    /// Export the LM head (final norm + W_hd): what the PLM owner hands to the data owner.
    ExportHead(ExportHeadArgs),
    /// LoRA fine-tuning of the backbone (the PEFT baseline): writes a LoRA directory.
    Lora(lora_cmd::LoraArgs),
    /// Choose the kNN-LM baseline's k, temperature and λ on a dev memory.
    KnnTune(knn_cmd::KnnTuneArgs),
    /// Choose PEMA's λmax on a dev memory (NLL of the mixture, no decoding).
    TuneLambda(train_cmd::TuneLambdaArgs),
    /// Serve the PLM to data owners (the PLM owner's side): `decode`, `memory build` and
    /// `export-head` then take `--plm URL` instead of `--model`.
    Serve(remote::ServeCmdArgs),
    /// Time the phase-2 training step at named shapes on this device (synthetic data; the
    /// shapes and JSON keys of `benches/pytorch_train_step.py`).
    BenchStep(bench_cmd::BenchStepArgs),
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// Model directory (`model.gguf` + `tokenizer.json`, or HF layout).
    #[arg(long, required_unless_present = "plm", conflicts_with = "plm")]
    model: Option<PathBuf>,
    /// Or the PLM owner's service (`pema serve`); token from `--plm-token-file` or PEMA_TOKEN.
    #[arg(long)]
    plm: Option<String>,
    /// File holding the bearer token for `--plm`.
    #[arg(long, requires = "plm")]
    plm_token_file: Option<PathBuf>,
    /// PEM CA certificate to trust for an `https://` `--plm`.
    #[arg(long, requires = "plm")]
    plm_ca: Option<PathBuf>,
    /// Prompt text (`\n` escapes are expanded), continued greedily by the PLM.
    #[arg(long, required_unless_present = "source", conflicts_with = "source")]
    prompt: Option<String>,
    /// Or one source sentence, put into `--template` and decoded exactly as `pema decode`
    /// decodes a pairs file (the PLM, or PEMA with `--adapter`; the paper's stopping rule).
    #[arg(long)]
    source: Option<String>,
    /// Prompt template for `--source`: `mt`, `formality` or a file with `{source}`.
    #[arg(long, default_value = "mt", requires = "source")]
    template: String,
    /// PEMA adapter directory (with `--source`).
    #[arg(long, requires = "source")]
    adapter: Option<PathBuf>,
    /// λ schedule with `--adapter`: `gu` (Gradual Unrolling) or `constant`.
    #[arg(long, value_enum, default_value_t = decode_cmd::ScheduleArg::Gu)]
    schedule: decode_cmd::ScheduleArg,
    /// λmax with `--adapter`.
    #[arg(long, default_value_t = 0.9, value_parser = crate::values::unit)]
    lambda_max: f64,
    /// Maximum number of new tokens (with `--prompt`).
    #[arg(long, default_value_t = 64, value_parser = crate::values::count)]
    max_tokens: usize,
    /// Stop at the end of the line (the paper's stopping rule) instead of only at EOS.
    #[arg(long)]
    stop_at_newline: bool,
    /// Device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceArg,
}

impl GenerateArgs {
    /// The `pema decode` arguments that decode `--source` the same way (its defaults).
    fn decode_args(&self) -> Result<decode_cmd::DecodeArgs> {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            d: decode_cmd::DecodeArgs,
        }
        let mut argv: Vec<String> = ["generate", "--pairs", "-", "--out", "-", "--template"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        argv.push(self.template.clone());
        let schedule = match self.schedule {
            decode_cmd::ScheduleArg::Gu => "gu",
            decode_cmd::ScheduleArg::Constant => "constant",
        };
        argv.extend(["--schedule".into(), schedule.into()]);
        argv.extend(["--lambda-max".into(), self.lambda_max.to_string()]);
        argv.extend(["--batch-size".into(), "1".into()]);
        let path = |p: &PathBuf| p.to_string_lossy().to_string();
        if let Some(m) = &self.model {
            argv.extend(["--model".into(), path(m)]);
        }
        if let Some(u) = &self.plm {
            argv.extend(["--plm".into(), u.clone()]);
        }
        if let Some(f) = &self.plm_token_file {
            argv.extend(["--plm-token-file".into(), path(f)]);
        }
        if let Some(f) = &self.plm_ca {
            argv.extend(["--plm-ca".into(), path(f)]);
        }
        if let Some(a) = &self.adapter {
            argv.extend(["--adapter".into(), path(a)]);
        }
        use clap::Parser;
        Ok(Wrap::try_parse_from(argv)?.d)
    }
}

#[derive(Debug, clap::Args)]
struct NllArgs {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// UTF-8 text file scored as one sequence (BOS prepended when the model wants one).
    #[arg(long)]
    text_file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// With `--json`: also the K most likely next tokens and their log-probabilities at every
    /// position (`"top": [[[id, log p], …], …]`), to compare devices token by token.
    #[arg(long, requires = "json")]
    top_k: Option<usize>,
    /// Device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceArg,
}

#[derive(Debug, clap::Args)]
struct TrainCli {
    #[command(flatten)]
    args: train_cmd::TrainArgs,
    /// Device.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceArg,
}

#[derive(Debug, clap::Args)]
struct ExportHeadArgs {
    /// Model directory.
    #[arg(long, required_unless_present = "plm", conflicts_with = "plm")]
    model: Option<PathBuf>,
    /// Or fetch the head from the PLM owner's service (`pema serve`).
    #[arg(long)]
    plm: Option<String>,
    /// File holding the bearer token for `--plm` (default: `PEMA_TOKEN`).
    #[arg(long, requires = "plm")]
    plm_token_file: Option<PathBuf>,
    /// PEM CA certificate to trust for an `https://` `--plm`.
    #[arg(long, requires = "plm")]
    plm_ca: Option<PathBuf>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

fn load<B: Backend>(dir: &std::path::Path, device: &B::Device) -> Result<LoadedModel<B>> {
    load_model_dir::<B>(dir, device).with_context(|| format!("loading model {}", dir.display()))
}

/// The `k` largest entries of `row` as `[id, value]`, largest first (ties by lower id).
fn top_k(row: &[f32], k: usize) -> serde_json::Value {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let k = k.min(row.len());
    let by_value = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, by_value);
    }
    idx.truncate(k);
    idx.sort_by(by_value);
    idx.iter()
        .map(|&i| serde_json::json!([i, row[i]]))
        .collect::<Vec<_>>()
        .into()
}

fn unescape(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\t", "\t")
}

impl BackendTask for &GenerateArgs {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        if let Some(source) = &self.source {
            let args = self.decode_args()?;
            let pair = pema_memory::Pair {
                source: source.clone(),
                target: String::new(),
                line: 1,
            };
            let s = match &self.plm {
                Some(url) => {
                    decode_cmd::run_remote::<B::InnerBackend>(&args, url, Some(&pair), &device)?
                }
                None => {
                    let m = load::<B::InnerBackend>(args.input.model_dir("generate")?, &device)?;
                    decode_cmd::run::<B::InnerBackend>(&args, &m, Some(&pair), &device)?
                }
            };
            eprintln!("{}", pema_pipeline::summary::to_json_line(&s)?);
            return Ok(());
        }
        let text = unescape(self.prompt.as_deref().unwrap_or(""));
        let run = |plm: &dyn Plm<B::InnerBackend>, tok: &pema_backbone::PemaTokenizer| {
            let prompt = tok.encode_prompt(&text)?;
            let stop = if self.stop_at_newline {
                tok.stop_ids()
            } else {
                tok.eos_ids().to_vec()
            };
            let opts = GenerateOptions::uniform(self.max_tokens, stop);
            let out = plm.generate(&[prompt], &opts, &mut Greedy)?;
            println!("{}", tok.decode(&out[0])?);
            anyhow::Ok(())
        };
        match (&self.plm, &self.model) {
            (Some(url), _) => {
                let plm = remote::connect_plm::<B::InnerBackend>(
                    url,
                    self.plm_token_file.as_deref(),
                    self.plm_ca.as_deref(),
                    &device,
                )?;
                let tok = plm.tokenizer()?;
                run(&plm, &tok)
            }
            (None, Some(dir)) => {
                let m = load::<B::InnerBackend>(dir, &device)?;
                run(&m.model, &m.tokenizer)
            }
            (None, None) => anyhow::bail!("give --model or --plm"),
        }
    }
}

impl BackendTask for &NllArgs {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let m = load::<B::InnerBackend>(&self.model, &device)?;
        let text = std::fs::read_to_string(&self.text_file)
            .with_context(|| format!("reading {}", self.text_file.display()))?;
        let ids = m.tokenizer.encode_prompt(&text)?;
        let (nll, n) = m.model.nll(&ids)?;
        if self.json {
            let mut v = serde_json::json!({
                "model": m.model.config.name,
                "file": self.text_file,
                "mean_nll": nll,
                "tokens": n,
                "perplexity": nll.exp(),
                "bos": m.tokenizer.add_bos(),
            });
            if let Some(k) = self.top_k {
                let lp = m.model.log_probs_all(&ids)?;
                let [_, vocab] = lp.dims();
                let values = lp.into_data().convert::<f32>().into_vec::<f32>()?;
                v["top"] = values
                    .chunks(vocab.max(1))
                    .map(|row| top_k(row, k))
                    .collect::<Vec<_>>()
                    .into();
            }
            println!("{v}");
        } else {
            println!(
                "mean NLL {nll:.4} nats/token over {n} predicted tokens (perplexity {:.2})",
                nll.exp()
            );
        }
        Ok(())
    }
}

impl BackendTask for &TrainCli {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        train_cmd::run::<B>(&self.args, &device, self.device == DeviceArg::Cpu)
    }
}

impl BackendTask for &decode_cmd::DecodeArgs {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let summary = match &self.input.plm {
            Some(url) => decode_cmd::run_remote::<B::InnerBackend>(self, url, None, &device)?,
            None => {
                let mut m = load::<B::InnerBackend>(self.input.model_dir("decode")?, &device)?;
                if let Some(dir) = &self.lora {
                    m.model = pema_lora::load_merged(&m, dir, &device)
                        .with_context(|| format!("loading LoRA weights {}", dir.display()))?;
                }
                decode_cmd::run::<B::InnerBackend>(self, &m, None, &device)?
            }
        };
        if let Some(path) = &self.summary {
            pema_pipeline::summary::write_json_line(path, &summary)?;
        }
        eprintln!("{}", pema_pipeline::summary::to_json_line(&summary)?);
        Ok(())
    }
}

impl BackendTask for &knn_cmd::KnnTuneArgs {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        knn_cmd::run::<B::InnerBackend>(self, &device).map(|_| ())
    }
}

impl BackendTask for &train_cmd::TuneLambdaArgs {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        train_cmd::tune_lambda::<B::InnerBackend>(self, &device)
    }
}

impl BackendTask for &ExportHeadArgs {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let head = match (&self.plm, &self.model) {
            (Some(url), _) => remote::connect_plm::<B::InnerBackend>(
                url,
                self.plm_token_file.as_deref(),
                self.plm_ca.as_deref(),
                &device,
            )?
            .head()
            .clone(),
            (None, Some(dir)) => load::<B::InnerBackend>(dir, &device)?.model.head,
            (None, None) => anyhow::bail!("give --model or --plm"),
        };
        head.save(&self.out)?;
        eprintln!(
            "head of {} written to {} (fingerprint {})",
            head.model,
            self.out.display(),
            head.fingerprint
        );
        Ok(())
    }
}

impl BackendTask for &remote::ServeCmdArgs {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        remote::serve::<B::InnerBackend>(self, &device)
    }
}

struct MemoryBuild<'a>(&'a memory_cmd::BuildArgs);

impl BackendTask for MemoryBuild<'_> {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        if let Some(url) = &self.0.input.plm {
            return memory_cmd::build_remote::<B::InnerBackend>(self.0, url, &device);
        }
        let model_dir = self.0.input.model_dir("memory build")?;
        let m = load::<B::InnerBackend>(model_dir, &device)?;
        let info = pema_memory::ModelInfo {
            name: m.model.config.name.clone(),
            weights_sha256: m.weights_sha256.clone(),
            hidden_size: m.model.config.hidden_size,
            state: pema_memory::KeyState::pre_final_norm(m.model.config.n_layers - 1),
        };
        let template = pema_memory::PromptTemplate::resolve(&self.0.input.template)?;
        let (engine, _) = serve_args::engine(
            &m.model,
            Some(model_dir),
            &m.tokenizer,
            &template,
            &self.0.serve.options(self.0.batch_size, true),
            pema_pipeline::CpuWeights::F32,
        )?;
        memory_cmd::build::<B::InnerBackend, _, _>(self.0, &engine, &m.tokenizer, &info)?;
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    // Errors carry a backtrace only when asked for (see `report`); anyhow captures one
    // whenever RUST_LIB_BACKTRACE (else RUST_BACKTRACE) says so.
    let capture = if report::backtraces_wanted() {
        "1"
    } else {
        "0"
    };
    // SAFETY: the first statement of `main`: no other thread exists that could read the
    // environment concurrently.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", capture) };
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => report::fail(&e),
    }
}

fn run(cli: &Cli) -> Result<()> {
    preflight::files_of(&cli.command).check()?;
    match &cli.command {
        Command::Generate(a) => dispatch(a.device, a),
        Command::Nll(a) => dispatch(a.device, a),
        Command::Decode(a) => dispatch(a.device, a),
        Command::Score(a) => score::run(a),
        Command::Memory(memory_cmd::MemoryCmd::Build(a)) => {
            dispatch(DeviceArg::default(), MemoryBuild(a))
        }
        Command::Memory(cmd) => memory_cmd::run(cmd),
        Command::Train(a) => dispatch(a.device, a),
        Command::ExportHead(a) => dispatch(DeviceArg::Cpu, a),
        Command::KnnTune(a) => dispatch(a.device, a),
        Command::Lora(a) => dispatch(a.device, a),
        Command::TuneLambda(a) => dispatch(a.device, a),
        Command::Serve(a) => dispatch(a.device, a),
        Command::BenchStep(a) => dispatch(a.device, a),
    }
}
