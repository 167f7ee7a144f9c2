//! DKIM signatures as receivers check them: sluice signs (RSA from PKCS#1 and PKCS#8 keys as
//! openssl writes them, and ed25519) and dkimpy, an independent implementation, verifies
//! every signature from the bytes a real SMTP receiver got. The key follows the From domain
//! (exact, then the nearest parent, then `*`), a VMTA's own keys come first, a destination
//! without `dkim-sign` gets no signature, and a changed body fails verification.

mod common;
use common::*;
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

/// Sends `message` (bytes as a client would write them) through the relay with smtplib.
fn send(relay: &Relay, rcpt: &str, message: &str) {
    assert_eq!(smtplib_send(relay, "127.0.0.1", "s@src.test", &[rcpt], message.as_bytes()), "sent");
}

fn message(from: &str, tag: &str, extra_header: &str) -> String {
    format!(
        "From: \"Sender Name\" <{from}>\r\nTo: <r@dest.test>\r\nSubject: {tag} =?utf-8?q?caf=C3=A9?=\r\n\
         Date: Sat, 28 Nov 2026 00:00:00 +0000\r\nMessage-ID: <{tag}@src.test>\r\n\
         List-Unsubscribe: <mailto:unsub@src.test?subject={tag}>,\r\n <https://src.test/u/{tag}>\r\n\
         {extra_header}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello {tag},\r\n.a line that starts with a dot\r\n..and one with two\r\ntrailing spaces   \r\n\
         caf\u{e9} \u{2014} 8-bit text\r\n\r\n\r\n"
    )
}

fn scenario(shards: Option<u32>) {
    let keys = TempDir::new("dkim-keys");
    let mut txt = Vec::new();
    let mut key = |name: &str, kind: &str, dns: &str| {
        let (pem, record) = dkim_keypair(keys.path(), name, kind);
        txt.push(format!("{name}._domainkey.{dns}\t{record}"));
        pem.display().to_string()
    };
    let shop = key("s1", "rsa-pkcs1", "shop.test");
    let ed = key("ed", "ed25519", "ed.test");
    let star = key("star", "rsa-pkcs8", "any.test");
    let vmta_key = key("v1sel", "ed25519", "shop.test");
    let second = key("shop2", "ed25519", "shop.test");
    let receiver = PyReceiver::start();
    let relay = Relay::start(
        &format!(
            "domain-key s1,shop.test,{shop}\ndomain-key shop2,shop.test,{second}\ndomain-key ed,ed.test,{ed}\ndomain-key star,*,{star}\n\
             <virtual-mta v1>\n domain-key v1sel,shop.test,{vmta_key}\n</virtual-mta>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n process-x-virtual-mta yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n dkim-sign yes\n</domain>\n\
             <domain nosign.test>\n dkim-sign no\n</domain>\n",
            receiver.addr.port()
        ),
        shards,
    );
    let cases = [
        ("exact", "news@shop.test", "r@dest.test", ""),
        ("parent", "a@mail.shop.test", "r@dest.test", ""),
        ("ed25519", "b@ed.test", "r@dest.test", ""),
        ("star", "c@any.test", "r@dest.test", ""),
        ("vmta", "d@shop.test", "r@dest.test", "X-Virtual-MTA: v1\r\n"),
        ("unsigned", "e@shop.test", "r@nosign.test", ""),
        ("xoptions", "f@shop.test", "r@dest.test", "X-DKIM-Options: s=shop2\r\n"),
        ("optout", "g@shop.test", "r@dest.test", "X-DKIM-Options: sign=no\r\n"),
    ];
    for (tag, from, rcpt, extra) in cases {
        send(&relay, rcpt, &message(from, tag, extra));
    }
    let files = wait_for("all messages received", Duration::from_secs(20), || {
        let f = receiver.files();
        (f.len() == cases.len()).then_some(f)
    });
    let keys_file = keys.path().join("txt.tsv");
    std::fs::write(&keys_file, txt.join("\n") + "\n").unwrap();
    // A copy of the "exact" message with one body byte changed must fail.
    let by_tag = |tag: &str| {
        files
            .iter()
            .find(|f| std::fs::read_to_string(f).unwrap().contains(&format!("Subject: {tag} ")))
            .unwrap_or_else(|| panic!("{tag} received"))
            .clone()
    };
    let tampered = keys.path().join("tampered.eml");
    let original = std::fs::read_to_string(by_tag("exact")).unwrap();
    std::fs::write(&tampered, original.replace("Hello exact", "Hello exakt")).unwrap();
    let (code, out) = run(Command::new(VENV_PYTHON)
        .arg(py_script("dkim_verify.py"))
        .arg(&keys_file)
        .args(cases.iter().map(|(tag, ..)| by_tag(tag)))
        .arg(&tampered));
    assert_eq!(code, 0, "{out}");
    let results: HashMap<String, String> = out
        .lines()
        .map(|l| {
            let (path, rest) = l.split_once(' ').unwrap();
            (path.to_string(), rest.to_string())
        })
        .collect();
    let result = |tag: &str| results[&by_tag(tag).display().to_string()].clone();
    assert_eq!(result("exact"), "d=shop.test s=s1 a=rsa-sha256 verified=True", "{out}");
    assert_eq!(result("parent"), "d=shop.test s=s1 a=rsa-sha256 verified=True", "{out}");
    assert_eq!(result("ed25519"), "d=ed.test s=ed a=ed25519-sha256 verified=True", "{out}");
    assert_eq!(result("star"), "d=any.test s=star a=rsa-sha256 verified=True", "{out}");
    assert_eq!(result("vmta"), "d=shop.test s=v1sel a=ed25519-sha256 verified=True", "{out}");
    assert_eq!(result("unsigned"), "none", "{out}");
    assert_eq!(result("xoptions"), "d=shop.test s=shop2 a=ed25519-sha256 verified=True", "{out}");
    assert_eq!(result("optout"), "none", "{out}");
    for tag in ["xoptions", "optout"] {
        assert!(!std::fs::read_to_string(by_tag(tag)).unwrap().contains("X-DKIM-Options"), "removed");
    }
    assert_eq!(results[&tampered.display().to_string()], "d=shop.test s=s1 a=rsa-sha256 verified=False", "{out}");
    // One signature per message, on top (above sluice's Received header).
    let exact = std::fs::read_to_string(by_tag("exact")).unwrap();
    assert_eq!(exact.matches("DKIM-Signature:").count(), 1);
    assert!(exact.find("DKIM-Signature:") < exact.find("Received: from"), "{exact}");
    assert!(!std::fs::read_to_string(by_tag("vmta")).unwrap().contains("X-Virtual-MTA"), "header removed");
}

#[test]
fn dkim_signatures_verify_in_dkimpy_one_shard() {
    scenario(Some(1));
}

#[test]
fn dkim_signatures_verify_in_dkimpy_default_shards() {
    scenario(None);
}

/// A `domain-key` whose file cannot be read or is not a key stops check-config and run, with
/// the file and line of the directive.
#[test]
fn bad_key_files_are_config_errors() {
    let dir = TempDir::new("dkim-bad");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    for (line, expect) in [
        (format!("domain-key s,a.test,{}", dir.path().join("missing.pem").display()), "cannot read DKIM key"),
        (format!("domain-key s,a.test,{}", garbage.display()), "garbage.pem: "),
    ] {
        let conf = dir.path().join("k.conf");
        std::fs::write(&conf, format!("smtp-listener 127.0.0.1:1\n{line}\n")).unwrap();
        let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(&conf));
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("k.conf:2: ") && out.contains(expect), "{out}");
    }
}
