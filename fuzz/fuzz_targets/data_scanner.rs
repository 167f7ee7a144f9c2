//! The DATA receiver: any split of the input gives the same content and the same end as the
//! whole input at once (differential), and only CRLF.CRLF ends it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_engine::smtp::data::DataScanner;

fn scan(input: &[u8], chunk: usize) -> (Vec<u8>, Option<usize>, bool, bool) {
    let mut s = DataScanner::default();
    let mut out = Vec::new();
    let mut at = 0;
    for piece in input.chunks(chunk.max(1)) {
        let (used, done) = s.scan(piece, |b| out.extend_from_slice(b));
        at += used;
        if done {
            return (out, Some(at), s.bare_newline, s.nul);
        }
    }
    (out, None, s.bare_newline, s.nul)
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, bytes)) = input.split_first() else { return };
    let whole = scan(bytes, bytes.len());
    let pieces = scan(bytes, split as usize % 17 + 1);
    assert_eq!(whole, pieces, "chunking changed the result");
    if let Some(end) = whole.1 {
        assert!(bytes[..end].ends_with(b".\r\n"), "ended without a terminator");
        assert!(end == 3 || bytes[..end].ends_with(b"\r\n.\r\n"), "ended mid-line");
    }
});
