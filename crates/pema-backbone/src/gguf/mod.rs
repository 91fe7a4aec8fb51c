//! GGUF v3 (and v2) reader, ggml dequantisation, reference quantisers and a small writer.
//!
//! The PLM owner ships its weights as a GGUF file; this module turns it into metadata plus
//! row-major `f32` tensors for the backbone (paper §3: the PLM is a black box to the data owner,
//! so only the owner's side ever reads these files).
//!
//! # Layout of a GGUF file (little-endian)
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count × (key: string, value_type u32, value)
//! tensor_count × (name: string, n_dims u32, dims u64[n_dims], ggml_type u32, offset u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset, offset a multiple of the alignment
//! ```
//! `string` is a `u64` byte length followed by UTF-8 bytes. Tensor dims are listed
//! fastest-varying first: dims `(ne0, ne1)` is the row-major `[ne1][ne0]` matrix, i.e.
//! `(out_features, in_features)` for a linear layer; [`TensorInfo::shape`] gives the row-major
//! shape.
//!
//! Every length, count and offset read from the file is checked before it is used, and counts
//! are bounded by the bytes left in the file before anything is allocated, so a malformed or
//! hostile file yields a [`GgufError`], never a panic, an out-of-bounds read or a huge allocation.

mod quant;
mod quantize;
mod reader;
mod writer;

pub use quant::dequantize;
pub use quantize::quantize;
pub use reader::GgufFile;
pub use writer::GgufWriter;

/// The GGUF magic, "GGUF" read as a little-endian `u32`.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Default alignment of the tensor data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest number of tensor dimensions ggml supports (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays accepted (arrays of arrays of …).
pub const MAX_ARRAY_DEPTH: usize = 4;

