//! A second DKIM signature (User's Guide 10.3.4), written as the Guide's example: the
//! customer's signature for the From domain and the ESP's (`second-dkim-identity @esp.test`),
//! both with one more field for one destination (`dkim-headers` / `second-dkim-headers` in its
//! `<domain>` block; the Guide's example adds Feedback-ID, which sluice signs by default). Both signatures verify in dkimpy and in Perl's Mail::DKIM, also after
//! the relay converted 8-bit content for a receiver without 8BITMIME (both signed again).

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn message(tag: &str) -> String {
    format!(
        "From: News <news@customer.test>\r\nTo: <r@dest.test>\r\nSubject: {tag}\r\n\
         Date: Sun, 06 Dec 2026 00:00:00 +0000\r\nMessage-ID: <{tag}@customer.test>\r\n\
         Feedback-ID: {tag}:campaign7:esp\r\nX-Esp-Campaign: campaign7\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         Hello {tag}, caf\u{e9}.\r\n"
    )
}

#[test]
fn the_esp_signs_beside_the_customer_and_both_verify() {
    require("perl");
    let keys = TempDir::new("dkim2-keys");
    let mut txt = Vec::new();
    let mut key = |name: &str, kind: &str, dns: &str| {
        let (pem, record) = dkim_keypair(keys.path(), name, kind);
        txt.push(format!("{name}._domainkey.{dns}\t{record}"));
        pem.display().to_string()
    };
    let customer = key("2017-01", "rsa-pkcs1", "customer.test");
    let esp = key("2017k1", "rsa-pkcs8", "esp.test");
    let eight = PyReceiver::start();
    let seven = PyReceiver::start_with(&["--no-8bitmime"]);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n default-virtual-mta 12345\n</source>\n\
             <virtual-mta 12345>\n smtp-source-host 127.0.0.1 mta.esp.test\n\
             \x20domain-key 2017k1, esp.test, {esp}\n domain-key 2017-01, customer.test, {customer}\n\
             \x20<domain gmail.test>\n  dkim-headers X-Esp-Campaign\n  second-dkim-headers X-Esp-Campaign\n </domain>\n\
             \x20<domain *>\n  dkim-sign yes\n  second-dkim-sign yes\n  second-dkim-identity @esp.test\n </domain>\n\
             </virtual-mta>\n\
             <domain gmail.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <domain other.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <domain seven.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            eight.addr.port(),
            eight.addr.port(),
            seven.addr.port()
        ),
        Some(1),
    );
    for (tag, rcpt) in [("gmail", "r@gmail.test"), ("other", "r@other.test"), ("seven", "r@seven.test")] {
        let sent = smtplib_send(&relay, "127.0.0.1", "bounces@esp.test", &[rcpt], message(tag).as_bytes());
        assert_eq!(sent, "sent");
    }
    let files: Vec<PathBuf> = wait_for("three messages received", Duration::from_secs(20), || {
        let f: Vec<PathBuf> = eight.files().into_iter().chain(seven.files()).collect();
        (f.len() == 3).then_some(f)
    });
    let by_tag = |tag: &str| {
        files
            .iter()
            .find(|f| std::fs::read_to_string(f).unwrap_or_default().contains(&format!("Subject: {tag}\r\n")))
            .unwrap_or_else(|| panic!("{tag} received"))
            .clone()
    };
    let seven_text = std::fs::read_to_string(by_tag("seven")).unwrap();
    assert!(seven_text.contains("Content-Transfer-Encoding: quoted-printable"), "converted: {seven_text}");
    let keys_file = keys.path().join("txt.tsv");
    std::fs::write(&keys_file, txt.join("\n") + "\n").unwrap();
    let paths: Vec<PathBuf> = ["gmail", "other", "seven"].iter().map(|t| by_tag(t)).collect();

    let (code, py) = run(Command::new(VENV_PYTHON).arg(py_script("dkim_verify_each.py")).arg(&keys_file).args(&paths));
    assert_eq!(code, 0, "{py}");
    let (code, pl) = run(Command::new("perl")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/perl/dkim_verify_each.pl"))
        .arg(&keys_file)
        .args(&paths));
    assert_eq!(code, 0, "{pl}");
    for (tag, path) in ["gmail", "other", "seven"].iter().zip(&paths) {
        let p = path.display().to_string();
        let line = py.lines().find(|l| l.starts_with(&p)).unwrap_or_else(|| panic!("{tag}: {py}"));
        let sigs: Vec<&str> = line[p.len()..].split(" | ").map(str::trim).collect();
        assert_eq!(sigs.len(), 2, "{tag}: two signatures: {line}");
        assert!(sigs[0].starts_with("d=customer.test s=2017-01 i= "), "{tag}: the customer's first: {line}");
        assert!(sigs[1].starts_with("d=esp.test s=2017k1 i=@esp.test "), "{tag}: the ESP's second: {line}");
        for s in &sigs {
            assert!(s.ends_with("verified=True"), "{tag}: dkimpy: {line}");
            // Feedback-ID is signed by default; the destination's block adds a field.
            assert!(s.to_ascii_lowercase().contains("feedback-id"), "{tag}: {line}");
            let campaign = s.to_ascii_lowercase().contains("x-esp-campaign");
            assert_eq!(campaign, *tag == "gmail", "{tag}: X-Esp-Campaign signed only for gmail.test: {line}");
        }
        let line = pl.lines().find(|l| l.starts_with(&p)).unwrap_or_else(|| panic!("{tag}: {pl}"));
        assert_eq!(
            &line[p.len()..],
            " d=customer.test s=2017-01 pass d=esp.test s=2017k1 pass",
            "{tag}: Mail::DKIM: {pl}"
        );
    }
}
