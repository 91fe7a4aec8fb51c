//! The manifest of a memory directory: what the keys mean, and which shards are committed.
//!
//! A memory is a directory holding `manifest.json` and, per shard `i`, three raw little-endian
//! files: `shard-{i:06}.keys` (`[n, d]` f32 or f16), `shard-{i:06}.values` (`[n]` u32 gold
//! token ids y_t) and `shard-{i:06}.prov` (`[n]` × (pair index u32, step index u32)). A shard
//! covers a contiguous range of input pairs; entries are ordered by (pair index, step index).
//! Only the shards named by the manifest exist as far as readers are concerned: the manifest
//! is replaced atomically after its shards are durable (see [`crate::writer`]).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{MemoryError, Result};

/// Value of the manifest's `format` field.
pub const FORMAT: &str = "pema-memory";
/// Version of the on-disk layout this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a memory directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Storage type of the keys f(c_t).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDtype {
    /// IEEE 754 single precision (4 bytes per component).
    F32,
    /// IEEE 754 half precision (2 bytes per component); converted to f32 on read.
    F16,
}

impl KeyDtype {
    /// Bytes per key component.
    pub fn size(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }

    /// Parses `f32` / `f16`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            other => Err(MemoryError::Invalid(format!(
                "key dtype `{other}` (expected f32 or f16)"
            ))),
        }
    }

    /// The lowercase name (`f32`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }
}

/// How the context representations were produced (paper §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildMode {
    /// The paper's construction: key f(prompt + ŵ_<t) with ŵ the PLM's own greedy tokens,
    /// paired position-wise with the gold token y_t. The PLM never sees the targets.
    FreeRunning,
    /// kNN-LM style: key f(prompt + y_<t) over the gold prefix.
    TeacherForced,
    /// Written by other means (tests, conversions); see the model fields.
    External,
}

impl BuildMode {
    /// Short name used on the command line (`free`, `teacher`, `external`).
    pub fn short(self) -> &'static str {
        match self {
            Self::FreeRunning => "free",
            Self::TeacherForced => "teacher",
            Self::External => "external",
        }
    }
}

/// Which hidden state of the PLM the keys are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// Position relative to the final norm; pema's f(c) is `pre_final_norm` (paper §2).
    pub position: String,
    /// Index of the transformer block whose output the key is (the last block: layers − 1).
    pub layer: usize,
}

impl KeyState {
    /// The residual stream after block `layer`, before the final norm (pema's f(c)).
    pub fn pre_final_norm(layer: usize) -> Self {
        Self {
            position: "pre_final_norm".into(),
            layer,
        }
    }
}

/// Everything that says what the keys and values mean. Two builds with equal metadata over the
/// same pairs produce byte-identical memories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryMeta {
    /// Model name (directory name or the GGUF `general.name`).
    pub model_name: String,
    /// sha256 of the model weights file(s).
    pub model_sha256: String,
    /// Key width d (the PLM's hidden size).
    pub hidden_size: usize,
    /// The model's vocabulary size: every value is below it. Absent (`None`) in memories
    /// written before it was recorded and in external ones; checks against it are then skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// Which hidden state the keys are.
    pub state: KeyState,
    /// Storage type of the keys.
    pub dtype: KeyDtype,
    /// Fingerprint of the tokenizer that produced prompts and values.
    pub tokenizer_fingerprint: String,
    /// Template name (`mt`, `formality`, or the template file's path).
    pub template_name: String,
    /// Full template text, `{source}` marking the source sentence.
    pub template: String,
    /// Construction mode.
    pub mode: BuildMode,
    /// Free-running step budget beyond the target length (paper: len(target) + 10).
    pub max_extra_steps: usize,
    /// The pairs file as given on the command line.
    pub data_file: String,
    /// sha256 of the pairs file's bytes.
    pub data_sha256: String,
    /// Number of input pairs the memory is built from (after any limit).
    pub pairs_total: u64,
    /// Pairs per shard (commit unit); shard i covers pairs `[i·P, (i+1)·P)`.
    pub pairs_per_shard: u64,
    /// PLM batch size (batches never straddle shards, so resumes batch identically).
    pub batch_size: usize,
}

/// One data file of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// File name inside the memory directory (no path separators).
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256 of the bytes, lowercase hex.
    pub sha256: String,
}

