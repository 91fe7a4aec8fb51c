//! Checks made where a memory meets a model: its key width, vocabulary and tokenizer against
//! the model's ([`MemoryStore::check_model`]), every value inside the vocabulary
//! ([`MemoryStore::check_values`]), and the shards' checksums when it is opened for training
//! ([`MemoryStore::open_verified`]).

use std::path::Path;

use crate::MemorySource;
use crate::error::{MemoryError, Result};
use crate::manifest::MemoryMeta;
use crate::store::MemoryStore;
use crate::verify::sha256_file;

/// What a memory is checked against: the model (or exported head) and tokenizer it is used with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelCheck<'a> {
    /// The model's hidden size d (the keys' width must equal it).
    pub hidden_size: usize,
    /// The model's vocabulary size (every value must be below it).
    pub vocab_size: usize,
    /// The tokenizer's fingerprint, when known (compared with the recorded one).
    pub tokenizer_fingerprint: Option<&'a str>,
    /// sha256 of the model's weights (`LoadedModel::weights_sha256`), when known (compared
    /// with the recorded `model_sha256`): catches another model of the same shape.
    pub model_sha256: Option<&'a str>,
}

impl MemoryStore {
    /// Opens the memory in `dir` and checks the sha256 of every committed shard file against
    /// the manifest ([`MemoryError::Checksum`] naming the first file that differs): what
    /// training uses, so that it never trains on a memory `verify` rejects.
    pub fn open_verified(dir: &Path) -> Result<Self> {
        let store = Self::open(dir)?;
        for s in &store.manifest().shards {
            for info in [&s.keys, &s.values, &s.provenance] {
                let path = dir.join(&info.file);
                let found = sha256_file(&path)?;
                if found != info.sha256 {
                    return Err(MemoryError::Checksum {
                        path,
                        expected: info.sha256.clone(),
                        found,
                    });
                }
            }
        }
        Ok(store)
    }

    /// Checks that the memory fits `model`: equal key width, the recorded vocabulary (when
    /// recorded) equal to the model's, the recorded tokenizer fingerprint equal to the given
    /// one (when both are known), and every value below the model's vocabulary
    /// ([`MemoryStore::check_values`]). Errors name the memory and each recorded → model value.
    pub fn check_model(&self, model: &ModelCheck<'_>) -> Result<()> {
        let diff = mismatches(self.hidden_size(), Some(&self.manifest().meta), model);
        if !diff.is_empty() {
            return Err(MemoryError::ModelMismatch {
                path: self.dir().to_path_buf(),
                message: format!("built with {}", diff.join("; ")),
            });
        }
        self.check_values(model.vocab_size)
    }

    /// Checks that every value (gold token id) is below `vocab`; the error names the first
    /// entry that is not, its shard file and its value.
    pub fn check_values(&self, vocab: usize) -> Result<()> {
        for s in 0..self.num_shards() {
            let values = self.shard_values(s);
            if let Some(j) = values.iter().position(|&v| v as usize >= vocab) {
                return Err(MemoryError::ValueOutOfVocab {
                    path: self.dir().to_path_buf(),
                    entry: self.shard_range(s).start + j as u64,
                    file: self.manifest().shards[s].values.file.clone(),
                    value: values[j],
                    vocab,
                });
            }
        }
        Ok(())
    }
}

/// What differs between a memory (key width `d`, recorded metadata) and `model`.
fn mismatches(d: usize, meta: Option<&MemoryMeta>, model: &ModelCheck<'_>) -> Vec<String> {
    let name = meta.map_or("unrecorded", |m| m.model_name.as_str());
    let mut diff = Vec::new();
    if d != model.hidden_size {
        diff.push(format!(
            "key width d {d} (model `{name}`), the model's hidden size is {}",
            model.hidden_size
        ));
    }
    if let Some(v) = meta.and_then(|m| m.vocab_size)
        && v != model.vocab_size
    {
        diff.push(format!(
            "vocabulary {v} (model `{name}`), the model's is {}",
            model.vocab_size
        ));
    }
    if let (Some(t), Some(m)) = (model.tokenizer_fingerprint, meta)
        && t != m.tokenizer_fingerprint
    {
        diff.push(format!(
            "tokenizer fingerprint {}, the tokenizer's is {t}",
            m.tokenizer_fingerprint
        ));
    }
    if let (Some(w), Some(m)) = (model.model_sha256, meta)
        && w != m.model_sha256
    {
        diff.push(format!(
            "weights sha256 {}, the model's is {w}",
            m.model_sha256
        ));
    }
    diff
}

