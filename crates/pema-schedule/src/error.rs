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
    /// Writing a trace file failed.
    #[error(transparent)]
    Io(#[from] pema_common::FileError),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ScheduleError>;