/// A committed shard: the entries of pairs `[pair_start, pair_end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Shard number (0, 1, …).
    pub index: u32,
    /// First pair index covered.
    pub pair_start: u64,
    /// One past the last pair index covered.
    pub pair_end: u64,
    /// Number of entries in the shard.
    pub entries: u64,
    /// Keys `[entries, d]`.
    pub keys: FileInfo,
    /// Values `[entries]` u32.
    pub values: FileInfo,
    /// Provenance `[entries]` × (pair u32, step u32).
    pub provenance: FileInfo,
}

/// The manifest (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Layout version, [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the entries mean.
    pub meta: MemoryMeta,
    /// Committed shards in pair order.
    pub shards: Vec<ShardInfo>,
    /// Pairs whose entries are committed: `[0, committed_pairs)`.
    pub committed_pairs: u64,
    /// Total number of entries N.
    pub entries: u64,
    /// True once every pair of `meta.pairs_total` is committed.
    pub complete: bool,
}

/// Bytes per provenance record (pair u32 + step u32).
pub const PROVENANCE_BYTES: u64 = 8;
/// Bytes per value (u32).
pub const VALUE_BYTES: u64 = 4;

/// Shard file names for shard `index`: (keys, values, provenance).
pub fn shard_file_names(index: u32) -> (String, String, String) {
    (
        format!("shard-{index:06}.keys"),
        format!("shard-{index:06}.values"),
        format!("shard-{index:06}.prov"),
    )
}

impl Manifest {
    /// An empty manifest (no shards) for a new memory.
    pub fn new(meta: MemoryMeta) -> Self {
        Self {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            meta,
            shards: Vec::new(),
            committed_pairs: 0,
            entries: 0,
            complete: false,
        }
    }

    /// Bytes per key row (d × dtype size; saturating, so an absurd `hidden_size` read from a
    /// file gives `u64::MAX`, which [`Manifest::problems`] reports, instead of overflowing).
    pub fn key_row_bytes(&self) -> u64 {
        (self.meta.hidden_size as u64).saturating_mul(self.meta.dtype.size())
    }