/// Errors of the GGUF reader, the dequantisers, the quantisers and the writer.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file ends before a field that must be there.
    #[error(
        "truncated while reading {what} at byte {offset}: needed {needed} bytes, {available} available"
    )]
    Truncated {
        /// What was being read.
        what: String,
        /// Byte offset of the read.
        offset: u64,
        /// Bytes needed.
        needed: u64,
        /// Bytes left in the file at that offset.
        available: u64,
    },
    /// The file does not start with "GGUF".
    #[error("bad magic {0:#010x}: not a GGUF file (expected \"GGUF\")")]
    BadMagic(u32),
    /// A GGUF version other than 2 or 3.
    #[error("unsupported GGUF version {0} (only 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    /// A count, length or size is impossibly large for the file or for this reader.
    #[error("{what} is too large: {value}")]
    TooLarge {
        /// What the number is.
        what: String,
        /// The number found.
        value: u64,
    },
    /// A tensor's data range is misaligned, outside the file, or overlaps another tensor.
    #[error("tensor `{tensor}`: bad data offset {offset}: {reason}")]
    BadOffset {
        /// Tensor name.
        tensor: String,
        /// Offset as stored in the file (relative to the data section).
        offset: u64,
        /// Why it is rejected.
        reason: String,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("bad alignment {0}: must be a non-zero power of two")]
    BadAlignment(u64),
    /// A tensor's shape is invalid (too many dims, overflow, row not a multiple of the block).
    #[error("tensor `{tensor}`: bad shape {dims:?}: {reason}")]
    BadShape {
        /// Tensor name.
        tensor: String,
        /// Dims as stored in the file (ne0 first).
        dims: Vec<u64>,
        /// Why it is rejected.
        reason: String,
    },
    /// A ggml type id that is unknown, or known but not supported by the operation asked.
    #[error("tensor `{tensor}`: unsupported ggml type id {type_id}")]
    UnsupportedType {
        /// Tensor name (or a description of the buffer).
        tensor: String,
        /// The ggml type id.
        type_id: u32,
    },
    /// A metadata value type id outside 0..=12.
    #[error("metadata key `{key}`: unknown value type id {type_id}")]
    BadValueType {
        /// The key being read.
        key: String,
        /// The value type id found.
        type_id: u32,
    },
    /// A key or tensor name is not valid UTF-8.
    #[error("{what} at byte {offset} is not valid UTF-8")]
    BadUtf8 {
        /// What was being read.
        what: String,
        /// Byte offset of the string data.
        offset: u64,
    },
    /// The same metadata key appears twice.
    #[error("duplicate metadata key `{0}`")]
    DuplicateKey(String),
    /// The same tensor name appears twice.
    #[error("duplicate tensor name `{0}`")]
    DuplicateTensor(String),
    /// A required metadata key is absent.
    #[error("missing metadata key `{0}`")]
    MissingKey(String),
    /// A metadata key holds a value of another type.
    #[error("metadata key `{key}` is not {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The type that was asked for.
        expected: &'static str,
    },
    /// No tensor of that name.
    #[error("no tensor named `{0}`")]
    UnknownTensor(String),
    /// A buffer given to (de)quantisation has the wrong length.
    #[error("{what}: expected {expected}, got {actual}")]
    BadLength {
        /// What was being checked.
        what: String,
        /// The expected length.
        expected: u64,
        /// The actual length.
        actual: u64,
    },
    /// The writer was given something it cannot encode.
    #[error("GGUF writer: {0}")]
    Writer(String),
    /// An I/O error while opening, mapping or writing a file.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A metadata value (GGUF value types 0–12).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 6.
    F32(f32),
    /// Type 12.
    F64(f64),
    /// Type 7 (one byte; any non-zero byte reads as `true`).
    Bool(bool),
    /// Type 8. Invalid UTF-8 in a value is replaced by U+FFFD (keys and names must be valid).
    String(String),
    /// Type 9: all elements share one type.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer that is non-negative, as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(u64::from(v)),
            Self::U16(v) => Some(u64::from(v)),
            Self::U32(v) => Some(u64::from(v)),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer as `i64` (a `u64` above `i64::MAX` gives `None`).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::U8(v) => Some(i64::from(v)),
            Self::U16(v) => Some(i64::from(v)),
            Self::U32(v) => Some(i64::from(v)),
            Self::U64(v) => i64::try_from(v).ok(),
            Self::I8(v) => Some(i64::from(v)),
            Self::I16(v) => Some(i64::from(v)),
            Self::I32(v) => Some(i64::from(v)),
            Self::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any number (integer or float) as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(f64::from(v)),
            Self::F64(v) => Some(v),
            Self::U8(v) => Some(f64::from(v)),
            Self::U16(v) => Some(f64::from(v)),
            Self::U32(v) => Some(f64::from(v)),
            Self::I8(v) => Some(f64::from(v)),
            Self::I16(v) => Some(f64::from(v)),
            Self::I32(v) => Some(f64::from(v)),
            Self::U64(v) => Some(v as f64),
            Self::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The boolean, if this is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The GGUF value type id of this value (0–12).
    pub fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }
}

