#![no_main]
//! Fuzz target `manifest_json`: see `margo_tests::fuzz_entries::manifest_json` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::manifest_json(data));