    /// Path of the manifest of the memory in `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    /// Reads and checks the manifest of the memory in `dir` (no shard files are touched).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path_in(dir);
        let bytes = fs::read(&path).map_err(|e| MemoryError::io(&path, e))?;
        let manifest: Self =
            serde_json::from_slice(&bytes).map_err(|source| MemoryError::ManifestParse {
                path: path.clone(),
                source,
            })?;
        let problems = manifest.problems();
        if let Some(first) = problems.into_iter().next() {
            return Err(MemoryError::ManifestInvalid {
                path,
                message: first,
            });
        }
        Ok(manifest)
    }

    /// Every internal inconsistency of the manifest (empty when it is sound).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.format != FORMAT {
            p.push(format!("format is `{}`, expected `{FORMAT}`", self.format));
        }
        if self.format_version != FORMAT_VERSION {
            p.push(format!(
                "format version {} is not supported (this build reads version {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.meta.hidden_size == 0 {
            p.push("hidden_size is 0".into());
        }
        if self.meta.pairs_per_shard == 0 {
            p.push("pairs_per_shard is 0".into());
        }
        if (self.meta.hidden_size as u64)
            .checked_mul(self.meta.dtype.size())
            .is_none()
        {
            p.push(format!(
                "hidden_size {} is too large",
                self.meta.hidden_size
            ));
        }
        let row = self.key_row_bytes();
        let mut next_pair = 0u64;
        let mut total = 0u64;
        for (i, s) in self.shards.iter().enumerate() {
            if s.index as usize != i {
                p.push(format!("shard #{i} has index {}", s.index));
            }
            if s.pair_start != next_pair {
                p.push(format!(
                    "shard {} starts at pair {} but the previous shard ends at pair {next_pair}",
                    s.index, s.pair_start
                ));
            }
            if s.pair_end < s.pair_start {
                p.push(format!("shard {} has pair_end < pair_start", s.index));
            }
            next_pair = s.pair_end;
            total = total.saturating_add(s.entries);
            let (k, v, pr) = shard_file_names(s.index);
            for (info, name, per) in [
                (&s.keys, k, row),
                (&s.values, v, VALUE_BYTES),
                (&s.provenance, pr, PROVENANCE_BYTES),
            ] {
                if info.file != name {
                    p.push(format!(
                        "shard {} names file `{}`, expected `{name}`",
                        s.index, info.file
                    ));
                }
                let Some(want) = s.entries.checked_mul(per) else {
                    p.push(format!(
                        "shard {}: {} entries × {per} bytes overflows",
                        s.index, s.entries
                    ));
                    continue;
                };
                if info.bytes != want {
                    p.push(format!(
                        "shard {}: `{}` recorded as {} bytes but {} entries × {per} bytes = {want} (dtype {}, d = {})",
                        s.index,
                        info.file,
                        info.bytes,
                        s.entries,
                        self.meta.dtype.name(),
                        self.meta.hidden_size
                    ));
                }
                if info.sha256.len() != 64 || !info.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    p.push(format!("`{}`: malformed sha256", info.file));
                }
            }
        }
        if self.committed_pairs != next_pair {
            p.push(format!(
                "committed_pairs is {} but the shards cover pairs [0, {next_pair})",
                self.committed_pairs
            ));
        }
        if self.entries != total {
            p.push(format!(
                "entries is {} but the shards hold {total}",
                self.entries
            ));
        }
        if self.committed_pairs > self.meta.pairs_total {
            p.push(format!(
                "committed_pairs {} exceeds pairs_total {}",
                self.committed_pairs, self.meta.pairs_total
            ));
        }
        if self.complete && self.committed_pairs != self.meta.pairs_total {
            p.push(format!(
                "marked complete but only {} of {} pairs are committed",
                self.committed_pairs, self.meta.pairs_total
            ));
        }
        p
    }

    /// A human-readable summary (what `pema memory info` prints).
    pub fn summary(&self) -> String {
        let m = &self.meta;
        let key_bytes = self
            .shards
            .iter()
            .fold(0u64, |a, s| a.saturating_add(s.keys.bytes));
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<22}{v}\n"));
        line(
            "format",
            format!("{} v{}", self.format, self.format_version),
        );
        line(
            "status",
            if self.complete {
                "complete".into()
            } else {
                format!(
                    "incomplete ({} of {} pairs committed)",
                    self.committed_pairs, m.pairs_total
                )
            },
        );
        line("entries", self.entries.to_string());
        line(
            "pairs",
            format!("{} of {}", self.committed_pairs, m.pairs_total),
        );
        line(
            "shards",
            format!("{} ({} pairs each)", self.shards.len(), m.pairs_per_shard),
        );
        line(
            "keys",
            format!(
                "[{}, {}] {} ({:.1} MiB)",
                self.entries,
                m.hidden_size,
                m.dtype.name(),
                key_bytes as f64 / 1048576.0
            ),
        );
        line(
            "model",
            format!("{} (sha256 {})", m.model_name, m.model_sha256),
        );
        line(
            "state",
            format!("{} of layer {}", m.state.position, m.state.layer),
        );
        line("tokenizer", m.tokenizer_fingerprint.clone());
        line("mode", format!("{:?}", m.mode));
        line("template", format!("{} {:?}", m.template_name, m.template));
        if m.mode == BuildMode::FreeRunning {
            line(
                "step budget",
                format!("len(target) + {}", m.max_extra_steps),
            );
        }
        line(
            "data",
            format!("{} (sha256 {})", m.data_file, m.data_sha256),
        );
        line("batch size", m.batch_size.to_string());
        s
    }

    /// Serialises the manifest (pretty JSON, trailing newline): deterministic bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_else(|e| {
            // Serialising plain structs of strings and integers cannot fail.
            format!("{{\"error\": \"{e}\"}}")
        });
        s.push('\n');
        s.into_bytes()
    }

    /// Atomically replaces the manifest in `dir`: write a temporary file, fsync it, rename it
    /// over `manifest.json`, fsync the directory. A reader sees the old or the new manifest,
    /// never a mixture, whatever moment the process dies.
    pub fn store_atomic(&self, dir: &Path) -> Result<()> {
        Ok(pema_common::write_atomic(
            &Self::path_in(dir),
            &self.to_bytes(),
        )?)
    }
}

/// fsyncs a directory so that renames and new files in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    Ok(pema_common::sync_dir(dir)?)
}

pub use pema_common::hex;
