//! A small GGUF v3 writer: metadata plus tensors quantised with [`quantize`].
//!
//! Used by tests and fixtures (tiny models, malformed-file cases); the PLM owner's real weights
//! come from llama.cpp's converter.

use std::path::Path;

use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GgmlType, GgufError, MAX_DIMS, MetaValue, quantize};

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF v3 file in memory.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufWriter {
    /// An empty writer (alignment 32 unless `general.alignment` is added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a metadata key.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetaValue) -> &mut Self {
        let key = key.into();
        if let Some(slot) = self.metadata.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.metadata.push((key, value));
        }
        self
    }

    /// Adds a tensor of row-major shape `shape_row_major` (e.g. `[out, in]`), quantised to `ty`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape_row_major: &[usize],
        values: &[f32],
        ty: GgmlType,
    ) -> Result<&mut Self, GgufError> {
        let name = name.into();
        let n = shape_row_major
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| GgufError::Writer(format!("tensor `{name}`: shape overflows")))?;
        if n != values.len() {
            return Err(GgufError::Writer(format!(
                "tensor `{name}`: shape {shape_row_major:?} has {n} elements, {} values given",
                values.len()
            )));
        }
        let dims: Vec<u64> = shape_row_major.iter().rev().map(|&d| d as u64).collect();
        if !dims
            .first()
            .copied()
            .unwrap_or(1)
            .is_multiple_of(ty.block_elems() as u64)
        {
            return Err(GgufError::Writer(format!(
                "tensor `{name}`: row length {} is not a multiple of the {ty} block size {}",
                dims.first().copied().unwrap_or(1),
                ty.block_elems()
            )));
        }
        let data = quantize(ty, values)?;
        self.add_raw_tensor(name, dims, ty, data)
    }

    /// Adds a tensor from already-encoded bytes; `dims` are in file order (ne0 first).
    pub fn add_raw_tensor(
        &mut self,
        name: impl Into<String>,
        dims: Vec<u64>,
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self, GgufError> {
        let name = name.into();
        if dims.len() > MAX_DIMS {
            return Err(GgufError::Writer(format!(
                "tensor `{name}`: {} dims (max {MAX_DIMS})",
                dims.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::DuplicateTensor(name));
        }
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| GgufError::Writer(format!("tensor `{name}`: dims overflow")))?;
        let expected = ty.bytes_for(n).ok_or_else(|| {
            GgufError::Writer(format!(
                "tensor `{name}`: {n} elements is not a multiple of the {ty} block size"
            ))
        })?;
        if data.len() != expected {
            return Err(GgufError::Writer(format!(
                "tensor `{name}`: {} data bytes, {expected} expected",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            dims,
            ty,
            data,
        });
        Ok(self)
    }

    fn alignment(&self) -> Result<u64, GgufError> {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => Ok(a),
                Some(a) => Err(GgufError::BadAlignment(a)),
                None => Err(GgufError::WrongType {
                    key: "general.alignment".to_owned(),
                    expected: "a non-negative integer",
                }),
            },
        }
    }

    /// Encodes the file. Tensor data is padded to the alignment between tensors; nothing
    /// follows the last tensor's data.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let alignment = self.alignment()?;
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_string(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            write_value(&mut out, k, v)?;
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            offset = offset.div_ceil(alignment) * alignment;
            offsets.push(offset);
            write_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += t.data.len() as u64;
        }
        pad_to(&mut out, alignment);
        let data_start = out.len() as u64;
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend_from_slice(&t.data);
        }
        Ok(out)
    }

    /// Encodes the file and writes it to `path`.
    pub fn write(&self, path: &Path) -> Result<(), GgufError> {
        pema_common::write_atomic(path, &self.to_bytes()?).map_err(|e| e.source)?;
        Ok(())
    }
}

fn pad_to(out: &mut Vec<u8>, alignment: u64) {
    let len = (out.len() as u64).div_ceil(alignment) * alignment;
    out.resize(len as usize, 0);
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, key: &str, v: &MetaValue) -> Result<(), GgufError> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => write_string(out, s),
        MetaValue::Array(items) => {
            // An empty array is written with element type u8.
            let elem_type = items.first().map_or(0, MetaValue::type_id);
            if items.iter().any(|i| i.type_id() != elem_type) {
                return Err(GgufError::Writer(format!(
                    "metadata key `{key}`: array elements of mixed types"
                )));
            }
            out.extend_from_slice(&elem_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            // Nested arrays carry their own element type and count (written by the recursion).
            for i in items {
                write_value(out, key, i)?;
            }
        }
    }
    Ok(())
}
