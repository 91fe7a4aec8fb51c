//! `pema knn-tune`: chooses the kNN-LM baseline's k, temperature and λ on the dev memory
//! (token-level NLL of the gold values, as kNN-LM tunes on validation perplexity) and writes
//! them as JSON for `pema decode --knn-memory … --knn-params …`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use pema_memory::MemoryStore;
use pema_pipeline::knn::{Datastore, index};
use pema_pipeline::summary::write_json_pretty;
use pema_schedule::{KnnTuneReport, tune_knn_lm};

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
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32,64", value_parser = crate::values::count)]
    pub k: Vec<usize>,
    /// Candidate temperatures, as multiples of the mean nearest-neighbour distance.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.3,1,3,10", value_parser = crate::values::positive)]
    pub temperature_factors: Vec<f64>,
    /// Candidate λ values (0 included: kNN-LM may turn itself off on dev).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.02,0.05,0.1,0.2,0.3,0.5,0.7,0.9",
        value_parser = crate::values::unit,
    )]
    pub lambda: Vec<f64>,
    /// At most this many dev entries (evenly spaced).
    #[arg(long, default_value_t = 4000, value_parser = crate::values::count)]
    pub max_dev: usize,
    /// Device.
    #[arg(long, value_enum, default_value_t)]
    pub device: crate::backend::DeviceArg,
    #[command(flatten)]
    pub head_opts: crate::head_args::HeadArgs,
}

/// Runs `pema knn-tune` on backend `B`.
pub fn run<B: Backend>(args: &KnnTuneArgs, device: &B::Device) -> Result<KnnTuneReport> {
    let on_cpu = args.device == crate::backend::DeviceArg::Cpu;
    let head = args.head_opts.load::<B>(&args.head, device, on_cpu)?;
    let ds = Datastore::open(&args.memory)
        .with_context(|| format!("opening the kNN datastore {}", args.memory.display()))?;
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
    write_json_pretty(&args.out, &report)?;
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
