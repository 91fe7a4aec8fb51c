//! The kNN-LM baseline's datastore: the training memory read standardised (the same key
//! statistics PEMA uses), its exact L2 index, and the tuned parameters.

use std::path::Path;

use burn::tensor::backend::Backend;
use pema_memory::{ExactKnn, MemoryStore, Metric, ModelCheck};
use pema_schedule::{KnnLmParams, KnnTuneReport, StandardizedSource};

use crate::error::{PipelineError, Result};

/// The datastore of kNN-LM: a memory and its per-dimension key statistics.
pub struct Datastore {
    store: MemoryStore,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Datastore {
    /// Opens a memory and computes its key statistics.
    pub fn open(dir: &Path) -> Result<Self> {
        let store = MemoryStore::open(dir)?;
        let (mean, std) =
            pema_adapter::key_stats_host(&store, &format!("{} (kNN datastore)", dir.display()))?;
        Ok(Self { store, mean, std })
    }

    /// Checks the datastore against the model it is used with: key width, recorded vocabulary
    /// and tokenizer, and every value inside the vocabulary (errors name the memory directory
    /// and the first bad entry).
    pub fn check_model(&self, model: &ModelCheck<'_>) -> Result<()> {
        Ok(self.store.check_model(model)?)
    }

    /// The memory.
    pub fn store(&self) -> &MemoryStore {
        &self.store
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

/// Reads the parameters chosen by a tuning report (its `best.params`) and validates them
/// (k ≥ 1, T finite and > 0, λ ∈ [0, 1]); an invalid value is a [`PipelineError::Params`]
/// naming the file. A k above the datastore's size is harmless: the search clamps it.
pub fn read_params(path: &Path) -> Result<KnnLmParams> {
    let report: KnnTuneReport = crate::summary::read_json(path)?;
    report
        .best
        .params
        .validate()
        .map_err(|e| PipelineError::Params {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(report.best.params)
}
