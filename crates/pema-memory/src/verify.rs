//! `verify`: checks every shard of a memory (presence, size, sha256, provenance order) and
//! reports every problem found, not only the first.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::MemoryError;
use crate::manifest::{MANIFEST_FILE, Manifest, PROVENANCE_BYTES, hex};
use crate::store::size_hint;
use crate::writer::Provenance;

/// One thing wrong with a memory directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file concerned (the manifest or a shard file).
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// The manifest, when it could be read.
    pub manifest: Option<Manifest>,
    /// Shards checked.
    pub shards_checked: usize,
    /// Bytes hashed.
    pub bytes_checked: u64,
    /// Everything wrong (empty when the memory is sound).
    pub problems: Vec<Problem>,
    /// Things worth saying that are not corruption: leftovers of an interrupted build (shard
    /// files no manifest names, `manifest.json.tmp`). A resumed build overwrites them; they
    /// can be deleted. They do not make [`VerifyReport::is_ok`] false.
    pub warnings: Vec<Problem>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the memory in `dir`: manifest syntax and consistency, and for every shard file its
/// presence, its size against the manifest (entries × row size; a keys file whose size fits the
/// other dtype is called out), its sha256, and that provenance lies inside the shard's pair range
/// in (pair, step) order, and, when the manifest records the vocabulary size, that every value
/// lies below it. Leftover files of an interrupted build are reported as
/// [`VerifyReport::warnings`]. Never panics on bad input; every problem names its file.
pub fn verify(dir: &Path) -> VerifyReport {
    let mut report = VerifyReport::default();
    let mpath = dir.join(MANIFEST_FILE);
    let bytes = match fs::read(&mpath) {
        Ok(b) => b,
        Err(e) => {
            report.problems.push(Problem {
                message: MemoryError::io(&mpath, e).to_string(),
                path: mpath,
            });
            return report;
        }
    };
    let manifest: Manifest = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            report.problems.push(Problem {
                path: mpath,
                message: format!("not a valid manifest: {e}"),
            });
            return report;
        }
    };
    for message in manifest.problems() {
        report.problems.push(Problem {
            path: mpath.clone(),
            message,
        });
    }
    let d = manifest.meta.hidden_size as u64;
    let row = manifest.key_row_bytes();
    for s in &manifest.shards {
        report.shards_checked += 1;
        let files = [
            // Saturating: the manifest's own problems (reported above) may include sizes that
            // overflow; every file is still checked.
            (&s.keys, s.entries.saturating_mul(row), Some((s.entries, d))),
            (&s.values, s.entries.saturating_mul(4), None),
            (
                &s.provenance,
                s.entries.saturating_mul(PROVENANCE_BYTES),
                None,
            ),
        ];
        for (info, expected, hint_row) in files {
            if info.file.contains(['/', '\\']) || info.file.starts_with('.') {
                report.problems.push(Problem {
                    path: mpath.clone(),
                    message: format!("shard {} names an unsafe file `{}`", s.index, info.file),
                });
                continue;
            }
            let path = dir.join(&info.file);
            let len = match fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) => {
                    report.problems.push(Problem {
                        message: MemoryError::io(&path, e).to_string(),
                        path,
                    });
                    continue;
                }
            };
            if len != expected {
                report.problems.push(Problem {
                    message: format!(
                        "{len} bytes, the manifest implies {expected} ({} entries){}",
                        s.entries,
                        size_hint(len, expected, hint_row)
                    ),
                    path: path.clone(),
                });
            }
            match sha256_file(&path) {
                Ok(sum) => {
                    report.bytes_checked += len;
                    if sum != info.sha256 {
                        report.problems.push(Problem {
                            path: path.clone(),
                            message: format!(
                                "sha256 {sum} differs from the manifest's {}",
                                info.sha256
                            ),
                        });
                    }
                }
                Err(e) => report.problems.push(Problem {
                    message: e.to_string(),
                    path: path.clone(),
                }),
            }
        }
        // Values must lie inside the vocabulary, when the manifest records it.
        let vpath = dir.join(&s.values.file);
        if let Some(vocab) = manifest.meta.vocab_size
            && let Ok(b) = fs::read(&vpath)
            && Some(b.len() as u64) == s.entries.checked_mul(4)
        {
            let bad = b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .enumerate()
                .filter(|(_, v)| *v as usize >= vocab)
                .collect::<Vec<_>>();
            if let Some((i, v)) = bad.first() {
                report.problems.push(Problem {
                    path: vpath.clone(),
                    message: format!(
                        "{} values outside the vocabulary of {vocab} tokens (first: entry {i} of the shard, value {v})",
                        bad.len()
                    ),
                });
            }
        }
        // Provenance must lie in the shard's pair range, sorted by (pair, step).
        let ppath = dir.join(&s.provenance.file);
        if let Ok(b) = fs::read(&ppath)
            && Some(b.len() as u64) == s.entries.checked_mul(PROVENANCE_BYTES)
        {
            let prov: Vec<Provenance> = b
                .chunks_exact(8)
                .map(|c| Provenance {
                    pair: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    step: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                })
                .collect();
            let mut prev: Option<(u32, u32)> = None;
            for (i, p) in prov.iter().enumerate() {
                let pair = u64::from(p.pair);
                if pair < s.pair_start || pair >= s.pair_end {
                    report.problems.push(Problem {
                        path: ppath.clone(),
                        message: format!(
                            "entry {i}: pair {} outside the shard's pairs [{}, {})",
                            p.pair, s.pair_start, s.pair_end
                        ),
                    });
                    break;
                }
                if let Some(q) = prev
                    && (p.pair, p.step) <= q
                {
                    report.problems.push(Problem {
                        path: ppath.clone(),
                        message: format!("entry {i}: provenance not in (pair, step) order"),
                    });
                    break;
                }
                prev = Some((p.pair, p.step));
            }
        }
    }
    report.warnings = leftovers(dir, &manifest);
    report.manifest = Some(manifest);
    report
}

