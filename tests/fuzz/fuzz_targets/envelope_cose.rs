#![no_main]
//! Fuzz target `envelope_cose`: see `margo_tests::fuzz_entries::envelope_cose` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::envelope_cose(data));
