//! `pema knn-tune`: chooses the kNN-LM baseline's k, temperature and λ on the dev memory
//! (token-level NLL of the gold values, as kNN-LM tunes on validation perplexity) and writes
//! them as JSON for `pema decode --knn-memory … --knn-params …`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use pema_memory::{ExactKnn, MemoryStore, Metric};
use pema_schedule::{KnnLmParams, KnnTuneReport, StandardizedSource, tune_knn_lm};

/// Arguments of `pema knn-tune`.
#[derive(clap::Args, Debug, Clone)]
pub struct KnnTuneArgs {
    /// The datastore: the training memory (the same one PEMA trains on).
    #[arg(long)]
    pub memory: PathBuf,
    /// Dev memory whose gold values score each setting.
    #[arg(long)]
    pub dev_memory: PathBuf,
    /// The exported LM head (gives P_LM of each dev context).
    #[arg(long)]
    pub head: PathBuf,
    /// Output JSON (the chosen parameters and the whole grid).
    #[arg(long)]
    pub out: PathBuf,
    /// Candidate k values.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32,64")]
    pub k: Vec<usize>,
    /// Candidate temperatures, as multiples of the mean nearest-neighbour distance.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.3,1,3,10")]
    pub temperature_factors: Vec<f64>,
    /// Candidate λ values (0 included: kNN-LM may turn itself off on dev).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.02,0.05,0.1,0.2,0.3,0.5,0.7,0.9"
    )]
    pub lambda: Vec<f64>,
    /// At most this many dev entries (evenly spaced).
    #[arg(long, default_value_t = 4000)]
    pub max_dev: usize,
    /// Device.
    #[arg(long, value_enum, default_value_t)]
    pub device: crate::backend::DeviceArg,
    #[command(flatten)]
    pub head_opts: crate::head_args::HeadArgs,
}

/// The datastore of kNN-LM: the memory, read standardised, and its exact index.
pub struct Datastore {
    store: MemoryStore,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Datastore {
    /// Opens a memory and computes its key statistics.
    pub fn open(dir: &Path) -> Result<Self> {
        let store = MemoryStore::open(dir)
            .with_context(|| format!("opening the kNN datastore {}", dir.display()))?;
        let (mean, std) = pema_adapter::key_stats_host(&store)?;
        Ok(Self { store, mean, std })
    }

    /// The standardised view of the memory.
    pub fn standardized(&self) -> Result<StandardizedSource<'_>> {
        Ok(StandardizedSource::new(
            &self.store,
            self.mean.clone(),
            self.std.clone(),
        )?)
    }
}

/// Builds the exact L2 index over the standardised keys on `device`.
pub fn index<B: Backend>(keys: &StandardizedSource<'_>, device: &B::Device) -> Result<ExactKnn<B>> {
    Ok(ExactKnn::new(keys, Metric::L2, 0, device)?)
}

/// Reads parameters written by `pema knn-tune` (the `best.params` object).
pub fn read_params(path: &Path) -> Result<KnnLmParams> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let p: KnnLmParams = serde_json::from_value(v["best"]["params"].clone())
        .with_context(|| format!("{}: no best.params object", path.display()))?;
    p.validate()?;
    Ok(p)
}

/// Runs `pema knn-tune` on backend `B`.
pub fn run<B: Backend>(args: &KnnTuneArgs, device: &B::Device) -> Result<KnnTuneReport> {
    let on_cpu = args.device == crate::backend::DeviceArg::Cpu;
    let head = args.head_opts.load::<B>(&args.head, device, on_cpu)?;
    let ds = Datastore::open(&args.memory)?;
    let keys = ds.standardized()?;
    let idx = index::<B>(&keys, device)?;
    let dev = MemoryStore::open(&args.dev_memory)
        .with_context(|| format!("opening the dev memory {}", args.dev_memory.display()))?;
    let report = tune_knn_lm(
        &idx,
        &keys,
        &dev,
        &head,
        &args.k,
        &args.temperature_factors,
        &args.lambda,
        args.max_dev,
    )?;
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "kNN-LM on {} dev entries: best k {}, T {:.4}, λ {} (dev NLL {:.4}; PLM alone {:.4})",
        report.dev_entries,
        report.best.params.k,
        report.best.params.temperature,
        report.best.params.lambda,
        report.best.nll,
        report.plm_nll
    );
    Ok(report)
}
