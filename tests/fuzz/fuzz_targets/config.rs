#![no_main]
//! Fuzz target `config`: see `margo_tests::fuzz_entries::config` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::config(data));
