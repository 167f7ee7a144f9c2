//! Messages far larger than the socket buffers, relayed to a real receiver (aiosmtpd) whose
//! receive window is a few KiB, so every send of the body comes back short many times: 1, 10
//! and 50 MB in plain text and over STARTTLS arrive byte for byte, each exactly once. (Issue 18:
//! a message over about 5 MB used to be streamed without end to a plain-text receiver, the
//! send resuming from the wrong offset after the second short send.)

mod common;
use common::*;
use std::time::Duration;

const MB: usize = 1 << 20;

/// A message of about `size` bytes whose every line is numbered (so a skipped, repeated or
/// reordered piece shows), with lines that begin with a dot (dot-stuffing both ways).
fn message(tag: &str, size: usize) -> Vec<u8> {
    let mut m = format!("From: big@src.test\r\nTo: someone\r\nSubject: {tag}\r\n\r\n").into_bytes();
    let mut i = 0u64;
    while m.len() < size {
        let lead = if i % 97 == 0 { "." } else { "" };
        // A cheap pseudo-random tail: line numbers alone would repeat their shape.
        let noise = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) as u32;
        m.extend_from_slice(format!("{lead}{tag} line {i:08} {noise:08x} {}\r\n", "y".repeat(48)).as_bytes());
        i += 1;
    }
    m
}

#[test]
fn large_messages_arrive_whole_through_a_small_receive_window() {
    let dir = TempDir::new("large");
    let (cert, key) = self_signed(dir.path(), "rcv.test");
    let plain = PyReceiver::start_with(&["--rcvbuf", "4096"]);
    let tls = PyReceiver::start_with(&["--rcvbuf", "4096", "--tls", &cert, &key]);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n max-message-size 100M\n</source>\n\
             <domain plain.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <domain tls.test>\n smtp-hosts [127.0.0.1]:{}\n require-starttls yes\n</domain>\n",
            plain.addr.port(),
            tls.addr.port()
        ),
        None,
    );
    let sizes = [1, 10, 50];
    let mut sent = Vec::new();
    for size in sizes {
        for domain in ["plain.test", "tls.test"] {
            let tag = format!("{domain}-{size}MB");
            let m = message(&tag, size * MB);
            let rcpt = format!("r@{domain}");
            assert_eq!(smtplib_send(&relay, "127.0.0.1", "s@src.test", &[&rcpt], &m), "sent", "{tag}");
            sent.push((tag, m));
        }
    }
    for (receiver, domain) in [(&plain, "plain.test"), (&tls, "tls.test")] {
        let files = wait_for(&format!("3 messages at {domain}"), Duration::from_secs(120), || {
            let f = receiver.files();
            (f.len() >= sizes.len()).then_some(f)
        });
        // Nothing more comes (a resent or endless body would show as another file or a
        // longer one).
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(receiver.files().len(), sizes.len(), "each message once at {domain}");
        for f in files {
            let got = std::fs::read(&f).unwrap();
            let subject = String::from_utf8_lossy(&got[..got.len().min(4096)]).into_owned();
            let (tag, original) = sent
                .iter()
                .find(|(tag, _)| subject.contains(&format!("Subject: {tag}\r\n")))
                .unwrap_or_else(|| panic!("an expected message at {domain}: {}", &subject[..200.min(subject.len())]));
            // sluice adds its Received header on top; the rest is the client's message exactly.
            assert!(got.starts_with(b"Received: from "), "{tag}");
            assert_eq!(got.len() - original.len(), got.windows(15).position(|w| w == b"From: big@src.t").unwrap());
            assert!(got.ends_with(original), "{tag}: {} bytes arrived for {}", got.len(), original.len());
        }
    }
    let delivered = relay.wait_rows("d", 6, Duration::from_secs(10));
    assert_eq!(delivered.len(), 6);
    let tls_rows = delivered.iter().filter(|r| r["rcpt"].ends_with("@tls.test"));
    assert!(tls_rows.clone().count() == 3 && tls_rows.clone().all(|r| r["dlvTlsProtocol"].starts_with("TLS")));
    assert!(relay.rows_of("t").is_empty(), "no deferral: {:?}", relay.rows_of("t"));
}
