//! `pema decode`: argument parsing for [`pema_pipeline::decode`] (batched greedy decoding of a
//! pairs file with the PLM, PEMA, kNN-LM or a LoRA-merged PLM; paper §4) and the files it
//! writes: one hypothesis per line, aligned with the input pairs, plus optional references,
//! traces and summary.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use pema_adapter::{PemaAdapter, PemaLogits};
use pema_backbone::{LmHead, LoadedModel, PemaTokenizer, Plm};
use pema_memory::{Pair, PairsFile, PromptTemplate};
use pema_pipeline::decode::DEFAULT_LENGTH_RATIO;
use pema_pipeline::summary::write_lines;
use pema_pipeline::{CpuWeights, DecodeMethod, DecodeRequest, DecodeSummary, knn};
use pema_schedule::{LengthSpec, Schedule, ScheduleKind};

/// `--schedule` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleArg {
    /// Gradual Unrolling.
    #[value(alias = "gradual-unrolling")]
    Gu,
    /// Constant λ.
    Constant,
}

impl From<ScheduleArg> for ScheduleKind {
    fn from(a: ScheduleArg) -> Self {
        match a {
            ScheduleArg::Gu => ScheduleKind::GradualUnrolling,
            ScheduleArg::Constant => ScheduleKind::Constant,
        }
    }
}

/// Arguments of `pema decode`.
#[derive(clap::Args, Debug, Clone)]
pub struct DecodeArgs {
    /// Model, pairs (targets are read only in oracle length mode and for `--refs-out`) and
    /// prompt template.
    #[command(flatten)]
    pub input: crate::args::TaskInput,
    /// Output file: one hypothesis per line.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the references (one per line) here, aligned with the hypotheses.
    #[arg(long)]
    pub refs_out: Option<PathBuf>,
    /// Decode only the first N pairs.
    #[arg(long, value_parser = crate::values::count)]
    pub limit: Option<usize>,
    /// Most sequences decoded together (continuous batching: a finished sequence's place is
    /// taken by the next prompt at once).
    #[arg(long, default_value_t = 8, value_parser = crate::values::count)]
    pub batch_size: usize,
    /// Serving options (shared prefix).
    #[command(flatten)]
    pub serve: crate::args::ServeArgs,
    #[command(flatten)]
    pub head: crate::head_args::HeadArgs,
    /// PEMA adapter directory; without it the PLM decodes alone.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// λ schedule: `gu` (Gradual Unrolling) or `constant`.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Gu)]
    pub schedule: ScheduleArg,
    /// λmax (GU's λ₀; the constant λ).
    #[arg(long, default_value_t = 0.9, value_parser = crate::values::unit)]
    pub lambda_max: f64,
    /// Optional λ floor m (GU variant λ = cur²·(1−m)+m; unused in the paper).
    #[arg(long, value_parser = crate::values::unit)]
    pub lambda_floor: Option<f64>,
    /// GU horizon L and maximum length: `ratio` (default, from the source length; no
    /// reference at test time), `oracle` (from the reference, the official code's leak;
    /// labelled as such) or a fixed number of steps.
    #[arg(long, default_value = "ratio", value_parser = parse_length)]
    pub length: LengthSpec,
    /// Target/source token-length ratio; default: the adapter's recorded ratio, else 1.5.
    #[arg(long, value_parser = crate::values::positive)]
    pub length_ratio: Option<f64>,
    /// LoRA directory from `pema lora`: decode with the LoRA-merged backbone.
    #[arg(long, conflicts_with_all = ["adapter", "knn_memory"])]
    pub lora: Option<PathBuf>,
    /// kNN-LM baseline: the datastore (a memory directory; exact L2 search over standardised
    /// keys). Needs `--knn-params`; excludes `--adapter`.
    #[arg(long, requires = "knn_params", conflicts_with = "adapter")]
    pub knn_memory: Option<PathBuf>,
    /// kNN-LM parameters: the JSON written by `pema knn-tune`.
    #[arg(long, requires = "knn_memory")]
    pub knn_params: Option<PathBuf>,
    /// Also write the decoding summary (tokens, seconds, tokens/s) as JSON here.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Write per-step traces (λ, P_LM and P_PEMA of the chosen token, winner) as JSON lines.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Device.
    #[arg(long, value_enum, default_value_t)]
    pub device: crate::backend::DeviceArg,
}

