//! Faults injected into the `pema` binary: SIGKILL in the middle of `memory build`, `train`
//! and `decode`, and a full disk. Committed work survives, a rerun resumes (or restarts) to
//! the same result, and no output file is ever left half-written.

use crate::common::*;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pema"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pema")
}

/// Runs `pema args`, SIGKILLs it right after the `kill_after`-th stderr line containing
/// `needle`; returns whether it was killed (false: it finished first, successfully).
fn run_killed_after_line(args: &[String], needle: &str, kill_after: usize) -> bool {
    let mut child = spawn(args);
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = 0;
    let mut log = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        log.push_str(&line);
        log.push('\n');
        if line.contains(needle) {
            seen += 1;
            if seen == kill_after {
                child.kill().expect("SIGKILL");
                child.wait().expect("wait");
                return true;
            }
        }
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "pema failed:\n{log}");
    false
}

/// Runs `pema args` and SIGKILLs it once `ready` holds (polled), or lets it finish; returns
/// whether it was killed.
fn run_killed_when(args: &[String], ready: impl Fn() -> bool) -> bool {
    let mut child = spawn(args);
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(status.success(), "pema failed");
            return false;
        }
        if ready() {
            child.kill().expect("SIGKILL");
            child.wait().expect("wait");
            return true;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "pema ran too long");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every file under `dir` (recursively, sorted) with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p
                    .strip_prefix(dir)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned();
                out.push((name, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn build_args(s: &Sandbox, pairs: &Path, out: &Path) -> Vec<String> {
    s.build(
        &arg(pairs),
        &arg(out),
        &["--pairs-per-shard", "2", "--batch-size", "2"],
    )
}

#[test]
fn memory_build_killed_after_each_shard_resumes_to_identical_files() {
    let s = Sandbox::new();
    let pairs = s.pairs("p.tsv", 12);
    let reference = s.path("reference");
    assert!(!run_killed_after_line(
        &build_args(&s, &pairs, &reference),
        "\u{0}",
        1
    ));
    let out = s.path("killed");
    let mut kills = 0;
    while run_killed_after_line(&build_args(&s, &pairs, &out), "pairs committed", 1) {
        kills += 1;
        pema(["memory", "verify", &arg(&out)]).succeeds();
        assert!(kills < 20, "the build does not progress");
    }
    assert!(kills >= 5, "only {kills} kills");
    assert_eq!(files(&out), files(&reference), "after {kills} kills");
}

/// A memory, a dev memory and the head, for training.
fn training_inputs(s: &Sandbox) {
    let m = arg(&s.model());
    let train = s.pairs("train.tsv", 40);
    let dev = s.pairs("dev.tsv", 10);
    for (p, out) in [(&train, "mem"), (&dev, "dev")] {
        pema(s.build(&arg(p), &arg(&s.path(out)), &[])).succeeds();
    }
    pema([
        "export-head",
        "--model",
        &m,
        "--out",
        &arg(&s.path("head.safetensors")),
    ])
    .succeeds();
}

fn train_args(s: &Sandbox, out: &Path) -> Vec<String> {
    strings(&[
        "train",
        "--memory",
        &arg(&s.path("mem")),
        "--dev-memory",
        &arg(&s.path("dev")),
        "--head",
        &arg(&s.path("head.safetensors")),
        "--out",
        &arg(out),
        "--rank",
        "8",
        "--batch1",
        "8",
        "--batch2",
        "8",
        "--epochs",
        "30",
        "--validate-every",
        "5",
        "--max-steps1",
        "120",
        "--max-steps2",
        "120",
        "--no-progress",
    ])
}

#[test]
fn train_killed_after_a_checkpoint_resumes_to_the_same_adapter() {
    let s = Sandbox::new();
    training_inputs(&s);
    let reference = s.path("reference");
    assert!(!run_killed_when(&train_args(&s, &reference), || false));
    let out = s.path("killed");
    let state = out.join("checkpoint").join("state.json");
    let mut kills = 0;
    let mut last = Vec::new();
    // Kill as soon as a checkpoint newer than the one of the previous run appears.
    while run_killed_when(&train_args(&s, &out), || {
        std::fs::read(&state).is_ok_and(|b| b != last)
    }) {
        kills += 1;
        last = std::fs::read(&state).unwrap_or_default();
        assert!(kills < 100, "training does not progress");
    }
    assert!(kills >= 2, "only {kills} kills");
    assert_eq!(
        std::fs::read(out.join("adapter.safetensors")).expect("killed run's adapter"),
        std::fs::read(reference.join("adapter.safetensors")).expect("reference adapter"),
        "weights after {kills} kills"
    );
    // The recorded training history too, all but the wall-clock times.
    let record = |dir: &Path| {
        let text = std::fs::read_to_string(dir.join("adapter.json")).expect("adapter.json");
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        drop_seconds(&mut v);
        v
    };
    assert_eq!(record(&out), record(&reference), "after {kills} kills");
}

fn drop_seconds(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("seconds");
            m.values_mut().for_each(drop_seconds);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_seconds),
        _ => {}
    }
}

