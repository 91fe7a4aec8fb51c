//! Typed errors of the schedule crate.

/// Everything that can go wrong when planning or tracing PEMA decoding.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// An invalid schedule or length setting (λ outside [0, 1], ratio ≤ 0, …).
    #[error("invalid schedule setting: {0}")]
    Config(String),
    /// Oracle mode was asked for but no reference lengths were supplied.
    #[error(
        "oracle length mode needs the reference lengths (it reads the reference: label results accordingly)"
    )]
    MissingOracle,
    /// Per-sequence inputs of different lengths.
    #[error("length plan: {0}")]
    Shape(String),
    /// A memory or index does not fit the head/model it is used with, or holds values outside
    /// its vocabulary.
    #[error(transparent)]
    Memory(#[from] pema_memory::MemoryError),
    /// kNN-LM decoding could not use the datastore at some step (it never falls back to the
    /// PLM alone silently).
    #[error("kNN-LM decoding: {0}")]
    Knn(String),
    /// Writing a trace file failed.
    #[error(transparent)]
    Io(#[from] pema_common::FileError),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ScheduleError>;
