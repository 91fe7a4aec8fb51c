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
        let st = self.tensors()?;
        let view = st.tensor(name).map_err(|_| BackboneError::Weight {
            name: name.to_string(),
            message: format!("not found in {}", self.path.display()),
        })?;
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
        // Converted 64 MiB at a time; the mapped pages of each converted piece are released
        // at once, so reading a large tensor (an LM head: 671 MB) holds the f32 copy and one
        // piece of the file, not both whole.
        const PIECE: usize = 64 << 20;
        let mut values: Vec<f32> = Vec::with_capacity(data.len() / width);
        let base = data.as_ptr() as usize - self.mmap.as_ptr() as usize;
        for (i, piece) in data.chunks(PIECE).enumerate() {
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
        }
        Ok((values, shape))
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
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| st_err(path, e))?;
    Ok(pema_common::write_atomic(path, &bytes)?)
}

impl StFile {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
