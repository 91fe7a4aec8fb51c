#![no_main]
//! Fuzz target `memory_store`: see `pema_fuzz::targets::memory_store`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pema_fuzz::run(pema_fuzz::targets::memory_store, data));
