//! The paper's second domain and the synthetic formality task, both built from the Ding
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

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// One JSON line of a split file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    /// Source sentence (English; informal English for the formality task).
    pub source: String,
    /// Target sentence (German; formal English for the formality task).
    pub target: String,
}

/// Extract clean EN→DE sentence pairs from the Ding file `ding` and write the split to
/// `out_dir` (reusing a verified existing split).
pub fn prepare_ding_mt(ding: &Path, out_dir: &Path, seed: u64) -> anyhow::Result<SplitInfo> {
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
pub fn prepare_formality(ding: &Path, out_dir: &Path, seed: u64) -> anyhow::Result<SplitInfo> {
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
) -> anyhow::Result<SplitInfo> {
    let source_sha256 = sha256_file(ding)?;
    let split_json = out_dir.join("split.json");
    let recorded = if split_json.exists() {
        let text = fs::read_to_string(&split_json)
            .with_context(|| format!("reading {}", split_json.display()))?;
        let recorded: SplitInfo = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", split_json.display()))?;
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
        bail!(
            "{}: no usable pairs found in {} (is it a Ding `de-en` file?)",
            spec.task,
            ding.display()
        );
    }
    let splits = split_pairs(pairs, seed);
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut files = Vec::with_capacity(3);
    for (name, pairs) in SPLIT_NAMES.iter().zip(&splits) {
        let mut body = String::new();
        for pair in pairs {
            body.push_str(&serde_json::to_string(pair)?);
            body.push('\n');
        }
        let path = out_dir.join(name);
        write_atomic(&path, body.as_bytes())?;
        files.push(SplitFile {
            file: (*name).to_string(),
            count: pairs.len(),
            sha256: crate::assets::hex(&Sha256::digest(body.as_bytes())),
        });
    }
    let [train, dev, test]: [SplitFile; 3] = files
        .try_into()
        .map_err(|_| anyhow::anyhow!("internal error: expected three splits"))?;
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
            bail!(
                "{}: regenerating the split from an unchanged {} gave files that differ from \
                 {} (non-deterministic build?)",
                spec.task,
                ding.display(),
                split_json.display()
            );
        }
    }
    let mut json = serde_json::to_string_pretty(&info)?;
    json.push('\n');
    write_atomic(&split_json, json.as_bytes())?;
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
) -> anyhow::Result<()> {
    let resplit = format!(
        "delete {} to build a new split deliberately",
        split_json
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    if recorded.task != spec.task {
        bail!(
            "{} belongs to task `{}`, not `{}`: {resplit}",
            split_json.display(),
            recorded.task,
            spec.task
        );
    }
    if recorded.source_sha256 != source_sha256 {
        bail!(
            "the Ding file {} changed since {} was written (sha256 now {source_sha256}, \
             recorded {}): refusing to resplit silently; {resplit}",
            ding.display(),
            split_json.display(),
            recorded.source_sha256
        );
    }
    if recorded.rules_version != spec.rules_version {
        bail!(
            "{} was written by rules version {}, this build has version {}: {resplit}",
            split_json.display(),
            recorded.rules_version,
            spec.rules_version
        );
    }
    if recorded.seed != seed {
        bail!(
            "{} was split with seed {}, asked for seed {seed}: {resplit}",
            split_json.display(),
            recorded.seed
        );
    }
    Ok(())
}

fn verify_files(out_dir: &Path, recorded: &SplitInfo) -> anyhow::Result<bool> {
    for file in [&recorded.train, &recorded.dev, &recorded.test] {
        let path = out_dir.join(&file.file);
        if !path.exists() || sha256_file(&path)? != file.sha256 {
            return Ok(false);
        }
    }
    Ok(true)
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    crate::assets::hash_file(path).map(|(_, sha)| sha)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Splitting

/// SplitMix64: a tiny, fully specified PRNG, so splits are identical on every machine.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform index in `0..n` (`n > 0`), by the multiply-shift reduction.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
}

/// Dedupe by normalised source (first wins), group pairs that share any normalised sentence,
/// shuffle the groups with `seed` and fill test, then dev, then train.
fn split_pairs(pairs: Vec<Pair>, seed: u64) -> [Vec<Pair>; 3] {
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
fn normalise(text: &str) -> String {
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

// ---------------------------------------------------------------------------------------------
// Ding parsing and cleaning

/// A Ding line as `(german alternatives, english alternatives)`, each alternative a list of
/// raw `;`-separated items. `None` for comments and malformed lines (unequal alternatives).
fn parse_line(line: &str) -> Option<Vec<(Vec<&str>, Vec<&str>)>> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let mut sides = line.split(" :: ");
    let (de, en) = (sides.next()?, sides.next()?);
    if sides.next().is_some() {
        return None;
    }
    let de_alts = split_top(de, '|');
    let en_alts = split_top(en, '|');
    if de_alts.len() != en_alts.len() {
        return None;
    }
    Some(
        de_alts
            .into_iter()
            .zip(en_alts)
            .map(|(d, e)| (split_top(d, ';'), split_top(e, ';')))
            .collect(),
    )
}

/// Split at `sep` outside of (), [] and {}; trimmed, empty parts dropped.
fn split_top(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ if c == sep && depth <= 0 => {
                parts.push(text[start..i].trim());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// The `[...]` tags of an item (contents, trimmed).
fn tags(item: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']') else {
            break;
        };
        out.push(rest[open + 1..open + close].trim());
        rest = &rest[open + close + 1..];
    }
    out
}

/// Remove the annotation groups `{..}`, `[..]`, `<..>` and `(..)` (nested too). `None` when a
/// group is glued to a word (as in `(k)eine` or `Freund(in)`: removing it would change the
/// text), when brackets are unbalanced, or when nothing is left.
fn strip_annotations(item: &str) -> Option<String> {
    let chars: Vec<char> = item.chars().collect();
    let mut out = String::with_capacity(item.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '(' | '[' | '{' | '<') {
            if i > 0 && chars[i - 1].is_alphanumeric() {
                return None;
            }
            let mut open: Vec<char> = Vec::new();
            let mut j = i;
            loop {
                let c = *chars.get(j)?;
                match c {
                    '(' => open.push(')'),
                    '[' => open.push(']'),
                    '{' => open.push('}'),
                    '<' => open.push('>'),
                    ')' | ']' | '}' | '>' if open.pop() != Some(c) => return None,
                    _ => {}
                }
                if open.is_empty() {
                    break;
                }
                j += 1;
            }
            if chars.get(j + 1).is_some_and(|n| n.is_alphanumeric()) {
                return None;
            }
            out.push(' ');
            i = j + 1;
        } else if matches!(c, ')' | ']' | '}' | '>') {
            return None;
        } else {
            out.push(c);
            i += 1;
        }
    }
    let mut text = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for p in [" .", " ,", " !", " ?", " :", " ;"] {
        text = text.replace(p, &p[1..]);
    }
    let text = text.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// Placeholder words of Ding's phrase entries (lowercase, trailing `.` removed).
const PLACEHOLDERS: [&str; 10] = [
    "sb", "sth", "sb's", "sth's", "jd", "jdm", "jdn", "jds", "etw", "o.s",
];

fn has_placeholder(text: &str) -> bool {
    text.split_whitespace().any(|w| {
        let w = w
            .trim_end_matches([',', '!', '?', ';', ':'])
            .trim_end_matches('.')
            .to_lowercase()
            .replace('’', "'");
        PLACEHOLDERS.contains(&w.as_str())
    })
}

/// Whether a cleaned item looks like a full sentence (both languages).
fn is_sentence(text: &str) -> bool {
    let n_chars = text.chars().count();
    let n_words = text.split_whitespace().count();
    let Some(first) = text.chars().next() else {
        return false;
    };
    let starts_ok = first.is_uppercase()
        || first.is_ascii_digit()
        || (matches!(first, '„' | '“' | '"' | '‚' | '»')
            && text
                .chars()
                .find(|c| c.is_alphabetic())
                .is_some_and(char::is_uppercase));
    let ends_ok = text.ends_with(['.', '!', '?']) && !text.ends_with("..");
    let letters = text.chars().filter(|c| c.is_alphabetic()).count();
    let uppercase = text.chars().filter(|c| c.is_uppercase()).count();
    starts_ok
        && ends_ok
        && (12..=300).contains(&n_chars)
        && (3..=50).contains(&n_words)
        && uppercase * 2 < letters
        && !text.contains([
            '/', '…', '~', '=', '+', '|', '(', ')', '[', ']', '{', '}', '<', '>',
        ])
        && !has_placeholder(text)
}

fn clean_sentence(item: &str) -> Option<String> {
    strip_annotations(item).filter(|s| is_sentence(s))
}

fn extract_mt_pairs(text: &str) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for line in text.lines() {
        let Some(alts) = parse_line(line) else {
            continue;
        };
        for (de_items, en_items) in alts {
            let de: Vec<String> = de_items.iter().filter_map(|i| clean_sentence(i)).collect();
            if de.is_empty() {
                continue;
            }
            let en: Vec<String> = en_items.iter().filter_map(|i| clean_sentence(i)).collect();
            for (k, source) in en.into_iter().enumerate() {
                let target = &de[k % de.len()];
                if normalise(&source) != normalise(target) {
                    pairs.push(Pair {
                        source,
                        target: target.clone(),
                    });
                }
            }
        }
    }
    pairs
}

// ---------------------------------------------------------------------------------------------
// Synthetic formality

/// Register / style tags that make a synonym unfit as the neutral or formal side.
const MARKED_TAGS: [&str; 17] = [
    "coll.",
    "slang",
    "vulg.",
    "humor.",
    "pej.",
    "iron.",
    "euphem.",
    "poet.",
    "archaic",
    "arch.",
    "obs.",
    "dated",
    "becoming dated",
    "rare",
    "children's speech",
    "literary",
    "former name",
];

fn norm_tag(tag: &str) -> String {
    tag.replace('’', "'")
}

/// Clean a phrase for the lexical formality pairs (not necessarily a sentence).
fn clean_phrase(item: &str) -> Option<String> {
    let text = strip_annotations(item)?.replace('’', "'");
    let n_words = text.split_whitespace().count();
    let ok = (1..=20).contains(&n_words)
        && text.chars().count() <= 150
        && text.chars().any(char::is_alphabetic)
        && !text.contains(['/', '…', '~', '=', '+', '|', '<', '>'])
        && !text.contains("..");
    ok.then_some(text)
}

fn lexical_formality_pairs(text: &str, pairs: &mut Vec<Pair>) {
    for line in text.lines() {
        let Some(alts) = parse_line(line) else {
            continue;
        };
        for (_, en_items) in alts {
            let tagged: Vec<(Vec<String>, &str)> = en_items
                .iter()
                .map(|i| (tags(i).into_iter().map(norm_tag).collect(), *i))
                .collect();
            let is_informal = |t: &[String]| t.iter().any(|t| t == "coll." || t == "slang");
            if !tagged.iter().any(|(t, _)| is_informal(t)) {
                continue;
            }
            let formal = tagged
                .iter()
                .find(|(t, _)| t.iter().any(|t| t == "formal"))
                .or_else(|| {
                    tagged
                        .iter()
                        .find(|(t, _)| !t.iter().any(|t| MARKED_TAGS.contains(&t.as_str())))
                })
                .and_then(|(_, item)| clean_phrase(item));
            let Some(formal) = formal else {
                continue;
            };
            for (t, item) in &tagged {
                if is_informal(t)
                    && !t.iter().any(|t| t == "formal")
                    && let Some(informal) = clean_phrase(item)
                {
                    pairs.push(Pair {
                        source: informal,
                        target: formal.clone(),
                    });
                }
            }
        }
    }
}

/// A word-or-separator token of an English sentence; words keep inner apostrophes.
fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut sep = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let inner_apostrophe =
            c == '\'' && !word.is_empty() && chars.get(i + 1).is_some_and(|n| n.is_alphabetic());
        if c.is_alphanumeric() || inner_apostrophe {
            if !sep.is_empty() {
                out.push(std::mem::take(&mut sep));
            }
            word.push(c);
        } else {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            sep.push(c);
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    if !sep.is_empty() {
        out.push(sep);
    }
    out
}

fn is_word(token: &str) -> bool {
    token.chars().next().is_some_and(char::is_alphanumeric)
}

/// Match `from`'s capitalisation of the first letter onto `to`.
fn with_case(from: &str, to: &str) -> String {
    if from.chars().next().is_some_and(char::is_uppercase) {
        let mut chars = to.chars();
        chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect())
            .unwrap_or_default()
    } else {
        to.to_string()
    }
}

