//! Parsing of the GGUF header, metadata and tensor-info table, with every read bounds-checked.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, GgmlType, GgufError, MAX_ARRAY_DEPTH, MAX_DIMS, MetaValue,
    TensorInfo, quant,
};

/// Smallest possible encoded size of one metadata key/value pair: key length (8) + at least
/// an empty key + value type (4) + the smallest value (1).
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest possible encoded size of one tensor-info entry: name length (8) + n_dims (4) +
/// type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// The bytes of a GGUF file: memory-mapped or owned.
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mapped(m) => write!(f, "Mapped({} bytes)", m.len()),
            Self::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
        }
    }
}

/// A parsed GGUF file. Tensor data stays in the (mapped or owned) bytes until asked for.
#[derive(Debug)]
pub struct GgufFile {
    storage: Storage,
    version: u32,
    alignment: u64,
    data_start: usize,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the map is read-only and private to this process. As with any memory map, the
        // file must not be truncated or modified by someone else while it is mapped; model files
        // are treated as immutable inputs. All reads through the map are bounds-checked.
        let map = unsafe { memmap2::Mmap::map(&file) }?;
        Self::parse(Storage::Mapped(map))
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<Self, GgufError> {
        let header = parse_header(storage.bytes())?;
        Ok(Self {
            storage,
            version: header.version,
            alignment: header.alignment,
            data_start: header.data_start,
            metadata: header.metadata,
            tensors: header.tensors,
            by_name: header.by_name,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the tensor data section.
    pub fn data_start(&self) -> u64 {
        self.data_start as u64
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.metadata
            .get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_owned()))
    }

    /// A non-negative integer value.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.require(key)?
            .as_u64()
            .ok_or_else(|| GgufError::WrongType {
                key: key.to_owned(),
                expected: "a non-negative integer",
            })
    }

    /// A numeric value as `f64`.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.require(key)?
            .as_f64()
            .ok_or_else(|| GgufError::WrongType {
                key: key.to_owned(),
                expected: "a number",
            })
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.require(key)?
            .as_str()
            .ok_or_else(|| GgufError::WrongType {
                key: key.to_owned(),
                expected: "a string",
            })
    }

    /// An array value.
    pub fn get_array(&self, key: &str) -> Result<&[MetaValue], GgufError> {
        self.require(key)?
            .as_array()
            .ok_or_else(|| GgufError::WrongType {
                key: key.to_owned(),
                expected: "an array",
            })
    }

    /// A boolean value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.require(key)?
            .as_bool()
            .ok_or_else(|| GgufError::WrongType {
                key: key.to_owned(),
                expected: "a bool",
            })
    }

    /// `general.architecture`, e.g. `llama` or `gemma3`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// The tensor-info table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of one tensor.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw stored bytes of one tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self
            .tensor(name)
            .ok_or_else(|| GgufError::UnknownTensor(name.to_owned()))?;
        // Ranges were validated at open; re-check rather than index.
        let start = self.data_start as u64 + info.offset;
        let end = start + info.n_bytes() as u64;
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| self.storage.bytes().get(s..e))
            .ok_or_else(|| GgufError::BadOffset {
                tensor: name.to_owned(),
                offset: info.offset,
                reason: "data range outside the file".to_owned(),
            })
    }

    /// The tensor as row-major `f32` (length [`TensorInfo::n_elements`]), dequantised exactly
    /// as ggml's `dequantize_row_*` does.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let bytes = self.tensor_bytes(name)?;
        let info = self
            .tensor(name)
            .ok_or_else(|| GgufError::UnknownTensor(name.to_owned()))?;
        quant::dequantize(info.ggml_type, bytes, info.n_elements()).map_err(|e| match e {
            GgufError::UnsupportedType { type_id, .. } => GgufError::UnsupportedType {
                tensor: name.to_owned(),
                type_id,
            },
            other => other,
        })
    }
}

