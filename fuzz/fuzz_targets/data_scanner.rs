//! The DATA receiver: any split of the input gives what the whole input gives.
//! The check itself is `sluice_engine::fuzz_check::data_scanner`, which the ordinary test suite also runs on every
//! kept input (`tests/fuzz_regressions.rs`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| sluice_engine::fuzz_check::data_scanner(input));