const NOT_CONTRACTIONS: [(&str, &str); 19] = [
    ("don't", "do not"),
    ("doesn't", "does not"),
    ("didn't", "did not"),
    ("isn't", "is not"),
    ("aren't", "are not"),
    ("wasn't", "was not"),
    ("weren't", "were not"),
    ("haven't", "have not"),
    ("hasn't", "has not"),
    ("hadn't", "had not"),
    ("won't", "will not"),
    ("wouldn't", "would not"),
    ("can't", "cannot"),
    ("couldn't", "could not"),
    ("shouldn't", "should not"),
    ("mustn't", "must not"),
    ("needn't", "need not"),
    ("shan't", "shall not"),
    ("mightn't", "might not"),
];

const COLLOQUIAL: [(&str, &str); 9] = [
    ("gonna", "going to"),
    ("wanna", "want to"),
    ("kinda", "kind of"),
    ("sorta", "sort of"),
    ("gimme", "give me"),
    ("lemme", "let me"),
    ("yeah", "yes"),
    ("yep", "yes"),
    ("nope", "no"),
];

/// Subjects whose `'s` means `is`/`has` (not a possessive).
const S_SUBJECTS: [&str; 12] = [
    "it", "he", "she", "that", "what", "there", "here", "who", "where", "how", "when", "why",
];

