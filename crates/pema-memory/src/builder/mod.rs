//! The memory builder: runs the PLM over the data owner's pairs and writes (f(c_t), y_t).
//!
//! The PLM/data boundary is explicit in the function signatures (paper §2–3):
//! - PLM side, free-running ([`free_running_contexts`]): sees the prompts (built from the
//!   sources) and a step budget per sequence — never the target tokens. It decodes greedily and
//!   records f(prompt + ŵ_<t) at every step t, ŵ being the PLM's own tokens.
//! - PLM side, teacher-forced ([`teacher_forced_contexts`]): kNN-LM style, f(prompt + y_<t);
//!   here the gold prefix is, by definition, given to the PLM.
//! - Memory writer ([`pair_with_gold`]): the only place where gold tokens y_t meet the keys;
//!   step t's key is paired with y_t, keeping steps that have both.
//!
//! [`build_memory`] drives both over contiguous shards of pairs, committing each shard
//! crash-safely, and resumes a killed build where it stopped.

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use pema_backbone::seam::argmax_rows;
use pema_backbone::{GenerateOptions, Plm, StepOutput, StepPolicy};

use crate::error::{MemoryError, Result};
use crate::manifest::{BuildMode, KeyDtype, KeyState, Manifest, MemoryMeta};
use crate::pairs::PairsFile;
use crate::template::PromptTemplate;
use crate::writer::{MemoryWriter, Provenance, ShardData};

/// What the builder needs from a tokenizer: prompts with BOS, targets without, stop tokens.
pub trait PairTokenizer {
    /// Token ids of a prompt (with the model's BOS if it uses one).
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>>;
    /// Token ids of a target continuation (no BOS): the gold tokens y_1…y_T.
    fn encode_target(&self, text: &str) -> Result<Vec<u32>>;
    /// Tokens that end free-running generation: EOS and every end-of-line token.
    fn stop_ids(&self) -> Vec<u32>;
    /// A fingerprint recorded in the manifest.
    fn fingerprint(&self) -> String;
}

impl PairTokenizer for pema_backbone::tokenizer::PemaTokenizer {
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        Ok(pema_backbone::tokenizer::PemaTokenizer::encode_prompt(
            self, text,
        )?)
    }
    fn encode_target(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_continuation(text)?)
    }
    fn stop_ids(&self) -> Vec<u32> {
        pema_backbone::tokenizer::PemaTokenizer::stop_ids(self)
    }
    fn fingerprint(&self) -> String {
        pema_backbone::tokenizer::PemaTokenizer::fingerprint(self).to_string()
    }
}

/// The PLM owner's description of the model, recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// sha256 of the weights.
    pub weights_sha256: String,
    /// Hidden size d.
    pub hidden_size: usize,
    /// Which hidden state f(c) is (pema: pre-final-norm output of the last block).
    pub state: KeyState,
}

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// Free-running (paper) or teacher-forced.
    pub mode: BuildMode,
    /// Key storage type.
    pub dtype: KeyDtype,
    /// Prompt template.
    pub template: PromptTemplate,
    /// Most sequences the PLM runs at once (recorded; the CLI gives it to the engine, which
    /// batches continuously). The builder hands the PLM one shard per call.
    pub batch_size: usize,
    /// Pairs per shard (commit unit). On resume the recorded value is used.
    pub pairs_per_shard: u64,
    /// Free-running budget beyond the target length (paper: 10).
    pub max_extra_steps: usize,
    /// Build from the first `limit` pairs only.
    pub limit: Option<usize>,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// The one check of a batch size (memory builds and decoding alike): at least 1.
pub fn validate_batch_size(batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        return Err(MemoryError::Invalid(
            "the batch size (--batch-size) must be at least 1, got 0".into(),
        ));
    }
    Ok(())
}

