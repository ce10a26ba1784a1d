#![no_main]
//! Fuzz target `http_sig`: see `margo_tests::fuzz_entries::http_sig` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::http_sig(data));