struct Header {
    version: u32,
    alignment: u64,
    data_start: usize,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

/// A bounds-checked little-endian reader over a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let available = self.remaining();
        if n > available {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available,
            });
        }
        // n <= remaining <= usize::MAX.
        let n = n as usize;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    /// A GGUF string's raw bytes (u64 length, then the bytes); the length is checked against
    /// the bytes left before anything is read.
    fn string_bytes(&mut self, what: &dyn Fn() -> String) -> Result<(&'a [u8], u64), GgufError> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let at = self.pos as u64;
        Ok((self.take(len, what)?, at))
    }

    /// A string that must be valid UTF-8 (keys, tensor names).
    fn strict_string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let (b, at) = self.string_bytes(what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| GgufError::BadUtf8 {
                what: what(),
                offset: at,
            })
    }

    /// Checks that `count` items of at least `min_size` bytes each can still fit.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(need) if need <= self.remaining() => Ok(()),
            _ => Err(GgufError::TooLarge {
                what: format!(
                    "{what} (at byte {}, only {} bytes left)",
                    self.pos,
                    self.remaining()
                ),
                value: count,
            }),
        }
    }

    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> Result<MetaValue, GgufError> {
        let what = || format!("value of `{key}`");
        Ok(match type_id {
            0 => MetaValue::U8(self.array::<1>(&what)?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array::<1>(&what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array::<2>(&what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array::<2>(&what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array::<4>(&what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array::<4>(&what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array::<4>(&what)?)),
            7 => MetaValue::Bool(self.array::<1>(&what)?[0] != 0),
            8 => {
                let (b, _) = self.string_bytes(&what)?;
                MetaValue::String(String::from_utf8_lossy(b).into_owned())
            }
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::TooLarge {
                        what: format!("array nesting depth of `{key}`"),
                        value: depth as u64 + 1,
                    });
                }
                let elem_type = self.u32(&|| format!("array element type of `{key}`"))?;
                let min_size =
                    min_value_size(elem_type).ok_or_else(|| GgufError::BadValueType {
                        key: key.to_owned(),
                        type_id: elem_type,
                    })?;
                let count = self.u64(&|| format!("array length of `{key}`"))?;
                self.check_count(count, min_size, &format!("array length of `{key}`"))?;
                // count * min_size <= remaining, so this allocation is bounded by the file size.
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array::<8>(&what)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array::<8>(&what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array::<8>(&what)?)),
            other => {
                return Err(GgufError::BadValueType {
                    key: key.to_owned(),
                    type_id: other,
                });
            }
        })
    }
}

/// Smallest encoded size of a value of GGUF value type `type_id`, or `None` if unknown.
fn min_value_size(type_id: u32) -> Option<u64> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

fn parse_header(bytes: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.u32(&|| "magic".to_owned())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic(magic));
    }
    let version = c.u32(&|| "version".to_owned())?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let n_tensors = c.u64(&|| "tensor count".to_owned())?;
    let n_kv = c.u64(&|| "metadata key/value count".to_owned())?;
    // Each needs at least a few bytes: reject absurd counts before allocating anything.
    c.check_count(n_kv, MIN_KV_BYTES, "metadata key/value count")?;
    c.check_count(n_tensors, MIN_TENSOR_INFO_BYTES, "tensor count")?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.strict_string(&|| format!("metadata key #{i}"))?;
        let type_id = c.u32(&|| format!("value type of `{key}`"))?;
        let value = c.value(type_id, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(GgufError::DuplicateKey(key));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let a = v.as_u64().ok_or_else(|| GgufError::WrongType {
                key: "general.alignment".to_owned(),
                expected: "a non-negative integer",
            })?;
            if a == 0 || !a.is_power_of_two() || a > (1 << 30) {
                return Err(GgufError::BadAlignment(a));
            }
            a
        }
    };

    // n_tensors * MIN_TENSOR_INFO_BYTES <= file size, so this is bounded.
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut by_name = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.strict_string(&|| format!("name of tensor #{i}"))?;
        let n_dims = c.u32(&|| format!("n_dims of tensor `{name}`"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufError::TooLarge {
                what: format!("n_dims of tensor `{name}` (max {MAX_DIMS})"),
                value: u64::from(n_dims),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dim {d} of tensor `{name}`"))?);
        }
        let type_id = c.u32(&|| format!("type of tensor `{name}`"))?;
        let offset = c.u64(&|| format!("data offset of tensor `{name}`"))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnsupportedType {
            tensor: name.clone(),
            type_id,
        })?;
        validate_shape(&name, &dims, ggml_type)?;
        if by_name.insert(name.clone(), tensors.len()).is_some() {
            return Err(GgufError::DuplicateTensor(name));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }

    // The data section starts at the next multiple of the alignment.
    let end_of_infos = c.pos as u64;
    let data_start = end_of_infos
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or(GgufError::TooLarge {
            what: "data section start".to_owned(),
            value: end_of_infos,
        })?;
    let file_len = bytes.len() as u64;
    validate_ranges(&tensors, data_start, alignment, file_len)?;
    // With at least one non-empty tensor, data_start <= file_len was checked above; otherwise
    // clamp (a file with no tensor data may omit the padding).
    let data_start =
        usize::try_from(data_start.min(file_len)).map_err(|_| GgufError::TooLarge {
            what: "data section start".to_owned(),
            value: data_start,
        })?;

    Ok(Header {
        version,
        alignment,
        data_start,
        metadata,
        tensors,
        by_name,
    })
}

