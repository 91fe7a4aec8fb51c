//! The pipeline's error type: every lower crate's error, plus I/O with its path.

use std::path::PathBuf;

/// Errors of a pipeline use case.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Reading or writing a file failed.
    #[error(transparent)]
    Io(#[from] pema_common::FileError),
    /// A JSON file the pipeline reads is malformed.
    #[error(transparent)]
    Json(#[from] pema_common::JsonError),
    /// The request itself is inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// A pair's prompt does not fit the model's context length.
    #[error(
        "pair at line {line}: its prompt has {prompt} tokens, the model's context length is {context_length}: no room to generate"
    )]
    PromptTooLong {
        /// 1-based line of the pair in its pairs file.
        line: usize,
        /// Prompt tokens.
        prompt: usize,
        /// The model's context length.
        context_length: usize,
    },
    /// A parameters file (kNN-LM parameters, …) holds invalid values.
    #[error("parameters file {path}: {message}")]
    Params {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The PLM (loading, tokenising, decoding).
    #[error(transparent)]
    Backbone(#[from] pema_backbone::BackboneError),
    /// Memories, pairs files and templates.
    #[error(transparent)]
    Memory(#[from] pema_memory::MemoryError),
    /// The adapter, its head and its training.
    #[error(transparent)]
    Adapter(#[from] pema_adapter::AdapterError),
    /// Schedules, length plans and the kNN-LM baseline.
    #[error(transparent)]
    Schedule(#[from] pema_schedule::ScheduleError),
    /// The LoRA baseline.
    #[error(transparent)]
    Lora(#[from] pema_lora::LoraError),
}

impl PipelineError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io(pema_common::FileError::new(path, source))
    }
}

/// Result with [`PipelineError`].
pub type Result<T> = std::result::Result<T, PipelineError>;
