//! The SMTP reply parser (what the delivery client reads from remote servers).
//! The check itself is `sluice_engine::fuzz_check::smtp_reply`, which the ordinary test suite also runs on every
//! kept input (`tests/fuzz_regressions.rs`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| sluice_engine::fuzz_check::smtp_reply(input));
