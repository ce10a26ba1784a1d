#![no_main]
//! Fuzz target `deployment_yaml`: see `margo_tests::fuzz_entries::deployment_yaml` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::deployment_yaml(data));