/// Checks the dims: each fits in `i64`/`usize`, the product does not overflow, the row length
/// is a multiple of the block size, and the byte size does not overflow.
fn validate_shape(name: &str, dims: &[u64], ty: GgmlType) -> Result<(), GgufError> {
    let bad = |reason: String| GgufError::BadShape {
        tensor: name.to_owned(),
        dims: dims.to_vec(),
        reason,
    };
    let mut n: u64 = 1;
    for &d in dims {
        if d > i64::MAX as u64 {
            return Err(bad(format!("dim {d} exceeds i64::MAX")));
        }
        n = n
            .checked_mul(d)
            .ok_or_else(|| bad("element count overflows".to_owned()))?;
    }
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| bad("element count exceeds the address space".to_owned()))?;
    let ne0 = dims.first().copied().unwrap_or(1);
    if !ne0.is_multiple_of(ty.block_elems() as u64) {
        return Err(bad(format!(
            "row length {ne0} is not a multiple of the {ty} block size {}",
            ty.block_elems()
        )));
    }
    ty.bytes_for(n)
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| bad("byte size overflows".to_owned()))?;
    Ok(())
}

/// Checks that every tensor's data is aligned, inside the file, and disjoint from the others.
fn validate_ranges(
    tensors: &[TensorInfo],
    data_start: u64,
    alignment: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    let mut ranges = Vec::with_capacity(tensors.len());
    for t in tensors {
        let bad = |reason: String| GgufError::BadOffset {
            tensor: t.name.clone(),
            offset: t.offset,
            reason,
        };
        if !t.offset.is_multiple_of(alignment) {
            return Err(bad(format!("not a multiple of the alignment {alignment}")));
        }
        let size = t.n_bytes() as u64;
        let start = data_start
            .checked_add(t.offset)
            .ok_or_else(|| bad("offset overflows".to_owned()))?;
        let end = start
            .checked_add(size)
            .ok_or_else(|| bad("offset + size overflows".to_owned()))?;
        if end > file_len {
            return Err(bad(format!(
                "data [{start}, {end}) extends past the end of the file ({file_len} bytes)"
            )));
        }
        if size > 0 {
            ranges.push((start, end, t));
        }
    }
    ranges.sort_by_key(|r| r.0);
    for w in ranges.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.0 < a.1 {
            return Err(GgufError::BadOffset {
                tensor: b.2.name.clone(),
                offset: b.2.offset,
                reason: format!("data overlaps tensor `{}`", a.2.name),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_reports_truncation_precisely() {
        let bytes = [1u8, 0, 0, 0, 9];
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
        };
        assert_eq!(c.u32(&|| "x".to_owned()).expect("4 bytes"), 1);
        match c.u32(&|| "y".to_owned()) {
            Err(GgufError::Truncated {
                what,
                offset,
                needed,
                available,
            }) => assert_eq!((what.as_str(), offset, needed, available), ("y", 4, 4, 1)),
            other => panic!("expected Truncated, got {other:?}"),
        }
        // A failed read consumes nothing.
        assert_eq!(c.pos, 4);
    }

    #[test]
    fn counts_are_bounded_by_remaining_bytes() {
        let bytes = [0u8; 100];
        let c = Cursor {
            bytes: &bytes,
            pos: 10,
        };
        assert!(c.check_count(3, 30, "n").is_ok());
        assert!(c.check_count(4, 30, "n").is_err());
        assert!(c.check_count(u64::MAX, 2, "n").is_err());
    }

    #[test]
    fn min_value_sizes_cover_all_value_types() {
        for t in 0..=12 {
            assert!(min_value_size(t).is_some(), "type {t}");
        }
        assert!(min_value_size(13).is_none());
    }
}
