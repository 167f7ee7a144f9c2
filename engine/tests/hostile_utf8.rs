//! Every command a client may send before or after AUTH, with a multi-byte UTF-8 character, a
//! truncated one or a byte that is never UTF-8 put in (and swapped in) at every offset of the
//! line: the session answers each with a reply code and goes on (RSET and NOOP still answer),
//! never panics. The 2026 crash (`MAIL MAIL\xc3\x9e@B SMTPUTF8`, a `str` sliced inside a
//! character) is the first case. RFC 5321 §2.4 (commands are ASCII), RFC 6531 §3.4.

use sluice_engine::smtp::auth::Users;
use sluice_engine::smtp::server::{Event, Session, SessionPolicy};
use std::sync::Arc;

/// 2-, 3- and 4-byte characters, a lead byte whose continuation is missing, a lone
/// continuation byte and bytes never in UTF-8.
const INSERTS: &[&[u8]] =
    &[b"\xc3\x9e", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xc3", b"\xe2\x82", b"\x80", b"\xff", b"\xc0\xaf"];

/// Lines of every command that parses an argument, each after what it needs to get that far.
const LINES: &[(&str, &str)] = &[
    ("", "EHLO client.example"),
    ("", "HELO client.example"),
    ("EHLO c\r\n", "MAIL MAIL\u{de}@B     SMTPUTF8 M"),
    ("EHLO c\r\n", "MAIL FROM:<sender@example.com> SIZE=100 SMTPUTF8 BODY=8BITMIME"),
    ("EHLO c\r\n", "MAIL FROM:<sender@example.com> RET=HDRS ENVID=id+2B1"),
    ("EHLO c\r\nMAIL FROM:<a@example.com> SMTPUTF8\r\n", "RCPT TO:<rcpt@example.org> NOTIFY=SUCCESS,FAILURE"),
    ("EHLO c\r\nMAIL FROM:<a@example.com> SMTPUTF8\r\n", "RCPT TO:<rcpt@example.org> ORCPT=rfc822;rcpt+40x"),
    ("EHLO c\r\nMAIL FROM:<a@example.com>\r\n", "RCPT RCPT@B TO:<x@y>"),
    ("EHLO c\r\n", "AUTH PLAIN AGFsaWNlAHMzY3JldA=="),
    ("EHLO c\r\n", "AUTH LOGIN YWxpY2U="),
    ("EHLO c\r\n", "AUTH CRAM-MD5"),
    ("EHLO c\r\nAUTH LOGIN\r\n", "YWxpY2U="),
    ("EHLO c\r\n", "VRFY postmaster@example.com"),
    ("EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n", "BDAT 0 LAST"),
    ("EHLO c\r\n", "BDAT 12 LAST"),
    ("EHLO c\r\n", "STARTTLS"),
    ("EHLO c\r\n", "HELP"),
];

fn users() -> Arc<Users> {
    let text = "smtp-listener 127.0.0.1:25\n<smtp-user alice>\n password s3cret\n</smtp-user>\n";
    Arc::new(Users::from_config(&sluice_config::load("t.conf", text, &mut |_| Err("no".into())).unwrap(), 7))
}

fn policies() -> Vec<SessionPolicy> {
    let base = SessionPolicy { host_name: "mx.test".into(), relay_allowed: true, ..Default::default() };
    vec![
        SessionPolicy { auth: Some(users()), plain_auth_in_clear: true, starttls: true, ..base.clone() },
        SessionPolicy { smtputf8: false, chunking: false, ..base },
    ]
}

/// Feeds `input` as one arrival; returns the session's output, or None when it closed.
fn feed(s: &mut Session, input: &[u8]) -> (Vec<u8>, bool) {
    let mut at = 0;
    let mut closed = false;
    while at < input.len() {
        let (used, event) = s.receive(1_000, &input[at..]);
        at += used;
        match event {
            Some(Event::Message) => {
                s.take_message();
                s.message_stored(true, "Q1");
            }
            Some(Event::StartTls) => s.tls_started(),
            Some(Event::Close) => {
                closed = true;
                break;
            }
            None if used == 0 => break,
            None => {}
        }
    }
    let out = s.output().to_vec();
    s.clear_output();
    (out, closed || s.is_closing())
}

fn every_line_has_a_code(out: &[u8], case: &str) {
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let coded = line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit) && matches!(line[3], b' ' | b'-');
        assert!(coded, "{case}: a reply line without a code: {:?}", String::from_utf8_lossy(line));
    }
}

/// Runs one hostile line after its preamble; the session must answer and go on.
fn check(policy: &SessionPolicy, preamble: &str, line: &[u8], case: &str) {
    let mut s = Session::new(policy.clone(), "192.0.2.7".parse().unwrap(), 1);
    let (greeting, _) = feed(&mut s, b"");
    let _ = greeting;
    s.clear_output();
    let (out, closed) = feed(&mut s, preamble.as_bytes());
    every_line_has_a_code(&out, case);
    if closed {
        return;
    }
    let mut input = line.to_vec();
    input.extend_from_slice(b"\r\n");
    let (out, closed) = feed(&mut s, &input);
    every_line_has_a_code(&out, case);
    if closed {
        // Only BDAT with an unreadable size may end the session (its chunk's end is unknown).
        assert!(String::from_utf8_lossy(&out).contains("BDAT"), "{case}: closed: {}", String::from_utf8_lossy(&out));
        return;
    }
    // A BDAT chunk or an AUTH exchange may take the next line as data: end them first.
    let (out, _) = feed(&mut s, b"*\r\nRSET\r\nNOOP\r\n");
    every_line_has_a_code(&out, case);
    assert!(
        out.ends_with(b"250 2.0.0 OK\r\n") || s.is_closing(),
        "{case}: the session did not go on: {}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn no_command_line_with_non_ascii_bytes_at_any_offset_panics_the_session() {
    let mut cases = 0;
    for policy in policies() {
        for (preamble, line) in LINES {
            let line = line.as_bytes();
            for insert in INSERTS {
                for at in 0..=line.len() {
                    let put_in = [&line[..at], insert, &line[at..]].concat();
                    check(&policy, preamble, &put_in, &format!("{:?} in {:?} at {at}", insert, line));
                    if at < line.len() {
                        let swapped = [&line[..at], insert, &line[at + 1..]].concat();
                        check(&policy, preamble, &swapped, &format!("{:?} for byte {at} of {:?}", insert, line));
                    }
                    cases += 2;
                }
            }
        }
    }
    assert!(cases > 10_000, "{cases} cases");
}

#[test]
fn the_reported_crash_line_gets_a_reply_and_the_session_goes_on() {
    // fuzz/artifacts/smtp_session/crash-eadc3e9f… (37 bytes), as a client sends it.
    for policy in policies() {
        let mut s = Session::new(policy, "192.0.2.7".parse().unwrap(), 1);
        let (out, closed) = feed(&mut s, b"EHLO .\nMAIL MAIL\xc3\x9e@B     SMTPUTF8 M\n");
        assert!(!closed);
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            text.lines()
                .last()
                .is_some_and(|l| l.starts_with("501 5.5.4 Syntax: MAIL FROM:") || l.starts_with("553 5.6.7")),
            "{text}"
        );
        let (out, _) = feed(&mut s, b"NOOP\r\n");
        assert_eq!(out, b"250 2.0.0 OK\r\n");
    }
}
