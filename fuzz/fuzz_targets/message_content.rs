//! Header rules, the From domain, X-DKIM-Options, 8-bit/long-line conversion and dot-stuffing on any message.
//! The check itself is `sluice_engine::fuzz_check::message_content`, which the ordinary test suite also runs on every
//! kept input (`tests/fuzz_regressions.rs`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| sluice_engine::fuzz_check::message_content(input));
