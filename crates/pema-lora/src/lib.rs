//! # pema-lora — LoRA fine-tuning of the backbone, the standard PEFT baseline
//!
//! For each adapted linear layer with weight `Wᵀ` `[in, out]` LoRA trains `A` `[in, r]`
//! (Kaiming-uniform, as in PyTorch's `peft`) and `B` `[r, out]` (zeros), and the layer computes
//! `x·(Wᵀ + A·B·α/r)`. Training builds, at every step, an autodiff copy of the frozen model
//! whose adapted weights are these differentiable merged weights, so burn's autodiff carries
//! the causal-LM loss on the target tokens back through the whole transformer to `A` and `B`.
//!
//! The loss is the cross-entropy of `target + "\n"` after the prompt the PLM is decoded with
//! ([`pema_memory::PromptTemplate`]); logits are computed at target positions only. At test
//! time [`merge`] bakes `A·B·α/r` into the weights and the normal greedy decoder runs
//! unchanged. [`LoraReport`] records the wall time and the process's peak resident memory
//! ([`peak_rss_bytes`]) next to the losses, for comparison with PEMA's training.

pub mod config;
pub mod data;
pub mod error;
pub mod lora;
pub mod report;
pub mod train;

pub use config::{LoraConfig, LoraTarget};
pub use data::{Example, encode_pairs, newline_id};
pub use error::{LoraError, Result};
pub use lora::{LORA_FORMAT, Lora, LoraMeta, LoraSlot, lift, load_merged, merge};
pub use report::{LoraReport, peak_rss_bytes};
pub use train::{batch_nll, mean_nll, train};
