//! A receiver that answers 421 to one recipient's RCPT and closes (issue 22): the recipients
//! it had already refused for good bounce with their own reply and category, not the 421;
//! the others are deferred; and when the same recipient draws the 421 again it goes on
//! alone, so the others are delivered on the next try instead of all of them expiring.
//! RFC 5321 §3.8 (421 ends the session), §4.2.5 (each RCPT's reply stands).

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Each session's recipients that got 250 and were then delivered (DATA completed).
type Delivered = Arc<Mutex<Vec<Vec<String>>>>;

fn receiver() -> (u16, Delivered) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let delivered: Delivered = Arc::default();
    let d = delivered.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let d = d.clone();
            std::thread::spawn(move || serve(stream, &d));
        }
    });
    (port, delivered)
}

fn serve(stream: TcpStream, delivered: &Delivered) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut lines = BufReader::new(stream);
    let _ = out.write_all(b"220 rx.test ESMTP\r\n");
    let mut accepted = Vec::new();
    let mut line = String::new();
    while lines.read_line(&mut line).unwrap_or(0) > 0 {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-rx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("RCPT") && upper.contains("<GONE@") {
            b"550 5.1.1 <gone@x.test>: no such user\r\n"
        } else if upper.starts_with("RCPT") && upper.contains("<CLOSER@") {
            let _ = out.write_all(b"421 4.7.0 rx.test closing: this recipient trips a filter\r\n");
            return;
        } else if upper.starts_with("RCPT") {
            accepted.push(line.trim().trim_start_matches("RCPT TO:").to_string());
            b"250 2.1.5 ok\r\n"
        } else if upper.starts_with("DATA") {
            let _ = out.write_all(b"354 go\r\n");
            let mut body = String::new();
            while lines.read_line(&mut body).unwrap_or(0) > 0 && !body.ends_with("\r\n.\r\n") {}
            delivered.lock().unwrap().push(std::mem::take(&mut accepted));
            b"250 2.0.0 queued\r\n"
        } else if upper.starts_with("QUIT") {
            let _ = out.write_all(b"221 bye\r\n");
            return;
        } else {
            b"250 2.0.0 ok\r\n"
        };
        if out.write_all(reply).is_err() {
            return;
        }
        line.clear();
    }
}

#[test]
fn a_421_at_one_rcpt_neither_defers_final_answers_nor_holds_the_others_back() {
    let (port, delivered) = receiver();
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain x.test>\n smtp-hosts [127.0.0.1]:{port}\n retry-after 1s\n</domain>\n"
        ),
        Some(1),
    );
    let (code, out) = swaks(
        &relay.addr().to_string(),
        "a@x.test,gone@x.test,closer@x.test,b@x.test,c@x.test",
        &["--header", "Subject: five recipients"],
    );
    assert_eq!(code, 0, "{out}");
    let row = |kind: &str, rcpt: &str| relay.rows_of(kind).into_iter().find(|r| r["rcpt"] == rcpt);
    // The recipient refused for good bounces with its own answer, not the 421.
    let b = wait_for("gone@ bounced", Duration::from_secs(20), || row("b", "gone@x.test"));
    assert!(b["dsnStatus"].starts_with("5.1.1"), "{b:?}");
    assert_eq!(b["bounceCat"], "bad-mailbox", "{b:?}");
    assert!(b["dsnDiag"].contains("no such user"), "{b:?}");
    // The others get through once the one that draws the 421 goes on alone.
    for rcpt in ["a@x.test", "b@x.test", "c@x.test"] {
        wait_for(&format!("{rcpt} delivered"), Duration::from_secs(30), || row("d", rcpt));
    }
    let t = row("t", "closer@x.test").expect("closer@ deferred");
    assert!(t["dsnDiag"].contains("421 4.7.0"), "its own 421: {t:?}");
    let other = row("t", "a@x.test").expect("a@ deferred on the first try");
    assert!(other["dsnDiag"].contains("closed the session at another recipient"), "{other:?}");
    assert!(row("d", "closer@x.test").is_none());
    assert!(row("b", "a@x.test").is_none() && row("b", "closer@x.test").is_none());
    // Delivered once each.
    let all: Vec<String> = delivered.lock().unwrap().iter().flatten().cloned().collect();
    for rcpt in ["a@x.test", "b@x.test", "c@x.test"] {
        assert_eq!(all.iter().filter(|r| r.contains(rcpt)).count(), 1, "{rcpt}: {all:?}");
    }
}
