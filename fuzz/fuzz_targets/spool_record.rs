//! The spool's record decoder and segment/journal scanners (what recovery reads after a crash).
//! The check itself is `sluice_spool::fuzz_check::spool_record`, which the ordinary test suite also runs on every
//! kept input (`tests/fuzz_regressions.rs`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| sluice_spool::fuzz_check::spool_record(input));