const PARTICIPLES: [&str; 16] = [
    "done",
    "seen",
    "made",
    "told",
    "said",
    "left",
    "lost",
    "won",
    "taken",
    "given",
    "known",
    "written",
    "broken",
    "eaten",
    "forgotten",
    "found",
];

/// Expand contractions and colloquialisms: `Some(formal)` when something was expanded and
/// nothing ambiguous was met.
fn formalise(text: &str) -> Option<String> {
    let toks = tokens(text);
    let words: Vec<usize> = (0..toks.len()).filter(|&i| is_word(&toks[i])).collect();
    let mut out = toks.clone();
    let mut changed = false;
    for (wi, &i) in words.iter().enumerate() {
        let tok = &toks[i];
        let lower = tok.to_lowercase();
        let next = words.get(wi + 1).map(|&j| toks[j].to_lowercase());
        let prev = wi
            .checked_sub(1)
            .map(|p| toks[words[p]].to_lowercase())
            .unwrap_or_default();
        if lower.ends_with("n't")
            && next.as_deref().is_some_and(|n| {
                matches!(
                    n,
                    "i" | "you" | "he" | "she" | "it" | "we" | "they" | "there" | "that" | "this"
                )
            })
        {
            // Inverted negative ("Can't you ...?"): the expansion would be ungrammatical.
            return None;
        }
        let replacement: Option<String> =
            if let Some((_, f)) = NOT_CONTRACTIONS.iter().find(|(c, _)| *c == lower) {
                Some(with_case(tok, f))
            } else if let Some((_, f)) = COLLOQUIAL.iter().find(|(c, _)| *c == lower) {
                Some(with_case(tok, f))
            } else if lower == "gotta" {
                if matches!(prev.as_str(), "have" | "has" | "had") || prev.contains('\'') {
                    return None;
                }
                Some(with_case(tok, "have to"))
            } else if lower == "dunno" {
                if prev != "i" {
                    return None;
                }
                Some("do not know".to_string())
            } else if lower == "ain't" || lower.ends_with("'d") || lower == "y'all" {
                return None;
            } else if let Some(base) = lower.strip_suffix("n't") {
                // oughtn't, daren't, ...
                Some(with_case(tok, &format!("{base} not")))
            } else if lower == "i'm" {
                Some("I am".to_string())
            } else if lower == "let's" {
                Some(with_case(tok, "let us"))
            } else if let Some(base) = lower.strip_suffix("'re") {
                Some(with_case(tok, &format!("{base} are")))
            } else if let Some(base) = lower.strip_suffix("'ve") {
                Some(with_case(tok, &format!("{} have", fix_i(base))))
            } else if let Some(base) = lower.strip_suffix("'ll") {
                Some(with_case(tok, &format!("{} will", fix_i(base))))
            } else if let Some(base) = lower.strip_suffix("'s") {
                if !S_SUBJECTS.contains(&base) {
                    None // possessive
                } else {
                    let next = next.clone().unwrap_or_default();
                    let verb = if matches!(next.as_str(), "been" | "got" | "had" | "gone") {
                        "has"
                    } else if next.ends_with("ed")
                        || next.ends_with("en")
                        || PARTICIPLES.contains(&next.as_str())
                    {
                        return None;
                    } else {
                        "is"
                    };
                    Some(with_case(tok, &format!("{base} {verb}")))
                }
            } else {
                None
            };
        if let Some(r) = replacement {
            out[i] = r;
            changed = true;
        }
    }
    let formal: String = out.concat();
    let leftover = tokens(&formal).iter().any(|t| {
        let t = t.to_lowercase();
        ["n't", "'re", "'ve", "'ll", "'m", "'d"]
            .iter()
            .any(|s| t.ends_with(s))
    });
    (changed && !leftover).then_some(formal)
}

