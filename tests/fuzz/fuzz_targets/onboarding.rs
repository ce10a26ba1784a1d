#![no_main]
//! Fuzz target `onboarding`: see `margo_tests::fuzz_entries::onboarding` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::onboarding(data));
