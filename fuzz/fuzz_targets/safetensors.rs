#![no_main]
//! Fuzz target `safetensors`: see `pema_fuzz::targets::safetensors`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pema_fuzz::run(pema_fuzz::targets::safetensors, data));
