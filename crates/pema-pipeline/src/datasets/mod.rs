//! Datasets: the paper's second domain and the synthetic formality task, both built from the Ding
//! German–English dictionary (Debian `trans-de-en`, file `de-en`).
//!
//! Ding lines read `German :: English`; the two sides hold the same number of `|`-separated
//! alternatives (pairwise translations), each a `;`-separated list of synonyms, annotated with
//! `{f}`, `{vt}`, `[coll.]`, `[Br.]`, `(explanations)`, `<keywords>` and `/abbr./` markers.
//!
//! - [`prepare_ding_mt`]: EN→DE *sentence* pairs (the example sentences of the dictionary).
//! - [`prepare_formality`]: a SYNTHETIC informal→formal English set: Ding's `[coll.]`/`[slang]`
//!   synonyms paired with a `[formal]` or unmarked synonym of the same sense, plus rule-based
//!   contraction/colloquialism rewrites of Ding's English example sentences.
//!
//! Both write `train.jsonl`, `dev.jsonl`, `test.jsonl` (JSON lines `{"source", "target"}`) and
//! `split.json` (task, seed, counts, sha256 of the Ding file and of each split, rules version).
//! Splits are deterministic: a fixed-seed SplitMix64 shuffle of groups of pairs, where pairs
//! that share a normalised sentence (source or target) form one group, so no sentence occurs
//! in two splits. An existing `split.json` whose hashes verify is reused; a changed Ding file is
//! an error, never a silent resplit.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use pema_backbone::head::hex;
use pema_common::SplitMix64;
use pema_memory::Pair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{PipelineError, Result};

mod ding;
mod formality;
#[cfg(test)]
mod tests;

use ding::extract_mt_pairs;
use formality::extract_formality_pairs;

/// Version of the MT cleaning rules; bump when [`prepare_ding_mt`]'s output would change.
pub const MT_RULES_VERSION: u32 = 1;
/// Version of the formality rules; bump when [`prepare_formality`]'s output would change.
pub const FORMALITY_RULES_VERSION: u32 = 1;
/// Task name recorded in `split.json` by [`prepare_ding_mt`].
pub const MT_TASK: &str = "ding-en-de";
/// Task name recorded in `split.json` by [`prepare_formality`].
pub const FORMALITY_TASK: &str = "synthetic-formality";
/// Largest dev and test split (pairs); smaller data sets get 10% each.
pub const MAX_EVAL_PAIRS: usize = 1000;

/// One split file as recorded in `split.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitFile {
    /// File name inside the output directory.
    pub file: String,
    /// Number of JSON lines (pairs).
    pub count: usize,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
}

/// What `split.json` records about one prepared task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// Task name ([`MT_TASK`] or [`FORMALITY_TASK`]).
    pub task: String,
    /// Whether the pairs are synthetic (rule-built) rather than human translations.
    pub synthetic: bool,
    /// One-paragraph description of how the pairs were made.
    pub description: String,
    /// Version of the cleaning / construction rules.
    pub rules_version: u32,
    /// Shuffle seed.
    pub seed: u64,
    /// File name of the Ding dictionary the pairs came from.
    pub source_file: String,
    /// sha256 of the Ding dictionary file.
    pub source_sha256: String,
    /// Training split.
    pub train: SplitFile,
    /// Development split.
    pub dev: SplitFile,
    /// Test split.
    pub test: SplitFile,
    /// True when an existing, verified split was reused (not stored in `split.json`).
    #[serde(skip)]
    pub reused: bool,
}

/// One JSON line of a split file (`{"source", "target"}`).
#[derive(Serialize)]
struct SplitLine<'a> {
    source: &'a str,
    target: &'a str,
}

/// Extract clean EN→DE sentence pairs from the Ding file `ding` and write the split to
/// `out_dir` (reusing a verified existing split).
pub fn prepare_ding_mt(ding: &Path, out_dir: &Path, seed: u64) -> Result<SplitInfo> {
    let spec = TaskSpec {
        task: MT_TASK,
        synthetic: false,
        description: "EN->DE example-sentence pairs from the Ding dictionary: both sides are \
                      sentences (capitalised, 3-50 words, ending in . ! or ?) after removing \
                      {..} [..] <..> (..) annotations; items with placeholders (sb., sth., jdm., \
                      etw.), '/', ellipses or glued brackets are dropped; pairs are deduplicated \
                      by normalised source, and pairs sharing a normalised sentence stay in one \
                      split.",
        rules_version: MT_RULES_VERSION,
    };
    prepare(ding, out_dir, seed, &spec, extract_mt_pairs)
}

