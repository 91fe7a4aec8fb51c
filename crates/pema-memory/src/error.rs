//! Typed errors of the memory crate.

use std::path::PathBuf;

/// Everything that can go wrong with an external memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// An entry index beyond the memory's size.
    #[error("entry {index} out of range (memory has {len} entries)")]
    OutOfRange {
        /// Requested index.
        index: u64,
        /// Number of entries.
        len: u64,
    },
    /// An I/O error on a named file.
    #[error(transparent)]
    Io(#[from] pema_common::FileError),
    /// A file that must exist (shard named by the manifest, manifest, pairs file) does not.
    #[error("{path}: file not found")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },
    /// The manifest is not valid JSON or lacks fields.
    #[error("manifest {path}: {source}")]
    ManifestParse {
        /// The manifest file.
        path: PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// The manifest parses but is inconsistent (format version, shard list, counts).
    #[error("manifest {path}: {message}")]
    ManifestInvalid {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A shard file's size disagrees with the manifest (truncated file, wrong dtype, …).
    #[error("shard file {path}: {found} bytes, manifest implies {expected}{hint}")]
    ShardSize {
        /// The shard file.
        path: PathBuf,
        /// Size implied by the manifest (entries × row bytes).
        expected: u64,
        /// Size on disk.
        found: u64,
        /// Extra diagnosis (e.g. "size matches dtype f32").
        hint: String,
    },
    /// A shard file's sha256 disagrees with the manifest.
    #[error("shard file {path}: sha256 {found}, manifest records {expected}")]
    Checksum {
        /// The shard file.
        path: PathBuf,
        /// Checksum in the manifest.
        expected: String,
        /// Checksum of the bytes on disk.
        found: String,
    },
    /// A resumed build does not match the memory already in the directory.
    #[error("cannot resume the memory in {path}: {message}")]
    ResumeMismatch {
        /// The memory directory.
        path: PathBuf,
        /// Which recorded field differs.
        message: String,
    },
    /// A pairs file line could not be read.
    #[error("pairs file {path}, line {line}: {message}")]
    Pairs {
        /// The pairs file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A prompt template is unusable.
    #[error("template {name}: {message}")]
    Template {
        /// Template name or file.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The PLM side failed.
    #[error("PLM: {0}")]
    Backbone(#[from] pema_backbone::BackboneError),
    /// The PLM returned something inconsistent (wrong widths, counts).
    #[error("PLM output: {0}")]
    PlmOutput(String),
    /// A caller passed an invalid argument.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A pair's prompt and target do not fit the model's context length.
    #[error(
        "pairs file {path}, line {line}: prompt ({prompt} tokens) + target ({target} tokens) = {} tokens exceed the model's context length {context_length}",
        prompt + target
    )]
    TooLong {
        /// The pairs file.
        path: PathBuf,
        /// 1-based line number of the pair.
        line: usize,
        /// Prompt tokens.
        prompt: usize,
        /// Target tokens.
        target: usize,
        /// The model's context length.
        context_length: usize,
    },
    /// A pairs file holds no pair: the memory would be empty.
    #[error("pairs file {path} holds no pair: refusing to build an empty memory")]
    NoPairs {
        /// The pairs file.
        path: PathBuf,
    },
    /// An entry's value (gold token id) lies outside the model's vocabulary.
    #[error(
        "memory {path}: entry {entry} (shard file {file}) has value {value}, outside the vocabulary of {vocab} tokens"
    )]
    ValueOutOfVocab {
        /// The memory directory.
        path: PathBuf,
        /// Global index of the first bad entry.
        entry: u64,
        /// The shard values file holding it.
        file: String,
        /// The value.
        value: u32,
        /// The vocabulary size it is checked against.
        vocab: usize,
    },
    /// A kNN index entry's value lies outside the model's vocabulary.
    #[error(
        "kNN datastore entry {entry} has value {value}, outside the model's vocabulary of {vocab} tokens"
    )]
    IndexValueOutOfVocab {
        /// Global index of the first bad entry.
        entry: u64,
        /// The value.
        value: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The memory was built with another model or tokenizer than the one it is used with.
    #[error("memory {path} does not fit the model: {message}")]
    ModelMismatch {
        /// The memory directory.
        path: PathBuf,
        /// Which recorded property differs (recorded → now).
        message: String,
    },
}

impl MemoryError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Self::MissingFile { path }
        } else {
            Self::Io(pema_common::FileError::new(path, source))
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, MemoryError>;
