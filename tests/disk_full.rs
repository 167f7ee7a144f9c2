//! A full spool disk: clients get 452 4.3.1 (never a 250 for bytes that are not on disk),
//! what was acknowledged is still delivered, and service resumes by itself once delivery
//! frees space. The spool is a small tmpfs (mounting it needs root, as CI has).

mod common;
use common::*;
use std::time::Duration;

const MESSAGE_BYTES: usize = 300 * 1024;
const ATTEMPTS_MAX: usize = 60;

fn send(t: &mut Talk, i: usize) -> String {
    assert!(t.cmd("MAIL FROM:<s@src.test>").starts_with("250"));
    assert!(t.cmd(&format!("RCPT TO:<r{i}@full.test>")).starts_with("250"));
    assert!(t.cmd("DATA").starts_with("354"));
    let line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n";
    t.send(format!("Subject: {i}\r\nX-Fill: {i}\r\n\r\n{}.\r\n", line.repeat(MESSAGE_BYTES / line.len())).as_bytes());
    t.reply()
}

#[test]
fn full_disk_answers_452_and_recovers() {
    let dir = TempDir::new("diskfull");
    let spool = dir.path().join("tmpfs");
    let _mount = Tmpfs::mount(&spool, "4m");
    let sink_port = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "spool {}\nspool-segment-size 1M\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain full.test>\n smtp-hosts [127.0.0.1]:{sink_port}\n retry-after 1s\n</domain>\n",
            spool.display()
        ),
        Some(1),
    );
    let (mut t, _) = Talk::connect(relay.addr());
    assert!(t.cmd("EHLO fill.test").starts_with("250"));
    let mut accepted = 0;
    let mut refusal = None;
    for i in 0..ATTEMPTS_MAX {
        let reply = send(&mut t, i);
        if reply.starts_with("250") {
            accepted += 1;
        } else {
            refusal = Some(reply);
            break;
        }
    }
    let refusal = refusal.expect("the disk filled up within the attempts");
    assert!(refusal.starts_with("452 4.3.1"), "full disk → 452 4.3.1, got {refusal}");
    assert!(accepted >= 3, "some messages fit before the disk filled: {accepted}");

    // The receiver comes up: every acknowledged message is delivered, space is freed.
    let sink = SmtpSink::start("127.0.0.1", sink_port, &[], true);
    relay.wait_rows("d", accepted, Duration::from_secs(60));
    // Service resumes by itself: the same session is accepted again.
    let reply = wait_for("a 250 once space is free", Duration::from_secs(20), || {
        let r = send(&mut t, 1000);
        r.starts_with("250").then_some(r)
    });
    assert!(reply.starts_with("250"));
    relay.wait_rows("d", accepted + 1, Duration::from_secs(30));
    let mut ids: Vec<usize> = sink
        .messages()
        .iter()
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("X-Fill: ")).map(|v| v.trim().parse().unwrap()))
        .collect();
    ids.sort();
    ids.dedup();
    let mut expected: Vec<usize> = (0..accepted).collect();
    expected.push(1000);
    assert_eq!(ids, expected, "exactly the acknowledged messages were delivered");
}
