#![no_main]
//! Fuzz target `tokenizer`: see `pema_fuzz::targets::tokenizer`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pema_fuzz::run(pema_fuzz::targets::tokenizer, data));
