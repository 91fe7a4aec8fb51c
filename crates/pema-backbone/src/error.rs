//! Typed errors of the backbone crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a PLM.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// A GGUF file is malformed, truncated or unsupported.
    #[error("GGUF file {path}: {source}")]
    Gguf {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::gguf::GgufError,
    },
    /// An I/O error on a named file.
    #[error(transparent)]
    Io(#[from] pema_common::FileError),
    /// A safetensors file could not be parsed.
    #[error("safetensors file {path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A JSON file (config, head metadata) could not be parsed.
    #[error(transparent)]
    Json(#[from] pema_common::JsonError),
    /// The model configuration is missing a key or has an invalid value.
    #[error("model config: {0}")]
    Config(String),
    /// A weight tensor is missing or has the wrong shape.
    #[error("weight `{name}`: {message}")]
    Weight {
        /// Tensor name as stored in the file.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer could not be loaded or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A model directory holds neither `model.gguf` nor the HF layout.
    #[error(
        "model directory {0}: expected `model.gguf` (+ `tokenizer.json`) or `config.json` + `*.safetensors` + `tokenizer.json`"
    )]
    UnknownLayout(PathBuf),
    /// A caller passed an invalid argument (empty batch, token id out of range, …).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A PLM served elsewhere (a remote [`crate::Plm`]) failed: connection, protocol or the
    /// server's own error.
    #[error("PLM service: {0}")]
    Remote(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, BackboneError>;
