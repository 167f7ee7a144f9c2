//! TLS as clients and receivers use it: inbound, swaks completes STARTTLS and then AUTH on a source that
//! requires TLS before AUTH, and TLS on connect on an implicit-TLS listener; the delivered
//! message's Received header says ESMTPSA / ESMTPS (RFC 3848); a command pipelined after
//! STARTTLS is dropped (RFC 3207 §5, the 2011 command-injection attacks).

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn scenario(shards: Option<u32>) {
    let dir = TempDir::new("tls");
    let (cert, key) = self_signed(dir.path(), "relay.test");
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let implicit_port = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "smtp-server-tls-certificate {cert} {key}\n\
             <smtp-listener 127.0.0.1:{implicit_port}>\n immediate-tls yes\n</smtp-listener>\n\
             <smtp-user alice>\n password s3cret\n</smtp-user>\n\
             <source 127.0.0.1>\n allow-auth yes\n require-starttls-before-auth yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            sink.addr.port()
        ),
        shards,
    );
    // STARTTLS, then AUTH (refused before TLS: 538, covered by tests/smtp_auth.rs).
    let auth = ["--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "s3cret"];
    let (code, out) = swaks(&relay.addr().to_string(), "starttls@far.test", &auth);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("=== TLS started with cipher TLSv1."), "{out}");
    assert!(out.contains("<~  235 2.7.0 Authentication successful"), "AUTH inside TLS: {out}");
    // TLS on connect.
    let auth = ["--tlsc", "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", "s3cret"];
    let (code, out) = swaks(&format!("127.0.0.1:{implicit_port}"), "implicit@far.test", &auth);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("<~  220 relay.test ESMTP sluice"), "the greeting inside TLS: {out}");
    // A 2 MB message through STARTTLS: many TLS records, rustls's buffers filling and draining.
    send_tls(&relay, "big@far.test", 30000);
    // smtp-sink writes its dump files as the bytes come: wait for the big one's last line.
    let messages = wait_for("all delivered", Duration::from_secs(20), || {
        let m = sink.messages();
        (m.len() == 3 && m.iter().any(|m| m.contains("line 0029999 "))).then_some(m)
    });
    let big = messages.iter().find(|m| m.contains("Subject: big")).expect("the big message");
    assert!(big.contains("line 0000000 ") && big.contains("line 0029999 "), "whole");
    assert_eq!(big.matches("line ").count(), 30000);
    assert!(messages.iter().all(|m| m.contains("(sluice) with ESMTPSA id")), "{messages:?}");
    // The injection attempt.
    let (code, out) = run(Command::new("python3").arg(py_script("starttls_injection.py")).arg(relay.port.to_string()));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("starttls: 220 2.0.0 Ready to start TLS"), "{out}");
    assert!(out.contains("first in tls: 250-relay.test Hello b.test"), "the injected NOOP was dropped: {out}");
    assert!(out.contains("version: TLSv1.3"), "{out}");
}

/// One message over STARTTLS with AUTH as alice (Python's smtplib, `tests/py/send_tls.py`):
/// `lines` body lines of about 75 bytes to `rcpt`; panics unless it is accepted.
fn send_tls(relay: &Relay, rcpt: &str, lines: u32) {
    let (code, out) = run(Command::new("python3").arg(py_script("send_tls.py")).args([
        &relay.port.to_string(),
        "alice",
        "s3cret",
        rcpt,
        &lines.to_string(),
    ]));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn tls_inbound_one_shard() {
    scenario(Some(1));
}

#[test]
fn tls_inbound_default_shards() {
    scenario(None);
}

/// A certificate that cannot be read stops check-config with the line that named it.
#[test]
fn bad_certificate_is_a_config_error() {
    let dir = TempDir::new("tls-bad");
    let conf = dir.path().join("t.conf");
    std::fs::write(&conf, "smtp-listener 127.0.0.1:1\nsmtp-server-tls-certificate nope.pem nope.key\n").unwrap();
    let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(&conf));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("t.conf:2: cannot read certificates from"), "{out}");
}

/// Relay to relay over STARTTLS (sluice's client and server sides of TLS together), with a
/// 2 MB message; and `require-starttls` towards a receiver without STARTTLS defers (4.7.10).
#[test]
fn relay_to_relay_over_starttls_and_require_starttls() {
    let dir = TempDir::new("tls2");
    let (cert, key) = self_signed(dir.path(), "relay.test");
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let plain = SluiceSink::start(&[], u64::MAX);
    let b = Relay::start(
        &format!(
            "smtp-server-tls-certificate {cert} {key}\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            sink.addr.port()
        ),
        Some(1),
    );
    let a = Relay::start(
        &format!(
            "smtp-server-tls-certificate {cert} {key}\n<smtp-user alice>\n password s3cret\n</smtp-user>\n\
             <source 127.0.0.1>\n allow-auth yes\n</source>\n\
             <domain far.test>\n smtp-hosts [127.0.0.1]:{}\n require-starttls yes\n</domain>\n\
             <domain nosec.test>\n smtp-hosts [127.0.0.1]:{}\n require-starttls yes\n retry-after 1h\n</domain>\n",
            b.port, plain.port
        ),
        None,
    );
    send_tls(&a, "big@far.test", 30000);
    send_tls(&a, "x@nosec.test", 10);
    let d = a.wait_rows("d", 1, Duration::from_secs(20));
    assert_eq!((d[0]["rcpt"].as_str(), d[0]["dlvTlsProtocol"].as_str()), ("big@far.test", "TLSv1.3"), "{d:?}");
    let m = wait_for("the big message at the end", Duration::from_secs(20), || {
        sink.messages().into_iter().find(|m| m.contains("line 0029999 "))
    });
    assert_eq!(m.matches("line ").count(), 30000);
    assert!(m.contains("(sluice) with ESMTPS id"), "B received it inside TLS");
    let t = a.wait_rows("t", 1, Duration::from_secs(20));
    assert_eq!(
        (t[0]["rcpt"].as_str(), t[0]["dsnStatus"].as_str()),
        ("x@nosec.test", "4.7.10 (encryption needed)"),
        "{t:?}"
    );
}