impl BuildConfig {
    /// Checks the options: batch size and pairs per shard at least 1.
    pub fn validate(&self) -> Result<()> {
        validate_batch_size(self.batch_size)?;
        if self.pairs_per_shard == 0 {
            return Err(MemoryError::Invalid(
                "pairs per shard (--pairs-per-shard) must be at least 1, got 0".into(),
            ));
        }
        Ok(())
    }
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            mode: BuildMode::FreeRunning,
            dtype: KeyDtype::F32,
            template: PromptTemplate::mt(),
            batch_size: 8,
            pairs_per_shard: 256,
            max_extra_steps: 10,
            limit: None,
            progress: false,
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSummary {
    /// Pairs in the memory.
    pub pairs_total: u64,
    /// Pairs found already committed (skipped by this run).
    pub pairs_skipped: u64,
    /// Entries N in the finished memory.
    pub entries: u64,
    /// Shards in the finished memory.
    pub shards: usize,
    /// Wall time of this run, seconds.
    pub seconds: f64,
    /// Entries per pair on average (`entries / pairs_total`). A free-running build whose PLM
    /// stops early (e.g. a newline after one token) yields few: see [`LOW_ENTRIES_PER_PAIR`].
    pub entries_per_pair: f64,
}

/// Below this many entries per pair on average a build deserves a warning
/// ([`BuildSummary::is_low_yield`]): the targets of MT-style pairs are several tokens long, so
/// fewer than 2 entries per pair means the PLM mostly stopped after its first token
/// (free-running) — usually a template or stop-token problem.
pub const LOW_ENTRIES_PER_PAIR: f64 = 2.0;

impl BuildSummary {
    /// True when the memory holds fewer than [`LOW_ENTRIES_PER_PAIR`] entries per pair.
    pub fn is_low_yield(&self) -> bool {
        self.pairs_total > 0 && self.entries_per_pair < LOW_ENTRIES_PER_PAIR
    }
}

/// Step policy of free-running construction: records f(c_t) of every active sequence and
/// returns the PLM's own greedy token (argmax of its logits).
struct RecordGreedy {
    d: usize,
    keys: Vec<Vec<f32>>,
    error: Option<String>,
}

impl<B: Backend> StepPolicy<B> for RecordGreedy {
    fn next_tokens(&mut self, out: &StepOutput<B>) -> Vec<u32> {
        let [b, d] = out.context.0.dims();
        if d != self.d || b != out.seqs.len() || b != out.steps.len() {
            self.error.get_or_insert(format!(
                "context is [{b}, {d}] for {} rows, expected d = {}",
                out.seqs.len(),
                self.d
            ));
        } else {
            match out
                .context
                .0
                .clone()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
            {
                Ok(v) => {
                    for (r, (&i, &step)) in out.seqs.iter().zip(&out.steps).enumerate() {
                        let Some(keys) = self.keys.get_mut(i) else {
                            self.error
                                .get_or_insert(format!("row {r} is unknown sequence {i}"));
                            continue;
                        };
                        if keys.len() != step * d {
                            self.error.get_or_insert(format!(
                                "sequence {i}: step {step} after {} recorded steps",
                                keys.len() / d
                            ));
                        }
                        keys.extend_from_slice(&v[r * d..(r + 1) * d]);
                    }
                }
                Err(e) => {
                    self.error.get_or_insert(format!("context data: {e:?}"));
                }
            }
        }
        argmax_rows(out.logits.clone())
    }
}

/// PLM side of free-running construction (the paper's): greedy decoding from each prompt, for
/// at most `budgets[i]` steps or until a `stop_ids` token; returns for each sequence the keys
/// f(prompt + ŵ_<t), t = 0, 1, …, row-major `[steps, d]`. Takes no target tokens.
pub fn free_running_contexts<B: Backend, P: Plm<B> + ?Sized>(
    plm: &P,
    prompts: &[Vec<u32>],
    budgets: &[usize],
    stop_ids: &[u32],
) -> Result<Vec<Vec<f32>>> {
    if prompts.len() != budgets.len() {
        return Err(MemoryError::Invalid(format!(
            "{} prompts but {} budgets",
            prompts.len(),
            budgets.len()
        )));
    }
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let d = plm.hidden_size();
    let mut policy = RecordGreedy {
        d,
        keys: vec![Vec::new(); prompts.len()],
        error: None,
    };
    let options = GenerateOptions {
        max_new_tokens: budgets.to_vec(),
        stop_tokens: stop_ids.to_vec(),
    };
    plm.generate(prompts, &options, &mut policy)?;
    if let Some(e) = policy.error {
        return Err(MemoryError::PlmOutput(e));
    }
    Ok(policy.keys)
}

/// PLM side of teacher-forced construction (kNN-LM style): keys f(prompt + y_<t) for
/// t = 0..len(gold_i), row-major `[len(gold_i), d]`.
pub fn teacher_forced_contexts<B: Backend, P: Plm<B> + ?Sized>(
    plm: &P,
    prompts: &[Vec<u32>],
    gold: &[Vec<u32>],
) -> Result<Vec<Vec<f32>>> {
    let d = plm.hidden_size();
    let mut out = vec![Vec::new(); prompts.len()];
    // Pairs with an empty target have no step and are not sent.
    let idx: Vec<usize> = (0..prompts.len())
        .filter(|&i| gold.get(i).is_some_and(|g| !g.is_empty()))
        .collect();
    if idx.is_empty() {
        return Ok(out);
    }
    let p: Vec<Vec<u32>> = idx.iter().map(|&i| prompts[i].clone()).collect();
    let g: Vec<Vec<u32>> = idx.iter().map(|&i| gold[i].clone()).collect();
    let ctx = plm.teacher_forced_contexts(&p, &g)?;
    if ctx.len() != idx.len() {
        return Err(MemoryError::PlmOutput(format!(
            "{} context tensors for {} sequences",
            ctx.len(),
            idx.len()
        )));
    }
    for ((&i, t), gi) in idx.iter().zip(ctx).zip(&g) {
        let dims = t.dims();
        if dims != [gi.len(), d] {
            return Err(MemoryError::PlmOutput(format!(
                "teacher-forced contexts {dims:?}, expected [{}, {d}]",
                gi.len()
            )));
        }
        out[i] = t
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| MemoryError::PlmOutput(format!("context data: {e:?}")))?;
    }
    Ok(out)
}

