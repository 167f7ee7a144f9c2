//! Receivers that offer STARTTLS and then fail the handshake (issue 22): garbage after the
//! 220, or the connection closed. With opportunistic TLS (`use-starttls`, the default) the try
//! is deferred with a reply that names the TLS failure, and the next try to that host goes in
//! plain text and is delivered, as Postfix's `smtp_tls_security_level = may` does; with
//! `require-starttls` the mail waits. The receivers are scripted in this test.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy)]
enum Breaks {
    /// Bytes that are no TLS record after the 220.
    Garbage,
    /// The connection closed right after the 220.
    Close,
    /// STARTTLS refused (`454`): the session goes on in plain text at once.
    Refuse,
}

#[derive(Default)]
struct Seen {
    starttls: AtomicUsize,
    plain_messages: AtomicUsize,
}

/// A receiver on 127.0.0.1 that offers STARTTLS and breaks the handshake as told.
fn receiver(breaks: Breaks) -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || serve(stream, breaks, &s));
        }
    });
    (port, seen)
}

fn serve(stream: TcpStream, breaks: Breaks, seen: &Seen) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut lines = BufReader::new(stream);
    let _ = out.write_all(b"220 rx.test ESMTP\r\n");
    let mut line = String::new();
    while lines.read_line(&mut line).unwrap_or(0) > 0 {
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-rx.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
            "STAR" if matches!(breaks, Breaks::Refuse) => {
                seen.starttls.fetch_add(1, Ordering::SeqCst);
                b"454 4.7.0 TLS not available due to temporary reason\r\n"
            }
            "STAR" => {
                seen.starttls.fetch_add(1, Ordering::SeqCst);
                let _ = out.write_all(b"220 2.0.0 go ahead\r\n");
                if let Breaks::Garbage = breaks {
                    let _ = out.write_all(b"this is not a TLS record at all\r\n");
                    std::thread::sleep(Duration::from_secs(2));
                }
                return;
            }
            "DATA" => {
                let _ = out.write_all(b"354 go\r\n");
                let mut body = String::new();
                while lines.read_line(&mut body).unwrap_or(0) > 0 && !body.ends_with("\r\n.\r\n") {}
                seen.plain_messages.fetch_add(1, Ordering::SeqCst);
                b"250 2.0.0 queued\r\n"
            }
            "QUIT" => {
                let _ = out.write_all(b"221 bye\r\n");
                return;
            }
            _ => b"250 2.0.0 ok\r\n",
        };
        if out.write_all(reply).is_err() {
            return;
        }
        line.clear();
    }
}

#[test]
fn a_failed_starttls_handshake_is_followed_by_a_plain_text_try() {
    let (garbage_port, garbage) = receiver(Breaks::Garbage);
    let (close_port, close) = receiver(Breaks::Close);
    let (required_port, required) = receiver(Breaks::Close);
    let (refuse_port, refuse) = receiver(Breaks::Refuse);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n retry-after 1s\n</domain>\n\
             <domain garbage.test>\n smtp-hosts [127.0.0.1]:{garbage_port}\n</domain>\n\
             <domain close.test>\n smtp-hosts [127.0.0.1]:{close_port}\n</domain>\n\
             <domain required.test>\n smtp-hosts [127.0.0.1]:{required_port}\n require-starttls yes\n</domain>\n\
             <domain refuse.test>\n smtp-hosts [127.0.0.1]:{refuse_port}\n</domain>\n"
        ),
        Some(2),
    );
    for rcpt in ["a@garbage.test", "b@close.test", "c@required.test", "e@refuse.test"] {
        swaks_send(&relay, rcpt);
    }
    let row = |kind: &str, rcpt: &str| relay.rows_of(kind).into_iter().find(|r| r["rcpt"] == rcpt);
    for (rcpt, seen) in [("a@garbage.test", &garbage), ("b@close.test", &close)] {
        let t = wait_for(&format!("{rcpt}'s first try deferred"), Duration::from_secs(30), || row("t", rcpt));
        assert!(t["dsnStatus"].starts_with("4.7.5"), "{rcpt}: {t:?}");
        assert!(t["dsnDiag"].contains("TLS handshake"), "the TLS failure is named: {t:?}");
        assert!(t["dsnDiag"].contains("without TLS"), "{t:?}");
        wait_for(&format!("{rcpt} delivered in plain text"), Duration::from_secs(30), || row("d", rcpt));
        assert_eq!(seen.starttls.load(Ordering::SeqCst), 1, "{rcpt}: STARTTLS tried once, then plain text");
        assert_eq!(seen.plain_messages.load(Ordering::SeqCst), 1, "{rcpt}");
    }
    // require-starttls: never in plain text.
    let t = wait_for("the required-TLS mail deferred", Duration::from_secs(30), || row("t", "c@required.test"));
    assert!(t["dsnDiag"].contains("TLS handshake") && t["dsnDiag"].contains("require-starttls"), "{t:?}");
    std::thread::sleep(Duration::from_secs(4));
    assert!(row("d", "c@required.test").is_none());
    assert_eq!(required.plain_messages.load(Ordering::SeqCst), 0);
    assert!(required.starttls.load(Ordering::SeqCst) >= 2, "each retry tries TLS again");
    // A 454 to STARTTLS: plain text on the same session, said in the log.
    wait_for("e@ delivered in plain text", Duration::from_secs(30), || row("d", "e@refuse.test"));
    assert!(row("t", "e@refuse.test").is_none(), "no deferral");
    assert_eq!(refuse.plain_messages.load(Ordering::SeqCst), 1);
    let log = relay.log();
    assert!(log.contains("STARTTLS handshake failed"), "{}", tail(&log, 20));
    assert!(log.contains("STARTTLS refused by the receiver: going on without TLS"), "{}", tail(&log, 20));
}
