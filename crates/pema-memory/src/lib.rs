//! # pema-memory — PEMA's external memory
//!
//! The external memory is the set of pairs (f(c_t), y_t): the context representation produced
//! by the PLM owner's model and the data owner's gold target token (paper §2).
//!
//! - [`manifest`]: the on-disk layout (a directory: `manifest.json` + append-only shards).
//! - [`writer`]: crash-safe, append-only writing with resume; no size pre-pass.
//! - [`store`]: [`MemoryStore`], the memory-mapped, zero-copy reader (a [`MemorySource`]).
//! - [`verify()`]: checks sizes, checksums and consistency of every shard, listing every problem
//!   (and, as warnings, the leftovers of an interrupted build).
//! - [`compat`]: checks where a memory meets a model (key width, vocabulary, tokenizer,
//!   weights; values inside the vocabulary) and [`MemoryStore::open_verified`] for training.
//! - [`batch`]: seeded shuffled or in-order batches as burn tensors on any backend.
//! - [`knn`]: exact k-nearest-neighbour search (L2, inner product) for kNN-LM.
//! - [`builder`]: runs the PLM over (source, target) pairs ([`pairs`], [`template`]) and writes
//!   the memory, free-running as in the paper or teacher-forced.
//! - [`toy`]: a deterministic toy PLM and tokenizer for tests.
//!
//! Train and dev memories are two directories built from the train and dev pairs files.

pub mod batch;
pub mod builder;
pub mod compat;
pub mod error;
pub mod knn;
pub mod manifest;
pub mod pairs;
pub mod store;
pub mod template;
pub mod toy;
pub mod verify;
pub mod writer;

pub use batch::{BatchOrder, MemoryBatch, batches};
pub use builder::{
    BuildConfig, BuildSummary, LOW_ENTRIES_PER_PAIR, ModelInfo, PairTokenizer, build_memory,
    validate_batch_size,
};
pub use compat::ModelCheck;
pub use error::MemoryError;
pub use knn::{ExactKnn, Metric, Neighbor};
pub use manifest::{BuildMode, KeyDtype, KeyState, Manifest, MemoryMeta};
pub use pairs::{Pair, PairsFile};
pub use store::MemoryStore;
pub use template::PromptTemplate;
pub use verify::{Problem, VerifyReport, verify};
pub use writer::{MemoryWriter, Provenance, ShardData};

/// At most `max` entry ids spread evenly over `0..n` (all of them when `n ≤ max`): the dev
/// subsample used by validation and by λ/kNN tuning when a dev memory is larger than a budget.
pub fn evenly_spaced(n: usize, max: usize) -> Vec<u64> {
    let take = n.min(max.max(1));
    (0..take).map(|i| (i * n / take) as u64).collect()
}

/// Random access to the (key, value) entries of an external memory: what training reads.
pub trait MemorySource {
    /// Number of entries N.
    fn len(&self) -> usize;
    /// True when the memory has no entries.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Key width d (the PLM's hidden size).
    fn hidden_size(&self) -> usize;
    /// Appends the keys (f32, row-major `[ids.len(), d]`) and values of entries `ids`.
    fn gather(
        &self,
        ids: &[u64],
        keys: &mut Vec<f32>,
        values: &mut Vec<u32>,
    ) -> Result<(), MemoryError>;
    /// A fingerprint of the memory's contents (recorded in trained adapters).
    fn fingerprint(&self) -> String;
    /// The recorded metadata (model, vocabulary, tokenizer), when the memory has a manifest.
    fn meta(&self) -> Option<&MemoryMeta> {
        None
    }
}

/// A memory held in RAM: for tests, synthetic tasks and small experiments.
#[derive(Debug, Clone)]
pub struct InMemory {
    /// Keys, row-major `[n, d]`.
    pub keys: Vec<f32>,
    /// Values (gold token ids), `[n]`.
    pub values: Vec<u32>,
    /// Key width.
    pub d: usize,
    /// Free-form fingerprint.
    pub tag: String,
}

impl MemorySource for InMemory {
    fn len(&self) -> usize {
        self.values.len()
    }
    fn hidden_size(&self) -> usize {
        self.d
    }
    fn gather(
        &self,
        ids: &[u64],
        keys: &mut Vec<f32>,
        values: &mut Vec<u32>,
    ) -> Result<(), MemoryError> {
        for &i in ids {
            let i = usize::try_from(i)
                .ok()
                .filter(|&i| i < self.values.len())
                .ok_or(MemoryError::OutOfRange {
                    index: i,
                    len: self.values.len() as u64,
                })?;
            keys.extend_from_slice(&self.keys[i * self.d..(i + 1) * self.d]);
            values.push(self.values[i]);
        }
        Ok(())
    }
    fn fingerprint(&self) -> String {
        self.tag.clone()
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Shared helpers of the unit tests.
    use std::path::Path;

    use crate::batch::SplitMix64;
    use crate::manifest::{BuildMode, KeyDtype, KeyState, MemoryMeta};
    use crate::writer::{MemoryWriter, Provenance, ShardData};

    /// Metadata of a synthetic memory.
    pub fn meta(d: usize, dtype: KeyDtype, pairs_total: u64, per_shard: u64) -> MemoryMeta {
        MemoryMeta {
            model_name: "synthetic".into(),
            model_sha256: "0".repeat(64),
            hidden_size: d,
            vocab_size: Some(1000),
            state: KeyState::pre_final_norm(0),
            dtype,
            tokenizer_fingerprint: "none".into(),
            template_name: "mt".into(),
            template: "{source}".into(),
            mode: BuildMode::External,
            max_extra_steps: 10,
            data_file: "synthetic".into(),
            data_sha256: "0".repeat(64),
            pairs_total,
            pairs_per_shard: per_shard,
            batch_size: 1,
        }
    }

    /// Writes a synthetic memory: pair p has `p % 4` entries, keys random (seeded); returns
    /// the (keys, values, provenance) written, in order.
    pub fn synthetic(
        dir: &Path,
        d: usize,
        dtype: KeyDtype,
        pairs: u64,
        per_shard: u64,
        seed: u64,
    ) -> (Vec<f32>, Vec<u32>, Vec<Provenance>) {
        let mut w = MemoryWriter::open_or_create(dir, meta(d, dtype, pairs, per_shard))
            .expect("create memory");
        let mut rng = SplitMix64(seed);
        let (mut keys, mut values, mut prov) = (Vec::new(), Vec::new(), Vec::new());
        let mut start = 0;
        while start < pairs {
            let end = (start + per_shard).min(pairs);
            let mut s = ShardData::new(start, end);
            for p in start..end {
                for t in 0..(p % 4) as u32 {
                    let k: Vec<f32> = (0..d)
                        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
                        .collect();
                    let k = if dtype == KeyDtype::F16 {
                        k.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
                    } else {
                        k
                    };
                    let v = (rng.next_u64() % 1000) as u32;
                    let pr = Provenance {
                        pair: p as u32,
                        step: t,
                    };
                    s.push(&k, v, pr);
                    keys.extend(k);
                    values.push(v);
                    prov.push(pr);
                }
            }
            w.commit_shard(&s).expect("commit");
            start = end;
        }
        w.finish().expect("finish");
        (keys, values, prov)
    }
}
