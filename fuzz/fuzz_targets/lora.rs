#![no_main]
//! Fuzz target `lora`: see `pema_fuzz::targets::lora`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pema_fuzz::run(pema_fuzz::targets::lora, data));
