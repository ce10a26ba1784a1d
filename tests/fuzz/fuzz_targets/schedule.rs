#![no_main]
//! Fuzz target `schedule`: see `margo_tests::fuzz_entries::schedule` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::schedule(data));
