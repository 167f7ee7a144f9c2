//! The delivery client driven by whatever a receiver answers, in pieces.
//! The check itself is `sluice_engine::fuzz_check::smtp_client`, which the ordinary test suite also runs on every
//! kept input (`tests/fuzz_regressions.rs`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| sluice_engine::fuzz_check::smtp_client(input));
