//! Reading hypothesis and reference files the way sacreBLEU's command line does: UTF-8,
//! lines split at `\n` only, each line right-stripped of (Python) whitespace.

use std::path::{Path, PathBuf};

use crate::error::{MetricsError, Result};
use crate::text::py_rstrip;

/// Reads a text file into right-stripped lines.
///
/// A final `\n` does not start an extra empty line (as Python's file iteration). Errors name
/// the file, and the 1-based line for invalid UTF-8.
pub fn read_lines(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            MetricsError::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            MetricsError::Io(pema_common::FileError::new(path.to_path_buf(), e))
        }
    })?;
    let mut pieces: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if pieces.last().is_some_and(|p| p.is_empty()) {
        pieces.pop();
    }
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, raw)| match std::str::from_utf8(raw) {
            Ok(s) => Ok(py_rstrip(s).to_owned()),
            Err(e) => Err(MetricsError::InvalidUtf8 {
                path: path.to_path_buf(),
                line: i + 1,
                byte_offset: e.valid_up_to(),
            }),
        })
        .collect()
}

/// Hypotheses and reference streams read from files, with equal lengths checked.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalFiles {
    /// One entry per hypothesis file (one system each).
    pub systems: Vec<Vec<String>>,
    /// Reference streams: `refs[k][i]` is the k-th reference of segment i.
    pub refs: Vec<Vec<String>>,
}

fn check_len(hyp_path: &Path, hyp_lines: usize, other: &Path, other_lines: usize) -> Result<()> {
    if hyp_lines == other_lines {
        return Ok(());
    }
    let (longer, shorter_len): (PathBuf, usize) = if hyp_lines > other_lines {
        (hyp_path.to_path_buf(), other_lines)
    } else {
        (other.to_path_buf(), hyp_lines)
    };
    Err(MetricsError::FileLengthMismatch {
        hyp_path: hyp_path.to_path_buf(),
        hyp_lines,
        other_path: other.to_path_buf(),
        other_lines,
        longer,
        first_unpaired: shorter_len + 1,
    })
}

/// Reads hypothesis files and reference files; every file must have the same number of
/// lines as the first hypothesis file.
pub fn read_eval_files(hyps: &[PathBuf], refs: &[PathBuf]) -> Result<EvalFiles> {
    if refs.is_empty() {
        return Err(MetricsError::NoReferences);
    }
    if hyps.is_empty() {
        return Err(MetricsError::InvalidConfig(
            "no hypothesis file given".into(),
        ));
    }
    let systems: Vec<Vec<String>> = hyps.iter().map(read_lines).collect::<Result<_>>()?;
    let ref_streams: Vec<Vec<String>> = refs.iter().map(read_lines).collect::<Result<_>>()?;
    let n = systems[0].len();
    for (p, s) in refs.iter().zip(&ref_streams) {
        check_len(&hyps[0], n, p, s.len())?;
    }
    for (p, s) in hyps.iter().zip(&systems).skip(1) {
        check_len(&hyps[0], n, p, s.len())?;
    }
    Ok(EvalFiles {
        systems,
        refs: ref_streams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("hyp.txt");
        std::fs::write(&good, "a b \r\nc\n").expect("write");
        assert_eq!(read_lines(&good).expect("valid"), vec!["a b", "c"]);
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, b"ok\nok\n\xff\xfe\n").expect("write");
        match read_lines(&bad) {
            Err(MetricsError::InvalidUtf8 { path, line, .. }) => {
                assert_eq!(path, bad);
                assert_eq!(line, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        let missing = dir.path().join("nope.txt");
        let err = read_lines(&missing).expect_err("missing");
        assert!(err.to_string().contains("nope.txt"), "{err}");
        let short = dir.path().join("ref.txt");
        std::fs::write(&short, "x\n").expect("write");
        let err = read_eval_files(std::slice::from_ref(&good), &[short]).expect_err("mismatch");
        let msg = err.to_string();
        assert!(
            msg.contains("ref.txt") && msg.contains("hyp.txt") && msg.contains("line 2"),
            "{msg}"
        );
    }
}
