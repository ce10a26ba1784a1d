#![no_main]
//! Fuzz target `bundle`: see `margo_tests::fuzz_entries::bundle` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::bundle(data));
