//! Small safetensors helpers: memory-mapped reading with f32/f16/bf16 → f32 conversion, and
//! writing f32 tensors with string metadata.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{BackboneError, Result};

/// A memory-mapped safetensors file.
pub struct StFile {
    path: PathBuf,
    mmap: Mmap,
    metadata: HashMap<String, String>,
}

impl StFile {
    /// Maps `path` and validates its header.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(pema_common::FileError::at(path))?;
        // SAFETY: the file is opened read-only; pema never writes a file it has mapped, and a
        // concurrent external truncation is outside what any mmap-based reader can guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(pema_common::FileError::at(path))?;
        let (_, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| st_err(path, e))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        SafeTensors::deserialize(&mmap).map_err(|e| st_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            metadata,
        })
    }

    /// The file's `__metadata__` string map.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.mmap).map_err(|e| st_err(&self.path, e))
    }

    /// Names of all tensors in the file.
    pub fn names(&self) -> Result<Vec<String>> {
        Ok(self
            .tensors()?
            .names()
            .into_iter()
            .map(str::to_string)
            .collect())
    }

    /// Drops the resident pages of `[offset, offset + len)` of the mapping (whole pages only).
    /// The mapping is read-only and file-backed: a later read simply faults the page in again.
    fn release(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        {
            const PAGE: usize = 4096;
            let start = offset.div_ceil(PAGE) * PAGE;
            let end = ((offset + len) / PAGE * PAGE).min(self.mmap.len() / PAGE * PAGE);
            if end > start {
                // SAFETY: MADV_DONTNEED on a read-only, file-backed mapping discards no
                // data (pages are re-read from the file on the next access), and the range lies
                // inside the mapping (clamped above).
                let _ = unsafe {
                    self.mmap.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = (offset, len);
    }

    /// Reads one tensor as f32 (from F32, F16 or BF16), with its shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let mut values: Vec<f32> = Vec::with_capacity(self.shape(name)?.iter().product());
        let shape = self.for_each_piece_f32(name, |piece| {
            values.extend_from_slice(piece);
            Ok(())
        })?;
        Ok((values, shape))
    }

    /// The shape of one tensor.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let st = self.tensors()?;
        let view = self.view(&st, name)?;
        Ok(view.shape().to_vec())
    }

    fn view<'a>(&self, st: &'a SafeTensors<'a>, name: &str) -> Result<TensorView<'a>> {
        st.tensor(name).map_err(|_| BackboneError::Weight {
            name: name.to_string(),
            message: format!("not found in {}", self.path.display()),
        })
    }

    /// Streams one tensor to `f` as consecutive f32 pieces (converted from F32, F16 or BF16),
    /// in row-major order; returns its shape. The mapped pages of each converted piece are
    /// released at once, so reading a large tensor (an LM head: 671 MB) holds one piece of the
    /// file and whatever `f` keeps, never the file and a copy both whole.
    pub fn for_each_piece_f32(
        &self,
        name: &str,
        mut f: impl FnMut(&[f32]) -> Result<()>,
    ) -> Result<Vec<usize>> {
        let st = self.tensors()?;
        let view = self.view(&st, name)?;
        let shape = view.shape().to_vec();
        let data = view.data();
        let dtype = view.dtype();
        let width = match dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(BackboneError::Weight {
                    name: name.to_string(),
                    message: format!("unsupported dtype {other:?} (F32, F16 and BF16 are)"),
                });
            }
        };
        const PIECE: usize = 16 << 20;
        let mut values: Vec<f32> = Vec::with_capacity(PIECE / width);
        let base = data.as_ptr() as usize - self.mmap.as_ptr() as usize;
        for (i, piece) in data.chunks(PIECE).enumerate() {
            values.clear();
            match dtype {
                Dtype::F32 => values.extend(
                    piece
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                Dtype::F16 => values.extend(
                    piece
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                _ => values.extend(
                    piece
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
            }
            self.release(base + i * PIECE, piece.len());
            f(&values)?;
        }
        Ok(shape)
    }
}

fn st_err(path: &Path, e: impl std::fmt::Display) -> BackboneError {
    BackboneError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes f32 tensors `(name, values, shape)` and string metadata to `path`, atomically: the
/// file is written next to `path` and renamed over it, so a crash leaves the old file or the
/// new one, never a torn one. Every safetensors artifact of pema (head, adapter, LoRA) is
/// written here, each with its `pema.format` tag in `metadata`.
pub fn write_f32(
    path: &Path,
    tensors: &[(&str, &[f32], &[usize])],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, v, _)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, values, shape), data) in tensors.iter().zip(&bytes) {
        if shape.iter().product::<usize>() != values.len() {
            return Err(BackboneError::Invalid(format!(
                "tensor `{name}`: shape {shape:?} does not match {} values",
                values.len()
            )));
        }
        let view =
            TensorView::new(Dtype::F32, shape.to_vec(), data).map_err(|e| st_err(path, e))?;
        views.push((name.to_string(), view));
    }
    let mut bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| st_err(path, e))?;
    sort_metadata(&mut bytes).map_err(|message| {
        BackboneError::Invalid(format!("{}: safetensors header: {message}", path.display()))
    })?;
    Ok(pema_common::write_atomic(path, &bytes)?)
}

