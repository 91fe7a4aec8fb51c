//! # pema-schedule — PEMA decoding
//!
//! At test time the PLM owner's next-token distribution P_LM and the adapter's P_PEMA are mixed,
//! P = (1−λ)·P_LM + λ·P_PEMA, computed in log space ([`mix_log_probs`]; paper §4). λ follows a
//! [`Schedule`]: constant, or Gradual Unrolling (λ₀ = λmax, λ_k = (λmax·(1 − k/L))², clamped at
//! 0). The horizon L and the maximum length come from a [`LengthPlan`] that by default reads
//! only the source (L = ⌈source tokens × ratio⌉); the official code's reference-based L is
//! available only as the labelled oracle mode. [`PemaPolicy`] plugs all of this into the
//! backbone's decoding seam (greedy, batched) and can trace every step. The kNN-LM baseline
//! ([`KnnLmPolicy`], [`tune_knn_lm`]) interpolates the same way over the same memory.

pub mod error;
pub mod knn_lm;
pub mod length;
pub mod mix;
pub mod policy;
pub mod schedule;
pub mod tune;

pub use error::{Result, ScheduleError};
pub use knn_lm::{
    KnnGridPoint, KnnLmParams, KnnLmPolicy, KnnTuneReport, StandardizedSource, knn_log_probs,
    tune_knn_lm,
};
pub use length::{
    HorizonMode, LengthPlan, LengthSpec, MaxLenMode, OracleLengths, estimate_length_ratio,
    plan_lengths,
};
pub use mix::{mix_log_probs, mix_logits};
pub use policy::{PemaPolicy, StepTrace, Winner, write_traces_jsonl};
pub use schedule::{Schedule, ScheduleKind};
pub use tune::{GuPosition, GuTune, LambdaPoint, LambdaTuneReport, tune_lambda};
