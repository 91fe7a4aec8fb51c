#![no_main]
//! Fuzz target `memory_manifest`: see `pema_fuzz::targets::memory_manifest`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pema_fuzz::run(pema_fuzz::targets::memory_manifest, data));
