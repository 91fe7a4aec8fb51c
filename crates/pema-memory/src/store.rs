//! The memory-mapped reader of a memory directory.

use std::fs;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use crate::MemorySource;
use crate::error::{MemoryError, Result};
use crate::manifest::{KeyDtype, Manifest, hex};
use crate::writer::Provenance;

#[cfg(target_endian = "big")]
compile_error!("pema-memory stores little-endian raw arrays and maps them zero-copy");

/// A read-only file mapping (absent for empty files, which cannot be mapped portably).
#[derive(Debug)]
struct Mapped(Option<Mmap>);

impl Mapped {
    fn open(path: &Path, expected: u64, hint_row: Option<(u64, u64)>) -> Result<Self> {
        let f = fs::File::open(path).map_err(|e| MemoryError::io(path, e))?;
        let len = f.metadata().map_err(|e| MemoryError::io(path, e))?.len();
        if len != expected {
            return Err(MemoryError::ShardSize {
                path: path.to_path_buf(),
                expected,
                found: len,
                hint: size_hint(len, expected, hint_row),
            });
        }
        if len == 0 {
            return Ok(Self(None));
        }
        // SAFETY: the map is read-only. Shard files are written once, before the manifest that
        // names them is committed, and never modified afterwards by pema; a concurrent external
        // truncation would be undefined behaviour, as for every memory-mapped reader.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| MemoryError::io(path, e))?;
        Ok(Self(Some(map)))
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

/// Diagnosis for a wrongly sized keys file: does its size match the other dtype?
pub(crate) fn size_hint(found: u64, expected: u64, row: Option<(u64, u64)>) -> String {
    if let Some((entries, d)) = row
        && entries > 0
    {
        for dt in [KeyDtype::F32, KeyDtype::F16] {
            let size = entries
                .checked_mul(d)
                .and_then(|n| n.checked_mul(dt.size()));
            if size == Some(found) && found != expected {
                return format!(
                    " (size matches dtype {}: wrong dtype in the manifest?)",
                    dt.name()
                );
            }
        }
    }
    if found < expected {
        " (truncated)".into()
    } else {
        String::new()
    }
}

#[derive(Debug)]
struct ShardMap {
    keys: Mapped,
    values: Mapped,
    provenance: Mapped,
}

/// A memory directory opened for reading: every committed shard memory-mapped, zero-copy.
///
/// Opening checks the manifest and the size of every shard file (cheap); [`crate::verify()`]
/// additionally checks checksums.
#[derive(Debug)]
pub struct MemoryStore {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<ShardMap>,
    /// `offsets[i]` = global index of shard i's first entry; last element = N.
    offsets: Vec<u64>,
    fingerprint: String,
}

impl MemoryStore {
    /// Opens the memory in `dir` (complete or not: only committed shards are visible).
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        let manifest_bytes = fs::read(Manifest::path_in(dir))
            .map_err(|e| MemoryError::io(Manifest::path_in(dir), e))?;
        let d = manifest.meta.hidden_size as u64;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut offsets = Vec::with_capacity(manifest.shards.len() + 1);
        let mut total = 0u64;
        for s in &manifest.shards {
            offsets.push(total);
            if usize::try_from(s.keys.bytes).is_err() {
                return Err(MemoryError::Invalid(
                    "shard too large for this platform".into(),
                ));
            }
            shards.push(ShardMap {
                keys: Mapped::open(&dir.join(&s.keys.file), s.keys.bytes, Some((s.entries, d)))?,
                values: Mapped::open(&dir.join(&s.values.file), s.values.bytes, None)?,
                provenance: Mapped::open(&dir.join(&s.provenance.file), s.provenance.bytes, None)?,
            });
            total = total
                .checked_add(s.entries)
                .ok_or_else(|| MemoryError::Invalid("the shards' entry counts overflow".into()))?;
        }
        offsets.push(total);
        Ok(Self {
            dir: dir.to_path_buf(),
            fingerprint: format!("sha256:{}", hex(&Sha256::digest(&manifest_bytes))),
            manifest,
            shards,
            offsets,
        })
    }

    /// The memory directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest (metadata and shard list).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Storage type of the keys.
    pub fn dtype(&self) -> KeyDtype {
        self.manifest.meta.dtype
    }

    /// True when every input pair is committed.
    pub fn is_complete(&self) -> bool {
        self.manifest.complete
    }

    /// Number of shards.
    pub fn num_shards(&self) -> usize {
        self.shards.len()
    }

    /// Global index range of shard `s`'s entries.
    pub fn shard_range(&self, s: usize) -> std::ops::Range<u64> {
        self.offsets[s]..self.offsets[s + 1]
    }

    /// Zero-copy f32 keys of shard `s` (`[n, d]` row-major), or `None` if stored as f16.
    pub fn shard_keys_f32(&self, s: usize) -> Option<&[f32]> {
        match self.dtype() {
            KeyDtype::F32 => bytemuck::try_cast_slice(self.shards.get(s)?.keys.bytes()).ok(),
            KeyDtype::F16 => None,
        }
    }

    /// Zero-copy f16 keys of shard `s`, or `None` if stored as f32.
    pub fn shard_keys_f16(&self, s: usize) -> Option<&[half::f16]> {
        match self.dtype() {
            KeyDtype::F16 => bytemuck::try_cast_slice(self.shards.get(s)?.keys.bytes()).ok(),
            KeyDtype::F32 => None,
        }
    }

    /// Zero-copy values y_t of shard `s`.
    pub fn shard_values(&self, s: usize) -> &[u32] {
        self.shards
            .get(s)
            .and_then(|m| bytemuck::try_cast_slice(m.values.bytes()).ok())
            .unwrap_or(&[])
    }

    /// Zero-copy provenance of shard `s`.
    pub fn shard_provenance(&self, s: usize) -> &[Provenance] {
        self.shards
            .get(s)
            .and_then(|m| bytemuck::try_cast_slice(m.provenance.bytes()).ok())
            .unwrap_or(&[])
    }

    /// (shard, index within the shard) of global entry `i`.
    pub fn locate(&self, i: u64) -> Result<(usize, usize)> {
        let n = self.len() as u64;
        if i >= n {
            return Err(MemoryError::OutOfRange { index: i, len: n });
        }
        // Last shard whose first entry is <= i (skipping empty shards).
        let s = self.offsets.partition_point(|&o| o <= i) - 1;
        Ok((s, (i - self.offsets[s]) as usize))
    }

    /// Value y_t of entry `i`.
    pub fn value(&self, i: u64) -> Result<u32> {
        let (s, j) = self.locate(i)?;
        Ok(self.shard_values(s)[j])
    }

    /// Provenance (pair index, step index) of entry `i`.
    pub fn provenance(&self, i: u64) -> Result<Provenance> {
        let (s, j) = self.locate(i)?;
        Ok(self.shard_provenance(s)[j])
    }

    /// Appends key rows `[start, end)` of shard `s` (local indices) as f32.
    fn extend_keys(&self, s: usize, start: usize, end: usize, out: &mut Vec<f32>) {
        let d = self.manifest.meta.hidden_size;
        match self.dtype() {
            KeyDtype::F32 => {
                if let Some(k) = self.shard_keys_f32(s) {
                    out.extend_from_slice(&k[start * d..end * d]);
                }
            }
            KeyDtype::F16 => {
                if let Some(k) = self.shard_keys_f16(s) {
                    use half::slice::HalfFloatSliceExt;
                    let at = out.len();
                    out.resize(at + (end - start) * d, 0.0);
                    k[start * d..end * d].convert_to_f32_slice(&mut out[at..]);
                }
            }
        }
    }

    /// Appends the keys (as f32) and values of the contiguous entries `[start, end)`.
    pub fn read_range(
        &self,
        start: u64,
        end: u64,
        keys: &mut Vec<f32>,
        values: &mut Vec<u32>,
    ) -> Result<()> {
        let n = self.len() as u64;
        if end > n || start > end {
            return Err(MemoryError::OutOfRange {
                index: end.saturating_sub(1).max(start),
                len: n,
            });
        }
        let mut i = start;
        while i < end {
            let (s, j) = self.locate(i)?;
            let shard_end = self.offsets[s + 1].min(end);
            let k = (shard_end - self.offsets[s]) as usize;
            self.extend_keys(s, j, k, keys);
            values.extend_from_slice(&self.shard_values(s)[j..k]);
            i = shard_end;
        }
        Ok(())
    }
}

impl MemorySource for MemoryStore {
    fn len(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0) as usize
    }

