//! The ESMTP extensions injectors use, end to end with Python's smtplib as the client: DSN
//! (RFC 3461) parameters kept (accounting `envId`, `orcpt`), passed on to receivers that
//! offer DSN, and honoured by the reports sluice writes (NOTIFY, RET, ENVID, ORCPT, and a
//! "relayed" report for NOTIFY=SUCCESS to a receiver without DSN); SMTPUTF8 (RFC 6531) in and
//! out, bounced for a receiver that does not offer it; CHUNKING (RFC 3030) from one sluice
//! to another.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

/// One message through smtplib from 127.0.0.1 with MAIL and RCPT options; "sent" or the
/// refusal.
fn send(relay: &Relay, from: &str, to: &str, mail_opts: &[&str], rcpt_opts: &[&str], body: &str) -> String {
    let script = format!(
        r#"
import smtplib, sys
msg = {body:?}.encode()
try:
    with smtplib.SMTP("127.0.0.1", {port}, source_address=("127.0.0.1", 0)) as s:
        s.sendmail({from:?}, [{to:?}], msg, mail_options={mail_opts:?}, rcpt_options={rcpt_opts:?})
    print("sent")
except smtplib.SMTPException as e:
    print("refused", e)
"#,
        port = relay.port
    );
    let (code, out) = run(Command::new("python3").arg("-c").arg(script));
    assert_eq!(code, 0, "{out}");
    out.trim().to_string()
}

fn reports(receiver: &PyReceiver) -> Vec<String> {
    receiver.files().iter().map(|f| std::fs::read_to_string(f).unwrap()).collect()
}

