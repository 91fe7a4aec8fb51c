#![no_main]
//! Fuzz target `gguf`: see `pema_fuzz::targets::gguf`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pema_fuzz::run(pema_fuzz::targets::gguf, data));
