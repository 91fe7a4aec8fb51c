//! Pairs files and prompt templates (defined in `pema-memory`, re-exported here) and the
//! target/source length ratio that leak-free Gradual Unrolling reads.

pub use pema_memory::{Pair, PairsFile, PromptTemplate};

use pema_backbone::PemaTokenizer;

use crate::error::{PipelineError, Result};

/// Source tokens of each pair (continuation tokens, no BOS): what GU's horizon
/// L = ⌈source tokens × ratio⌉ counts, in decoding and in λ tuning alike.
pub fn source_lengths(tok: &PemaTokenizer, pairs: &[Pair]) -> Result<Vec<usize>> {
    pairs
        .iter()
        .map(|p| Ok(tok.encode_continuation(&p.source)?.len()))
        .collect()
}

/// Σ target tokens / Σ source tokens over `pairs` with `tok` (continuation tokens, no BOS):
/// the ratio recorded in an adapter, so that GU's horizon at test time is
/// L = ⌈source tokens × ratio⌉ and never reads the reference.
pub fn length_ratio(tok: &PemaTokenizer, pairs: &[Pair]) -> Result<f64> {
    let mut lens = Vec::with_capacity(pairs.len());
    for p in pairs {
        lens.push((
            tok.encode_continuation(&p.source)?.len(),
            tok.encode_continuation(&p.target)?.len(),
        ));
    }
    pema_schedule::estimate_length_ratio(lens)
        .ok_or_else(|| PipelineError::Invalid("no source tokens in the pairs".into()))
}