/// A ggml tensor type. All types ggml currently assigns an id are recognised (so their sizes are
/// known and a file holding them opens); [`GgmlType::can_dequantize`] tells which ones this
/// module can turn into `f32`.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// id 0: IEEE binary32.
    F32,
    /// id 1: IEEE binary16.
    F16,
    /// id 2: blocks of 32, `f16 d` + 16 bytes of 4-bit q; x = d·(q − 8).
    Q4_0,
    /// id 3: blocks of 32, `f16 d, f16 m` + 16 bytes of 4-bit q; x = d·q + m.
    Q4_1,
    /// id 6: blocks of 32, `f16 d`, 32 high bits, 16 bytes of low nibbles; x = d·(q − 16).
    Q5_0,
    /// id 7: blocks of 32, `f16 d, f16 m`, 32 high bits, 16 bytes of low nibbles; x = d·q + m.
    Q5_1,
    /// id 8: blocks of 32, `f16 d` + 32 × i8; x = d·q.
    Q8_0,
    /// id 9: blocks of 32, `f16 d, f16 s` + 32 × i8; x = d·q.
    Q8_1,
    /// id 10: K-quant, 2 bits (not dequantised here).
    Q2_K,
    /// id 11: K-quant, 3 bits (not dequantised here).
    Q3_K,
    /// id 12: K-quant super-blocks of 256, 8 sub-blocks with 6-bit scales and mins, 4-bit q.
    Q4_K,
    /// id 13: like Q4_K with a fifth bit per weight.
    Q5_K,
    /// id 14: super-blocks of 256, 16 sub-blocks with i8 scales, 6-bit q; x = d·s·(q − 32).
    Q6_K,
    /// id 15: K-quant intermediate type (not dequantised here).
    Q8_K,
    /// id 16 (not dequantised here).
    IQ2_XXS,
    /// id 17 (not dequantised here).
    IQ2_XS,
    /// id 18 (not dequantised here).
    IQ3_XXS,
    /// id 19 (not dequantised here).
    IQ1_S,
    /// id 20 (not dequantised here).
    IQ4_NL,
    /// id 21 (not dequantised here).
    IQ3_S,
    /// id 22 (not dequantised here).
    IQ2_S,
    /// id 23 (not dequantised here).
    IQ4_XS,
    /// id 24: i8 elements.
    I8,
    /// id 25: i16 elements.
    I16,
    /// id 26: i32 elements.
    I32,
    /// id 27: i64 elements.
    I64,
    /// id 28: IEEE binary64.
    F64,
    /// id 29 (not dequantised here).
    IQ1_M,
    /// id 30: bfloat16.
    BF16,
    /// id 34 (not dequantised here).
    TQ1_0,
    /// id 35 (not dequantised here).
    TQ2_0,
    /// id 39 (not dequantised here).
    MXFP4,
}

