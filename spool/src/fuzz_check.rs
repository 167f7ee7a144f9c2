//! The check the `spool_record` fuzz target runs on each input, here so that the ordinary
//! test suite replays every kept input through the same code (`tests/fuzz_regressions.rs`).

use crate::codec::{decode_message, Decoded};
use crate::recover::{scan_journal, scan_segment};

/// The record decoder and segment/journal scanners (what recovery reads after a crash, torn
/// writes included): no panic, offsets in bounds.
pub fn spool_record(input: &[u8]) {
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
}