/// Checks any memory source against `model`: key width, and the recorded vocabulary and
/// tokenizer when the source has a manifest ([`MemorySource::meta`]). Values are not scanned
/// (see [`MemoryStore::check_values`], `ExactKnn::check_values`).
pub fn check_source(src: &dyn MemorySource, model: &ModelCheck<'_>) -> Result<()> {
    let diff = mismatches(src.hidden_size(), src.meta(), model);
    if diff.is_empty() {
        return Ok(());
    }
    Err(MemoryError::ModelMismatch {
        path: src.fingerprint().into(),
        message: format!("built with {}", diff.join("; ")),
    })
}

/// Checks the values of any memory source against `vocab` (in chunks); the error names the
/// first bad entry. For a [`MemoryStore`] prefer [`MemoryStore::check_values`] (zero-copy).
pub fn check_source_values(src: &dyn MemorySource, vocab: usize) -> Result<()> {
    let n = src.len() as u64;
    let mut start = 0u64;
    while start < n {
        let ids: Vec<u64> = (start..(start + 4096).min(n)).collect();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        src.gather(&ids, &mut k, &mut v)?;
        if let Some(j) = v.iter().position(|&x| x as usize >= vocab) {
            return Err(MemoryError::Invalid(format!(
                "memory `{}`: entry {} has value {}, outside the vocabulary of {vocab} tokens",
                src.fingerprint(),
                ids[j],
                v[j]
            )));
        }
        start += ids.len() as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{KeyDtype, Manifest};
    use crate::test_util::synthetic;

    fn check(d: usize, vocab: usize, tok: Option<&str>) -> ModelCheck<'_> {
        ModelCheck {
            hidden_size: d,
            vocab_size: vocab,
            tokenizer_fingerprint: tok,
            model_sha256: None,
        }
    }

    #[test]
    fn a_memory_of_another_model_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        synthetic(dir.path(), 4, KeyDtype::F32, 8, 4, 1);
        let s = MemoryStore::open(dir.path()).expect("open");
        s.check_model(&check(4, 1000, Some("none"))).expect("fits");
        let e = s.check_model(&check(5, 1000, None)).expect_err("width");
        assert!(matches!(e, MemoryError::ModelMismatch { .. }), "{e}");
        assert!(e.to_string().contains("key width d 4"), "{e}");
        let e = s.check_model(&check(4, 900, None)).expect_err("vocab");
        assert!(e.to_string().contains("vocabulary 1000"), "{e}");
        let e = s
            .check_model(&check(4, 1000, Some("other")))
            .expect_err("tok");
        assert!(e.to_string().contains("tokenizer fingerprint"), "{e}");
        let other = "1".repeat(64);
        let e = s
            .check_model(&ModelCheck {
                model_sha256: Some(&other),
                ..check(4, 1000, None)
            })
            .expect_err("weights");
        assert!(e.to_string().contains("weights sha256"), "{e}");
    }

    #[test]
    fn values_outside_the_vocabulary_name_the_first_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, values, _) = synthetic(dir.path(), 2, KeyDtype::F32, 12, 4, 3);
        let s = MemoryStore::open(dir.path()).expect("open");
        let max = *values.iter().max().expect("values");
        s.check_values(max as usize + 1).expect("all inside");
        let first = values.iter().position(|&v| v == max).expect("max") as u64;
        match s.check_values(max as usize) {
            Err(MemoryError::ValueOutOfVocab { entry, value, .. }) => {
                assert_eq!((entry, value), (first, max));
            }
            other => panic!("expected ValueOutOfVocab, got {other:?}"),
        }
        let e = check_source_values(&s, max as usize).expect_err("source");
        assert!(e.to_string().contains(&format!("entry {first}")), "{e}");
    }

    #[test]
    fn open_verified_rejects_a_corrupted_shard() {
        let dir = tempfile::tempdir().expect("tempdir");
        synthetic(dir.path(), 4, KeyDtype::F32, 8, 4, 2);
        MemoryStore::open_verified(dir.path()).expect("sound");
        let m = Manifest::load(dir.path()).expect("manifest");
        let k = dir.path().join(&m.shards[1].keys.file);
        let mut b = std::fs::read(&k).expect("read");
        b[3] ^= 0x40;
        std::fs::write(&k, b).expect("write");
        MemoryStore::open(dir.path()).expect("plain open does not hash");
        let e = MemoryStore::open_verified(dir.path()).expect_err("corrupt");
        assert!(matches!(e, MemoryError::Checksum { .. }), "{e}");
        assert!(e.to_string().contains("shard-000001.keys"), "{e}");
    }
}
