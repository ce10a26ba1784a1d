#![no_main]
//! Fuzz target `envelope_body`: see `margo_tests::fuzz_entries::envelope_body` and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| margo_tests::fuzz_entries::envelope_body(data));
