//! Replays the fuzz regressions (`fuzz/regressions/<target>/`) and the seed corpora
//! (`fuzz/corpus/<target>/`) through the same entry points the cargo-fuzz targets call, so the
//! stable test suite exercises every crash the fuzzers found. The entry points and the seed
//! maker live in `fuzz/src/` and are included here by path.

use std::path::{Path, PathBuf};

#[path = "../../../fuzz/src/targets.rs"]
#[allow(dead_code)]
mod targets;

#[path = "../../../fuzz/src/seeds.rs"]
mod seeds;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn fuzz_regressions_and_seeds_replay_cleanly() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut replayed = 0;
    for (name, entry) in targets::TARGETS {
        for sub in ["regressions", "corpus"] {
            let Ok(dir) = std::fs::read_dir(fuzz_dir().join(sub).join(name)) else {
                continue;
            };
            let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let data = std::fs::read(&f).expect("read fuzz input");
                let run = std::panic::catch_unwind(|| entry(&data, scratch.path()));
                assert!(run.is_ok(), "{name}: {} panicked", f.display());
                replayed += 1;
            }
        }
    }
    assert!(
        replayed >= targets::TARGETS.len(),
        "only {replayed} inputs found"
    );
}

/// Regenerates `fuzz/corpus/` (run by hand; `PEMA_ASSETS` names the real models' directory).
#[test]
#[ignore = "regenerates the committed seed corpora"]
fn make_seeds() {
    let assets = std::env::var_os("PEMA_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets"));
    seeds::make_seeds(&fuzz_dir().join("corpus"), Some(&assets));
}
