#![no_main]
//! Fuzz target `inspect`: see `margo_tests::fuzz_entries::inspect` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::inspect(data));