    fn hidden_size(&self) -> usize {
        self.manifest.meta.hidden_size
    }

    fn gather(
        &self,
        ids: &[u64],
        keys: &mut Vec<f32>,
        values: &mut Vec<u32>,
    ) -> std::result::Result<(), MemoryError> {
        let d = self.hidden_size();
        keys.reserve(ids.len() * d);
        values.reserve(ids.len());
        // Cache the current shard: in-order and shard-local reads skip the binary search.
        let mut cur: Option<(usize, u64, u64)> = None;
        for &i in ids {
            let (s, j) = match cur {
                Some((s, lo, hi)) if i >= lo && i < hi => (s, (i - lo) as usize),
                _ => {
                    let (s, j) = self.locate(i)?;
                    cur = Some((s, self.offsets[s], self.offsets[s + 1]));
                    (s, j)
                }
            };
            self.extend_keys(s, j, j + 1, keys);
            values.push(self.shard_values(s)[j]);
        }
        Ok(())
    }

    fn meta(&self) -> Option<&crate::MemoryMeta> {
        Some(&self.manifest.meta)
    }
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::synthetic;
    use crate::{MemoryWriter, verify};

    #[test]
    fn round_trip_f32_and_f16() {
        for dtype in [KeyDtype::F32, KeyDtype::F16] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (keys, values, prov) = synthetic(dir.path(), 5, dtype, 23, 4, 7);
            let s = MemoryStore::open(dir.path()).expect("open");
            assert!(s.is_complete());
            assert_eq!(s.len(), values.len());
            assert_eq!(s.hidden_size(), 5);
            assert_eq!(s.num_shards(), 6);
            let ids: Vec<u64> = (0..s.len() as u64).rev().collect();
            let (mut k, mut v) = (Vec::new(), Vec::new());
            s.gather(&ids, &mut k, &mut v).expect("gather");
            for (r, &i) in ids.iter().enumerate() {
                let i = i as usize;
                assert_eq!(&k[r * 5..(r + 1) * 5], &keys[i * 5..(i + 1) * 5]);
                assert_eq!(v[r], values[i]);
                assert_eq!(s.provenance(i as u64).expect("prov"), prov[i]);
                assert_eq!(s.value(i as u64).expect("value"), values[i]);
            }
            let (mut k2, mut v2) = (Vec::new(), Vec::new());
            s.read_range(3, s.len() as u64 - 2, &mut k2, &mut v2)
                .expect("range");
            assert_eq!(k2, keys[15..keys.len() - 10]);
            assert_eq!(v2, values[3..values.len() - 2]);
            assert!(matches!(
                s.value(s.len() as u64),
                Err(MemoryError::OutOfRange { .. })
            ));
            assert!(verify(dir.path()).is_ok());
        }
    }

    #[test]
    fn deterministic_bytes_and_fingerprint() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        synthetic(a.path(), 3, KeyDtype::F32, 10, 3, 1);
        synthetic(b.path(), 3, KeyDtype::F32, 10, 3, 1);
        for e in fs::read_dir(a.path()).expect("read_dir") {
            let name = e.expect("entry").file_name();
            assert_eq!(
                fs::read(a.path().join(&name)).expect("a"),
                fs::read(b.path().join(&name)).expect("b"),
                "{name:?}"
            );
        }
        let fa = MemoryStore::open(a.path()).expect("open").fingerprint();
        assert_eq!(fa, MemoryStore::open(b.path()).expect("open").fingerprint());
        let c = tempfile::tempdir().expect("tempdir");
        synthetic(c.path(), 3, KeyDtype::F32, 10, 3, 2);
        assert_ne!(fa, MemoryStore::open(c.path()).expect("open").fingerprint());
    }

    #[test]
    fn incomplete_store_shows_committed_shards_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = MemoryWriter::open_or_create(
            dir.path(),
            crate::test_util::meta(2, KeyDtype::F32, 10, 5),
        )
        .expect("create");
        let s0 = MemoryStore::open(dir.path()).expect("open empty");
        assert_eq!(s0.len(), 0);
        let mut sh = crate::ShardData::new(0, 5);
        sh.push(&[1.0, 2.0], 9, Provenance { pair: 1, step: 0 });
        w.commit_shard(&sh).expect("commit");
        // Uncommitted junk next to it is ignored.
        fs::write(dir.path().join("shard-000001.keys"), b"junk").expect("junk");
        let s = MemoryStore::open(dir.path()).expect("open");
        assert_eq!((s.len(), s.is_complete()), (1, false));
        assert_eq!(s.value(0).expect("v"), 9);
    }

    #[test]
    fn corrupted_inputs_give_typed_errors_naming_the_file() {
        let fresh = || {
            let dir = tempfile::tempdir().expect("tempdir");
            synthetic(dir.path(), 4, KeyDtype::F32, 12, 4, 3);
            dir
        };
        // Truncated shard.
        let d = fresh();
        let p = d.path().join("shard-000001.keys");
        let len = fs::metadata(&p).expect("meta").len();
        fs::File::options()
            .write(true)
            .open(&p)
            .expect("open")
            .set_len(len - 3)
            .expect("truncate");
        let e = MemoryStore::open(d.path()).expect_err("truncated");
        assert!(matches!(e, MemoryError::ShardSize { .. }), "{e}");
        assert!(
            e.to_string().contains("shard-000001.keys") && e.to_string().contains("truncated"),
            "{e}"
        );
        // Missing file.
        let d = fresh();
        fs::remove_file(d.path().join("shard-000002.values")).expect("rm");
        let e = MemoryStore::open(d.path()).expect_err("missing");
        assert!(matches!(e, MemoryError::MissingFile { .. }), "{e}");
        assert!(e.to_string().contains("shard-000002.values"), "{e}");
        // Wrong dtype in the manifest.
        let d = fresh();
        let mp = d.path().join("manifest.json");
        let m = fs::read_to_string(&mp).expect("read");
        fs::write(&mp, m.replace("\"dtype\": \"f32\"", "\"dtype\": \"f16\"")).expect("write");
        let e = MemoryStore::open(d.path()).expect_err("dtype");
        assert!(matches!(e, MemoryError::ManifestInvalid { .. }), "{e}");
        assert!(
            e.to_string().contains("manifest.json") && e.to_string().contains("dtype f16"),
            "{e}"
        );
        // Edited manifest: broken JSON, edited counts, wrong version, missing manifest.
        let d = fresh();
        let mp = d.path().join("manifest.json");
        fs::write(&mp, m.replacen("\"entries\": 6", "\"entries\": 7", 1)).expect("write");
        let e = MemoryStore::open(d.path()).expect_err("edited");
        assert!(matches!(e, MemoryError::ManifestInvalid { .. }), "{e}");
        fs::write(&mp, &m[..m.len() / 2]).expect("write");
        let e = MemoryStore::open(d.path()).expect_err("cut");
        assert!(matches!(e, MemoryError::ManifestParse { .. }), "{e}");
        assert!(e.to_string().contains("manifest.json"), "{e}");
        fs::write(
            &mp,
            m.replace("\"format_version\": 1", "\"format_version\": 9"),
        )
        .expect("w");
        let e = MemoryStore::open(d.path()).expect_err("version");
        assert!(e.to_string().contains("format version 9"), "{e}");
        fs::remove_file(&mp).expect("rm");
        assert!(matches!(
            MemoryStore::open(d.path()),
            Err(MemoryError::MissingFile { .. })
        ));
        // A flipped byte is not seen by open (sizes only) but by verify.
        let d = fresh();
        let p = d.path().join("shard-000000.values");
        let mut b = fs::read(&p).expect("read");
        b[0] ^= 1;
        fs::write(&p, b).expect("write");
        assert!(MemoryStore::open(d.path()).is_ok());
        let r = verify(d.path());
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].path.ends_with("shard-000000.values"));
        assert!(r.problems[0].message.contains("sha256"));
    }
}
