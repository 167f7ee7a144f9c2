//! The configuration parser: any text loads or fails with file:line, never panics.
//! The check itself is `sluice_config::fuzz_check::config`, which the ordinary test suite also runs on every
//! kept input (`tests/fuzz_regressions.rs`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| sluice_config::fuzz_check::config(input));
