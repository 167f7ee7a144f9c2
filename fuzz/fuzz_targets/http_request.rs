//! The management API's query strings and injection bodies.
//! The check itself is `sluice_engine::fuzz_check::http_request`, which the ordinary test suite also runs on every
//! kept input (`tests/fuzz_regressions.rs`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| sluice_engine::fuzz_check::http_request(input));