fn fix_i(base: &str) -> &str {
    if base == "i" { "I" } else { base }
}

/// Base verbs after which `going to` may become `gonna`.
const GONNA_VERBS: [&str; 40] = [
    "be", "do", "have", "get", "make", "go", "take", "see", "come", "say", "tell", "give", "find",
    "try", "need", "happen", "rain", "work", "call", "ask", "help", "buy", "eat", "start", "stop",
    "win", "lose", "like", "miss", "leave", "stay", "let", "keep", "put", "pay", "run", "show",
    "play", "write", "read",
];

/// Contract a formal sentence: `Some(informal)` when at least one rule applied.
fn informalise(text: &str) -> Option<String> {
    let toks = tokens(text);
    let words: Vec<usize> = (0..toks.len()).filter(|&i| is_word(&toks[i])).collect();
    let mut out = toks.clone();
    // `sep_ok(a)`: word a and word a+1 are separated by a single space only.
    let sep_ok = |wi: usize| -> bool {
        words
            .get(wi + 1)
            .is_some_and(|&j| j == words[wi] + 2 && toks[words[wi] + 1] == " ")
    };
    let lower: Vec<String> = words.iter().map(|&i| toks[i].to_lowercase()).collect();
    let mut changed = false;
    let mut wi = 0;
    while wi < words.len() {
        let w = lower[wi].as_str();
        let next = lower.get(wi + 1).map(String::as_str).unwrap_or("");
        let after = lower.get(wi + 2).map(String::as_str).unwrap_or("");
        let has_after = wi + 2 < words.len() && sep_ok(wi + 1);
        // Before `not`, the auxiliary contracts instead ("they aren't", not "they're not"),
        // except for `I am not`.
        let has_after_not_not = has_after && after != "not";
        let merge = |wi: usize, text: String, out: &mut Vec<String>| {
            let (a, b) = (words[wi], words[wi + 1]);
            out[a] = with_case(&toks[a], &text);
            for slot in out.iter_mut().take(b + 1).skip(a + 1) {
                slot.clear();
            }
        };
        if !sep_ok(wi) {
            if w == "cannot" {
                out[words[wi]] = with_case(&toks[words[wi]], "can't");
                changed = true;
            }
            wi += 1;
            continue;
        }
        let contraction: Option<String> = match (w, next) {
            ("will", "not") => Some("won't".into()),
            ("can", "not") => Some("can't".into()),
            (
                "do" | "does" | "did" | "is" | "are" | "was" | "were" | "have" | "has" | "had"
                | "would" | "could" | "should" | "must" | "need",
                "not",
            ) => Some(format!("{w}n't")),
            ("i", "am") if has_after => Some("I'm".into()),
            ("you" | "we" | "they", "are") if has_after_not_not => Some(format!("{w}'re")),
            ("he" | "she" | "it" | "that" | "there" | "here", "is") if has_after_not_not => {
                Some(format!("{w}'s"))
            }
            ("what" | "who" | "where", "is")
                if has_after_not_not
                    && !matches!(after, "he" | "she" | "it" | "i" | "you" | "we" | "they") =>
            {
                Some(format!("{w}'s"))
            }
            ("i" | "you" | "we" | "they" | "he" | "she" | "it", "will") if has_after_not_not => {
                Some(format!("{}'ll", fix_i(w)))
            }
            ("i" | "you" | "we" | "they" | "he" | "she", "would") if has_after_not_not => {
                Some(format!("{}'d", fix_i(w)))
            }
            ("i" | "you" | "we" | "they", "have")
                if has_after
                    && (matches!(after, "been" | "got" | "had" | "done" | "seen")
                        || after.ends_with("ed")) =>
            {
                Some(format!("{}'ve", fix_i(w)))
            }
            ("going", "to")
                if has_after
                    && GONNA_VERBS.contains(&after)
                    && wi > 0
                    && matches!(
                        lower[wi - 1].as_str(),
                        "am" | "are" | "is" | "i" | "you" | "we" | "they" | "he" | "she" | "it"
                    ) =>
            {
                Some("gonna".into())
            }
            ("want", "to")
                if has_after
                    && wi > 0
                    && matches!(lower[wi - 1].as_str(), "i" | "you" | "we" | "they" | "not") =>
            {
                Some("wanna".into())
            }
            _ => None,
        };
        if let Some(c) = contraction {
            merge(wi, c, &mut out);
            changed = true;
            wi += 2;
        } else {
            if w == "cannot" {
                out[words[wi]] = with_case(&toks[words[wi]], "can't");
                changed = true;
            }
            wi += 1;
        }
    }
    changed.then(|| out.concat())
}

