//! Append-only, crash-safe writing of a memory directory.
//!
//! Commit protocol for every shard: write its three files, fsync each, fsync the directory,
//! then atomically replace the manifest that names it ([`Manifest::store_atomic`]). A kill at
//! any moment leaves a directory whose manifest names only complete, durable shards; files of a
//! shard that was being written are not named and are overwritten when the build resumes.
//! There is no size pre-pass: the writer learns N as it goes.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{MemoryError, Result};
use crate::manifest::{
    FileInfo, KeyDtype, MANIFEST_FILE, Manifest, MemoryMeta, ShardInfo, hex, shard_file_names,
    sync_dir,
};

/// Where an entry comes from: its input pair and decoding step (y_t of pair `pair` at t = `step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Provenance {
    /// 0-based index of the input pair (non-blank line of the pairs file).
    pub pair: u32,
    /// Decoding step t within the target.
    pub step: u32,
}

/// The entries of one shard before they are written: f32 keys (converted on write).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardData {
    /// First pair index covered.
    pub pair_start: u64,
    /// One past the last pair index covered.
    pub pair_end: u64,
    /// Keys f(c_t), row-major `[n, d]`.
    pub keys: Vec<f32>,
    /// Values y_t, `[n]`.
    pub values: Vec<u32>,
    /// Provenance of each entry, `[n]`.
    pub provenance: Vec<Provenance>,
}

