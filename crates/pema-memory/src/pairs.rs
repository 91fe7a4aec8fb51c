//! The data owner's training pairs (source, target).
//!
//! One pair per non-blank line, in any of three forms (mixed freely):
//! - JSON object with `source` and `target` string fields;
//! - the paper's JSON lines `{"en": …, "du": …}` (English source, German target);
//! - TSV: `source<TAB>target`.
//!
//! Pair indices (recorded in each entry's provenance) count non-blank lines from 0.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{MemoryError, Result};
use crate::manifest::hex;

/// One training pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Source sentence x (goes into the prompt).
    pub source: String,
    /// Target sentence y (the data owner's gold output; only the memory writer sees it in
    /// free-running mode).
    pub target: String,
    /// 1-based line number in the file.
    pub line: usize,
}

/// A pairs file, read whole.
#[derive(Debug, Clone)]
pub struct PairsFile {
    /// The file.
    pub path: PathBuf,
    /// sha256 of the file's bytes.
    pub sha256: String,
    /// The pairs, in file order.
    pub pairs: Vec<Pair>,
}

impl PairsFile {
    /// Reads and parses `path`; errors name the file and line.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(|e| MemoryError::io(path, e))?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let text = String::from_utf8(bytes).map_err(|e| MemoryError::Pairs {
            path: path.to_path_buf(),
            line: 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            message: "not valid UTF-8".into(),
        })?;
        let pairs = parse_pairs(&text).map_err(|(line, message)| MemoryError::Pairs {
            path: path.to_path_buf(),
            line,
            message,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            sha256,
            pairs,
        })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when the file holds no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// Parses pair lines; on error returns (1-based line, message).
pub fn parse_pairs(text: &str) -> std::result::Result<Vec<Pair>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.strip_suffix('\r').unwrap_or(raw);
        if l.trim().is_empty() {
            continue;
        }
        if l.trim_start().starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(l).map_err(|e| (line, format!("invalid JSON: {e}")))?;
            let obj = v
                .as_object()
                .ok_or((line, "expected a JSON object".to_string()))?;
            let field = |names: [&str; 2]| -> std::result::Result<String, (usize, String)> {
                for n in names {
                    if let Some(x) = obj.get(n) {
                        return x
                            .as_str()
                            .map(str::to_owned)
                            .ok_or((line, format!("field `{n}` is not a string")));
                    }
                }
                Err((
                    line,
                    format!("missing field `{}` (or `{}`)", names[0], names[1]),
                ))
            };
            out.push(Pair {
                source: field(["source", "en"])?,
                target: field(["target", "du"])?,
                line,
            });
        } else {
            let mut parts = l.split('\t');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(s), Some(t), None) => out.push(Pair {
                    source: s.to_owned(),
                    target: t.to_owned(),
                    line,
                }),
                (_, _, Some(_)) => {
                    return Err((line, "TSV line has more than two fields".into()));
                }
                _ => {
                    return Err((
                        line,
                        "expected a JSON object or a `source<TAB>target` line".into(),
                    ));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_three_forms() {
        let text =
            "{\"source\":\"a\",\"target\":\"b\"}\n\n{\"en\":\"Hello\",\"du\":\"Hallo\"}\r\nx\ty\n";
        let p = parse_pairs(text).expect("valid pairs");
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].source.as_str(), p[0].target.as_str()), ("a", "b"));
        assert_eq!(
            (p[1].source.as_str(), p[1].target.as_str(), p[1].line),
            ("Hello", "Hallo", 3)
        );
        assert_eq!((p[2].source.as_str(), p[2].target.as_str()), ("x", "y"));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse_pairs("a\tb\nno tab here\n").map_err(|e| e.0), Err(2));
        assert_eq!(parse_pairs("{\"en\":\"x\"}").map_err(|e| e.0), Err(1));
        assert_eq!(
            parse_pairs("{\"en\":1,\"du\":\"y\"}").map_err(|e| e.0),
            Err(1)
        );
        assert_eq!(parse_pairs("ok\tok\n{broken").map_err(|e| e.0), Err(2));
        assert_eq!(parse_pairs("a\tb\tc").map_err(|e| e.0), Err(1));
    }

    #[test]
    fn reads_the_papers_dev_file_if_present() {
        let p = Path::new("/work/shared/data/wmt22/dev.json");
        if p.exists() {
            let f = PairsFile::read(p).expect("paper's dev file parses");
            assert_eq!(f.len(), 2203);
        }
    }

    #[test]
    fn missing_and_bad_files_are_typed_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("nope.jsonl");
        assert!(matches!(
            PairsFile::read(&p),
            Err(MemoryError::MissingFile { .. })
        ));
        std::fs::write(&p, "a\tb\n\u{0}bad").expect("write");
        let e = PairsFile::read(&p).expect_err("bad line");
        assert!(
            e.to_string().contains("nope.jsonl") && e.to_string().contains("line 2"),
            "{e}"
        );
    }
}