fn extract_formality_pairs(text: &str) -> Vec<Pair> {
    let mut pairs = Vec::new();
    lexical_formality_pairs(text, &mut pairs);
    for line in text.lines() {
        let Some(alts) = parse_line(line) else {
            continue;
        };
        for (_, en_items) in alts {
            for item in en_items {
                let Some(sentence) = clean_sentence(item) else {
                    continue;
                };
                let sentence = sentence.replace('’', "'");
                if let Some(formal) = formalise(&sentence) {
                    pairs.push(Pair {
                        source: sentence,
                        target: formal,
                    });
                } else if let Some(informal) = informalise(&sentence) {
                    pairs.push(Pair {
                        source: informal,
                        target: sentence,
                    });
                }
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# Version :: test
Ärger {m}; Sorge {f} | Keine Bange!; Keine Sorge!; Kein Problem! :: worry | No worries! [Austr.] [coll.]
Alkohol {m} | Ich trinke keinen Alkohol. | dem Alkohol verfallen :: alcohol | I don’t take alcohol. | to become addicted to alcohol
Hinweis {m} | Er hat den Wink nicht verstanden. | Kannst Du mir auf die Sprünge helfen? (Ich komm nicht drauf) :: hint | He didn’t take the hint. | Give me a hint.
Dienst {m} | Kann ich Ihnen (irgendwie) behilflich sein? | Es freut mich, wenn ich helfen kann. :: service | May I be of service to you?; Can I be of any service? | I am glad to be of service.
Ärger {m}; Zoff {m} [ugs.] | Da bekommst du Ärger. :: trouble; aggravation; aggro [Br.] [coll.] | You’ll be in trouble for this.
Abgemacht!; Ist geritzt! [ugs.] :: Done!; It’s a deal! [coll.]
Alkoholiker {m}; Alki {m} [ugs.] :: alcoholic; alky [coll.]; alkie [coll.]
Hilfe {f} | Er hat (k)eine Ahnung. | Kannst du jdm. helfen? :: help | He has (no) idea. | Can you help sb.?
Wetter {n} | Es wird morgen regnen. | Das Wetter ist schön. :: weather | It is going to rain tomorrow. | The weather is fine.
Wahl {f} | Ich will nicht gehen. | Sie gehen nicht. :: choice | I do not want to go. | They are not going.
Aussage {f} | Das ist alles. :: statement | That is all.
Einladung {f} | Ich komme gern. :: invitation | I would like to come.
Gerät {n} | Das Gerät ist kaputt. :: device | The device is broken.
kaputt {adj} | Das Gerät ist hinüber. :: broken | The device is bust. | extra
";

    fn write_sample(dir: &Path, text: &str) -> std::path::PathBuf {
        let path = dir.join("de-en");
        fs::write(&path, text).expect("write sample");
        path
    }

    fn read_split(dir: &Path, name: &str) -> Vec<Pair> {
        fs::read_to_string(dir.join(name))
            .expect("read split")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    #[test]
    fn mt_cleaning_rules() {
        let pairs = extract_mt_pairs(SAMPLE);
        let got: Vec<(&str, &str)> = pairs
            .iter()
            .map(|p| (p.source.as_str(), p.target.as_str()))
            .collect();
        assert!(got.contains(&("I don’t take alcohol.", "Ich trinke keinen Alkohol.")));
        // Explanatory and optional parentheses are removed.
        assert!(got.contains(&("Give me a hint.", "Kannst Du mir auf die Sprünge helfen?")));
        assert!(got.contains(&(
            "May I be of service to you?",
            "Kann ich Ihnen behilflich sein?"
        )));
        assert!(got.contains(&(
            "Can I be of any service?",
            "Kann ich Ihnen behilflich sein?"
        )));
        // Glued brackets, placeholders, words and phrases are dropped.
        assert!(
            !got.iter()
                .any(|(s, _)| s.contains("idea") || s.contains("sb"))
        );
        assert!(
            !got.iter()
                .any(|(s, _)| *s == "worry" || s.starts_with("to "))
        );
        // Lines whose alternatives do not line up are skipped.
        assert!(!got.iter().any(|(s, _)| s.contains("bust")));
        for (s, t) in &got {
            assert!(!s.contains(['[', ']', '{', '}', '(', ')']) && !t.contains(['{', '[', '(']));
            assert!(s.ends_with(['.', '!', '?']) && t.ends_with(['.', '!', '?']));
        }
        assert_eq!(got.len(), 14, "{got:#?}");
    }

    #[test]
    fn strip_annotations_rules() {
        assert_eq!(
            strip_annotations("Aal {m} (auf der Speisekarte) [cook.]").as_deref(),
            Some("Aal")
        );
        assert_eq!(strip_annotations("Freund(in)"), None);
        assert_eq!(strip_annotations("(k)eine Ahnung"), None);
        assert_eq!(strip_annotations("broken (]"), None);
        assert_eq!(
            strip_annotations("to bash in [coll.] <> sth.").as_deref(),
            Some("to bash in sth.")
        );
        assert_eq!(strip_annotations("Hallo (du) !").as_deref(), Some("Hallo!"));
    }

    #[test]
    fn formality_rewrites() {
        assert_eq!(
            formalise("I don't take alcohol.").as_deref(),
            Some("I do not take alcohol.")
        );
        assert_eq!(
            formalise("You'll be in trouble for this.").as_deref(),
            Some("You will be in trouble for this.")
        );
        assert_eq!(
            formalise("It's been raining.").as_deref(),
            Some("It has been raining.")
        );
        assert_eq!(formalise("It's a deal!").as_deref(), Some("It is a deal!"));
        assert_eq!(formalise("Can't you take a hint?"), None); // inverted question
        assert_eq!(formalise("I'd like that."), None); // 'd is ambiguous
        assert_eq!(formalise("He's finished the job."), None); // is/has is ambiguous
        assert_eq!(formalise("John's car is red."), None); // possessive: nothing to expand
        assert_eq!(
            formalise("Yeah, I'm gonna do it.").as_deref(),
            Some("Yes, I am going to do it.")
        );
        assert_eq!(
            informalise("I do not want to go.").as_deref(),
            Some("I don't wanna go.")
        );
        assert_eq!(
            informalise("It is going to rain tomorrow.").as_deref(),
            Some("It's gonna rain tomorrow.")
        );
        assert_eq!(
            informalise("They are going to win.").as_deref(),
            Some("They're gonna win.")
        );
        assert_eq!(informalise("That is all.").as_deref(), Some("That's all."));
        assert_eq!(
            informalise("I am not sure they would not come.").as_deref(),
            Some("I'm not sure they wouldn't come.")
        );
        assert_eq!(informalise("I know what it is."), None); // no 's at the clause end
        assert_eq!(informalise("Where is he?"), None);
        assert_eq!(
            informalise("I cannot come, I would like to.").as_deref(),
            Some("I can't come, I'd like to.")
        );
    }

    #[test]
    fn formality_pairs_from_sample() {
        let pairs = extract_formality_pairs(SAMPLE);
        let got: Vec<(&str, &str)> = pairs
            .iter()
            .map(|p| (p.source.as_str(), p.target.as_str()))
            .collect();
        assert!(got.contains(&("aggro", "trouble")));
        assert!(got.contains(&("alky", "alcoholic")));
        assert!(got.contains(&("alkie", "alcoholic")));
        assert!(got.contains(&("It's a deal!", "Done!")));
        assert!(got.contains(&("I don't take alcohol.", "I do not take alcohol.")));
        assert!(got.contains(&("They aren't going.", "They are not going.")));
        assert!(got.contains(&("I'd like to come.", "I would like to come.")));
        for (s, t) in &got {
            assert_ne!(normalise(s), normalise(t));
            assert!(!s.contains('’') && !t.contains('’'));
        }
    }

    #[test]
    fn split_has_no_leakage_and_respects_sizes() {
        // 300 pairs, with targets shared by pairs 3k, 3k+1, 3k+2 and some duplicate sources.
        let mut pairs: Vec<Pair> = (0..300)
            .map(|i| Pair {
                source: format!("Source sentence number {i}."),
                target: format!("Zielsatz Nummer {}.", i / 3),
            })
            .collect();
        pairs.push(Pair {
            source: "source sentence NUMBER 7!".into(),
            target: "Anderes Ziel.".into(),
        });
        let [train, dev, test] = split_pairs(pairs, 42);
        assert_eq!(train.len() + dev.len() + test.len(), 300);
        assert!((30..=32).contains(&test.len()), "{}", test.len());
        assert!((30..=32).contains(&dev.len()), "{}", dev.len());
        let sentences = |split: &[Pair]| -> std::collections::HashSet<String> {
            split
                .iter()
                .flat_map(|p| [normalise(&p.source), normalise(&p.target)])
                .collect()
        };
        let (a, b, c) = (sentences(&train), sentences(&dev), sentences(&test));
        assert!(a.is_disjoint(&b) && a.is_disjoint(&c) && b.is_disjoint(&c));
        // A different seed gives a different test split.
        let pairs2: Vec<Pair> = (0..300)
            .map(|i| Pair {
                source: format!("Source sentence number {i}."),
                target: format!("Zielsatz Nummer {}.", i / 3),
            })
            .collect();
        let [_, _, test2] = split_pairs(pairs2, 43);
        assert_ne!(test, test2);
    }

    #[test]
    fn splitmix_is_the_reference_sequence() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    fn big_sample() -> String {
        let mut text = String::from(SAMPLE);
        for i in 0..60 {
            text.push_str(&format!(
                "Wort{i} {{n}} | Das ist Satz Nummer {i}. :: word{i} | This is sentence number {i}.\n"
            ));
        }
        text
    }

    #[test]
    fn deterministic_reuse_and_changed_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ding = write_sample(dir.path(), &big_sample());
        let (out1, out2) = (dir.path().join("a"), dir.path().join("b"));
        let info1 = prepare_ding_mt(&ding, &out1, 7).expect("first run");
        let info2 = prepare_ding_mt(&ding, &out2, 7).expect("second run");
        assert!(!info1.reused && !info2.reused);
        for name in SPLIT_NAMES.iter().chain(&["split.json"]) {
            let a = fs::read(out1.join(name)).expect("read a");
            let b = fs::read(out2.join(name)).expect("read b");
            assert_eq!(a, b, "{name} differs between runs");
        }
        let total = info1.train.count + info1.dev.count + info1.test.count;
        assert_eq!(total, 74);
        assert_eq!(info1.dev.count, 7);
        assert_eq!(info1.test.count, 7);
        assert_eq!(read_split(&out1, "test.jsonl").len(), 7);

        // Reuse when everything verifies.
        let again = prepare_ding_mt(&ding, &out1, 7).expect("reuse");
        assert!(again.reused);
        assert_eq!(
            SplitInfo {
                reused: false,
                ..again
            },
            info1
        );

        // A tampered split file is regenerated identically.
        fs::write(out1.join("dev.jsonl"), "tampered\n").expect("tamper");
        let regenerated = prepare_ding_mt(&ding, &out1, 7).expect("regenerate");
        assert!(!regenerated.reused);
        assert_eq!(regenerated, info1);

        // A different seed for an existing split is an error.
        let err = prepare_ding_mt(&ding, &out1, 8).expect_err("seed mismatch");
        assert!(format!("{err:#}").contains("seed"), "{err:#}");

        // A changed Ding file is an error, not a silent resplit.
        write_sample(dir.path(), &format!("{}Neu {{n}} :: new\n", big_sample()));
        let err = prepare_ding_mt(&ding, &out1, 7).expect_err("changed input");
        let msg = format!("{err:#}");
        assert!(msg.contains("changed") && msg.contains("de-en"), "{msg}");
        // ... and the recorded split is left alone.
        assert_eq!(
            fs::read(out1.join("dev.jsonl")).expect("dev"),
            fs::read(out2.join("dev.jsonl")).expect("dev")
        );
    }

    #[test]
    fn formality_split_is_marked_synthetic_and_deterministic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ding = write_sample(dir.path(), &big_sample());
        let a = prepare_formality(&ding, &dir.path().join("f1"), 3).expect("run 1");
        let b = prepare_formality(&ding, &dir.path().join("f2"), 3).expect("run 2");
        assert_eq!(a, b);
        assert_eq!(a.task, "synthetic-formality");
        assert!(a.synthetic);
        let json = fs::read_to_string(dir.path().join("f1/split.json")).expect("split.json");
        assert!(json.contains("\"task\": \"synthetic-formality\""));
        assert!(json.contains("\"synthetic\": true"));
        // The 60 generated "This is ..." sentences contract to "This is" (no rule), so the
        // pairs come from the hand-written lines only.
        assert!(a.train.count + a.dev.count + a.test.count >= 8);
        // Using an MT split directory for the formality task is refused.
        prepare_ding_mt(&ding, &dir.path().join("m"), 3).expect("mt");
        let err = prepare_formality(&ding, &dir.path().join("m"), 3).expect_err("task mismatch");
        assert!(format!("{err:#}").contains("belongs to task"));
    }

    /// The real Ding file (`cargo xtask fetch-assets`); skipped when absent.
    #[test]
    fn real_ding_counts() {
        let ding = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/ding/de-en");
        if !ding.exists() {
            eprintln!(
                "skipping: {} is absent (run cargo xtask fetch-assets)",
                ding.display()
            );
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mt = prepare_ding_mt(&ding, &dir.path().join("mt"), 20240601).expect("mt");
        let fo = prepare_formality(&ding, &dir.path().join("fo"), 20240601).expect("formality");
        for info in [&mt, &fo] {
            eprintln!(
                "{}: train {} dev {} test {}",
                info.task, info.train.count, info.dev.count, info.test.count
            );
            // Groups of pairs sharing a sentence may overshoot the target a little.
            let total = info.train.count + info.dev.count + info.test.count;
            let eval = MAX_EVAL_PAIRS.min(total / 10);
            assert!((eval..eval + 20).contains(&info.dev.count));
            assert!((eval..eval + 20).contains(&info.test.count));
        }
        assert!(mt.train.count > 10_000, "{}", mt.train.count);
        assert!(fo.train.count > 3_000, "{}", fo.train.count);
        for sub in ["mt", "fo"] {
            for p in read_split(&dir.path().join(sub), "test.jsonl")
                .iter()
                .take(8)
            {
                eprintln!("  {} => {}", p.source, p.target);
            }
        }
    }

    #[test]
    fn unreadable_input_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = prepare_ding_mt(&dir.path().join("missing"), &dir.path().join("o"), 1)
            .expect_err("missing file");
        assert!(format!("{err:#}").contains("missing"));
        let ding = write_sample(dir.path(), "# only a comment\n");
        let err = prepare_ding_mt(&ding, &dir.path().join("o"), 1).expect_err("no pairs");
        assert!(format!("{err:#}").contains("no usable pairs"));
    }
}
