//! Decoding a pairs file (paper §4): prompts from a template, a leak-free length plan (the
//! oracle only on request), greedy decoding with the PLM alone, PEMA (log-space mixture under
//! constant λ or Gradual Unrolling) or the kNN-LM baseline, continuous batching, and the
//! paper's stopping rule (one hypothesis per line).

use burn::tensor::backend::Backend;
use pema_adapter::PemaLogits;
use pema_backbone::{GenerateOptions, Greedy, PemaTokenizer, Plm};
use pema_memory::{ExactKnn, Pair, PromptTemplate};
use pema_schedule::{
    KnnLmParams, KnnLmPolicy, LengthSpec, OracleLengths, PemaPolicy, Schedule, StandardizedSource,
    StepTrace, plan_lengths,
};

use crate::error::{PipelineError, Result};

/// The length ratio used when neither the caller nor the adapter records one.
pub const DEFAULT_LENGTH_RATIO: f64 = 1.5;

/// How each next token is chosen.
pub enum DecodeMethod<'a, B: Backend> {
    /// The PLM alone (greedy), also for a LoRA-merged PLM.
    Plm,
    /// PEMA: argmax of (1−λ_k)·P_LM + λ_k·P_PEMA.
    Pema {
        /// The adapter's next-token logits through the frozen head.
        logits: PemaLogits<'a, B>,
        /// λ_k.
        schedule: Schedule,
        /// Record a [`StepTrace`] per sequence and step.
        trace: bool,
    },
    /// kNN-LM on the same memory: λ·P_kNN + (1−λ)·P_LM.
    KnnLm {
        /// Exact index over the standardised keys.
        index: &'a ExactKnn<B>,
        /// The standardised training memory (values and key statistics).
        keys: &'a StandardizedSource<'a>,
        /// k, temperature and λ.
        params: KnnLmParams,
    },
}

impl<B: Backend> DecodeMethod<'_, B> {
    /// The method's name in summaries: `plm`, `pema-gu`, `pema-constant` or `knn-lm`.
    pub fn name(&self) -> String {
        match self {
            DecodeMethod::Plm => "plm".into(),
            DecodeMethod::Pema { schedule, .. } => format!("pema-{}", schedule.kind().name()),
            DecodeMethod::KnnLm { .. } => "knn-lm".into(),
        }
    }
}

/// What to decode.
#[derive(Debug, Clone, Copy)]
pub struct DecodeRequest<'a> {
    /// The pairs (targets are read only by the oracle length mode).
    pub pairs: &'a [Pair],
    /// The prompt template (few-shot allowed).
    pub template: &'a PromptTemplate,
    /// Where the GU horizon and the maximum length come from.
    pub length: LengthSpec,
    /// Target/source token-length ratio of the ratio mode.
    pub length_ratio: f64,
}

/// The outcome of [`decode_pairs`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// One hypothesis per pair: the decoded text up to its first newline, trimmed.
    pub hypotheses: Vec<String>,
    /// Step traces (PEMA with `trace`), ordered by sequence then step.
    pub traces: Vec<StepTrace>,
    /// Tokens generated.
    pub tokens: usize,
    /// Whether any length came from the reference.
    pub uses_reference: bool,
}

