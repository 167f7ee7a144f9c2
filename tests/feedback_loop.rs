//! Feedback loops: ARF reports (the RFC 5965 layout and a provider's, with a redacted
//! recipient) and an XARF report sent to the `<feedback-loop-processor>` address are taken by
//! sluice itself, even from a source without relaying rights, and become `f` accounting
//! records instead of being relayed; the complaining recipient is appended, fsynced, to the
//! `auto-suppress-list`'s file, so after a restart mail to them is refused at RCPT. Mail to
//! the address that is no report is dropped (`deliver-unmatched-email no`). Asynchronous
//! bounces (Postfix and Exchange DSNs) sent to the `<bounce-processor>` become `rb` records with
//! their bounce category, the recipient recovered from a VERP address.

mod common;
use common::*;
use std::time::Duration;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Sends `message` from 127.0.0.5 (no relaying rights) to the FBL address; returns smtplib's
/// outcome line.
fn send(relay: &Relay, message: &str) -> String {
    send_to(relay, "reports@provider.example", "fbl@fbl.example.com", message)
}

fn send_to(relay: &Relay, from: &str, to: &str, message: &str) -> String {
    // The fixtures have LF line ends; SMTP wants CRLF.
    let message = message.replace("\r\n", "\n").replace('\n', "\r\n");
    smtplib_send(relay, "127.0.0.5", from, &[to], message.as_bytes())
}

#[test]
fn reports_become_f_records_and_complainers_are_suppressed() {
    let dir = TempDir::new("fbl");
    let complainers = dir.path().join("complainers.txt");
    std::fs::write(&complainers, "").unwrap();
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let mut relay = Relay::start(
        &format!(
            "<address-list complainers>\n address-file {}\n</address-list>\n\
             <acct-file {}>\n records f\n record-fields f *, header_subject, header_Message-Id\n</acct-file>\n\
             <feedback-loop-processor>\n deliver-unmatched-email no\n auto-suppress-list complainers\n\
             <address-list>\n address /^fbl@fbl\\.example\\.com$/\n </address-list>\n</feedback-loop-processor>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n suppression-lists complainers\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            complainers.display(),
            dir.path().join("fbl.csv").display(),
            sink.addr.port()
        ),
        Some(1),
    );
    let json = fixture("xarf/spam_spamcop_sample.json");
    let xarf = format!("From: reports@antispam-service.example\nTo: fbl@fbl.example.com\nSubject: XARF report\nContent-Type: application/json\n\n{json}");
    for m in [fixture("arf/rfc5965-style-abuse.eml"), fixture("arf/redacted-provider-style.eml"), xarf] {
        assert_eq!(send(&relay, &m), "sent");
        if m.contains("complainer@mailbox-provider.example") {
            // Durable before the 250: the complainer is in the file the moment the report
            // is acknowledged (a crash right after the 250 could not lose it).
            let now = std::fs::read_to_string(&complainers).unwrap_or_default();
            assert!(now.contains("complainer@mailbox-provider.example"), "{now:?}");
        }
    }
    let f = relay.wait_rows("f", 3, Duration::from_secs(10));
    let row = |rcpt: &str| f.iter().find(|r| r["rcpt"] == rcpt).unwrap_or_else(|| panic!("{rcpt} in {f:?}"));
    let a = row("complainer@mailbox-provider.example");
    assert_eq!(
        (a["format"].as_str(), a["feedbackType"].as_str(), a["userAgent"].as_str(), a["jobId"].as_str()),
        ("arf", "abuse", "SomeGenerator/1.0", "job42")
    );
    assert_eq!(
        (a["reportingMTA"].as_str(), a["dlvSourceIp"].as_str()),
        ("mail.mailbox-provider.example", "192.0.2.10")
    );
    assert_eq!(a["orig"], "bounces+job42@bounces.example.com");
    assert_eq!(a["repSourceIp"], "127.0.0.5", "the address that handed in the report");
    // The header columns come from the reported message the report returns (a file as a
    // public FBL handler's README configures it).
    let fbl = acct_files_of(dir.path(), "fbl")
        .iter()
        .flat_map(|f| parse_csv_rows(&std::fs::read_to_string(f).unwrap()))
        .collect::<Vec<_>>();
    let reported = fbl.iter().find(|r| r["rcpt"] == "complainer@mailbox-provider.example").expect("the f row");
    assert_eq!(reported["header_Message-Id"], "<8787KJKJ3K4J3K4J3K4J3.mail@example.com>", "{reported:?}");
    let b = row("redacted@mailbox-provider.example");
    assert_eq!((b["userAgent"].as_str(), b["jobId"].as_str()), ("ProviderFBL/0.1", "job7"));
    let x = f.iter().find(|r| r["format"] == "xarf").expect("the XARF report");
    assert_eq!((x["feedbackType"].as_str(), x["orig"].as_str()), ("messaging/spam", "marketing@example.com"));
    // Not a report: accepted and dropped.
    assert_eq!(send(&relay, "From: someone@x.test\nSubject: hello\n\nnot a report\n"), "sent");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(relay.rows_of("f").len(), 3);
    assert!(sink.messages().is_empty(), "nothing sent to the FBL address is relayed");
    // The complainer was written to the list's file, and is refused after a restart.
    let text = wait_for("the complainer in the file", Duration::from_secs(10), || {
        let t = std::fs::read_to_string(&complainers).unwrap();
        t.contains("complainer@mailbox-provider.example").then_some(t)
    });
    assert!(text.lines().all(|l| !l.is_empty()));
    // Refused at once (every shard sees the list grow), and after a restart (from the file).
    let (mut t, _) = Talk::connect(relay.addr());
    t.cmd("EHLO c.test");
    t.cmd("MAIL FROM:<news@example.com>");
    let reply = t.cmd("RCPT TO:<complainer@mailbox-provider.example>");
    assert!(reply.starts_with("550 5.7.1 <complainer@mailbox-provider.example> is suppressed"), "{reply}");
    drop(t);
    assert_eq!(relay.terminate(Duration::from_secs(10)), 0);
    relay.spawn();
    let (mut t, _) = Talk::connect(relay.addr());
    t.cmd("EHLO c.test");
    t.cmd("MAIL FROM:<news@example.com>");
    let reply = t.cmd("RCPT TO:<complainer@mailbox-provider.example>");
    assert!(
        reply.starts_with("550 5.7.1 <complainer@mailbox-provider.example> is suppressed (address-list complainers)"),
        "{reply}"
    );
    assert!(t.cmd("RCPT TO:<someone-else@mailbox-provider.example>").starts_with("250"));
    drop(t);
    // A complaint that cannot be written down is not acknowledged: the reporter gets 451 and
    // sends it again later (here the file has become a directory).
    std::fs::remove_file(&complainers).unwrap();
    std::fs::create_dir(&complainers).unwrap();
    let again = send(&relay, &fixture("arf/redacted-provider-style.eml"));
    assert!(again.starts_with("refused") && again.contains("451"), "{again}");
    std::fs::remove_dir(&complainers).unwrap();
    std::fs::write(&complainers, "").unwrap();
    assert_eq!(send(&relay, &fixture("arf/redacted-provider-style.eml")), "sent");
    assert!(std::fs::read_to_string(&complainers).unwrap().contains("redacted@mailbox-provider.example"));
}

