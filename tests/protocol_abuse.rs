//! Hostile SMTP input against the running relay, each case named by the rule or the published
//! attack it checks. What must hold: only CRLF.CRLF ends a message (RFC 5321 §4.1.1.4), so no
//! end-of-data variant can smuggle a second message (SMTP smuggling, SEC Consult 2023,
//! CVE-2023-51764/51765/51766); a message with bare CR or LF is refused whole (RFC 5321 §2.3.8);
//! broken commands get 5xx and a client that keeps sending them is disconnected; nothing
//! refused is queued, recorded or delivered.

mod common;
use common::*;
use std::time::Duration;

const SMUGGLED: &str = "MAIL FROM:<smuggler@evil.test>\r\nRCPT TO:<victim@sink.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n";

fn relay_with_sink() -> (Relay, SmtpSink) {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            sink.addr.port()
        ),
        Some(2),
    );
    (relay, sink)
}

/// Opens a session ready for DATA content to `rcpt`.
fn in_data(relay: &Relay, rcpt: &str) -> Talk {
    let (mut t, greeting) = Talk::connect(relay.addr());
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(t.cmd("EHLO abuse.test").starts_with("250"));
    assert!(t.cmd("MAIL FROM:<sender@src.test>").starts_with("250"));
    assert!(t.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(t.cmd("DATA").starts_with("354"));
    t
}

/// Sends unknown commands until the server stops answering 500: it must say 421 and close.
fn flood_until_closed(t: &mut Talk) {
    let mut last = String::new();
    for _ in 0..20 {
        last = t.cmd("XYZZY");
        if !last.starts_with("500") {
            break;
        }
    }
    assert!(last.starts_with("421"), "disconnected after an error flood: {last}");
    assert_eq!(t.rest(), "", "the server closed the connection");
}

#[test]
fn no_end_of_data_variant_smuggles_a_second_message() {
    let (relay, sink) = relay_with_sink();
    // Each fake terminator, then a whole second transaction, then the real end (CRLF.CRLF).
    let variants: &[(&str, &str)] = &[
        ("\n.\n", "bare LF dot bare LF (Postfix CVE-2023-51764)"),
        ("\n.\r\n", "bare LF dot CRLF (Sendmail CVE-2023-51765)"),
        ("\r.\r\n", "bare CR dot CRLF"),
        ("\r\n.\r", "CRLF dot bare CR (Cisco/Exchange variant)"),
        ("\r\n.\n", "CRLF dot bare LF (Exim CVE-2023-51766)"),
        ("\r.\r", "bare CR dot bare CR"),
        ("\r.\n", "bare CR dot bare LF"),
        ("\n.\r", "bare LF dot bare CR"),
        ("\r\n\x00.\r\n", "NUL before the dot"),
    ];
    for (i, (fake, name)) in variants.iter().enumerate() {
        let mut t = in_data(&relay, &format!("carrier{i}@sink.test"));
        t.send(format!("Subject: carrier {i}\r\n\r\nfirst line{fake}{SMUGGLED}.\r\n").as_bytes());
        let reply = t.reply();
        // One reply for the whole input: the message is refused for its bare CR/LF (or NUL);
        // never a 250 for a smuggled transaction.
        assert!(reply.starts_with("550 5.6.0") || reply.starts_with("554"), "{name}: {reply}");
        assert!(!reply.contains("\r\n2"), "{name}: exactly one reply: {reply}");
        assert!(t.cmd("NOOP").starts_with("250"), "{name}: the session goes on in step");
        assert!(t.cmd("QUIT").starts_with("221"), "{name}");
    }
    // A clean message still goes through on the same relay.
    let mut t = in_data(&relay, "clean@sink.test");
    t.send(b"Subject: clean\r\n\r\n.. a stuffed dot line\r\nbody\r\n.\r\n");
    assert!(t.reply().starts_with("250"));
    t.cmd("QUIT");
    relay.wait_rows("d", 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let received: Vec<String> = relay.rows_of("r").iter().map(|r| r["rcpt"].clone()).collect();
    assert_eq!(received, vec!["clean@sink.test".to_string()], "nothing refused was queued");
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert!(!msgs[0].contains("smuggled") && msgs[0].contains("\n. a stuffed dot line"), "{}", msgs[0]);
}

#[test]
fn broken_commands_get_5xx_and_persistent_offenders_are_disconnected() {
    let (relay, _sink) = relay_with_sink();
    let (mut t, _) = Talk::connect(relay.addr());
    assert!(t.cmd("EHLO abuse.test").starts_with("250"));
    // RFC 5321 §4.5.3.1.4: a command line is at most 512 octets.
    let long = format!("MAIL FROM:<{}@src.test>", "a".repeat(2000));
    assert!(t.cmd(&long).starts_with("500 5.5.2 Line too long"), "over-long command");
    // NUL and 8-bit bytes in a command (RFC 5321 §2.4: commands are US-ASCII).
    t.send(b"MAIL FROM:<a\x00b@src.test>\r\n");
    assert!(t.reply().starts_with("500 5.5.2"), "NUL in a command");
    t.send("MAIL FROM:<jos\u{e9}@src.test>\r\n".as_bytes());
    let reply = t.reply();
    assert!(
        reply.starts_with("500") || reply.starts_with("501") || reply.starts_with("553"),
        "8-bit without SMTPUTF8: {reply}"
    );
    // The session still works after errors below the limit.
    assert!(t.cmd("NOOP").starts_with("250"));
    // An unknown-command flood: 421 and the connection closes (RFC 5321 §4.3.2 permits 421
    // at any time; the limit is `SESSION_ERRORS_MAX`).
    flood_until_closed(&mut t);
}

#[test]
fn pipelined_commands_after_a_refusal_stay_in_step() {
    let (relay, sink) = relay_with_sink();
    let (mut t, _) = Talk::connect(relay.addr());
    assert!(t.cmd("EHLO abuse.test").contains("PIPELINING"));
    // RFC 2920: a pipelined group whose RCPT is refused; the DATA that follows must get 554
    // (no valid recipients), and the message text that follows is then read as commands.
    t.send(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<not an address>\r\nDATA\r\n");
    assert!(t.reply().starts_with("250"), "MAIL");
    assert!(t.reply().starts_with("5"), "bad RCPT");
    let data = t.reply();
    assert!(data.starts_with("554") || data.starts_with("503"), "DATA without recipients: {data}");
    // A second, valid pipelined transaction is unaffected.
    t.send(b"RSET\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<ok@sink.test>\r\nDATA\r\n");
    assert!(t.reply().starts_with("250"), "RSET");
    assert!(t.reply().starts_with("250"), "MAIL");
    assert!(t.reply().starts_with("250"), "RCPT");
    assert!(t.reply().starts_with("354"), "DATA");
    t.send(b"Subject: ok\r\n\r\nfine\r\n.\r\n");
    assert!(t.reply().starts_with("250"));
    t.cmd("QUIT");
    relay.wait_rows("d", 1, Duration::from_secs(20));
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn an_address_whose_sessions_keep_failing_is_refused_for_a_while() {
    // 127.0.0.1 is an ordinary (untrusted) client here; trusted injectors are never refused.
    let relay = Relay::start("<source 127.0.0.1>\n always-allow-relaying no\n</source>\n", Some(1));
    for round in 0..3 {
        let (mut t, greeting) = Talk::connect(relay.addr());
        assert!(greeting.starts_with("220"), "round {round}: {greeting}");
        flood_until_closed(&mut t);
    }
    // The fourth connection is refused at once, with a reason.
    let (mut t, greeting) = Talk::connect(relay.addr());
    assert!(greeting.starts_with("421 4.7.0") && greeting.contains("too many protocol errors"), "{greeting}");
    assert_eq!(t.rest(), "", "and closed");
}

/// BDAT (RFC 3030): a chunk is message content whatever it holds, so an RSET inside it is
/// never answered as a command; where CHUNKING is not offered (`allow-chunking no`) BDAT is
/// refused and its chunk skipped, unread. Message text pipelined with DATA before the 354
/// (RFC 2920 §3.1) is refused with 554 and the connection closed, as Postfix's
/// `smtpd_forbid_unauth_pipelining` does. Only the chunked message is queued.
#[test]
fn bdat_chunks_and_text_before_354_are_never_commands_or_mail() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <source 127.0.0.2>\n always-allow-relaying yes\n allow-chunking no\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            sink.addr.port()
        ),
        Some(2),
    );
    let chunk = "RSET\r\nSubject: chunked\r\n\r\nbody\r\n";
    let (mut t, _) = Talk::connect(relay.addr());
    assert!(t.cmd("EHLO abuse.test").contains("250-CHUNKING"));
    assert!(t.cmd("MAIL FROM:<s@src.test>").starts_with("250"));
    assert!(t.cmd("RCPT TO:<bdat@sink.test>").starts_with("250"));
    t.send(format!("BDAT {} LAST\r\n{chunk}", chunk.len()).as_bytes());
    let reply = t.reply();
    assert!(reply.starts_with("250 2.0.0 Ok: queued"), "the chunk is the message: {reply}");
    assert!(t.cmd("NOOP").starts_with("250 2.0.0 OK"), "the next reply is NOOP's: nothing in the chunk ran");
    assert!(t.cmd("QUIT").starts_with("221"));
    // Not offered: refused, and the chunk skipped.
    let (code, out) = run(std::process::Command::new("python3").arg("-c").arg(format!(
        r#"
import socket
s = socket.create_connection(("127.0.0.1", {}), source_address=("127.0.0.2", 0))
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        l = f.readline().decode()
        lines.append(l)
        if len(l) < 4 or l[3] == " ":
            return "".join(lines)
reply()
for cmd in [b"EHLO abuse.test\r\n", b"MAIL FROM:<s@src.test>\r\n", b"RCPT TO:<refused@sink.test>\r\n"]:
    s.sendall(cmd); print(reply().replace("\r\n", "|"))
chunk = {chunk:?}.encode()
s.sendall(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
print(reply().strip())
s.sendall(b"NOOP\r\n"); print(reply().strip())
"#,
        relay.port
    )));
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines[0].contains("CHUNKING"), "{out}");
    assert!(lines[3].starts_with("503 5.5.1 BDAT"), "{out}");
    assert!(lines[4].starts_with("250 2.0.0 OK"), "{out}");

    let (mut t, _) = Talk::connect(relay.addr());
    assert!(t.cmd("EHLO abuse.test").starts_with("250"));
    t.send(b"MAIL FROM:<s@src.test>\r\nRCPT TO:<early@sink.test>\r\nDATA\r\nSubject: early\r\n\r\nbody\r\n.\r\n");
    let replies = [t.reply(), t.reply(), t.reply()];
    assert!(replies[0].starts_with("250") && replies[1].starts_with("250"), "{replies:?}");
    assert!(replies[2].starts_with("554 5.5.0 Error: SMTP protocol synchronization"), "{replies:?}");
    assert_eq!(t.rest(), "", "the connection is closed");
    let r = relay.wait_rows("r", 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(relay.rows_of("r").len(), 1, "only the chunked message was received: {r:?}");
    assert_eq!(relay.rows_of("r")[0]["rcpt"], "bdat@sink.test");
    let got = wait_for("the chunked message at the sink", Duration::from_secs(10), || {
        sink.messages().into_iter().find(|m| m.contains("Subject: chunked"))
    });
    assert!(got.contains("RSET\r\nSubject: chunked") || got.contains("RSET\nSubject: chunked"), "{got}");
}
