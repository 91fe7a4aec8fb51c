//! Typed errors of the LoRA crate.

use std::path::PathBuf;

/// Everything that can go wrong while building, training, saving or loading LoRA weights.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// An I/O error on a named file or directory.
    #[error(transparent)]
    Io(#[from] pema_common::FileError),
    /// A JSON file could not be read or written.
    #[error(transparent)]
    Json(#[from] pema_common::JsonError),
    /// A file exists but its contents are not what pema wrote.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The LoRA weights were trained on another model than the one supplied.
    #[error(
        "LoRA weights {path} were trained on the model with weights sha256 {expected}, \
         but the supplied model has {found}: refusing to combine them"
    )]
    ModelMismatch {
        /// The LoRA directory.
        path: PathBuf,
        /// Fingerprint recorded with the LoRA weights.
        expected: String,
        /// Fingerprint of the supplied model.
        found: String,
    },
    /// An invalid configuration (rank 0, unknown target, …).
    #[error("invalid LoRA configuration: {0}")]
    Config(String),
    /// Invalid training data (empty prompt, no pairs, …).
    #[error("invalid LoRA training data: {0}")]
    Data(String),
    /// LoRA weights whose shapes do not fit the model.
    #[error("LoRA weights do not fit the model: {0}")]
    Shape(String),
    /// An error of the backbone (forward pass, tokenizer, safetensors).
    #[error(transparent)]
    Backbone(#[from] pema_backbone::BackboneError),
    /// An error reading pairs or templates.
    #[error(transparent)]
    Memory(#[from] pema_memory::MemoryError),
}

/// Result with [`LoraError`].
pub type Result<T> = std::result::Result<T, LoraError>;