/// Build the SYNTHETIC informal→formal English set from the Ding file `ding` and write the
/// split to `out_dir` (reusing a verified existing split).
pub fn prepare_formality(ding: &Path, out_dir: &Path, seed: u64) -> Result<SplitInfo> {
    let spec = TaskSpec {
        task: FORMALITY_TASK,
        synthetic: true,
        description: "SYNTHETIC informal->formal English. (a) lexical: in one Ding sense, a \
                      synonym marked [coll.] or [slang] is paired with the sense's [formal] \
                      synonym, else its first synonym without a register mark; (b) rule-based: \
                      English example sentences with contractions/colloquialisms (don't, I'm, \
                      gonna, wanna, kinda, yeah...) are expanded to the formal form, and formal \
                      sentences are contracted (do not -> don't, I am -> I'm, going to + verb \
                      -> gonna...) to make the informal side; ambiguous cases ('d, 's before a \
                      participle, ain't) are skipped. Not human-written pairs.",
        rules_version: FORMALITY_RULES_VERSION,
    };
    prepare(ding, out_dir, seed, &spec, extract_formality_pairs)
}

struct TaskSpec {
    task: &'static str,
    synthetic: bool,
    description: &'static str,
    rules_version: u32,
}

const SPLIT_NAMES: [&str; 3] = ["train.jsonl", "dev.jsonl", "test.jsonl"];

fn prepare(
    ding: &Path,
    out_dir: &Path,
    seed: u64,
    spec: &TaskSpec,
    extract: fn(&str) -> Vec<Pair>,
) -> Result<SplitInfo> {
    let source_sha256 = sha256_file(ding)?;
    let split_json = out_dir.join("split.json");
    let recorded = if split_json.exists() {
        let recorded: SplitInfo = crate::summary::read_json(&split_json)?;
        check_recorded(&recorded, spec, seed, &source_sha256, ding, &split_json)?;
        if verify_files(out_dir, &recorded)? {
            println!(
                "{}: reusing verified split in {} (train {}, dev {}, test {})",
                spec.task,
                out_dir.display(),
                recorded.train.count,
                recorded.dev.count,
                recorded.test.count
            );
            return Ok(SplitInfo {
                reused: true,
                ..recorded
            });
        }
        println!(
            "{}: split files in {} do not match {}; regenerating them",
            spec.task,
            out_dir.display(),
            split_json.display()
        );
        Some(recorded)
    } else {
        None
    };

    let text = read_text(ding)?;
    let pairs = extract(&text);
    if pairs.is_empty() {
        return Err(PipelineError::Invalid(format!(
            "{}: no usable pairs found in {} (is it a Ding `de-en` file?)",
            spec.task,
            ding.display()
        )));
    }
    let splits = split_pairs(pairs, seed);
    fs::create_dir_all(out_dir).map_err(|e| PipelineError::io(out_dir, e))?;
    let mut files = Vec::with_capacity(3);
    for (name, pairs) in SPLIT_NAMES.iter().zip(&splits) {
        let mut body = String::new();
        for pair in pairs {
            let line = SplitLine {
                source: &pair.source,
                target: &pair.target,
            };
            body.push_str(&crate::summary::to_json_line(&line)?);
            body.push('\n');
        }
        let path = out_dir.join(name);
        pema_common::write_atomic(&path, body.as_bytes())?;
        files.push(SplitFile {
            file: (*name).to_string(),
            count: pairs.len(),
            sha256: hex(&Sha256::digest(body.as_bytes())),
        });
    }
    let [train, dev, test]: [SplitFile; 3] = files
        .try_into()
        .map_err(|_| PipelineError::Invalid("internal error: expected three splits".into()))?;
    let info = SplitInfo {
        task: spec.task.to_string(),
        synthetic: spec.synthetic,
        description: spec.description.to_string(),
        rules_version: spec.rules_version,
        seed,
        source_file: ding
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source_sha256,
        train,
        dev,
        test,
        reused: false,
    };
    if let Some(recorded) = recorded {
        let same = |a: &SplitFile, b: &SplitFile| a.sha256 == b.sha256 && a.count == b.count;
        if !(same(&recorded.train, &info.train)
            && same(&recorded.dev, &info.dev)
            && same(&recorded.test, &info.test))
        {
            return Err(PipelineError::Invalid(format!(
                "{}: regenerating the split from an unchanged {} gave files that differ from \
                 {} (non-deterministic build?)",
                spec.task,
                ding.display(),
                split_json.display()
            )));
        }
    }
    pema_common::write_json_pretty(&split_json, &info)?;
    println!(
        "{}: wrote {} (train {}, dev {}, test {})",
        spec.task,
        out_dir.display(),
        info.train.count,
        info.dev.count,
        info.test.count
    );
    Ok(info)
}

