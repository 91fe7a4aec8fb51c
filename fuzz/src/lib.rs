//! Fuzz entry points of pema's file parsers, shared by the cargo-fuzz targets in
//! `fuzz_targets/` and by the stable replay test `crates/pema-pipeline/tests/fuzz_replay.rs`
//! (which includes `targets.rs` and `seeds.rs` by path).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod targets;

thread_local! {
    static CAUGHT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Runs one input through `entry`. libfuzzer-sys's panic hook aborts on every panic, even one
/// the code under test catches; but the `tokenizers` crate panics on some malformed
/// definitions and pema turns those panics into errors. So panics raised inside `tokenizers`
/// are only recorded here; if one escapes pema, it is printed and the process aborts.
pub fn run(entry: targets::Entry, data: &[u8]) {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().contains("/tokenizers-"))
            {
                CAUGHT.with(|c| *c.borrow_mut() = format!("{info}"));
            } else {
                previous(info);
            }
        }));
    });
    if std::panic::catch_unwind(|| entry(data, scratch())).is_err() {
        CAUGHT.with(|c| eprintln!("uncaught panic: {}", c.borrow()));
        std::process::abort();
    }
}

/// A scratch directory private to this process (kept: the fuzzer exits without running
/// destructors; `run.sh` points `TMPDIR` at a directory it removes afterwards).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("pema-fuzz-")
            .tempdir()
            .expect("scratch directory")
            .keep()
    })
}

/// Largest single allocation a fuzz input may cause (256 MiB). libFuzzer's `-malloc_limit_mb`
/// needs a sanitizer's malloc hooks; without one, an untouched huge allocation would not even
/// show in the RSS, so the limit is enforced here.
pub const MAX_ALLOC: usize = 256 << 20;

struct LimitedAlloc;

// SAFETY: forwards to the system allocator unchanged, only refusing (by aborting) requests
// above MAX_ALLOC.
unsafe impl std::alloc::GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > MAX_ALLOC {
        // Only this one request is refused: the small allocations of the report below are fine.
        eprintln!(
            "==pema-fuzz== a single allocation of {size} bytes (limit {MAX_ALLOC}) at\n{}",
            std::backtrace::Backtrace::force_capture()
        );
        std::process::abort();
    }
}

#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc;