/// Rewrites the header of a serialised safetensors file with its keys in sorted order, in
/// place: `safetensors::serialize` writes the `__metadata__` keys in a `HashMap`'s per-process
/// order, so the same tensors and metadata gave different bytes from run to run. The keys are
/// sorted explicitly (whether or not serde_json preserves insertion order); the header keeps its
/// length (same keys and values, reordered), so the data offsets are untouched.
fn sort_metadata(bytes: &mut [u8]) -> std::result::Result<(), String> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<_> = m.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                entries.into_iter().map(|(k, v)| (k, sorted(v))).collect()
            }
            other => other,
        }
    }
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("shorter than its length prefix")?;
    let n = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|e| e.to_string())?;
    let header = bytes.get(8..8 + n).ok_or("header runs past the end")?;
    let value: serde_json::Value =
        serde_json::from_slice(header.trim_ascii_end()).map_err(|e| e.to_string())?;
    let text = serde_json::to_vec(&sorted(value)).map_err(|e| e.to_string())?;
    if text.len() > n {
        return Err("reordered header is longer than the original".into());
    }
    let header = &mut bytes[8..8 + n];
    header[..text.len()].copy_from_slice(&text);
    header[text.len()..].fill(b' ');
    Ok(())
}

impl StFile {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let values = [1.0f32, -2.5, 3.25, 0.0, 7.0, 8.5];
        let write = |name: &str| {
            let meta: HashMap<String, String> = (0..12)
                .map(|i| (format!("key{i:02}"), format!("value {i}")))
                .collect();
            let path = dir.path().join(name);
            let t: [(&str, &[f32], &[usize]); 2] =
                [("b", &values[..4], &[2, 2]), ("a", &values[4..], &[2])];
            write_f32(&path, &t, meta).expect("write");
            std::fs::read(&path).expect("read")
        };
        let first = write("one.safetensors");
        for i in 0..4 {
            assert_eq!(first, write(&format!("again{i}.safetensors")), "run {i}");
        }
        let file = StFile::open(&dir.path().join("one.safetensors")).expect("open");
        assert_eq!(file.tensor_f32("a").expect("a"), (vec![7.0, 8.5], vec![2]));
        assert_eq!(
            file.metadata().get("key07").map(String::as_str),
            Some("value 7")
        );
        let text = String::from_utf8_lossy(&first[8..]);
        let (k1, k11) = (
            text.find("key01").expect("k1"),
            text.find("key11").expect("k11"),
        );
        assert!(k1 < k11, "metadata keys in sorted order");
    }
}