fn parse_length(s: &str) -> Result<LengthSpec, String> {
    s.parse()
        .map_err(|e: pema_schedule::ScheduleError| e.to_string())
}

/// Runs `pema decode` on a loaded model (LoRA already merged when `--lora` is given); with
/// `one`, decodes only that pair and prints its hypothesis (`pema generate --source`).
pub fn run<B: Backend>(
    args: &DecodeArgs,
    m: &LoadedModel<B>,
    one: Option<&Pair>,
    device: &B::Device,
) -> Result<DecodeSummary> {
    let template = PromptTemplate::resolve(&args.input.template)?;
    let start = Instant::now();
    // A LoRA-merged model has weights the GGUF does not: no packed weights then.
    let packed_dir = args
        .lora
        .is_none()
        .then_some(args.input.model_dir("decode")?);
    let on_cpu = args.device == crate::backend::DeviceArg::Cpu;
    let (engine, _) = crate::serve_args::engine(
        &m.model,
        packed_dir,
        &m.tokenizer,
        &template,
        &args.serve.options(args.batch_size, on_cpu),
        CpuWeights::Packed,
    )?;
    let plm = Source {
        plm: &engine,
        tokenizer: &m.tokenizer,
        head: &m.model.head,
        kernels: engine.kernels_name(),
        weights_sha256: Some(&m.weights_sha256),
    };
    decode_with(args, &plm, one, start.elapsed(), device)
}

/// Runs `pema decode` against the PLM owner's service at `url` (`--plm`); `one` as in [`run`].
pub fn run_remote<B: Backend>(
    args: &DecodeArgs,
    url: &str,
    one: Option<&Pair>,
    device: &B::Device,
) -> Result<DecodeSummary> {
    if args.lora.is_some() {
        anyhow::bail!("--lora merges weights into the PLM: it needs --model, not --plm");
    }
    if args.serve.weights.is_some() {
        eprintln!(
            "note: --weights is ignored with --plm (the server chooses: pema serve --weights)"
        );
    }
    let start = Instant::now();
    let (plm, tok) = crate::remote::connect::<B>(
        &args.input,
        url,
        args.batch_size,
        !args.serve.no_shared_prefix,
        device,
    )?;
    let source = Source {
        plm: &plm,
        tokenizer: &tok,
        head: plm.head(),
        kernels: "remote",
        weights_sha256: None,
    };
    decode_with(args, &source, one, start.elapsed(), device)
}

/// Where the PLM runs, its tokenizer and the frozen head.
pub struct Source<'a, B: Backend> {
    /// The PLM (an in-process engine or a remote one).
    pub plm: &'a dyn Plm<B>,
    /// Its tokenizer.
    pub tokenizer: &'a PemaTokenizer,
    /// The frozen head (final norm + W_hd).
    pub head: &'a LmHead<B>,
    /// What runs it, for the log line.
    pub kernels: &'static str,
    /// sha256 of the PLM's weights where known (in process): a kNN datastore must come from
    /// the same model.
    pub weights_sha256: Option<&'a str>,
}

