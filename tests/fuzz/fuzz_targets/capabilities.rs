#![no_main]
//! Fuzz target `capabilities`: see `margo_tests::fuzz_entries::capabilities` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::capabilities(data));
