//! Shared set-up of the `pema` binary's end-to-end tests: a tiny random model directory and a
//! runner that captures exit status, stdout and stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory holding a tiny model (`model/`) and whatever a test writes next to it.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// A new sandbox with a tiny Llama-family model under `model/`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        pema_backbone::testing::write_tiny_model_dir(&dir.path().join("model"), 7)
            .expect("tiny model");
        Self { dir }
    }

    /// A path inside the sandbox.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The tiny model's directory.
    pub fn model(&self) -> PathBuf {
        self.path("model")
    }

    /// Writes `text` to `name` in the sandbox and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    /// A pairs file (`source<TAB>target` per line) of `n` short pairs over the tiny vocabulary.
    pub fn pairs(&self, name: &str, n: usize) -> PathBuf {
        let text: String = (0..n)
            .map(|i| {
                let w = |k: usize| ((b'a' + ((i * 7 + k * 3) % 26) as u8) as char).to_string();
                format!("{} {} {}\t{} {}\n", w(0), w(1), w(2), w(3), w(4))
            })
            .collect();
        self.write(name, &text)
    }
}

impl Sandbox {
    /// `memory build --model <the tiny model> --pairs P --out O`, then `extra`.
    pub fn build(&self, pairs: &str, out: &str, extra: &[&str]) -> Vec<String> {
        self.on_pairs(&["memory", "build"], pairs, out, extra)
    }

    /// `decode --model <the tiny model> --pairs P --out O`, then `extra`.
    pub fn decode(&self, pairs: &str, out: &str, extra: &[&str]) -> Vec<String> {
        self.on_pairs(&["decode"], pairs, out, extra)
    }

    fn on_pairs(&self, command: &[&str], pairs: &str, out: &str, extra: &[&str]) -> Vec<String> {
        let model = arg(&self.model());
        let mut a: Vec<&str> = command.to_vec();
        a.extend(["--model", &model, "--pairs", pairs, "--out", out]);
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_string).collect()
    }
}

/// `COMMAND --memory M --dev-memory D --head H --out O`, then `extra` (train, knn-tune,
/// tune-lambda).
pub fn on_memories(
    command: &str,
    [memory, dev, head, out]: [&str; 4],
    extra: &[&str],
) -> Vec<String> {
    let mut a = vec![
        command,
        "--memory",
        memory,
        "--dev-memory",
        dev,
        "--head",
        head,
        "--out",
        out,
    ];
    a.extend_from_slice(extra);
    a.into_iter().map(str::to_string).collect()
}

/// The outcome of one `pema` run.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts a clean failure: exit status 1 (not a panic's 101 or an abort's 134) and an
    /// error line containing every one of `needles`; returns stderr.
    #[track_caller]
    pub fn fails_with(&self, needles: &[&str]) -> &str {
        assert_eq!(
            self.code,
            Some(1),
            "expected a clean error (exit 1), got {:?}\nstderr:\n{}",
            self.code,
            self.stderr
        );
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr lacks {n:?}:\n{}",
                self.stderr
            );
        }
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        assert!(!self.stderr.contains("stack backtrace"), "{}", self.stderr);
        &self.stderr
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn succeeds(&self) -> &str {
        assert_eq!(self.code, Some(0), "stderr:\n{}", self.stderr);
        &self.stdout
    }
}

/// Runs `pema` with `args` (no standard input, `RUST_BACKTRACE` as given).
pub fn pema<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    pema_env(args, &[])
}

/// Runs `pema` with `args` and extra environment variables.
pub fn pema_env<I, S>(args: I, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pema"));
    cmd.args(args).stdin(std::process::Stdio::null());
    cmd.env_remove("RUST_BACKTRACE")
        .env_remove("PEMA_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run pema");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// `p` as a command-line argument.
pub fn arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
