//! Suppression lists: a recipient on an `<address-list>` named by its source's
//! `suppression-lists` is refused at RCPT with 550 5.7.1 naming the list, and nothing is
//! queued for it. Every kind of entry is exercised, hashed entries included (100,000 of them,
//! indexed into a mapped sorted table beside the file and rebuilt when the file changes), and
//! exactly the listed addresses are refused.

mod common;
use common::*;
use sluice_engine::suppress::address_hash;
use std::time::Duration;

fn rcpt(relay: &Relay, address: &str) -> String {
    let (mut t, _) = Talk::connect(relay.addr());
    t.cmd("EHLO c.test");
    t.cmd("MAIL FROM:<s@src.test>");
    let reply = t.cmd(&format!("RCPT TO:<{address}>")).trim_end().to_string();
    // Each session ends before the next starts: hundreds of sessions left for the server to
    // notice closed could meet the per-address connection limit on a loaded machine.
    t.cmd("QUIT");
    reply
}

#[test]
fn listed_recipients_are_refused_and_only_they() {
    let dir = TempDir::new("suppress");
    let hashes = dir.path().join("sha256.txt");
    let mut text: String = (0..100_000).map(|i| address_hash(&format!("user{i}@bulk.test"), None) + "\n").collect();
    text.push_str(&address_hash("Hashed@X.test", None));
    text.push('\n');
    std::fs::write(&hashes, &text).unwrap();
    std::fs::write(dir.path().join("hmac.txt"), address_hash("keyed@x.test", Some(b"k3y")) + "\n").unwrap();
    std::fs::write(dir.path().join("plain.txt"), "plain@x.test\n# a comment\nabuse\n").unwrap();
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let config = format!(
        "<address-list s1>\n address-hash-file {}\n address-hmac-file {} k3y\n address-file {}\n domain gone.test\n address /^bounce-/\n address exact@x.test\n</address-list>\n\
         <source 127.0.0.1>\n always-allow-relaying yes\n suppression-lists s1\n</source>\n\
         <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
        hashes.display(),
        dir.path().join("hmac.txt").display(),
        dir.path().join("plain.txt").display(),
        sink.addr.port()
    );
    let mut relay = Relay::start(&config, Some(1));
    let refused = |a: &str| format!("550 5.7.1 <{a}> is suppressed (address-list s1)");
    for a in [
        "hashed@x.test",
        "HASHED@x.test",
        "user0@bulk.test",
        "user99999@bulk.test",
        "keyed@x.test",
        "plain@x.test",
        "abuse@any.test",
        "who@gone.test",
        "bounce-123@x.test",
        "exact@x.test",
    ] {
        assert_eq!(rcpt(&relay, a), refused(a), "{a}");
    }
    for a in ["user100000@bulk.test", "user0@bulk2.test", "keyed2@x.test", "x@sub.gone.test", "ok@x.test"] {
        assert!(rcpt(&relay, a).starts_with("250 "), "{a}");
    }
    // A sample of both sides of the hashed list.
    for i in (0..100_000).step_by(997) {
        let a = format!("user{i}@bulk.test");
        assert_eq!(rcpt(&relay, &a), refused(&a));
        let b = format!("user{i}x@bulk.test");
        assert!(rcpt(&relay, &b).starts_with("250 "), "{b}");
    }
    assert!(dir.path().join("sha256.txt.sluice-idx").exists(), "the sorted index beside the file");
    // A message to a listed and an unlisted recipient: only the latter is queued.
    let (mut t, _) = Talk::connect(relay.addr());
    t.cmd("EHLO c.test");
    t.cmd("MAIL FROM:<s@src.test>");
    assert!(t.cmd("RCPT TO:<user5@bulk.test>").starts_with("550 5.7.1"));
    assert!(t.cmd("RCPT TO:<fine@ok.test>").starts_with("250"));
    assert!(t.cmd("DATA").starts_with("354"));
    assert!(t.cmd("Subject: s\r\n\r\nhi\r\n.").starts_with("250"));
    let r = relay.wait_rows("d", 1, Duration::from_secs(10));
    assert_eq!(r.iter().map(|r| r["rcpt"].as_str()).collect::<Vec<_>>(), ["fine@ok.test"]);
    assert_eq!(relay.rows_of("r").len(), 1, "nothing queued for the suppressed one");
    // The list file changes: the index is rebuilt at the next start.
    std::fs::write(&hashes, text + &address_hash("late@x.test", None) + "\n").unwrap();
    assert_eq!(relay.terminate(Duration::from_secs(10)), 0);
    // Refused: 10 named, 101 sampled, 1 in the message.
    let log = relay.log();
    assert!(
        log.lines().any(|l| l.contains("suppression list hits") && l.contains("s1") && l.contains("112")),
        "hit counter per list:\n{}",
        tail(&log, 5)
    );
    relay.spawn();
    assert_eq!(rcpt(&relay, "late@x.test"), refused("late@x.test"));
}
