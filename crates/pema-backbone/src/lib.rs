//! # pema-backbone — the PLM owner's side of PEMA
//!
//! Loads a pretrained language model (GGUF v3 or the Hugging Face safetensors layout), runs it in
//! burn on any `B: Backend`, and exposes the *PEMA seam*: at every decoding step the context
//! representation f(c) (the residual stream after the last block, **before** the final norm) and
//! the PLM's next-token logits, with the choice of the next token left to a caller-supplied
//! [`StepPolicy`].
//!
//! The LM head together with its final norm is a separate, exportable piece ([`LmHead`]): it is
//! exactly what the PLM owner hands to the data owner (paper §3, "offsite tuning").

pub mod attention;
pub mod cache;
pub mod config;
pub mod elementwise;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod head;
pub mod kernels;
pub mod loader;
pub mod model;
pub mod nn;
pub mod packed;
pub mod seam;
pub mod st;
pub mod testing;
pub mod tokenizer;

pub use cache::{KvCache, SeqKv};
pub use config::{Family, ModelConfig, RopeLayout};
pub use engine::{DecodingSeq, Engine, SharedPrefix};
pub use error::BackboneError;
pub use head::LmHead;
pub use kernels::{CpuKernels, Kernels, Reference};
pub use loader::{LoadedModel, WeightSource, build_transformer, load_model_dir};
pub use model::Transformer;
pub use seam::{ContextRepr, GenerateOptions, Greedy, Plm, StepOutput, StepPolicy};
pub use tokenizer::{PemaTokenizer, TokenizerSpec};