/// Decodes `req` with `plm`: an in-process [`pema_backbone::Engine`] (continuous batching
/// up to its batch size) or a PLM served elsewhere.
pub fn decode_pairs<B: Backend>(
    plm: &dyn Plm<B>,
    tok: &PemaTokenizer,
    req: &DecodeRequest<'_>,
    method: DecodeMethod<'_, B>,
) -> Result<Decoded> {
    let prompts = req
        .pairs
        .iter()
        .map(|p| tok.encode_prompt(&req.template.render(&p.source)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let source_lens = crate::pairs::source_lengths(tok, req.pairs)?;
    let (horizon_mode, max_mode) = req.length.modes(Some(req.length_ratio))?;
    let oracle = if req.length.is_oracle() {
        // The official code's horizon: tokens of prompt + source + reference (a test-time leak).
        let mut o = OracleLengths::default();
        for (p, prompt) in req.pairs.iter().zip(&prompts) {
            let r = tok.encode_continuation(&p.target)?.len();
            o.horizon.push(prompt.len() + r);
            o.reference.push(r);
        }
        Some(o)
    } else {
        None
    };
    let plan = plan_lengths(horizon_mode, max_mode, &source_lens, oracle.as_ref())?;
    let mut max_new_tokens = plan.max_new_tokens.clone();
    // `--length N` fixes the number of steps: for the methods without a horizon (the PLM,
    // kNN-LM) it is the maximum number of new tokens.
    if let (LengthSpec::Steps(n), DecodeMethod::Plm | DecodeMethod::KnnLm { .. }) =
        (req.length, &method)
    {
        max_new_tokens = vec![n; prompts.len()];
    }
    if let Some(ctx) = plm.context_length() {
        fit_context(req.pairs, &prompts, &mut max_new_tokens, ctx)?;
    }
    if let DecodeMethod::KnnLm { index, keys, .. } = &method {
        // The datastore meets the model here: refuse another model's before any step.
        pema_schedule::knn_lm::check_datastore(
            index,
            keys,
            plm.hidden_size(),
            plm.vocab_size(),
            Some(tok.fingerprint()),
        )?;
    }
    let opts = GenerateOptions {
        max_new_tokens,
        stop_tokens: tok.stop_ids(),
    };
    let mut traces = Vec::new();
    let out = if prompts.is_empty() {
        Vec::new()
    } else {
        match method {
            DecodeMethod::Plm => plm.generate(&prompts, &opts, &mut Greedy)?,
            DecodeMethod::KnnLm {
                index,
                keys,
                params,
            } => {
                let mut policy =
                    KnnLmPolicy::new(index, keys, params, plm.hidden_size(), plm.vocab_size())?;
                let out = plm.generate(&prompts, &opts, &mut policy)?;
                if let Some(e) = policy.error() {
                    return Err(e.into());
                }
                out
            }
            DecodeMethod::Pema {
                logits,
                schedule,
                trace,
            } => {
                let mut policy = PemaPolicy::new(logits, schedule, plan.horizons.clone())?;
                if trace {
                    policy = policy.with_traces(0);
                }
                let out = plm.generate(&prompts, &opts, &mut policy)?;
                traces = policy.take_traces();
                // Rows of a step come in batch order; keep sequence after sequence.
                traces.sort_by_key(|t| (t.seq, t.step));
                out
            }
        }
    };
    let mut hypotheses = Vec::with_capacity(out.len());
    let mut tokens = 0;
    for ids in out {
        tokens += ids.len();
        hypotheses.push(first_line(&tok.decode(&ids)?));
    }
    Ok(Decoded {
        hypotheses,
        traces,
        tokens,
        uses_reference: plan.uses_reference,
    })
}

/// Refuses a pair whose prompt leaves no room in the context length `ctx` (naming its line)
/// and caps every sequence's new tokens at the room its prompt leaves.
fn fit_context(
    pairs: &[Pair],
    prompts: &[Vec<u32>],
    max_new_tokens: &mut [usize],
    ctx: usize,
) -> Result<()> {
    for ((pair, prompt), max) in pairs.iter().zip(prompts).zip(max_new_tokens) {
        if prompt.len() >= ctx {
            return Err(PipelineError::PromptTooLong {
                line: pair.line,
                prompt: prompt.len(),
                context_length: ctx,
            });
        }
        *max = (*max).min(ctx - prompt.len());
    }
    Ok(())
}

/// The paper's stopping rule on decoded text: everything before the first newline, trimmed.
pub fn first_line(text: &str) -> String {
    text.split('\n').next().unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hypothesis_is_the_first_line_trimmed() {
        assert_eq!(first_line(" Guten Morgen. \nEnglish: x"), "Guten Morgen.");
        assert_eq!(first_line("\nrest"), "");
        assert_eq!(first_line(""), "");
    }
}
