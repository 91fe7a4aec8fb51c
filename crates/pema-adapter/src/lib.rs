//! # pema-adapter — the data owner's side of PEMA
//!
//! The adapter ([`PemaAdapter`]) is a LoRA-like bottleneck without a frozen base weight,
//! z = s·A·dropout(f), h_rct = B_rct·z, h_pd = B_pd·z, read through the frozen LM head
//! (P_PEMA = softmax(W_hd·norm(h_pd)); paper §3). It is trained on an external memory of
//! (f(c_t), y_t) pairs in two phases ([`train`]): an autoencoder on L_rct, then a fresh
//! (A, B_pd) with frozen B_rct on L = κ·L_rct + (1−κ)·L_pd.
//!
//! Everything is generic over burn's `B: Backend` (training over `B: AutodiffBackend`). The
//! adapter is a burn `Module` whose parameters are A, B_rct and B_pd; a phase trains the ones
//! whose `require_grad` it sets, with PyTorch's Adam ([`TorchAdam`]) through burn's optimiser
//! adaptor. The head is used as constant tensors and never receives a gradient.
//!
//! The artifact is a directory with `adapter.safetensors` (A `[r, d]`, B_rct `[d, r]`,
//! B_pd `[d, r]`, the paper's layout) and `adapter.json` ([`AdapterMeta`]: r, scale, dropout,
//! κ, d, vocab, head and memory fingerprints, pema version). [`PemaAdapter::load`] refuses an
//! adapter trained against another head.

pub mod adam;
pub mod adapter;
pub mod config;
pub mod error;
pub mod head_ce;
pub mod inference;
pub mod train;

pub use adam::{AdamOptimizer, AdamState, TorchAdam};
pub use adapter::{ADAPTER_FORMAT, AdapterMeta, KeyStats, Losses, PemaAdapter, Phase};
pub use config::{AdapterConfig, HpdForm, KeyNorm, PhaseConfig, PhasePlan, TrainConfig};
pub use error::{AdapterError, Result};
pub use head_ce::{
    CePath, FusedHead, HeadCeConfig, HeadKernel, HeadPrecision, LowRankMatrix, RowCe,
};
pub use inference::PemaLogits;
pub use train::{
    DevMetrics, PHASE1_STATE, PHASE1_WEIGHTS, PhaseReport, TrainReport, key_stats_host,
    key_stats_of, record_validation, train, train_step, trainable,
};
