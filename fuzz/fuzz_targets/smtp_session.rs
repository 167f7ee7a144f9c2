//! The inbound SMTP session (command parser, DATA receiver, state machine) fed arbitrary
//! bytes in arbitrary pieces, as a client may send them: it never panics, never answers
//! without a reply code, and never hands over a message whose data holds a bare CR/LF or NUL.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_engine::smtp::server::{Event, Session, SessionPolicy};

fuzz_target!(|input: &[u8]| {
    let Some((&split, bytes)) = input.split_first() else { return };
    let policy = SessionPolicy { relay_allowed: true, ..SessionPolicy::default() };
    let mut s = Session::new(policy, "192.0.2.1".parse().unwrap(), 1);
    let chunk = (split as usize % 64) + 1;
    for piece in bytes.chunks(chunk) {
        let mut at = 0;
        while at < piece.len() {
            let (used, event) = s.receive(1_795_000_000_000, &piece[at..]);
            at += used;
            match event {
                Some(Event::Message) => {
                    let m = s.take_message();
                    assert!(!m.recipients.is_empty());
                    assert!(!m.data.contains(&0), "a NUL got through");
                    for (i, b) in m.data.iter().enumerate() {
                        if *b == b'\n' {
                            assert!(i > 0 && m.data[i - 1] == b'\r', "a bare LF got through");
                        }
                    }
                    s.message_stored(true, "fuzz");
                }
                Some(Event::StartTls) | Some(Event::Close) => return,
                None if used == 0 => break,
                None => {}
            }
        }
        let out = s.output().to_vec();
        s.clear_output();
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            assert!(line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit), "{:?}", String::from_utf8_lossy(line));
        }
        if s.is_closing() {
            return;
        }
    }
});