#[test]
fn dsn_parameters_are_kept_passed_on_and_honoured() {
    let with_dsn = ScriptedMx::start(
        "127.0.0.1",
        MxScript { ehlo: ["PIPELINING", "8BITMIME", "DSN"].map(String::from).to_vec(), ..Default::default() },
    );
    let without = ScriptedMx::start(
        "127.0.0.1",
        MxScript {
            rcpt: |c| if c.contains("bad") { "550 5.1.1 no such user".into() } else { "250 2.1.5 ok".into() },
            ..Default::default()
        },
    );
    let sender_mx = PyReceiver::start();
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n generate-bounces yes\n</source>\n\
             <domain dsn.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <domain plain.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <domain src.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            with_dsn.addr.port(),
            without.addr.port(),
            sender_mx.addr.port()
        ),
        Some(1),
    );
    let body = "From: s@src.test\r\nSubject: dsn test\r\n\r\nthe original body\r\n";
    // To a receiver that offers DSN: the parameters go on with the message.
    let sent = send(
        &relay,
        "s@src.test",
        "ok@dsn.test",
        &["RET=HDRS", "ENVID=env-1"],
        &["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Orig+40dsn.test"],
        body,
    );
    assert_eq!(sent, "sent");
    // A failure with RET=FULL; a failure with NOTIFY=NEVER; a success where the receiver
    // has no DSN.
    assert_eq!(
        send(
            &relay,
            "s@src.test",
            "bad@plain.test",
            &["RET=FULL", "ENVID=env-2"],
            &["NOTIFY=FAILURE", "ORCPT=rfc822;bad+40plain.test"],
            body
        ),
        "sent"
    );
    assert_eq!(send(&relay, "s@src.test", "bad-quiet@plain.test", &[], &["NOTIFY=NEVER"], body), "sent");
    assert_eq!(send(&relay, "s@src.test", "yes@plain.test", &["ENVID=env-3"], &["NOTIFY=SUCCESS"], body), "sent");

    let log = with_dsn.log();
    let mail = log.iter().find(|l| l.starts_with("MAIL")).unwrap();
    assert!(mail.contains(" RET=HDRS") && mail.contains(" ENVID=env-1"), "{mail}");
    let rcpt = log.iter().find(|l| l.starts_with("RCPT")).unwrap();
    // xtext again ("@" needs no +40).
    assert_eq!(rcpt, "RCPT TO:<ok@dsn.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Orig@dsn.test");
    let log = without.log();
    let dsn_param = |l: &&String| ["RET=", "ENVID=", "NOTIFY=", "ORCPT="].iter().any(|p| l.contains(p));
    assert!(!log.iter().any(|l| dsn_param(&l)), "no DSN parameters to a receiver without DSN: {log:?}");

    // Two reports reach the sender: the failure (not the NOTIFY=NEVER one) and "relayed".
    let got = wait_for("two reports", Duration::from_secs(30), || {
        let r = reports(&sender_mx);
        (r.len() >= 2).then_some(r)
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = if reports(&sender_mx).len() > got.len() { reports(&sender_mx) } else { got };
    assert_eq!(got.len(), 2, "{got:?}");
    let failed = got.iter().find(|r| r.contains("Action: failed")).expect("the failure report");
    for want in [
        "Original-Envelope-Id: env-2\r\n",
        "Original-Recipient: rfc822; bad@plain.test\r\nFinal-Recipient: rfc822; bad@plain.test\r\nAction: failed\r\nStatus: 5.1.1\r\n",
        "Content-Type: message/rfc822\r\n",
        "the original body",
    ] {
        assert!(failed.contains(want), "{want:?} in\n{failed}");
    }
    assert!(!failed.contains("bad-quiet"), "NOTIFY=NEVER: not reported");
    let relayed = got.iter().find(|r| r.contains("Action: relayed")).expect("the relayed report");
    assert!(
        relayed.contains("Original-Envelope-Id: env-3") && relayed.contains("Final-Recipient: rfc822; yes@plain.test")
    );
    // The accounting file has them too.
    let b = relay.rows_of("b").into_iter().find(|r| r["rcpt"] == "bad@plain.test").unwrap();
    assert_eq!((b["envId"].as_str(), b["orcpt"].as_str()), ("env-2", "rfc822;bad@plain.test"), "{b:?}");
}

#[test]
fn smtputf8_addresses_in_and_out() {
    let utf8 = ScriptedMx::start(
        "127.0.0.1",
        MxScript { ehlo: ["PIPELINING", "8BITMIME", "SMTPUTF8"].map(String::from).to_vec(), ..Default::default() },
    );
    let ascii = ScriptedMx::start("127.0.0.1", MxScript::default());
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain utf8.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <domain ascii.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            utf8.addr.port(),
            ascii.addr.port()
        ),
        Some(1),
    );
    let body = "From: s@src.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\nhi\r\n";
    assert_eq!(send(&relay, "jos\u{e9}@src.test", "\u{7528}\u{6237}@utf8.test", &["SMTPUTF8"], &[], body), "sent");
    assert_eq!(send(&relay, "jos\u{e9}@src.test", "user@ascii.test", &["SMTPUTF8"], &[], body), "sent");
    let d = wait_for("the UTF-8 delivery", Duration::from_secs(20), || {
        relay.rows_of("d").into_iter().find(|r| r["rcpt"] == "\u{7528}\u{6237}@utf8.test")
    });
    assert_eq!(d["orig"], "jos\u{e9}@src.test");
    let log = utf8.log();
    assert!(log.contains(&"RCPT TO:<\u{7528}\u{6237}@utf8.test>".to_string()), "{log:?}");
    assert!(log.iter().any(|l| l.starts_with("MAIL FROM:<jos\u{e9}@src.test>") && l.ends_with(" SMTPUTF8")), "{log:?}");
    // The receiver without SMTPUTF8 cannot take the UTF-8 sender: bounced, as PowerMTA does.
    let b = wait_for("the bounce", Duration::from_secs(20), || {
        relay.rows_of("b").into_iter().find(|r| r["rcpt"] == "user@ascii.test")
    });
    assert!(b["dsnStatus"].starts_with("5.6.7"), "{b:?}");
    assert!(ascii.log().iter().all(|l| !l.starts_with("MAIL")), "nothing sent there");
}

#[test]
fn chunking_from_one_sluice_to_another() {
    let receiver = PyReceiver::start();
    let inner = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n log-commands yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            receiver.addr.port()
        ),
        Some(1),
    );
    let outer = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n ignore-chunking no\n log-commands yes\n</domain>\n",
            inner.port
        ),
        Some(1),
    );
    let body = "From: s@src.test\r\nSubject: chunks\r\n\r\n.a dot line\r\n..two\r\nend\r\n";
    assert_eq!(send(&outer, "s@src.test", "r@far.test", &[], &[], body), "sent");
    wait_for("the message at the receiver", Duration::from_secs(20), || (receiver.files().len() == 1).then_some(()));
    let got = std::fs::read_to_string(&receiver.files()[0]).unwrap();
    assert!(got.ends_with("Subject: chunks\r\n\r\n.a dot line\r\n..two\r\nend\r\n"), "{got}");
    assert!(outer.log().contains("> BDAT "), "{}", tail(&outer.log(), 20));
    assert!(inner.log().contains("< BDAT ") && inner.log().contains("> 250-CHUNKING"), "{}", tail(&inner.log(), 40));
}
