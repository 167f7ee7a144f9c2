//! The report parsers: ARF, XARF (JSON) and DSN (RFC 3464) on arbitrary messages.
//! The check itself is `sluice_engine::fuzz_check::reports`, which the ordinary test suite also runs on every
//! kept input (`tests/fuzz_regressions.rs`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| sluice_engine::fuzz_check::reports(input));
