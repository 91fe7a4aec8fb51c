//! `pema decode`: batched greedy decoding of a pairs file with the PLM alone or with PEMA
//! (log-space mixture, constant λ or Gradual Unrolling; paper §4). Writes one hypothesis per
//! line, aligned with the input pairs, plus optional per-step traces.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use pema_adapter::PemaAdapter;
use pema_backbone::{GenerateOptions, Greedy, LoadedModel, Plm};
use pema_memory::{PairsFile, PromptTemplate};
use pema_schedule::{
    KnnLmPolicy, OracleLengths, PemaPolicy, Schedule, parse_length_mode, plan_lengths,
};

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
    #[arg(long)]
    pub limit: Option<usize>,
    /// Most sequences decoded together (continuous batching: a finished sequence's place is
    /// taken by the next prompt at once).
    #[arg(long, default_value_t = 8)]
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
    #[arg(long, default_value = "gu")]
    pub schedule: String,
    /// λmax (GU's λ₀; the constant λ).
    #[arg(long, default_value_t = 0.9)]
    pub lambda_max: f64,
    /// Optional λ floor m (GU variant λ = cur²·(1−m)+m; unused in the paper).
    #[arg(long)]
    pub lambda_floor: Option<f64>,
    /// GU horizon L and maximum length: `ratio` (default, from the source length; no
    /// reference at test time), `oracle` (from the reference, the official code's leak;
    /// labelled as such) or a fixed number of steps.
    #[arg(long, default_value = "ratio")]
    pub length: String,
    /// Target/source token-length ratio; default: the adapter's recorded ratio, else 1.5.
    #[arg(long)]
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

/// Decoding summary printed as one JSON line on stderr.
#[derive(Debug, serde::Serialize)]
pub struct DecodeSummary {
    /// Sequences decoded.
    pub sequences: usize,
    /// Tokens generated.
    pub tokens: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Generated tokens per second.
    pub tokens_per_s: f64,
    /// Whether any length came from the reference (oracle mode).
    pub uses_reference: bool,
    /// "plm" or the schedule used.
    pub method: String,
}

/// Runs `pema decode` on a loaded model.
pub fn run<B: Backend>(
    args: &DecodeArgs,
    m: &LoadedModel<B>,
    device: &B::Device,
) -> Result<DecodeSummary> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let pairs = PairsFile::read(&args.input.pairs)?;
    let template = PromptTemplate::resolve(&args.input.template)?;
    let n = args.limit.unwrap_or(pairs.len()).min(pairs.len());
    let pairs = &pairs.pairs[..n];
    let tok = &m.tokenizer;
    let prompts = pairs
        .iter()
        .map(|p| tok.encode_prompt(&template.render(&p.source)))
        .collect::<Result<Vec<_>, _>>()?;
    let source_lens = pairs
        .iter()
        .map(|p| tok.encode_continuation(&p.source).map(|v| v.len()))
        .collect::<Result<Vec<_>, _>>()?;
    let head = args.head.fused(&m.model.head)?;
    let adapter = match &args.adapter {
        Some(dir) => Some(
            PemaAdapter::<B>::load(dir, &head, device)
                .with_context(|| format!("loading adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let ratio = args
        .length_ratio
        .or_else(|| adapter.as_ref().and_then(|(_, meta)| meta.length_ratio))
        .unwrap_or(1.5);
    let (horizon_mode, max_mode) = parse_length_mode(&args.length, Some(ratio))?;
    let oracle = if args.length.trim() == "oracle" {
        // The official code's horizon: tokens of prompt + source + reference (a test-time leak).
        let mut o = OracleLengths::default();
        for (p, prompt) in pairs.iter().zip(&prompts) {
            let r = tok.encode_continuation(&p.target)?.len();
            o.horizon.push(prompt.len() + r);
            o.reference.push(r);
        }
        eprintln!(
            "WARNING: --length oracle reads the references at test time (the official code's behaviour)"
        );
        Some(o)
    } else {
        None
    };
    let plan = plan_lengths(horizon_mode, max_mode, &source_lens, oracle.as_ref())?;
    let datastore = match &args.knn_memory {
        Some(dir) => Some(crate::knn_cmd::Datastore::open(dir)?),
        None => None,
    };
    let knn_keys = match &datastore {
        Some(ds) => Some(ds.standardized()?),
        None => None,
    };
    let knn = match (&knn_keys, &args.knn_params) {
        (Some(keys), Some(p)) => Some((
            crate::knn_cmd::index::<B>(keys, device)?,
            crate::knn_cmd::read_params(p)?,
        )),
        _ => None,
    };
    let stop = tok.stop_ids();
    let schedule = Schedule::from_cli(&args.schedule, args.lambda_max, args.lambda_floor)?;
    let mut hyps = Vec::with_capacity(n);
    let mut traces = Vec::new();
    let start = Instant::now();
    let mut tokens = 0;
    // Continuous batching over the whole file: at most --batch-size sequences at once.
    // A LoRA-merged model has weights the GGUF does not: no packed weights then.
    let packed_dir = args.lora.is_none().then_some(args.input.model.as_path());
    let engine = crate::backend::engine(
        &m.model,
        packed_dir,
        tok,
        &template,
        args.device,
        &args.serve,
        crate::args::WeightsArg::Packed,
        args.batch_size,
    )?;
    let opts = GenerateOptions {
        max_new_tokens: plan.max_new_tokens.clone(),
        stop_tokens: stop,
    };
    let out = if prompts.is_empty() {
        Vec::new()
    } else {
        match &adapter {
            None if knn.is_some() => {
                let (Some((index, params)), Some(keys)) = (&knn, &knn_keys) else {
                    bail!("kNN-LM datastore missing");
                };
                let mut policy = KnnLmPolicy::new(index, keys, *params)?;
                engine.generate(&prompts, &opts, &mut policy)?
            }
            None => engine.generate(&prompts, &opts, &mut Greedy)?,
            Some((a, _)) => {
                let pema = pema_adapter::PemaLogits::new(a, &head)?;
                let mut policy = PemaPolicy::new(pema, schedule, plan.horizons.clone())?;
                if args.trace.is_some() {
                    policy = policy.with_traces(0);
                }
                let out = engine.generate(&prompts, &opts, &mut policy)?;
                traces.extend(policy.take_traces());
                out
            }
        }
    };
    for ids in out {
        tokens += ids.len();
        let text = tok.decode(&ids)?;
        // One hypothesis per line: cut at the first newline (the paper's stopping rule).
        hyps.push(text.split('\n').next().unwrap_or("").trim().to_string());
    }
    eprint!("decoded {}/{n} ({})", hyps.len(), engine.kernels_name());
    eprintln!();
    let seconds = start.elapsed().as_secs_f64();
    let mut f = std::fs::File::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for h in &hyps {
        writeln!(f, "{h}")?;
    }
    if let Some(path) = &args.refs_out {
        let mut f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        for p in pairs {
            writeln!(f, "{}", p.target.replace('\n', " "))?;
        }
    }
    if let Some(path) = &args.trace {
        // Rows of a step come in batch order; write sequence after sequence.
        traces.sort_by_key(|t| (t.seq, t.step));
        pema_schedule::write_traces_jsonl(path, &traces)?;
    }
    Ok(DecodeSummary {
        sequences: n,
        tokens,
        seconds,
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        uses_reference: plan.uses_reference,
        method: if adapter.is_some() {
            format!("pema-{}", args.schedule)
        } else if knn.is_some() {
            "knn-lm".into()
        } else if args.lora.is_some() {
            "lora".into()
        } else {
            "plm".into()
        },
    })
}