impl ShardData {
    /// An empty shard covering pairs `[pair_start, pair_end)`.
    pub fn new(pair_start: u64, pair_end: u64) -> Self {
        Self {
            pair_start,
            pair_end,
            ..Self::default()
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when the shard holds no entries.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Appends one entry (f(c_t), y_t) with its provenance.
    pub fn push(&mut self, key: &[f32], value: u32, provenance: Provenance) {
        self.keys.extend_from_slice(key);
        self.values.push(value);
        self.provenance.push(provenance);
    }
}

/// Writes a memory directory shard by shard; see the module docs for the commit protocol.
#[derive(Debug)]
pub struct MemoryWriter {
    dir: PathBuf,
    manifest: Manifest,
    /// Exclusive advisory lock on `build.lock`, released by the OS even after a kill.
    _lock: fs::File,
}

/// Name of the lock file that keeps two writers out of one memory directory.
pub const LOCK_FILE: &str = "build.lock";

fn lock_dir(dir: &Path) -> Result<fs::File> {
    let path = dir.join(LOCK_FILE);
    let f = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| MemoryError::io(&path, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(MemoryError::Invalid(format!(
            "{}: another process is writing this memory",
            path.display()
        ))),
        Err(fs::TryLockError::Error(e)) => Err(MemoryError::io(&path, e)),
    }
}

impl MemoryWriter {
    /// Starts a new memory in `dir` (created if needed), or reopens the one there to resume it.
    ///
    /// Resuming requires equal metadata except `pairs_per_shard` and `batch_size`, which are
    /// taken from the existing manifest (so that resumed shards and batches line up).
    /// Returns [`MemoryError::ResumeMismatch`] naming the differing fields otherwise.
    pub fn open_or_create(dir: &Path, meta: MemoryMeta) -> Result<Self> {
        if meta.hidden_size == 0 || meta.pairs_per_shard == 0 {
            return Err(MemoryError::Invalid(
                "hidden_size and pairs_per_shard must be positive".into(),
            ));
        }
        fs::create_dir_all(dir).map_err(|e| MemoryError::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let manifest_path = Manifest::path_in(dir);
        if manifest_path.exists() {
            let manifest = Manifest::load(dir)?;
            let diff = meta_differences(&manifest.meta, &meta);
            if !diff.is_empty() {
                return Err(MemoryError::ResumeMismatch {
                    path: dir.to_path_buf(),
                    message: format!("recorded metadata differs: {}", diff.join("; ")),
                });
            }
            // Committed shards must still be there at their recorded sizes.
            for s in &manifest.shards {
                for info in [&s.keys, &s.values, &s.provenance] {
                    let p = dir.join(&info.file);
                    let len = fs::metadata(&p).map_err(|e| MemoryError::io(&p, e))?.len();
                    if len != info.bytes {
                        return Err(MemoryError::ShardSize {
                            path: p,
                            expected: info.bytes,
                            found: len,
                            hint: String::new(),
                        });
                    }
                }
            }
            return Ok(Self {
                dir: dir.to_path_buf(),
                manifest,
                _lock: lock,
            });
        }
        let manifest = Manifest::new(meta);
        // Remove a temporary manifest left by a kill before the first commit.
        let _ = fs::remove_file(dir.join(format!("{MANIFEST_FILE}.tmp")));
        manifest.store_atomic(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            _lock: lock,
        })
    }

    /// The memory directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest as last committed.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Pairs `[0, committed_pairs)` are durable; a (resumed) build continues from here.
    pub fn committed_pairs(&self) -> u64 {
        self.manifest.committed_pairs
    }

    /// Writes `shard` durably, then commits it by atomically replacing the manifest.
    /// `shard.pair_start` must equal [`Self::committed_pairs`].
    pub fn commit_shard(&mut self, shard: &ShardData) -> Result<&ShardInfo> {
        let d = self.manifest.meta.hidden_size;
        let n = shard.values.len();
        if shard.pair_start != self.manifest.committed_pairs || shard.pair_end < shard.pair_start {
            return Err(MemoryError::Invalid(format!(
                "shard covers pairs [{}, {}) but the memory has committed [0, {})",
                shard.pair_start, shard.pair_end, self.manifest.committed_pairs
            )));
        }
        if shard.pair_end > self.manifest.meta.pairs_total {
            return Err(MemoryError::Invalid(format!(
                "shard ends at pair {} beyond pairs_total {}",
                shard.pair_end, self.manifest.meta.pairs_total
            )));
        }
        if shard.keys.len() != n * d || shard.provenance.len() != n {
            return Err(MemoryError::Invalid(format!(
                "shard has {} key floats, {} values, {} provenance records (d = {d})",
                shard.keys.len(),
                n,
                shard.provenance.len()
            )));
        }
        let index = u32::try_from(self.manifest.shards.len())
            .map_err(|_| MemoryError::Invalid("too many shards".into()))?;
        let (kf, vf, pf) = shard_file_names(index);
        let keys = match self.manifest.meta.dtype {
            KeyDtype::F32 => write_file(&self.dir, &kf, bytemuck::cast_slice(&shard.keys))?,
            KeyDtype::F16 => {
                let half: Vec<half::f16> =
                    shard.keys.iter().map(|&x| half::f16::from_f32(x)).collect();
                write_file(&self.dir, &kf, bytemuck::cast_slice(&half))?
            }
        };
        let values = write_file(&self.dir, &vf, bytemuck::cast_slice(&shard.values))?;
        let provenance = write_file(&self.dir, &pf, bytemuck::cast_slice(&shard.provenance))?;
        sync_dir(&self.dir)?;
        let info = ShardInfo {
            index,
            pair_start: shard.pair_start,
            pair_end: shard.pair_end,
            entries: n as u64,
            keys,
            values,
            provenance,
        };
        let mut next = self.manifest.clone();
        next.shards.push(info);
        next.committed_pairs = shard.pair_end;
        next.entries += n as u64;
        next.complete = next.committed_pairs == next.meta.pairs_total;
        next.store_atomic(&self.dir)?;
        self.manifest = next;
        let last = self.manifest.shards.len() - 1;
        Ok(&self.manifest.shards[last])
    }

    /// Marks the memory complete (all `pairs_total` pairs committed) and returns its manifest.
    pub fn finish(mut self) -> Result<Manifest> {
        if self.manifest.committed_pairs != self.manifest.meta.pairs_total {
            return Err(MemoryError::Invalid(format!(
                "finish with {} of {} pairs committed",
                self.manifest.committed_pairs, self.manifest.meta.pairs_total
            )));
        }
        if !self.manifest.complete {
            self.manifest.complete = true;
            self.manifest.store_atomic(&self.dir)?;
        }
        Ok(self.manifest)
    }
}

/// Writes `bytes` to `dir/name` (truncating), fsyncs it, and returns its [`FileInfo`].
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<FileInfo> {
    let path = dir.join(name);
    let f = fs::File::create(&path).map_err(|e| MemoryError::io(&path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    w.write_all(bytes).map_err(|e| MemoryError::io(&path, e))?;
    let f = w
        .into_inner()
        .map_err(|e| MemoryError::io(&path, e.into_error()))?;
    f.sync_all().map_err(|e| MemoryError::io(&path, e))?;
    Ok(FileInfo {
        file: name.to_string(),
        bytes: bytes.len() as u64,
        sha256: hex(&Sha256::digest(bytes)),
    })
}

/// Human-readable list of metadata fields that differ (ignoring shard/batch sizing).
fn meta_differences(old: &MemoryMeta, new: &MemoryMeta) -> Vec<String> {
    let mut d = Vec::new();
    macro_rules! cmp {
        ($($f:ident),*) => {$(
            if old.$f != new.$f {
                d.push(format!("{}: recorded {:?}, now {:?}", stringify!($f), old.$f, new.$f));
            }
        )*};
    }
    cmp!(
        model_name,
        model_sha256,
        hidden_size,
        state,
        dtype,
        tokenizer_fingerprint,
        template_name,
        template,
        mode,
        max_extra_steps,
        data_sha256,
        pairs_total
    );
    // A memory written before the vocabulary was recorded resumes under any vocabulary.
    if let (Some(a), Some(b)) = (old.vocab_size, new.vocab_size)
        && a != b
    {
        d.push(format!("vocab_size: recorded {a}, now {b}"));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::meta;

    #[test]
    fn one_writer_per_directory_and_commit_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = meta(2, KeyDtype::F32, 4, 2);
        let mut w = MemoryWriter::open_or_create(dir.path(), m.clone()).expect("first");
        let e = MemoryWriter::open_or_create(dir.path(), m.clone()).expect_err("locked");
        assert!(e.to_string().contains("another process"), "{e}");
        // A shard must start where the committed pairs end and be well formed.
        assert!(w.commit_shard(&ShardData::new(2, 4)).is_err());
        let mut bad = ShardData::new(0, 2);
        bad.keys.push(1.0);
        bad.values.push(1);
        bad.provenance.push(Provenance::default());
        assert!(w.commit_shard(&bad).is_err());
        w.commit_shard(&ShardData::new(0, 2)).expect("empty shard");
        assert_eq!(w.committed_pairs(), 2);
        assert!(
            w.commit_shard(&ShardData::new(2, 5)).is_err(),
            "beyond pairs_total"
        );
        drop(w);
        let w = MemoryWriter::open_or_create(dir.path(), m).expect("reopen after drop");
        assert_eq!(w.committed_pairs(), 2);
        assert!(w.finish().is_err(), "not all pairs committed");
    }
}