/// Decodes with `source`; the summary's time is `setup` (engine or connection) plus decoding.
fn decode_with<B: Backend>(
    args: &DecodeArgs,
    source: &Source<'_, B>,
    one: Option<&Pair>,
    setup: std::time::Duration,
    device: &B::Device,
) -> Result<DecodeSummary> {
    let file;
    let pairs = match one {
        Some(pair) => std::slice::from_ref(pair),
        None => {
            file = PairsFile::read(&args.input.pairs)?;
            let n = args.limit.unwrap_or(file.len()).min(file.len());
            &file.pairs[..n]
        }
    };
    let n = pairs.len();
    let (decoded, name, took) = decode_some(args, source, pairs, device)?;
    let seconds = (setup + took).as_secs_f64();
    if one.is_some() {
        println!("{}", decoded.hypotheses.join("\n"));
    } else {
        eprintln!(
            "decoded {}/{n} ({})",
            decoded.hypotheses.len(),
            source.kernels
        );
        write_lines(&args.out, &decoded.hypotheses)?;
        if let Some(path) = &args.refs_out {
            write_lines(path, pairs.iter().map(|p| p.target.replace('\n', " ")))?;
        }
        if let Some(path) = &args.trace {
            pema_schedule::write_traces_jsonl(path, &decoded.traces)?;
        }
    }
    Ok(DecodeSummary {
        sequences: n,
        tokens: decoded.tokens,
        seconds,
        tokens_per_s: decoded.tokens as f64 / seconds.max(1e-9),
        uses_reference: decoded.uses_reference,
        method: name,
    })
}

/// Decodes `pairs` with the method `args` describe (PLM, PEMA, kNN-LM); returns the outcome,
/// the method's name and the time decoding took (loading the adapter or datastore excluded).
pub fn decode_some<B: Backend>(
    args: &DecodeArgs,
    source: &Source<'_, B>,
    pairs: &[Pair],
    device: &B::Device,
) -> Result<(pema_pipeline::Decoded, String, std::time::Duration)> {
    let template = PromptTemplate::resolve(&args.input.template)?;
    let head = args.head.fused(source.head)?;
    let adapter = match &args.adapter {
        Some(dir) => Some(
            PemaAdapter::<B>::load(dir, &head, device)
                .with_context(|| format!("loading adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let length_ratio = args
        .length_ratio
        .or_else(|| adapter.as_ref().and_then(|(_, meta)| meta.length_ratio))
        .unwrap_or(DEFAULT_LENGTH_RATIO);
    if args.length.is_oracle() {
        eprintln!(
            "WARNING: --length oracle reads the references at test time (the official code's behaviour)"
        );
    }
    let datastore = match &args.knn_memory {
        Some(dir) => Some(
            knn::Datastore::open(dir)
                .with_context(|| format!("opening the kNN datastore {}", dir.display()))?,
        ),
        None => None,
    };
    if let (Some(d), Some(sha)) = (&datastore, source.weights_sha256) {
        // Another model of the same shape and tokenizer would pass every other check.
        d.check_model(&pema_memory::ModelCheck {
            hidden_size: source.head.hidden_size(),
            vocab_size: source.head.vocab_size(),
            tokenizer_fingerprint: Some(source.tokenizer.fingerprint()),
            model_sha256: Some(sha),
        })?;
    }
    let knn_keys = datastore.as_ref().map(|d| d.standardized()).transpose()?;
    let knn_index = knn_keys
        .as_ref()
        .map(|k| knn::index::<B>(k, device))
        .transpose()?;
    let method = match (&adapter, &knn_index, &knn_keys, &args.knn_params) {
        (Some((a, _)), ..) => DecodeMethod::Pema {
            logits: PemaLogits::new(a, &head)?,
            schedule: Schedule::new(args.schedule.into(), args.lambda_max, args.lambda_floor)?,
            trace: args.trace.is_some(),
        },
        (None, Some(index), Some(keys), Some(p)) => DecodeMethod::KnnLm {
            index,
            keys,
            params: knn::read_params(p)?,
        },
        _ => DecodeMethod::Plm,
    };
    let name = if args.lora.is_some() {
        "lora".to_string()
    } else {
        method.name()
    };
    let request = DecodeRequest {
        pairs,
        template: &template,
        length: args.length,
        length_ratio,
    };
    let start = Instant::now();
    let decoded = pema_pipeline::decode_pairs(source.plm, source.tokenizer, &request, method)?;
    Ok((decoded, name, start.elapsed()))
}
