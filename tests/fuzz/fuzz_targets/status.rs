#![no_main]
//! Fuzz target `status`: see `margo_tests::fuzz_entries::status` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::status(data));
