#![no_main]
//! Fuzz target `identity`: see `margo_tests::fuzz_entries::identity` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::identity(data));