impl GgmlType {
    /// Every recognised type.
    pub const ALL: [GgmlType; 32] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::Q8_K,
        Self::IQ2_XXS,
        Self::IQ2_XS,
        Self::IQ3_XXS,
        Self::IQ1_S,
        Self::IQ4_NL,
        Self::IQ3_S,
        Self::IQ2_S,
        Self::IQ4_XS,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F64,
        Self::IQ1_M,
        Self::BF16,
        Self::TQ1_0,
        Self::TQ2_0,
        Self::MXFP4,
    ];

    /// The type with ggml id `id`, if it is one ggml currently assigns.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::Q8_K => 15,
            Self::IQ2_XXS => 16,
            Self::IQ2_XS => 17,
            Self::IQ3_XXS => 18,
            Self::IQ1_S => 19,
            Self::IQ4_NL => 20,
            Self::IQ3_S => 21,
            Self::IQ2_S => 22,
            Self::IQ4_XS => 23,
            Self::I8 => 24,
            Self::I16 => 25,
            Self::I32 => 26,
            Self::I64 => 27,
            Self::F64 => 28,
            Self::IQ1_M => 29,
            Self::BF16 => 30,
            Self::TQ1_0 => 34,
            Self::TQ2_0 => 35,
            Self::MXFP4 => 39,
        }
    }

    /// Elements per block (1 for plain types, 32 for the legacy quants, 256 for K-quants).
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32
            | Self::F16
            | Self::BF16
            | Self::F64
            | Self::I8
            | Self::I16
            | Self::I32
            | Self::I64 => 1,
            Self::Q4_0
            | Self::Q4_1
            | Self::Q5_0
            | Self::Q5_1
            | Self::Q8_0
            | Self::Q8_1
            | Self::IQ4_NL
            | Self::MXFP4 => 32,
            _ => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::F64 | Self::I64 => 8,
            Self::I8 => 1,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q8_1 => 36,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
            Self::Q8_K => 292,
            Self::IQ2_XXS => 66,
            Self::IQ2_XS => 74,
            Self::IQ3_XXS => 98,
            Self::IQ1_S => 50,
            Self::IQ4_NL => 18,
            Self::IQ3_S => 110,
            Self::IQ2_S => 82,
            Self::IQ4_XS => 136,
            Self::IQ1_M => 56,
            Self::TQ1_0 => 54,
            Self::TQ2_0 => 66,
            Self::MXFP4 => 17,
        }
    }

    /// Whether [`dequantize`] (and [`quantize`]) support this type.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            Self::F32
                | Self::F16
                | Self::BF16
                | Self::F64
                | Self::I8
                | Self::I16
                | Self::I32
                | Self::I64
                | Self::Q4_0
                | Self::Q4_1
                | Self::Q5_0
                | Self::Q5_1
                | Self::Q8_0
                | Self::Q8_1
                | Self::Q4_K
                | Self::Q5_K
                | Self::Q6_K
        )
    }

    /// Bytes needed for `n_elements` elements, or `None` when `n_elements` is not a multiple of
    /// the block size or the size overflows.
    pub fn bytes_for(self, n_elements: usize) -> Option<usize> {
        if !n_elements.is_multiple_of(self.block_elems()) {
            return None;
        }
        (n_elements / self.block_elems()).checked_mul(self.block_bytes())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One entry of the tensor-info table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dims as in the file, fastest-varying (ne0) first.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Byte offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Row-major shape: the dims reversed, e.g. `[ne1, ne0]` = `(out, in)` for a weight matrix.
    pub fn shape(&self) -> Vec<usize> {
        // Dims were validated to fit in usize when the file was opened.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements (product of the dims; 1 for a scalar).
    pub fn n_elements(&self) -> usize {
        // Validated (checked product) when the file was opened.
        self.dims
            .iter()
            .fold(1usize, |acc, &d| acc.saturating_mul(d as usize))
    }

    /// Number of bytes of the stored data.
    pub fn n_bytes(&self) -> usize {
        let n = self.n_elements();
        n / self.ggml_type.block_elems() * self.ggml_type.block_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_round_trip() {
        for ty in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38] {
            assert_eq!(GgmlType::from_id(removed), None);
        }
    }

    #[test]
    fn block_sizes_follow_ggml() {
        let expect = [
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q5_1, 32, 24),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q4_K, 256, 144),
            (GgmlType::Q5_K, 256, 176),
            (GgmlType::Q6_K, 256, 210),
            (GgmlType::BF16, 1, 2),
        ];
        for (ty, e, b) in expect {
            assert_eq!((ty.block_elems(), ty.block_bytes()), (e, b), "{ty}");
        }
        assert_eq!(GgmlType::Q8_0.bytes_for(64), Some(68));
        assert_eq!(GgmlType::Q8_0.bytes_for(63), None);
    }

    #[test]
    fn tensor_info_shape_is_reversed_dims() {
        let t = TensorInfo {
            name: "w".into(),
            dims: vec![640, 1024],
            ggml_type: GgmlType::Q8_0,
            offset: 0,
        };
        assert_eq!(t.shape(), vec![1024, 640]);
        assert_eq!(t.n_elements(), 655_360);
        assert_eq!(t.n_bytes(), 655_360 / 32 * 34);
    }

    #[test]
    fn meta_value_accessors() {
        assert_eq!(MetaValue::I32(-1).as_u64(), None);
        assert_eq!(MetaValue::I32(5).as_u64(), Some(5));
        assert_eq!(MetaValue::U32(5).as_f64(), Some(5.0));
        assert_eq!(MetaValue::String("a".into()).as_str(), Some("a"));
        assert_eq!(MetaValue::Bool(true).as_u64(), None);
        assert_eq!(MetaValue::Array(vec![]).as_array().map(<[_]>::len), Some(0));
    }
}
