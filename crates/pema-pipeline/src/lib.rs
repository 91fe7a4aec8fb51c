//! # pema-pipeline — PEMA's use cases as a library
//!
//! What a user of PEMA does end to end, with typed inputs and outputs, generic over
//! `B: Backend` (the binaries pick the backend and parse arguments; nothing else):
//!
//! - [`serve`]: the PLM over a pairs file (CPU kernels, batch size, the few-shot template's
//!   shared prefix), for decoding and memory construction;
//! - [`decode`]: decode a pairs file with the PLM, PEMA (constant λ or Gradual Unrolling, with
//!   a leak-free length plan by default) or the kNN-LM baseline, one hypothesis per pair;
//! - [`knn`]: the kNN-LM datastore (the training memory, standardised) and its parameters;
//! - [`train`]: train an adapter on a memory through the frozen head, choose λmax on dev;
//! - [`lora`]: the LoRA baseline;
//! - [`step_bench`]: time the phase-2 training step at a named shape on any backend;
//! - [`summary`]: the typed, serde-serialisable summaries the runs write and `xtask` reads.

pub mod datasets;
pub mod decode;
pub mod error;
pub mod knn;
pub mod lora;
pub mod pairs;
pub mod serve;
pub mod step_bench;
pub mod summary;
pub mod train;

pub use decode::{DecodeMethod, DecodeRequest, Decoded, decode_pairs};
pub use error::{PipelineError, Result};
pub use serve::{CpuWeights, EngineInfo, ServeOptions, engine};
pub use summary::{DecodeSummary, LoraSummary, TrainSummary};
