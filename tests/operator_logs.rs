//! What the operator is told (issue 22): at the default log level, one line for each refusal
//! and failure on the receiving side (relaying denied, failed AUTH, a NUL in the data, a
//! message too big, a client gone in the middle of its message); a refused connection names
//! the system's reason; a timeout after the end of data warns that the message may be
//! delivered twice (as Postfix says); an idle connection the receiver closes after a
//! successful delivery is not logged as a failure.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

/// A receiver that takes every message and closes the connection right after its 250 or,
/// `slow`, never answers the end of data.
fn receiver(slow: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut lines = BufReader::new(stream);
                let _ = out.write_all(b"220 rx.test ESMTP\r\n");
                let mut line = String::new();
                while lines.read_line(&mut line).unwrap_or(0) > 0 {
                    let upper = line.to_ascii_uppercase();
                    if upper.starts_with("DATA") {
                        let _ = out.write_all(b"354 go\r\n");
                        let mut body = String::new();
                        while lines.read_line(&mut body).unwrap_or(0) > 0 && !body.ends_with("\r\n.\r\n") {}
                        if slow {
                            std::thread::sleep(Duration::from_secs(5));
                            return;
                        }
                        let _ = out.write_all(b"250 2.0.0 queued\r\n");
                        std::thread::sleep(Duration::from_millis(200));
                        return; // closes the idle connection
                    }
                    let reply: &[u8] = if upper.starts_with("EHLO") { b"250 rx.test\r\n" } else { b"250 ok\r\n" };
                    let _ = out.write_all(reply);
                    line.clear();
                }
            });
        }
    });
    port
}

#[test]
fn refusals_and_failures_are_logged_at_the_default_level() {
    let (rx, slow) = (receiver(false), receiver(true));
    let closed = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "relay-domain ok.test\nrelay-domain slow.test\nrelay-domain closed.test\n\
             <source 127.0.0.1>\n max-message-size 2K\n allow-auth yes\n allow-unencrypted-plain-auth yes\n</source>\n\
             <smtp-user alice>\n password s3cret\n</smtp-user>\n\
             <domain ok.test>\n smtp-hosts [127.0.0.1]:{rx}\n</domain>\n\
             <domain slow.test>\n smtp-hosts [127.0.0.1]:{slow}\n smtp-data-termination-timeout 1s\n retry-after 1h\n</domain>\n\
             <domain closed.test>\n smtp-hosts [127.0.0.1]:{closed}\n</domain>\n"
        ),
        Some(1),
    );
    let (mut t, _) = Talk::connect(relay.addr());
    assert!(t.cmd("EHLO c.example").starts_with("250"));
    assert!(t.cmd("AUTH PLAIN AGFsaWNlAHdyb25n").starts_with("535"), "wrong password");
    assert!(t.cmd("MAIL FROM:<s@src.example>").starts_with("250"));
    assert!(t.cmd("RCPT TO:<r@elsewhere.example>").starts_with("550"), "relaying denied");
    assert!(t.cmd("RCPT TO:<r@ok.test>").starts_with("250"));
    assert!(t.cmd("DATA").starts_with("354"));
    t.send(b"Subject: nul\r\n\r\na\0b\r\n.\r\n");
    assert!(t.reply().starts_with("550"), "a NUL refused");
    assert!(t.cmd("MAIL FROM:<s@src.example> SIZE=999999").starts_with("552"), "too big");
    // A client gone in the middle of its message.
    let (mut gone, _) = Talk::connect(relay.addr());
    assert!(gone.cmd("EHLO c.example").starts_with("250"));
    assert!(gone.cmd("MAIL FROM:<s@src.example>").starts_with("250"));
    assert!(gone.cmd("RCPT TO:<r@ok.test>").starts_with("250"));
    assert!(gone.cmd("DATA").starts_with("354"));
    gone.send(b"Subject: half\r\n\r\nhalf a message");
    drop(gone);
    // Deliveries: one fine (the receiver then closes the idle connection), one that never
    // gets its final reply, one to a port nobody listens on.
    swaks_send(&relay, "fine@ok.test");
    swaks_send(&relay, "slow@slow.test");
    swaks_send(&relay, "nobody@closed.test");
    let row = |kind: &str, rcpt: &str| relay.rows_of(kind).into_iter().find(|r| r["rcpt"] == rcpt);
    wait_for("fine@ delivered", Duration::from_secs(20), || row("d", "fine@ok.test"));
    let t_closed = wait_for("nobody@ deferred", Duration::from_secs(20), || row("t", "nobody@closed.test"));
    assert!(t_closed["dsnDiag"].contains("Connection refused"), "the system's reason: {t_closed:?}");
    let t_slow = wait_for("slow@ deferred", Duration::from_secs(20), || row("t", "slow@slow.test"));
    assert!(t_slow["dsnDiag"].contains("end of data"), "{t_slow:?}");
    std::thread::sleep(Duration::from_millis(500));
    let log = relay.log();
    let has =
        |what: &str| log.lines().any(|l| l.contains(" INFO ") && l.contains("inbound refused") && l.contains(what));
    for what in
        ["535 5.7.8", "550 5.7.1 Relaying denied", "550 5.6.0", "552 5.3.4", "client gone in the middle of its message"]
    {
        assert!(has(what), "an info line for {what}:\n{}", tail(&log, 40));
    }
    assert!(
        log.lines().any(|l| l.contains(" WARN ") && l.contains("may be delivered more than once")),
        "the duplicate warning:\n{}",
        tail(&log, 40)
    );
    assert!(
        !log.lines().any(|l| l.contains("connection failed") && l.contains("ok.test")),
        "no false 'connection failed' after a delivery:\n{}",
        tail(&log, 40)
    );
}
