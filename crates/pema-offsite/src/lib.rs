//! PEMA offsite: the PLM owner as a network service and the data owner as its client.
//!
//! The paper's split (§2): the PLM owner keeps its weights, the data owner keeps its data and
//! the adapter. Here the PLM owner runs [`server::serve`]: it hands out the frozen head
//! (final norm + W_hd, and the packed head its engine multiplies) and the tokenizer once, and
//! runs generation sessions in which it returns only the context representations f(c) of each
//! step; the data owner's [`client::RemotePlm`] implements [`pema_backbone::Plm`], computes
//! P_LM = softmax(W_hd · norm(f(c))) itself, chooses the next tokens (greedy, PEMA with
//! Gradual Unrolling, kNN-LM, or recording a memory) and sends back token ids.
//!
//! In the default, free-running mode, **no target crosses the wire**: the client pairs the
//! f(c) it receives with its gold tokens locally. Teacher forcing sends the targets to the
//! server and is refused unless the client says so explicitly.
//!
//! The wire format is in [`protocol`] (binary, little-endian) over HTTP/1.1 with bearer-token
//! authentication; `PROTOCOL.md` in this crate documents it.

pub mod client;
pub mod protocol;
mod scheduler;
pub mod server;
pub mod tls;

use std::time::Duration;

pub use client::{ClientError, RemotePlm};
pub use scheduler::ServeStats;
pub use server::{ServeConfig, Served, ServerInfo, serve};

/// Limits the server enforces on every client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Sessions open at once (further opens get 503).
    pub max_sessions: usize,
    /// Sequences of one session generating at once (a larger request is capped).
    pub max_batch_per_session: usize,
    /// Prompts per session.
    pub max_prompts: usize,
    /// Tokens per prompt.
    pub max_prompt_tokens: usize,
    /// New tokens per sequence.
    pub max_new_tokens: usize,
    /// Rows of one forward across all sessions (more ready rows wait for the next).
    pub max_rows_per_forward: usize,
    /// Bytes of a request body (larger ones get 413).
    pub max_body_bytes: usize,
    /// Shared prefixes kept computed (least recently used dropped first).
    pub max_prefixes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 64,
            max_batch_per_session: 64,
            max_prompts: 4096,
            max_prompt_tokens: 8192,
            max_new_tokens: 1024,
            max_rows_per_forward: 256,
            max_body_bytes: 64 << 20,
            max_prefixes: 8,
        }
    }
}

/// Defaults of the session time-outs.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An error the service answers a request with (one HTTP status each).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Malformed or out-of-limits request (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Unknown session (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// A request out of turn (409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Over capacity or shutting down (503).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The model failed (500).
    #[error("internal: {0}")]
    Internal(String),
}

impl ServiceError {
    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            ServiceError::BadRequest(_) => 400,
            ServiceError::NotFound(_) => 404,
            ServiceError::Conflict(_) => 409,
            ServiceError::Unavailable(_) => 503,
            ServiceError::Internal(_) => 500,
        }
    }
}
