//! `<spool DIR> deliver-only yes` (PowerMTA's failure recovery): a spool left by another
//! host, attached beside this host's own, has its undelivered recipients moved here and
//! delivered, and its files go; a host whose only spool is deliver-only delivers what is in
//! it and refuses new mail (452 over SMTP; the HTTP injection API answers 503).

mod common;
use common::*;
use std::time::Duration;

/// A relay whose mail cannot go anywhere: a spool with undelivered recipients, left behind
/// when it stops. Returns its spool directory (kept with the relay's directory).
fn failed_host(rcpts: &[&str]) -> Relay {
    let dead = free_port("127.0.0.1");
    let mut relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{dead}\n retry-after 1h\n</domain>\n"
        ),
        Some(1),
    );
    for r in rcpts {
        swaks_send(&relay, r);
    }
    // Both recipients of one message: one left delivered in the journal would not move.
    let msg = b"From: a@src.test\r\nSubject: two\r\n\r\nfor two\r\n";
    assert_eq!(smtplib_send(&relay, "127.0.0.1", "s@src.test", &["p@dest.test", "q@dest.test"], msg), "sent");
    relay.wait_rows("t", rcpts.len() + 2, Duration::from_secs(20));
    assert_eq!(relay.terminate(Duration::from_secs(20)), 0);
    assert!(!relay.segments().is_empty());
    relay
}

#[test]
fn an_attached_deliver_only_spool_is_moved_here_and_delivered() {
    let old = failed_host(&["a@dest.test", "b@dest.test"]);
    let attached = old.dir.path().join("spool");
    let receiver = PyReceiver::start();
    let relay = Relay::start(
        &format!(
            "<spool {}>\n deliver-only yes\n</spool>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            attached.display(),
            receiver.addr.port()
        ),
        Some(1),
    );
    let d = relay.wait_rows("d", 4, Duration::from_secs(30));
    let mut rcpts: Vec<&str> = d.iter().map(|r| r["rcpt"].as_str()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["a@dest.test", "b@dest.test", "p@dest.test", "q@dest.test"]);
    assert!(d.iter().all(|r| r["orig"] == "s@src.test"), "{d:?}");
    // The attached spool's files are gone once the messages are durable here.
    wait_for("the attached spool emptied", Duration::from_secs(10), || segments_in(&attached).is_empty().then_some(()));
    assert!(relay.log().contains("deliver-only spool moved into this spool"), "{}", tail(&relay.log(), 20));
    // The messages arrived whole: the two-recipient one once, to both.
    let two: Vec<_> =
        receiver.files().into_iter().filter(|f| std::fs::read_to_string(f).unwrap().contains("for two")).collect();
    assert_eq!(two.len(), 1);
    let env = std::fs::read_to_string(two[0].with_extension("env")).unwrap();
    assert!(env.contains("p@dest.test,q@dest.test"), "{env}");
}

#[test]
fn a_host_whose_spool_is_deliver_only_delivers_and_refuses_new_mail() {
    let mut old = failed_host(&["c@dest.test"]);
    let receiver = PyReceiver::start();
    // The same host restarted with its spool deliver-only and a receiver that answers.
    let text = std::fs::read_to_string(&old.config).unwrap();
    let spool = old.dir.path().join("spool");
    let dead = text.lines().find(|l| l.contains("smtp-hosts")).unwrap().to_string();
    let text = text
        .replace(&dead, &format!(" smtp-hosts [127.0.0.1]:{}", receiver.addr.port()))
        .replace("<domain *>", &format!("<spool {}>\n deliver-only yes\n</spool>\n<domain *>", spool.display()));
    std::fs::write(&old.config, text).unwrap();
    old.spawn();
    let d = wait_for("the spooled mail delivered", Duration::from_secs(30), || {
        let d = old.rows_of("d");
        (d.len() == 3).then_some(d)
    });
    assert!(d.iter().any(|r| r["rcpt"] == "c@dest.test"));
    let (code, out) = swaks(&old.addr().to_string(), "new@dest.test", &[]);
    assert_ne!(code, 0);
    assert!(out.contains("452 4.3.1 Not accepting new mail: the spool is deliver-only"), "{out}");
}

/// A moved message keeps what its injection said of each recipient still owed: its DSN
/// parameters (RFC 3461 NOTIFY and ORCPT) go on to a receiver that offers DSN and into the
/// accounting row, renumbered among the moved recipients (the first recipient, delivered
/// before the move, stays behind with its NOTIFY=NEVER).
#[test]
fn a_moved_message_keeps_its_recipients_dsn_parameters() {
    let old_mx = ScriptedMx::start(
        "127.0.0.1",
        MxScript {
            rcpt: |c| if c.contains("second") { "451 4.3.0 later".into() } else { "250 2.1.5 ok".into() },
            ..Default::default()
        },
    );
    let mut old = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n retry-after 1h\n</domain>\n",
            old_mx.addr.port()
        ),
        Some(1),
    );
    // Each recipient its own DSN parameters (Python's smtplib, a client nobody here wrote).
    let script = format!(
        r#"
import smtplib
with smtplib.SMTP("127.0.0.1", {port}, source_address=("127.0.0.1", 0)) as s:
    s.ehlo("injector.test")
    s.mail("s@src.test")
    s.rcpt("first@dest.test", ["NOTIFY=NEVER"])
    s.rcpt("second@dest.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;second-orig+40dest.test"])
    code, _ = s.data(b"From: s@src.test\r\nSubject: moved\r\n\r\nmoved with its DSN\r\n")
    print(code)
"#,
        port = old.port
    );
    let (code, out) = run(std::process::Command::new("python3").arg("-c").arg(script));
    assert_eq!((code, out.trim()), (0, "250"), "{out}");
    old.wait_rows("d", 1, Duration::from_secs(20));
    old.wait_rows("t", 1, Duration::from_secs(20));
    assert_eq!(old.terminate(Duration::from_secs(20)), 0);

    let new_mx = ScriptedMx::start(
        "127.0.0.1",
        MxScript { ehlo: ["PIPELINING", "8BITMIME", "DSN"].map(String::from).to_vec(), ..Default::default() },
    );
    let relay = Relay::start(
        &format!(
            "<spool {}>\n deliver-only yes\n</spool>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            old.dir.path().join("spool").display(),
            new_mx.addr.port()
        ),
        Some(1),
    );
    let d = relay.wait_rows("d", 1, Duration::from_secs(30));
    assert_eq!((d[0]["rcpt"].as_str(), d[0]["orcpt"].as_str()), ("second@dest.test", "rfc822;second-orig@dest.test"));
    let rcpts: Vec<String> = new_mx.log().into_iter().filter(|l| l.starts_with("RCPT")).collect();
    assert_eq!(rcpts, ["RCPT TO:<second@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;second-orig@dest.test"]);
}