fn check_recorded(
    recorded: &SplitInfo,
    spec: &TaskSpec,
    seed: u64,
    source_sha256: &str,
    ding: &Path,
    split_json: &Path,
) -> Result<()> {
    let resplit = format!(
        "delete {} to build a new split deliberately",
        split_json
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    if recorded.task != spec.task {
        return Err(PipelineError::Invalid(format!(
            "{} belongs to task `{}`, not `{}`: {resplit}",
            split_json.display(),
            recorded.task,
            spec.task
        )));
    }
    if recorded.source_sha256 != source_sha256 {
        return Err(PipelineError::Invalid(format!(
            "the Ding file {} changed since {} was written (sha256 now {source_sha256}, \
             recorded {}): refusing to resplit silently; {resplit}",
            ding.display(),
            split_json.display(),
            recorded.source_sha256
        )));
    }
    if recorded.rules_version != spec.rules_version {
        return Err(PipelineError::Invalid(format!(
            "{} was written by rules version {}, this build has version {}: {resplit}",
            split_json.display(),
            recorded.rules_version,
            spec.rules_version
        )));
    }
    if recorded.seed != seed {
        return Err(PipelineError::Invalid(format!(
            "{} was split with seed {}, asked for seed {seed}: {resplit}",
            split_json.display(),
            recorded.seed
        )));
    }
    Ok(())
}

fn verify_files(out_dir: &Path, recorded: &SplitInfo) -> Result<bool> {
    for file in [&recorded.train, &recorded.dev, &recorded.test] {
        let path = out_dir.join(&file.file);
        if !path.exists() || sha256_file(&path)? != file.sha256 {
            return Ok(false);
        }
    }
    Ok(true)
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(|e| PipelineError::io(path, e))?;
    String::from_utf8(bytes).map_err(|_| {
        PipelineError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
        )
    })
}

fn sha256_file(path: &Path) -> Result<String> {
    Ok(pema_backbone::loader::sha256_files(&[path.to_path_buf()])?)
}

// ---------------------------------------------------------------------------------------------
// Splitting

fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Dedupe by normalised source (first wins), group pairs that share any normalised sentence,
/// shuffle the groups with `seed` and fill test, then dev, then train.
pub(crate) fn split_pairs(pairs: Vec<Pair>, seed: u64) -> [Vec<Pair>; 3] {
    let mut seen = std::collections::HashSet::new();
    let pairs: Vec<Pair> = pairs
        .into_iter()
        .filter(|p| {
            let (s, t) = (normalise(&p.source), normalise(&p.target));
            !s.is_empty() && !t.is_empty() && s != t && seen.insert(s)
        })
        .collect();

    // Union-find over pairs, joined through shared normalised sentences.
    let mut parent: Vec<usize> = (0..pairs.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, pair) in pairs.iter().enumerate() {
        for key in [normalise(&pair.source), normalise(&pair.target)] {
            match owner.get(&key) {
                Some(&j) => {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    if a != b {
                        parent[a.max(b)] = a.min(b);
                    }
                }
                None => {
                    owner.insert(key, i);
                }
            }
        }
    }
    // Groups in order of first appearance in the file.
    let mut group_of_root: HashMap<usize, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in 0..pairs.len() {
        let root = find(&mut parent, i);
        let g = *group_of_root.entry(root).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let mut rng = SplitMix64(seed);
    shuffle(&mut groups, &mut rng);

    let eval = MAX_EVAL_PAIRS.min(pairs.len() / 10);
    let mut slots: Vec<Option<Pair>> = pairs.into_iter().map(Some).collect();
    let [mut train, mut dev, mut test] = [Vec::new(), Vec::new(), Vec::new()];
    for group in groups {
        let dest = if test.len() < eval {
            &mut test
        } else if dev.len() < eval {
            &mut dev
        } else {
            &mut train
        };
        dest.extend(group.into_iter().filter_map(|i| slots[i].take()));
    }
    [train, dev, test]
}

/// Normalised form for deduplication: lowercase alphanumeric words joined by single spaces.
pub(crate) fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}
