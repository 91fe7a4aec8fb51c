//! The small pieces every pema crate shares, so that each is written once:
//!
//! - [`FileError`]: an I/O error together with the file it happened on (every crate's error
//!   enum wraps it as its `Io` variant);
//! - [`write_atomic`] / [`sync_dir`]: the one artifact writer (a synced temporary file renamed
//!   over the target, then the directory synced), so a crash leaves the old file or the new
//!   one, never a torn one;
//! - [`read_json`] / [`write_json_pretty`] / [`write_json_line`]: JSON files (artifact metadata,
//!   run summaries, configs) through the same writer, with [`JsonError`] naming the file;
//! - [`hex`]: lower-case hex of digests and fingerprints;
//! - [`SplitMix64`] and [`mix`]: the seeded generator behind every shuffle, split and derived
//!   seed (fully specified, so runs are reproducible across platforms and versions).

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// An I/O error on a named file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    /// The file (or directory).
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

impl FileError {
    /// Wraps `source` with the `path` it happened on.
    pub fn new(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self {
            path: path.into(),
            source,
        }
    }

    /// A `map_err` adaptor: `fs::read(p).map_err(FileError::at(p))`.
    pub fn at(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self::new(path, source)
    }
}

/// Writes `bytes` to `path` atomically and durably: a `.tmp` sibling is written and synced,
/// renamed over `path`, and the directory synced. Readers see the old or the new file, whatever
/// moment the process (or the machine) dies. The one writer of pema's artifacts.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        // A full disk leaves no half-written temporary behind either.
        let _ = fs::remove_file(&tmp);
        return Err(FileError::new(tmp, e));
    }
    fs::rename(&tmp, path).map_err(FileError::at(path))?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// fsyncs a directory so that renames and new files in it are durable (a no-op where
/// directories cannot be opened as files).
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    if cfg!(unix) {
        let d = fs::File::open(dir).map_err(FileError::at(dir))?;
        d.sync_all().map_err(FileError::at(dir))?;
    }
    Ok(())
}

/// Reading, parsing or serialising a JSON file failed.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file is not valid JSON for the expected type (or the value could not be
    /// serialised).
    #[error("JSON file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The underlying error (with line and column when parsing).
        #[source]
        source: serde_json::Error,
    },
}

impl JsonError {
    fn parse(path: &Path) -> impl FnOnce(serde_json::Error) -> Self + '_ {
        move |source| Self::Parse {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads and parses the JSON file at `path`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, JsonError> {
    let text = fs::read_to_string(path).map_err(FileError::at(path))?;
    serde_json::from_str(&text).map_err(JsonError::parse(path))
}

/// Writes `value` as pretty JSON with a final newline, atomically ([`write_atomic`]).
pub fn write_json_pretty<T: serde::Serialize + ?Sized>(
    path: &Path,
    value: &T,
) -> Result<(), JsonError> {
    let text = serde_json::to_string_pretty(value).map_err(JsonError::parse(path))?;
    Ok(write_atomic(path, (text + "\n").as_bytes())?)
}

/// Writes `value` as one compact JSON line, atomically ([`write_atomic`]).
pub fn write_json_line<T: serde::Serialize + ?Sized>(
    path: &Path,
    value: &T,
) -> Result<(), JsonError> {
    let text = serde_json::to_string(value).map_err(JsonError::parse(path))?;
    Ok(write_atomic(path, (text + "\n").as_bytes())?)
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// SplitMix64 (Steele, Lea & Flood): a tiny, fully specified generator for reproducible
/// shuffles, splits and seeds. The state is public so a stream can be started from any seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        finalize(self.0)
    }

    /// Uniform integer in `[0, n)` (n > 0), by Lemire's multiply-shift (bias < 2⁻³² for the
    /// sizes used here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform `f64` in `[0, 1)` from the top 53 bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// SplitMix64's output function: a bijective 64-bit mixer.
pub fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An independent seed for `stream` (a phase, a layer, a resample) derived from `seed`.
pub fn mix(seed: u64, stream: u64) -> u64 {
    SplitMix64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_the_reference_sequence() {
        // Vigna's splitmix64.c with seed 0.
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn below_stays_in_range_and_unit_below_one() {
        let mut r = SplitMix64(7);
        for n in [1u64, 2, 3, 1000] {
            assert!((0..100).all(|_| r.below(n) < n));
        }
        assert!((0..1000).all(|_| (0.0..1.0).contains(&r.unit_f64())));
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.json");
        write_atomic(&p, b"old").expect("write");
        write_atomic(&p, b"new").expect("rewrite");
        assert_eq!(fs::read(&p).expect("read"), b"new");
        assert!(!dir.path().join("a.json.tmp").exists());
    }

    #[test]
    fn json_round_trips_and_names_a_broken_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("v.json");
        write_json_pretty(&p, &vec![1u32, 2, 3]).expect("write");
        assert_eq!(read_json::<Vec<u32>>(&p).expect("read"), [1, 2, 3]);
        write_json_line(&p, "x").expect("write line");
        assert_eq!(fs::read_to_string(&p).expect("text"), "\"x\"\n");
        fs::write(&p, "{").expect("corrupt");
        let e = read_json::<Vec<u32>>(&p).expect_err("broken");
        assert!(matches!(e, JsonError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("v.json"), "{e}");
        let missing = read_json::<u32>(&dir.path().join("none.json")).expect_err("missing");
        assert!(matches!(missing, JsonError::File(_)), "{missing}");
    }

    #[test]
    fn file_error_names_the_path() {
        let p = Path::new("/nonexistent/pema/x");
        let e = fs::read(p).map_err(FileError::at(p)).expect_err("missing");
        assert!(e.to_string().starts_with("/nonexistent/pema/x: "), "{e}");
    }
}
