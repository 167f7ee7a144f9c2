//! Inbound authentication and ARC, against real DNS (dnsmasq) and an independent
//! implementation (dkimpy): a message DKIM-signed by its author's domain and ARC-sealed by a
//! first relay reaches sluice; sluice checks SPF, DKIM, DMARC and the ARC chain, writes
//! Authentication-Results (and `authResults` in the `r` record), and adds its own ARC set
//! (instance 2), which dkimpy validates as a passing chain. A message altered in transit fails
//! DKIM and ARC; sluice seals it with cv=fail, which ends the chain for every later verifier
//! (RFC 8617 §5.1).

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn send(relay: &Relay, message: &[u8]) {
    assert_eq!(smtplib_send(relay, "127.0.0.1", "a@sender.test", &["r@dest.test"], message), "sent");
}

/// The upstream message (DKIM + ARC i=1 by dkimpy), optionally altered after sealing.
fn prepared(keys: &std::path::Path, subject: &str, tamper: bool) -> Vec<u8> {
    let raw = format!(
        "From: Author <a@sender.test>\r\nTo: r@dest.test\r\nSubject: {subject}\r\nDate: Sat, 28 Nov 2026 00:00:00 +0000\r\n\
         Message-ID: <{subject}@sender.test>\r\n\r\nHello from the author.\r\n"
    );
    let mut child = Command::new(VENV_PYTHON)
        .arg(py_script("arc_prepare.py"))
        .arg(keys.join("d1.pem"))
        .arg(keys.join("arc1.pem"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(raw.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let mut m = out.stdout;
    if tamper {
        let text = String::from_utf8(m).unwrap().replace("Hello from the author.", "Hello from someone else.");
        m = text.into_bytes();
    }
    m
}

#[test]
fn spf_dkim_dmarc_arc_checked_and_sealed() {
    let keys = TempDir::new("arc-keys");
    // Upstream keys are 1024-bit so their TXT records fit one DNS string.
    for name in ["d1", "arc1"] {
        let (code, out) = run(Command::new("openssl")
            .args(["genrsa", "-traditional", "-out"])
            .arg(keys.path().join(format!("{name}.pem")))
            .arg("1024"));
        assert_eq!(code, 0, "{out}");
    }
    let public = |name: &str| {
        let (code, p) = run(Command::new("sh").arg("-c").arg(format!(
            "openssl pkey -in {} -pubout -outform DER | base64 -w0",
            keys.path().join(format!("{name}.pem")).display()
        )));
        assert_eq!(code, 0, "{p}");
        format!("v=DKIM1; k=rsa; p={}", p.trim())
    };
    let (d1, arc1) = (public("d1"), public("arc1"));
    let (sluice_key, sluice_txt) = dkim_keypair(keys.path(), "relay-arc", "rsa-pkcs8");
    let dns_port = free_port("127.0.0.1");
    let _dns = Dnsmasq::start(
        dns_port,
        &[
            format!("--txt-record=d1._domainkey.sender.test,{}", d1),
            format!("--txt-record=arc1._domainkey.hop1.test,{}", arc1),
            "--txt-record=sender.test,v=spf1 ip4:127.0.0.0/8 -all".into(),
            "--txt-record=_dmarc.sender.test,v=DMARC1; p=reject".into(),
            // Everything else under .test does not exist (the DMARC tree walk asks).
            "--local=/test/".into(),
        ],
    );
    let receiver = PyReceiver::start();
    let relay = Relay::start(
        &format!(
            "dns-server 127.0.0.1:{dns_port}\narc-key relay-arc,relay.test,{}\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n check-spf-inbound yes\n check-dkim-inbound yes\n\
             check-dmarc-inbound yes\n check-arc-inbound yes\n arc-sign yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            sluice_key.display(),
            receiver.addr.port()
        ),
        Some(1),
    );
    send(&relay, &prepared(keys.path(), "good", false));
    send(&relay, &prepared(keys.path(), "tampered", true));
    let files = wait_for("both received", Duration::from_secs(30), || {
        let f = receiver.files();
        (f.len() == 2).then_some(f)
    });
    let keys_file = keys.path().join("txt.tsv");
    std::fs::write(
        &keys_file,
        format!("arc1._domainkey.hop1.test\t{arc1}\nd1._domainkey.sender.test\t{d1}\nrelay-arc._domainkey.relay.test\t{sluice_txt}\n"),
    )
    .unwrap();
    let by_subject = |s: &str| {
        files.iter().find(|f| std::fs::read_to_string(f).unwrap().contains(&format!("Subject: {s}"))).unwrap().clone()
    };
    let (code, good) =
        run(Command::new(VENV_PYTHON).arg(py_script("arc_check.py")).arg(&keys_file).arg(by_subject("good")));
    assert_eq!(code, 0, "{good}");
    assert!(good.contains("cv pass"), "dkimpy validates sluice's seal: {good}");
    assert!(good.contains("instances 2 1") || good.contains("instances 1 2"), "{good}");
    for want in ["spf=pass", "dkim=pass", "dmarc=pass", "arc=pass"] {
        assert!(good.lines().any(|l| l.starts_with("ar ") && l.contains(want)), "{want}: {good}");
    }
    let (code, bad) =
        run(Command::new(VENV_PYTHON).arg(py_script("arc_check.py")).arg(&keys_file).arg(by_subject("tampered")));
    assert_eq!(code, 0, "{bad}");
    assert!(bad.contains("dkim=neutral (body hash did not verify)") && bad.contains("arc=neutral"), "{bad}");
    assert!(bad.contains("cv fail ARC-Seal[2] reported failure"), "sealed as failed: {bad}");
    let r = relay.wait_rows("r", 2, Duration::from_secs(10));
    let summaries: Vec<&str> = r.iter().map(|row| row["authResults"].as_str()).collect();
    assert!(summaries.contains(&"spf=pass dkim=pass arc=pass dmarc=pass sealed"), "{summaries:?}");
    assert!(summaries.contains(&"spf=pass dkim=fail arc=neutral dmarc=pass sealed"), "{summaries:?}");
}

#[test]
fn arc_sign_without_a_key_is_a_config_error() {
    let dir = TempDir::new("arc-cfg");
    let conf = dir.path().join("a.conf");
    std::fs::write(&conf, "smtp-listener 127.0.0.1:1\n<source 0/0>\n arc-sign yes\n</source>\n").unwrap();
    let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(&conf));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("a.conf:3: `arc-sign yes` needs an `arc-key`"), "{out}");
}

/// `reject-spf-check-fail` / `-permerror` (the Guide's defaults: yes) with
/// `check-spf-inbound`: a sender whose domain's SPF record (served by dnsmasq) leaves out
/// 127.0.0.1 is refused 550 5.7.23, one whose record is broken 550 5.7.24, one that passes is
/// taken; a source with `reject-spf-check-fail no` takes the failing one with its
/// Authentication-Results.
#[test]
fn spf_failures_are_refused_unless_told_not_to() {
    let dns_port = free_port("127.0.0.1");
    let _dns = Dnsmasq::start(
        dns_port,
        &[
            "--txt-record=pass.test,v=spf1 ip4:127.0.0.0/8 -all".into(),
            "--txt-record=fail.test,v=spf1 ip4:192.0.2.1 -all".into(),
            // A redirect to a domain with no SPF record: a permanent error (RFC 7208 §6.1).
            "--txt-record=broken.test,v=spf1 redirect=nowhere.test".into(),
        ],
    );
    let receiver = PyReceiver::start();
    let relay = Relay::start(
        &format!(
            "dns-server 127.0.0.1:{dns_port}\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n check-spf-inbound yes\n</source>\n\
             <source 127.0.0.2>\n always-allow-relaying yes\n check-spf-inbound yes\n reject-spf-check-fail no\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            receiver.addr.port()
        ),
        Some(1),
    );
    let send = |ip: &str, from: &str| {
        let msg = format!("From: {from}\r\nTo: r@dest.test\r\nSubject: spf {from}\r\n\r\nbody\r\n");
        smtplib_send(&relay, ip, from, &["r@dest.test"], msg.as_bytes())
    };
    assert_eq!(send("127.0.0.1", "a@pass.test"), "sent");
    let refused = send("127.0.0.1", "a@fail.test");
    assert!(refused.contains("550") && refused.contains("5.7.23"), "{refused}");
    let refused = send("127.0.0.1", "a@broken.test");
    assert!(refused.contains("550") && refused.contains("5.7.24"), "{refused}");
    assert_eq!(send("127.0.0.2", "a@fail.test"), "sent", "reject-spf-check-fail no");
    let rows = relay.wait_rows("r", 2, Duration::from_secs(20));
    let mut results: Vec<&str> = rows.iter().map(|r| r["authResults"].as_str()).collect();
    results.sort();
    assert_eq!(results, ["spf=fail", "spf=pass"], "{rows:?}");
    wait_for("2 delivered", Duration::from_secs(20), || (receiver.files().len() == 2).then_some(()));
}

/// `check-iprev-inbound` (RFC 8601 `iprev=`, names and addresses from dnsmasq): 127.0.0.1's
/// PTR name leads back to it (pass, recorded); 127.0.0.2's PTR name resolves elsewhere
/// (fail), refused 550 5.7.25 where `reject-iprev-check-fail yes`.
#[test]
fn iprev_is_checked_and_a_failure_refused_when_asked() {
    let dns_port = free_port("127.0.0.1");
    let _dns = Dnsmasq::start(
        dns_port,
        &[
            "--host-record=mx.good.test,127.0.0.1".into(),
            "--ptr-record=2.0.0.127.in-addr.arpa,liar.test".into(),
            "--address=/liar.test/192.0.2.9".into(),
        ],
    );
    let receiver = PyReceiver::start();
    let relay = Relay::start(
        &format!(
            "dns-server 127.0.0.1:{dns_port}\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n check-iprev-inbound yes\n</source>\n\
             <source 127.0.0.2>\n always-allow-relaying yes\n check-iprev-inbound yes\n reject-iprev-check-fail yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            receiver.addr.port()
        ),
        Some(1),
    );
    let msg = b"From: a@src.test\r\nTo: r@dest.test\r\nSubject: iprev\r\n\r\nbody\r\n";
    assert_eq!(smtplib_send(&relay, "127.0.0.1", "a@src.test", &["r@dest.test"], msg), "sent");
    let refused = smtplib_send(&relay, "127.0.0.2", "a@src.test", &["r@dest.test"], msg);
    assert!(refused.contains("550") && refused.contains("5.7.25"), "{refused}");
    let rows = relay.wait_rows("r", 1, Duration::from_secs(20));
    assert_eq!(rows[0]["authResults"], "iprev=pass", "{rows:?}");
    let files = wait_for("the passing one", Duration::from_secs(20), || {
        let f = receiver.files();
        (f.len() == 1).then_some(f)
    });
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("iprev=pass"), "{text}");
}