/// Files of `dir` an interrupted build left behind: shard files the manifest does not name and
/// a temporary manifest.
fn leftovers(dir: &Path, manifest: &Manifest) -> Vec<Problem> {
    let named: std::collections::HashSet<&str> = manifest
        .shards
        .iter()
        .flat_map(|s| [&s.keys.file, &s.values.file, &s.provenance.file])
        .map(String::as_str)
        .collect();
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Problem> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| {
            let message = if name == format!("{MANIFEST_FILE}.tmp") {
                "temporary manifest left by an interrupted write (not used; safe to delete)"
            } else if name.starts_with("shard-")
                && [".keys", ".values", ".prov"].iter().any(|x| name.ends_with(x))
                && !named.contains(name.as_str())
            {
                "shard file not named by the manifest: left by an interrupted build (not used; a resumed build overwrites it)"
            } else {
                return None;
            };
            Some(Problem {
                path: dir.join(&name),
                message: message.into(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, MemoryError> {
    let mut f = fs::File::open(path).map_err(|e| MemoryError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| MemoryError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::KeyDtype;
    use crate::test_util::synthetic;

    /// Fuzz regressions (`fuzz/regressions/memory_manifest/`): sizes that overflow `u64` in a
    /// manifest are problems of that manifest, never an arithmetic overflow (a panic in debug
    /// builds) in `problems`, `verify`, `summary` or `MemoryStore::open`.
    #[test]
    fn overflowing_sizes_are_problems_not_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        synthetic(dir.path(), 3, KeyDtype::F32, 8, 4, 1);
        let path = dir.path().join(MANIFEST_FILE);
        let good: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        type Edit = fn(&mut serde_json::Value);
        let edits: [(&str, Edit); 3] = [
            ("hidden_size", |m| {
                m["meta"]["hidden_size"] = (1u64 << 62 | 1).into()
            }),
            ("entries", |m| {
                m["shards"][0]["entries"] = (1u64 << 62 | 1).into()
            }),
            ("key bytes", |m| {
                m["shards"][0]["keys"]["bytes"] = u64::MAX.into();
                m["shards"][1]["keys"]["bytes"] = u64::MAX.into();
            }),
        ];
        for (what, edit) in edits {
            let mut m = good.clone();
            edit(&mut m);
            fs::write(&path, serde_json::to_vec(&m).expect("json")).expect("write");
            let parsed: Manifest = serde_json::from_value(m).expect("manifest");
            assert!(!parsed.problems().is_empty(), "{what}");
            assert!(parsed.summary().contains("entries"), "{what}");
            assert!(Manifest::load(dir.path()).is_err(), "{what}");
            assert!(crate::MemoryStore::open(dir.path()).is_err(), "{what}");
            assert!(!verify(dir.path()).is_ok(), "{what}");
        }
    }

    #[test]
    fn reports_every_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        synthetic(dir.path(), 4, KeyDtype::F16, 16, 4, 5);
        assert!(verify(dir.path()).is_ok());
        // Missing values file, truncated keys file, flipped provenance byte.
        fs::remove_file(dir.path().join("shard-000000.values")).expect("rm");
        let k = dir.path().join("shard-000001.keys");
        let b = fs::read(&k).expect("read");
        fs::write(&k, &b[..b.len() - 1]).expect("write");
        let p = dir.path().join("shard-000002.prov");
        let mut b = fs::read(&p).expect("read");
        b[0] ^= 0xff;
        fs::write(&p, b).expect("write");
        let r = verify(dir.path());
        let text: Vec<String> = r.problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("shard-000000.values") && t.contains("not found")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("shard-000001.keys") && t.contains("truncated")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("shard-000001.keys") && t.contains("sha256")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("shard-000002.prov") && t.contains("sha256")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("shard-000002.prov") && t.contains("outside")),
            "{text:?}"
        );
        assert_eq!(r.shards_checked, 4);
    }

    #[test]
    fn wrong_dtype_is_diagnosed() {
        let dir = tempfile::tempdir().expect("tempdir");
        synthetic(dir.path(), 4, KeyDtype::F32, 8, 4, 5);
        let mp = dir.path().join(MANIFEST_FILE);
        let m = fs::read_to_string(&mp).expect("read");
        // An edit that keeps the manifest self-consistent but lies about the dtype.
        let v: serde_json::Value = serde_json::from_str(&m).expect("json");
        let mut man: Manifest = serde_json::from_value(v).expect("manifest");
        man.meta.dtype = KeyDtype::F16;
        for s in &mut man.shards {
            s.keys.bytes /= 2;
        }
        fs::write(&mp, man.to_bytes()).expect("write");
        let r = verify(dir.path());
        assert!(
            r.problems
                .iter()
                .any(|p| p.message.contains("size matches dtype f32")),
            "{:?}",
            r.problems
        );
        let e = crate::MemoryStore::open(dir.path()).expect_err("dtype");
        assert!(e.to_string().contains("size matches dtype f32"), "{e}");
    }

    #[test]
    fn verify_reports_values_outside_the_recorded_vocabulary() {
        let dir = tempfile::tempdir().expect("tempdir");
        synthetic(dir.path(), 2, KeyDtype::F32, 8, 4, 5);
        assert!(verify(dir.path()).is_ok());
        let mp = dir.path().join(MANIFEST_FILE);
        let mut man: Manifest =
            serde_json::from_slice(&fs::read(&mp).expect("read")).expect("manifest");
        man.meta.vocab_size = Some(10);
        fs::write(&mp, man.to_bytes()).expect("write");
        let r = verify(dir.path());
        assert!(
            r.problems
                .iter()
                .any(|p| p.message.contains("outside the vocabulary of 10")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn verify_warns_about_leftover_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        synthetic(dir.path(), 2, KeyDtype::F32, 8, 4, 5);
        fs::write(dir.path().join("shard-000002.keys"), b"xx").expect("write");
        fs::write(dir.path().join("manifest.json.tmp"), b"{").expect("write");
        let r = verify(dir.path());
        assert!(r.is_ok(), "{:?}", r.problems);
        let w: Vec<String> = r.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("manifest.json.tmp"), "{w:?}");
        assert!(w[1].contains("shard-000002.keys") && w[1].contains("interrupted"));
    }

    #[test]
    fn unreadable_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = verify(dir.path());
        assert_eq!(r.problems.len(), 1);
        fs::write(dir.path().join(MANIFEST_FILE), "[]").expect("write");
        let r = verify(dir.path());
        assert!(r.problems[0].message.contains("not a valid manifest"));
    }
}
