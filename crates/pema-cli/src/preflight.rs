//! Checks of every path a command reads and writes, made before any model is loaded: inputs
//! exist, file outputs have an existing directory, and no output overwrites an input (a
//! model's weights, a pairs file) or another output.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::{Command, memory_cmd::MemoryCmd};

/// What a path is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A file that must exist.
    InFile,
    /// A directory that must exist; every file in it counts as an input.
    InDir,
    /// A file to write: its directory must exist.
    OutFile,
    /// A directory to create or resume.
    OutDir,
}

/// The paths of one command, each with the flag that named it.
#[derive(Debug, Default)]
pub struct Files(Vec<(&'static str, PathBuf, Role)>);

impl Files {
    fn add(&mut self, flag: &'static str, path: Option<&Path>, role: Role) -> &mut Self {
        // `-` is standard input/output (and `generate --source` decodes no file).
        if let Some(p) = path.filter(|p| p.as_os_str() != "-") {
            self.0.push((flag, p.to_path_buf(), role));
        }
        self
    }
    fn in_file(&mut self, flag: &'static str, p: impl AsPath) -> &mut Self {
        self.add(flag, p.as_path(), Role::InFile)
    }
    fn in_dir(&mut self, flag: &'static str, p: impl AsPath) -> &mut Self {
        self.add(flag, p.as_path(), Role::InDir)
    }
    fn out_file(&mut self, flag: &'static str, p: impl AsPath) -> &mut Self {
        self.add(flag, p.as_path(), Role::OutFile)
    }
    fn out_dir(&mut self, flag: &'static str, p: impl AsPath) -> &mut Self {
        self.add(flag, p.as_path(), Role::OutDir)
    }
    /// A `--template` that names a file (not `mt` or `formality`).
    fn template(&mut self, t: &str) -> &mut Self {
        if !matches!(t, "mt" | "formality") {
            self.add("--template", Some(Path::new(t)), Role::InFile);
        }
        self
    }

    /// Whether the command creates directory `dir` itself (it is one of its output
    /// directories): a file output may go there (`pema lora --out d --summary d/summary.json`).
    fn creates(&self, dir: &Path) -> bool {
        let dir = identity(dir);
        self.0
            .iter()
            .any(|(_, p, r)| *r == Role::OutDir && identity(p) == dir)
    }

    /// Checks every path; the first problem is the error, naming the flag and the path.
    pub fn check(&self) -> Result<()> {
        let mut inputs: Vec<(&str, PathBuf)> = Vec::new();
        for (flag, p, role) in &self.0 {
            match role {
                Role::InFile if !p.is_file() => {
                    let what = if p.is_dir() {
                        "is a directory, not a file"
                    } else {
                        "does not exist"
                    };
                    bail!("{flag} {}: {what}", p.display());
                }
                Role::InDir if !p.is_dir() => {
                    let what = if p.exists() {
                        "is a file, not a directory"
                    } else {
                        "does not exist"
                    };
                    bail!("{flag} {}: {what}", p.display());
                }
                Role::InFile => inputs.push((flag, identity(p))),
                Role::InDir => {
                    inputs.push((flag, identity(p)));
                    for entry in std::fs::read_dir(p).into_iter().flatten().flatten() {
                        inputs.push((flag, identity(&entry.path())));
                    }
                }
                Role::OutFile => {
                    let dir = parent(p);
                    if !dir.is_dir() && !self.creates(dir) {
                        bail!(
                            "{flag} {}: the directory {} does not exist (create it first)",
                            p.display(),
                            dir.display()
                        );
                    }
                    if p.is_dir() {
                        bail!("{flag} {}: is a directory; give a file name", p.display());
                    }
                }
                Role::OutDir => {
                    if p.is_file() {
                        bail!("{flag} {}: is a file; give a directory", p.display());
                    }
                }
            }
        }
        let outputs: Vec<(&str, PathBuf)> = self
            .0
            .iter()
            .filter(|(_, _, r)| matches!(r, Role::OutFile | Role::OutDir))
            .map(|(f, p, _)| (*f, identity(p)))
            .collect();
        for (i, (flag, out)) in outputs.iter().enumerate() {
            if let Some((in_flag, _)) = inputs.iter().find(|(_, i)| i == out) {
                bail!(
                    "{flag} {} would overwrite the input given by {in_flag}: choose another path",
                    out.display()
                );
            }
            if let Some((other, _)) = outputs[..i].iter().find(|(_, o)| o == out) {
                bail!("{flag} and {other} name the same file {}", out.display());
            }
        }
        Ok(())
    }
}

/// An optional or plain path argument.
trait AsPath {
    fn as_path(&self) -> Option<&Path>;
}
impl AsPath for &PathBuf {
    fn as_path(&self) -> Option<&Path> {
        Some(self)
    }
}
impl AsPath for &Option<PathBuf> {
    fn as_path(&self) -> Option<&Path> {
        self.as_deref()
    }
}

fn parent(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A path's identity for comparisons: canonical where it exists, else its canonical
/// directory joined with its name (links and `..` resolved either way).
fn identity(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (parent(p).canonicalize(), p.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => p.to_path_buf(),
    }
}

/// The paths `command` reads and writes.
pub fn files_of(command: &Command) -> Files {
    let mut f = Files::default();
    match command {
        Command::Generate(a) => {
            f.in_dir("--model", &a.model)
                .in_file("--plm-token-file", &a.plm_token_file)
                .in_file("--plm-ca", &a.plm_ca)
                .in_dir("--adapter", &a.adapter);
            if a.source.is_some() {
                f.template(&a.template);
            }
        }
        Command::Decode(a) => {
            task_input(&mut f, &a.input);
            f.in_dir("--adapter", &a.adapter)
                .in_dir("--lora", &a.lora)
                .in_dir("--knn-memory", &a.knn_memory)
                .in_file("--knn-params", &a.knn_params)
                .out_file("--out", &a.out)
                .out_file("--refs-out", &a.refs_out)
                .out_file("--summary", &a.summary)
                .out_file("--trace", &a.trace);
        }
        Command::Nll(a) => {
            f.in_dir("--model", &a.model)
                .in_file("--text-file", &a.text_file);
        }
        Command::Score(a) => {
            for h in &a.hyp {
                f.in_file("--hyp", h);
            }
            for r in &a.refs {
                f.in_file("--ref", r);
            }
        }
        Command::Memory(MemoryCmd::Build(a)) => {
            task_input(&mut f, &a.input);
            f.out_dir("--out", &a.out);
        }
        Command::Memory(MemoryCmd::Info { dir, .. } | MemoryCmd::Verify { dir }) => {
            f.in_dir("DIR", dir);
        }
        Command::Train(t) => {
            let a = &t.args;
            f.in_dir("--memory", &a.memory)
                .in_dir("--dev-memory", &a.dev_memory)
                .in_file("--head", &a.head)
                .in_dir("--phase1-from", &a.phase1_from)
                .out_dir("--out", &a.out);
        }
        Command::ExportHead(a) => {
            f.in_dir("--model", &a.model)
                .in_file("--plm-token-file", &a.plm_token_file)
                .in_file("--plm-ca", &a.plm_ca)
                .out_file("--out", &a.out);
        }
        Command::Lora(a) => {
            task_input(&mut f, &a.input);
            f.in_file("--dev-pairs", &a.dev_pairs)
                .out_dir("--out", &a.out)
                .out_file("--summary", &a.summary);
        }
        Command::KnnTune(a) => {
            f.in_dir("--memory", &a.memory)
                .in_dir("--dev-memory", &a.dev_memory)
                .in_file("--head", &a.head)
                .out_file("--out", &a.out);
        }
        Command::TuneLambda(a) => {
            f.in_dir("--adapter", &a.adapter)
                .in_file("--head", &a.head)
                .in_dir("--dev-memory", &a.dev_memory)
                .out_file("--out", &a.out);
        }
        Command::Serve(a) => {
            f.in_dir("--model", &a.model)
                .in_file("--token-file", &a.token_file)
                .in_file("--tls-cert", &a.tls_cert)
                .in_file("--tls-key", &a.tls_key);
        }
        Command::BenchStep(_) => {}
    }
    f
}

fn task_input(f: &mut Files, input: &crate::args::TaskInput) {
    f.in_dir("--model", &input.model)
        .in_file("--plm-token-file", &input.plm_token_file)
        .in_file("--plm-ca", &input.plm_ca)
        .in_file("--pairs", &input.pairs)
        .template(&input.template);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_may_not_overwrite_inputs_or_each_other() {
        let d = tempfile::tempdir().expect("tempdir");
        let model = d.path().join("m");
        std::fs::create_dir(&model).expect("mkdir");
        std::fs::write(model.join("model.gguf"), b"x").expect("write");
        let pairs = d.path().join("p.tsv");
        std::fs::write(&pairs, "a\tb\n").expect("write");
        let check = |out: PathBuf, refs: Option<PathBuf>| {
            let mut f = Files::default();
            f.in_dir("--model", &Some(model.clone()))
                .in_file("--pairs", &pairs)
                .out_file("--out", &out)
                .out_file("--refs-out", &refs);
            f.check().map_err(|e| e.to_string())
        };
        assert!(check(d.path().join("hyp.txt"), None).is_ok());
        let e = check(pairs.clone(), None).expect_err("overwrites pairs");
        assert!(e.contains("--out") && e.contains("--pairs"), "{e}");
        let e = check(model.join("model.gguf"), None).expect_err("overwrites the model");
        assert!(e.contains("--model"), "{e}");
        let e = check(d.path().join("x"), Some(d.path().join("./x"))).expect_err("same file");
        assert!(e.contains("--refs-out and --out"), "{e}");
        let e = check(d.path().join("no/such/dir/h.txt"), None).expect_err("no dir");
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn a_file_output_may_go_into_the_output_directory_the_command_creates() {
        let d = tempfile::tempdir().expect("tempdir");
        let out = d.path().join("lora");
        let mut f = Files::default();
        f.out_dir("--out", &out)
            .out_file("--summary", &out.join("summary.json"));
        assert!(f.check().is_ok(), "{:?}", f.check());
        let mut f = Files::default();
        f.out_dir("--out", &out)
            .out_file("--summary", &d.path().join("elsewhere/summary.json"));
        let e = f.check().expect_err("no dir").to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
