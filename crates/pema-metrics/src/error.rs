//! The error type of `pema-metrics`.

use std::path::PathBuf;

/// Everything that can go wrong while reading evaluation files or configuring a metric.
///
/// User files never cause a panic: every problem with them is one of these variants and names
/// the file (and the line where one applies).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A file does not exist.
    #[error("file not found: {path}")]
    MissingFile {
        /// The path that was asked for.
        path: PathBuf,
    },
    /// Any other I/O failure while reading a file.
    #[error("cannot read {0}")]
    Io(#[from] pema_common::FileError),
    /// A line is not valid UTF-8.
    #[error("{path}:{line}: invalid UTF-8 (byte offset {byte_offset} in the line)")]
    InvalidUtf8 {
        /// The file being read.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Offset of the first invalid byte within the line.
        byte_offset: usize,
    },
    /// A hypothesis file and a reference file have different numbers of lines.
    #[error(
        "{other_path} has {other_lines} lines but {hyp_path} has {hyp_lines}; \
         line {first_unpaired} of {longer} has no counterpart"
    )]
    FileLengthMismatch {
        /// The hypothesis file.
        hyp_path: PathBuf,
        /// Its number of lines.
        hyp_lines: usize,
        /// The reference (or second hypothesis) file.
        other_path: PathBuf,
        /// Its number of lines.
        other_lines: usize,
        /// The longer of the two files.
        longer: PathBuf,
        /// 1-based number of the first line of `longer` that has no counterpart.
        first_unpaired: usize,
    },
    /// In-memory streams of different lengths were passed to a metric.
    #[error("{what}: expected {expected} segments, found {found}")]
    LengthMismatch {
        /// Which stream is wrong (e.g. "reference stream 2").
        what: String,
        /// Number of hypotheses.
        expected: usize,
        /// Number of segments in the offending stream.
        found: usize,
    },
    /// A metric was asked to score against zero references.
    #[error("no references given")]
    NoReferences,
    /// An invalid option value.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, MetricsError>;