#[test]
fn asynchronous_bounces_become_rb_records() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let dir = TempDir::new("hard");
    let hard = dir.path().join("hard-bounces.txt");
    std::fs::write(&hard, "").unwrap();
    let relay = Relay::start(
        &format!(
            "<address-list hard-bounces>\n address-file {}\n</address-list>\n\
             <bounce-processor>\n auto-suppress-list hard-bounces\n <address-list>\n domain bounces.example.com\n </address-list>\n</bounce-processor>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n suppression-lists hard-bounces\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            hard.display(),
            sink.addr.port()
        ),
        None,
    );
    let dsn = |name: &str| {
        std::fs::read_to_string(format!("{}/tests/fixtures/dsn/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let verp = "bounces+gone.user=receiver.example@bounces.example.com";
    assert_eq!(send_to(&relay, "", verp, &dsn("postfix.eml")), "sent");
    assert_eq!(send_to(&relay, "", "bounces@bounces.example.com", &dsn("exchange.eml")), "sent");
    let rb = relay.wait_rows("rb", 2, Duration::from_secs(10));
    let row = |rcpt: &str| rb.iter().find(|r| r["rcpt"] == rcpt).unwrap_or_else(|| panic!("{rcpt} in {rb:?}"));
    let p = row("gone.user@receiver.example");
    assert_eq!(
        (p["dsnStatus"].as_str(), p["bounceCat"].as_str(), p["jobId"].as_str(), p["dsnMta"].as_str()),
        ("5.1.1 (bad destination mailbox address)", "bad-mailbox", "job-2026-11", "store.receiver.example")
    );
    let e = row("full.box@corp.example");
    assert_eq!((e["dsnStatus"].as_str(), e["bounceCat"].as_str()), ("5.2.2 (mailbox full)", "quota-issues"));
    assert!(e["dsnDiag"].starts_with("smtp;552 5.2.2 mailbox full"), "{e:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(sink.messages().is_empty(), "bounces are taken, not relayed");
    // The bounce processor's auto-suppress-list: the recipient that does not exist is
    // refused from now on and kept in the list's file; the full mailbox is not.
    let (mut t, _) = Talk::connect(relay.addr());
    t.cmd("EHLO c.test");
    t.cmd("MAIL FROM:<news@example.com>");
    let reply = t.cmd("RCPT TO:<gone.user@receiver.example>");
    assert!(reply.starts_with("550 5.7.1") && reply.contains("hard-bounces"), "{reply}");
    assert!(t.cmd("RCPT TO:<full.box@corp.example>").starts_with("250"));
    assert_eq!(std::fs::read_to_string(&hard).unwrap(), "gone.user@receiver.example\n");
}

/// The Postmastery pmtabounce addon (Interspire Email Marketer) configured as its README says:
/// its own `<acct-file>` of `b` and `rb` rows with `header_X-Mailer-LID` and
/// `header_X-Mailer-SID`, read by column name (tests/py/pmtabounce_reader.py follows its
/// `ParseFile`). Every bounce, synchronous or asynchronous, reaches it with the list and the
/// mailing of the message it bounced: the asynchronous ones from the headers the DSN returns.
#[test]
fn the_iem_bounce_addon_finds_every_bounce_with_its_list() {
    let refusing = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &["-f", "RCPT"], false);
    let addon = TempDir::new("iem-bounces");
    let relay = Relay::start(
        &format!(
            "<acct-file {}>\n  move-interval 5m\n  records b, rb\n\
             \x20 record-fields b timeLogged, rcpt, dsnAction, dsnStatus, dsnDiag, bounceCat, header_X-Mailer-LID, header_X-Mailer-SID\n\
             \x20 record-fields rb timeLogged, rcpt, dsnAction, dsnStatus, dsnDiag, bounceCat, header_X-Mailer-LID, header_X-Mailer-SID\n\
             \x20 world-readable yes\n  iso-times no # unix timestamp\n</acct-file>\n\
             <bounce-processor>\n <address-list>\n domain bounces.example.com\n </address-list>\n</bounce-processor>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            addon.path().join("bounces.csv").display(),
            refusing.addr.port()
        ),
        None,
    );
    // A synchronous bounce: the receiver refuses the recipient.
    let message = "From: News <news@example.com>\r\nTo: <sync.gone@receiver.example>\r\nSubject: Weekly news\r\n\
                   X-Mailer-LID: 14\r\nX-Mailer-SID: 347\r\n\r\nHello.\r\n";
    assert_eq!(
        smtplib_send(
            &relay,
            "127.0.0.1",
            "bounces@bounces.example.com",
            &["sync.gone@receiver.example"],
            message.as_bytes()
        ),
        "sent"
    );
    // Two asynchronous ones, as Postfix and Exchange write them.
    let dsn = |name: &str| {
        std::fs::read_to_string(format!("{}/tests/fixtures/dsn/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let verp = "bounces+gone.user=receiver.example@bounces.example.com";
    assert_eq!(send_to(&relay, "", verp, &dsn("postfix.eml")), "sent");
    assert_eq!(send_to(&relay, "", "bounces@bounces.example.com", &dsn("exchange.eml")), "sent");
    relay.wait_rows("rb", 2, Duration::from_secs(10));
    relay.wait_rows("b", 1, Duration::from_secs(10));
    let files = wait_for("the addon's file with three bounces", Duration::from_secs(10), || {
        let files = acct_files_of(addon.path(), "bounces");
        let rows: usize = files.iter().map(|f| parse_csv_rows(&std::fs::read_to_string(f).unwrap()).len()).sum();
        (rows >= 3).then_some(files)
    });
    let (code, out) = run(std::process::Command::new("python3").arg(py_script("pmtabounce_reader.py")).args(&files));
    assert_eq!(code, 0, "{out}");
    let found: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |email: &str| {
        found.iter().find(|b| b["email"] == email).unwrap_or_else(|| panic!("{email} not found by the addon: {out}"))
    };
    let sync = of("sync.gone@receiver.example");
    assert_eq!((sync["type"].as_str(), sync["statid"].as_str()), (Some("b"), Some("347")), "{out}");
    assert_eq!(sync["listids"], serde_json::json!(["14"]), "{out}");
    let postfix = of("gone.user@receiver.example");
    assert_eq!((postfix["type"].as_str(), postfix["bounce_type"].as_str()), (Some("rb"), Some("hard")), "{out}");
    assert_eq!((postfix["listids"].clone(), postfix["statid"].as_str()), (serde_json::json!(["12"]), Some("345")));
    let exchange = of("full.box@corp.example");
    assert_eq!((exchange["type"].as_str(), exchange["bounce_type"].as_str()), (Some("rb"), Some("soft")), "{out}");
    assert_eq!(
        (exchange["listids"].clone(), exchange["statid"].as_str()),
        (serde_json::json!(["12", "14"]), Some("346"))
    );
    assert_eq!(found.len(), 3, "{out}");
}