/// Memory-writer side: pairs step t's key with gold token y_t for every t that has both
/// (paper: "if generation stops early, keep only the steps that have a key"), appending to
/// `shard`. Returns the number of entries added.
pub fn pair_with_gold(
    shard: &mut ShardData,
    pair: u32,
    keys: &[f32],
    d: usize,
    gold: &[u32],
) -> usize {
    let steps = (keys.len() / d.max(1)).min(gold.len());
    for (t, &y) in gold.iter().enumerate().take(steps) {
        shard.push(
            &keys[t * d..(t + 1) * d],
            y,
            Provenance {
                pair,
                step: t as u32,
            },
        );
    }
    steps
}

/// Builds (or resumes) the memory in `out` from `pairs` with `plm`.
///
/// Shard i covers pairs `[i·P, (i+1)·P)`; batches never straddle shards. A build killed at any
/// moment resumes after its last committed shard and ends byte-identical to an uninterrupted
/// build (given a deterministic PLM).
pub fn build_memory<B, P, T>(
    plm: &P,
    tokenizer: &T,
    model: &ModelInfo,
    pairs: &PairsFile,
    cfg: &BuildConfig,
    out: &Path,
) -> Result<BuildSummary>
where
    B: Backend,
    P: Plm<B> + ?Sized,
    T: PairTokenizer + ?Sized,
{
    let started = Instant::now();
    cfg.validate()?;
    if model.hidden_size != plm.hidden_size() {
        return Err(MemoryError::Invalid(format!(
            "model info says d = {}, the PLM has {}",
            model.hidden_size,
            plm.hidden_size()
        )));
    }
    if cfg.mode == BuildMode::External {
        return Err(MemoryError::Invalid(
            "the builder runs in free-running or teacher-forced mode".into(),
        ));
    }
    let n = cfg.limit.map_or(pairs.len(), |l| l.min(pairs.len()));
    if n == 0 {
        return Err(MemoryError::NoPairs {
            path: pairs.path.clone(),
        });
    }
    if u32::try_from(n).is_err() {
        return Err(MemoryError::Invalid(format!(
            "{n} pairs exceed the u32 provenance range"
        )));
    }
    let meta = MemoryMeta {
        model_name: model.name.clone(),
        model_sha256: model.weights_sha256.clone(),
        hidden_size: model.hidden_size,
        vocab_size: Some(plm.vocab_size()),
        state: model.state.clone(),
        dtype: cfg.dtype,
        tokenizer_fingerprint: tokenizer.fingerprint(),
        template_name: cfg.template.name.clone(),
        template: cfg.template.text.clone(),
        mode: cfg.mode,
        max_extra_steps: cfg.max_extra_steps,
        data_file: pairs.path.display().to_string(),
        data_sha256: pairs.sha256.clone(),
        pairs_total: n as u64,
        pairs_per_shard: cfg.pairs_per_shard,
        batch_size: cfg.batch_size,
    };
    let mut writer = MemoryWriter::open_or_create(out, meta)?;
    let per_shard = writer.manifest().meta.pairs_per_shard;
    let skipped = writer.committed_pairs();
    if !skipped.is_multiple_of(per_shard) && skipped != n as u64 {
        return Err(MemoryError::ResumeMismatch {
            path: out.to_path_buf(),
            message: format!(
                "committed pairs {skipped} is not a multiple of pairs_per_shard {per_shard}"
            ),
        });
    }
    let stop_ids = tokenizer.stop_ids();
    let d = model.hidden_size;
    let bar = progress_bar(cfg.progress, n as u64, skipped);
    let mut new_entries = 0u64;
    let mut shard_start = skipped;
    while shard_start < n as u64 {
        let shard_end = (shard_start + per_shard).min(n as u64);
        let mut shard = ShardData::new(shard_start, shard_end);
        let mut b0 = shard_start as usize;
        while b0 < shard_end as usize {
            // One call per shard: the PLM batches continuously within it.
            let b1 = shard_end as usize;
            let batch = &pairs.pairs[b0..b1];
            let prompts = batch
                .iter()
                .map(|p| tokenizer.encode_prompt(&cfg.template.render(&p.source)))
                .collect::<Result<Vec<_>>>()?;
            // Gold tokens: held by the memory writer.
            let gold = batch
                .iter()
                .map(|p| tokenizer.encode_target(&cfg.template.target_text(&p.target)))
                .collect::<Result<Vec<_>>>()?;
            // Refuse a pair that does not fit the context before the PLM allocates anything.
            if let Some(ctx) = plm.context_length() {
                for ((p, pr), g) in batch.iter().zip(&prompts).zip(&gold) {
                    if pr.len() + g.len() > ctx {
                        return Err(MemoryError::TooLong {
                            path: pairs.path.clone(),
                            line: p.line,
                            prompt: pr.len(),
                            target: g.len(),
                            context_length: ctx,
                        });
                    }
                }
            }
            let room = |prompt: &Vec<u32>| {
                plm.context_length()
                    .map_or(usize::MAX, |c| c.saturating_sub(prompt.len()))
            };
            let keys = match cfg.mode {
                BuildMode::FreeRunning => {
                    // The PLM sees prompts and a step budget (len(target) + 10, within the
                    // context length), not targets.
                    let budgets: Vec<usize> = gold
                        .iter()
                        .zip(&prompts)
                        .map(|(g, p)| (g.len() + cfg.max_extra_steps).min(room(p)))
                        .collect();
                    free_running_contexts(plm, &prompts, &budgets, &stop_ids)?
                }
                _ => teacher_forced_contexts(plm, &prompts, &gold)?,
            };
            if keys.len() != batch.len() {
                return Err(MemoryError::PlmOutput(format!(
                    "{} key sets for {} sequences",
                    keys.len(),
                    batch.len()
                )));
            }
            for (j, (k, g)) in keys.iter().zip(&gold).enumerate() {
                new_entries += pair_with_gold(&mut shard, (b0 + j) as u32, k, d, g) as u64;
            }
            b0 = b1;
            bar.set_position(b0 as u64);
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{new_entries} entries ({:.0} entries/s)",
                new_entries as f64 / secs
            ));
        }
        writer.commit_shard(&shard)?;
        shard_start = shard_end;
        if cfg.progress && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            // The bar draws only on a terminal: a log file gets one line per shard.
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "memory {}: {shard_end}/{n} pairs committed, {new_entries} new entries ({:.0} entries/s)",
                out.display(),
                new_entries as f64 / secs
            );
        }
    }
    let manifest: Manifest = writer.finish()?;
    bar.finish_and_clear();
    Ok(BuildSummary {
        pairs_total: n as u64,
        pairs_skipped: skipped,
        entries: manifest.entries,
        shards: manifest.shards.len(),
        seconds: started.elapsed().as_secs_f64(),
        entries_per_pair: manifest.entries as f64 / (n as f64).max(1.0),
    })
}

fn progress_bar(show: bool, len: u64, pos: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} pairs ({per_sec}, eta {eta}) {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(pos);
    bar.reset_eta();
    bar
}

#[cfg(test)]
mod tests;
