#![no_main]
//! Fuzz target `adapter`: see `pema_fuzz::targets::adapter`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pema_fuzz::run(pema_fuzz::targets::adapter, data));
