//! The DATA receiver: any split of the input gives the same content and the same end as the
//! whole input at once (differential), only CRLF.CRLF ends it, and with bare LF normalized
//! the content has no bare LF left.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_engine::smtp::data::DataScanner;

type Scanned = (Vec<u8>, Option<usize>, bool, bool, bool);

fn scan(input: &[u8], chunk: usize, normalize: bool) -> Scanned {
    let mut s = DataScanner::new(normalize);
    let mut out = Vec::new();
    let mut at = 0;
    for piece in input.chunks(chunk.max(1)) {
        let (used, done) = s.scan(piece, |b| out.extend_from_slice(b));
        at += used;
        if done {
            return (out, Some(at), s.bare_newline(), s.smuggling, s.nul);
        }
    }
    (out, None, s.bare_newline(), s.smuggling, s.nul)
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, bytes)) = input.split_first() else { return };
    for normalize in [false, true] {
        let whole = scan(bytes, bytes.len(), normalize);
        let pieces = scan(bytes, split as usize % 17 + 1, normalize);
        assert_eq!(whole, pieces, "chunking changed the result");
        if let Some(end) = whole.1 {
            assert!(bytes[..end].ends_with(b".\r\n"), "ended without a terminator");
            assert!(end == 3 || bytes[..end].ends_with(b"\r\n.\r\n"), "ended mid-line");
        }
        if normalize {
            let content = &whole.0;
            let bare_lf = content.iter().enumerate().any(|(i, b)| *b == b'\n' && (i == 0 || content[i - 1] != b'\r'));
            assert!(!bare_lf, "a bare LF left after normalizing");
        }
    }
});
