//! DNS answers: any bytes a resolver may hand back, decoded as a DNS message by hickory (the
//! resolver sluice uses), then its MX records through sluice's plan (null MX, levels).
//! The check is `sluice_engine::fuzz_check::mx_answer`, which the ordinary test suite also
//! runs on every kept input (`tests/fuzz_regressions.rs`, with the same decoding).
#![no_main]
use hickory_proto::op::Message;
use hickory_proto::rr::RData;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(message) = Message::from_vec(input) else { return };
    let records: Vec<(u16, String)> = message
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            Some(RData::MX(mx)) => Some((mx.preference(), mx.exchange().to_utf8())),
            _ => None,
        })
        .collect();
    sluice_engine::fuzz_check::mx_answer(&records);
});
