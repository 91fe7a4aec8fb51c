#![no_main]
//! Fuzz target `pairs`: see `pema_fuzz::targets::pairs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pema_fuzz::run(pema_fuzz::targets::pairs, data));