#[test]
fn decode_killed_leaves_no_partial_output_and_a_rerun_completes() {
    let s = Sandbox::new();
    let pairs = s.pairs("p.tsv", 40);
    let out = s.path("hyp.txt");
    let args = strings(&[
        "decode",
        "--model",
        &arg(&s.model()),
        "--pairs",
        &arg(&pairs),
        "--out",
        &arg(&out),
        "--batch-size",
        "1",
    ]);
    for delay_ms in [0u64, 5, 20, 60] {
        let t0 = Instant::now();
        run_killed_when(&args, || t0.elapsed() >= Duration::from_millis(delay_ms));
        if let Ok(text) = std::fs::read_to_string(&out) {
            assert_eq!(
                text.lines().count(),
                40,
                "a partial output after {delay_ms} ms"
            );
        }
        let _ = std::fs::remove_file(&out);
    }
    assert!(!run_killed_when(&args, || false));
    assert_eq!(
        std::fs::read_to_string(&out).expect("out").lines().count(),
        40
    );
}

/// A small tmpfs mounted for one test (needs root; `None` where mounting is not allowed).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                &arg(dir),
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_path_buf()))
    }
    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}"), &arg(&self.0)])
            .status()
            .expect("remount");
        assert!(st.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", &arg(&self.0)]).status();
    }
}

#[test]
fn a_full_disk_gives_a_clear_error_and_a_store_that_resumes() {
    let s = Sandbox::new();
    let Some(disk) = SmallDisk::mount(&s.path("disk"), "16k") else {
        println!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let pairs = s.pairs("p.tsv", 12);
    let out = disk.0.join("m");
    let r = pema(build_args(&s, &pairs, &out));
    r.fails_with(&["No space left on device"]);
    pema(["memory", "verify", &arg(&out)]).succeeds();
    // Room again: the build resumes from its committed shards to the uninterrupted result.
    disk.resize("4m");
    pema(build_args(&s, &pairs, &out)).succeeds();
    let reference = s.path("reference");
    pema(build_args(&s, &pairs, &reference)).succeeds();
    assert_eq!(files(&out), files(&reference));

    // A decode whose output does not fit fails naming the file and leaves nothing behind.
    drop(disk);
    let Some(full) = SmallDisk::mount(&s.path("full"), "4k") else {
        panic!("mounted once, not twice");
    };
    let _ = std::fs::write(full.0.join("filler"), vec![0u8; 4096]);
    let hyp = full.0.join("hyp.txt");
    let r = pema(s.decode(&arg(&pairs), &arg(&hyp), &[]));
    r.fails_with(&["hyp.txt", "No space left on device"]);
    assert!(!hyp.exists());
    assert!(!full.0.join("hyp.txt.tmp").exists());
}
