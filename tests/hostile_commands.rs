//! Hostile command lines against a running sluice (issue 27: one pre-auth line, `MAIL
//! MAIL\xc3\x9e@B SMTPUTF8`, panicked the shard holding the connection, and a dead shard's
//! listener kept accepting connections nobody greeted). Every command that takes an argument
//! — EHLO, HELO, MAIL, RCPT, AUTH and its responses, VRFY, BDAT — is sent with a multi-byte
//! character, a truncated one and bytes never in UTF-8 put in at every offset, over both
//! shards. Afterwards every new connection is greeted, mail still relays to a real receiver
//! (Postfix's smtp-sink), and the log has no panic.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const INSERTS: &[&[u8]] = &[b"\xc3\x9e", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xc3", b"\x80", b"\xff"];

/// (what gets the session that far, the hostile line's template).
const LINES: &[(&str, &str)] = &[
    ("", "EHLO client.example"),
    ("", "HELO client.example"),
    ("EHLO c\r\n", "MAIL MAIL\u{de}@B     SMTPUTF8 M"),
    ("EHLO c\r\n", "MAIL FROM:<sender@example.com> SIZE=10 SMTPUTF8"),
    ("EHLO c\r\nMAIL FROM:<a@example.com> SMTPUTF8\r\n", "RCPT TO:<rcpt@example.org> NOTIFY=FAILURE"),
    ("EHLO c\r\n", "AUTH PLAIN AGFsaWNlAHMzY3JldA=="),
    ("EHLO c\r\nAUTH LOGIN\r\n", "YWxpY2U="),
    ("EHLO c\r\n", "VRFY postmaster@example.com"),
    ("EHLO c\r\n", "BDAT 12 LAST"),
];

/// A raw client: bytes out, bytes in (replies may hold whatever the client sent).
struct Raw(TcpStream);

impl Raw {
    fn connect(addr: SocketAddr) -> (Raw, Vec<u8>) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = Raw(s);
        let greeting = r.read_reply();
        (r, greeting)
    }

    /// Reads until a final reply line (`NNN ` ...CRLF) ends the input, or the server closes.
    fn read_reply(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let last_line_start =
                got[..got.len().saturating_sub(2)].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let last = &got[last_line_start..];
            if got.ends_with(b"\r\n") && last.len() >= 4 && last[3] == b' ' {
                return got;
            }
            match self.0.read(&mut buf) {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Sends `line` and CRLF; returns the reply (empty: the server closed).
    fn line(&mut self, line: &[u8]) -> Vec<u8> {
        if self.0.write_all(&[line, b"\r\n"].concat()).is_err() {
            return Vec::new();
        }
        self.read_reply()
    }
}

fn hostile_lines() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (preamble, template) in LINES {
        let t = template.as_bytes();
        for insert in INSERTS {
            for at in 0..=t.len() {
                out.push((*preamble, [&t[..at], insert, &t[at..]].concat()));
            }
        }
    }
    out
}

#[test]
fn no_command_line_takes_a_shard_down() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n allow-unencrypted-plain-auth yes\n</source>\n\
             <smtp-user alice>\n password s3cret\n</smtp-user>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            sink.addr.port()
        ),
        Some(2),
    );
    let lines = hostile_lines();
    assert!(lines.len() > 1000, "{} lines", lines.len());
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut conn: Option<Raw> = None;
    let mut connections = 0;
    for (i, (preamble, line)) in lines.iter().enumerate() {
        assert!(Instant::now() < deadline, "bounded: {i} of {} lines in time", lines.len());
        // A fresh connection every few lines (and whenever the server closed one), so the
        // lines land on both shards (SO_REUSEPORT spreads connections).
        if conn.is_none() || i % 8 == 0 {
            let (c, greeting) = Raw::connect(relay.addr());
            assert!(greeting.starts_with(b"220"), "line {i}: no greeting: {:?}", String::from_utf8_lossy(&greeting));
            conn = Some(c);
            connections += 1;
        }
        let c = conn.as_mut().expect("connected");
        for p in preamble.split_terminator("\r\n") {
            c.line(p.as_bytes());
        }
        let reply = c.line(line);
        let text = String::from_utf8_lossy(&reply).into_owned();
        let coded = reply.len() >= 4 && reply[..3].iter().all(u8::is_ascii_digit);
        if !coded || reply.starts_with(b"421") || line.starts_with(b"BDAT") {
            // Closed (too many errors, or a BDAT size that cannot be read): next line, new
            // connection. A panic would also end here, so the checks below count.
            assert!(reply.is_empty() || coded, "line {i}: a reply without a code: {text:?}");
            conn = None;
            continue;
        }
        // End an AUTH exchange or a transaction the line began, so the next starts clean.
        let reset = c.line(b"*");
        let reset2 = c.line(b"RSET");
        if reset.is_empty() || reset2.is_empty() {
            conn = None;
        }
    }
    assert!(connections > 100, "{connections} connections");
    // Every new connection is greeted: both shards are alive.
    for i in 0..40 {
        let (mut c, greeting) = Raw::connect(relay.addr());
        assert!(
            greeting.starts_with(b"220"),
            "connection {i} after the hostile lines: {:?}",
            String::from_utf8_lossy(&greeting)
        );
        c.line(b"QUIT");
    }
    // Mail still relays, end to end.
    for i in 0..20 {
        let (mut t, greeting) = Talk::connect(relay.addr());
        assert!(greeting.starts_with("220"));
        assert!(t.cmd("EHLO after.example").starts_with("250"));
        assert!(t.cmd("MAIL FROM:<s@example.com>").starts_with("250"));
        assert!(t.cmd(&format!("RCPT TO:<r{i}@dest.example>")).starts_with("250"));
        assert!(t.cmd("DATA").starts_with("354"));
        t.send(format!("Subject: after {i}\r\n\r\nstill relaying\r\n.\r\n").as_bytes());
        assert!(t.reply().starts_with("250"), "message {i}");
        t.cmd("QUIT");
    }
    wait_for("20 messages at the sink", Duration::from_secs(60), || (sink.messages().len() >= 20).then_some(()));
    let log = relay.log();
    assert!(!log.contains("panicked"), "a panic in the log:\n{}", tail(&log, 40));
    assert!(!log.contains("handling a client's input panicked"), "{}", tail(&log, 40));
}
