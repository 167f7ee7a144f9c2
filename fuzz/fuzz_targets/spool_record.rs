//! The spool's record decoder and segment/journal scanners (what recovery reads after a
//! crash, torn writes included): no panic, offsets in bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_spool::codec::{decode_message, Decoded};
use sluice_spool::recover::{scan_journal, scan_segment};

fuzz_target!(|input: &[u8]| {
    if let Decoded::Record(view, len) = decode_message(input) {
        assert!(len <= input.len());
        assert!(!view.envelope.recipients.is_empty());
    }
    if let Ok(Some(seg)) = scan_segment(input) {
        for m in &seg.messages {
            assert!((m.offset as usize) < input.len());
        }
    }
    let _ = scan_journal(input);
});
