//! DNS answers: any bytes a resolver may hand back, decoded as a DNS message by hickory (the
//! resolver sluice uses), then its MX records through sluice's plan (null MX, levels).
//! The check is `sluice_engine::fuzz_check::mx_message`, which the ordinary test suite also
//! runs on every kept input (`tests/fuzz_regressions.rs`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    sluice_engine::fuzz_check::mx_message(input);
});
