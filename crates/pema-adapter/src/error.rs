//! Typed errors of the adapter crate.

use std::path::PathBuf;

/// Everything that can go wrong while building, training, saving or loading a PEMA adapter.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// An I/O error on a named file or directory.
    #[error(transparent)]
    Io(#[from] pema_common::FileError),
    /// A JSON file (adapter config, checkpoint state) could not be read or written.
    #[error(transparent)]
    Json(#[from] pema_common::JsonError),
    /// A file exists but its contents are not what pema wrote (missing tensor, wrong shape,
    /// unknown format tag, …).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The adapter was trained against another LM head than the one supplied.
    #[error(
        "adapter {path} was trained against the LM head with fingerprint {expected}, \
         but the supplied head has fingerprint {found}: refusing to combine them"
    )]
    HeadMismatch {
        /// The adapter directory or config file.
        path: PathBuf,
        /// Fingerprint recorded in the adapter.
        expected: String,
        /// Fingerprint of the supplied head.
        found: String,
    },
    /// A checkpoint cannot be resumed with the given configuration or data.
    #[error("cannot resume from {path}: {message}")]
    ResumeMismatch {
        /// The checkpoint state file.
        path: PathBuf,
        /// Which recorded field differs.
        message: String,
    },
    /// An invalid configuration value (rank 0, dropout outside [0, 1), …).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Memory and head disagree (key width ≠ d, value outside the vocabulary, empty memory).
    #[error("memory {what}: {message}")]
    Data {
        /// Which memory (`train`, `dev`, or a kNN datastore's directory).
        what: String,
        /// What is wrong.
        message: String,
    },
    /// A loss became NaN or infinite; training stopped and the last good checkpoint is kept.
    #[error(
        "non-finite {what} ({value}) in phase {phase} at step {step}; training stopped. {}",
        match checkpoint {
            Some(p) => format!("The last good checkpoint is kept in {} (resume from it with a smaller learning rate).", p.display()),
            None => "No checkpoint had been written yet.".to_string(),
        }
    )]
    NonFinite {
        /// Training phase (1 or 2).
        phase: u8,
        /// Optimiser step at which it was detected.
        step: u64,
        /// Which quantity (`train loss`, `dev loss`).
        what: String,
        /// The offending value.
        value: f64,
        /// The last good checkpoint's state file, if one was written.
        checkpoint: Option<PathBuf>,
    },
    /// Training stopped on purpose after `TrainConfig::halt_after_steps` steps; resume from
    /// the checkpoint to continue.
    #[error("training halted after {steps} steps in this run (phase {phase}, step {step}); resume from {}", checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the beginning (no checkpoint yet)".into()))]
    Halted {
        /// Steps taken in this run.
        steps: u64,
        /// Phase at the halt.
        phase: u8,
        /// Step within the phase at the halt.
        step: u64,
        /// The checkpoint a resumed run starts from.
        checkpoint: Option<PathBuf>,
    },
    /// Reading the external memory failed.
    #[error("memory: {0}")]
    Memory(#[from] pema_memory::MemoryError),
    /// Reading or writing a safetensors file through the backbone helpers failed.
    #[error(transparent)]
    Backbone(#[from] pema_backbone::BackboneError),
}

impl AdapterError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io(pema_common::FileError::new(path, source))
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, AdapterError>;
