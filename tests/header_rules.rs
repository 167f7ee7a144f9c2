//! What `<source>` and `<domain>` header rules do to the message a receiver gets:
//! `remove-received-headers` (the injector's trace goes, sluice's own stays), `remove-header`
//! at injection and per destination, `add-message-id-header`, `add-date-header`, and
//! `process-x-envid` (the envelope id into the accounting file, the header gone). Read back
//! byte for byte from a receiver nobody here wrote (aiosmtpd).

mod common;
use common::*;
use std::time::Duration;

const MESSAGE: &[u8] = b"Received: from app1.internal (10.1.2.3) by mta-in\r\n\
Received: from laptop by app1.internal\r\n\
X-Mailer: CampaignTool 4.2\r\n\
X-Internal-Route: blue\r\n\
X-Envid: batch-2026-12-01-42\r\n\
From: news@src.test\r\n\
To: reader@dest.test\r\n\
Subject: header rules\r\n\
\r\n\
Received: this line is body, not header\r\n\
X-Mailer: so is this\r\n";

fn header_of(msg: &str) -> &str {
    msg.split("\r\n\r\n").next().unwrap()
}

#[test]
fn source_and_domain_header_rules_shape_what_is_delivered() {
    let receiver = PyReceiver::start();
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n remove-received-headers yes\n \
             remove-header X-Mailer\n add-message-id-header yes\n add-date-header yes\n process-x-envid yes\n</source>\n\
             <source 127.0.0.2>\n always-allow-relaying yes\n</source>\n\
             <domain dest.test>\n smtp-hosts [127.0.0.1]:{port}\n remove-header X-Internal-Route\n</domain>\n\
             <domain other.test>\n smtp-hosts [127.0.0.1]:{port}\n</domain>\n",
            port = receiver.addr.port()
        ),
        Some(1),
    );
    assert_eq!(smtplib_send(&relay, "127.0.0.1", "news@src.test", &["reader@dest.test"], MESSAGE), "sent");
    assert_eq!(smtplib_send(&relay, "127.0.0.2", "news@src.test", &["reader@other.test"], MESSAGE), "sent");
    wait_for("two deliveries", Duration::from_secs(20), || (receiver.files().len() == 2).then_some(()));
    let mut shaped = None;
    let mut plain = None;
    for f in receiver.files() {
        let text = String::from_utf8(std::fs::read(&f).unwrap()).unwrap();
        let env = std::fs::read_to_string(f.with_extension("env")).unwrap();
        if env.contains("reader@dest.test") {
            shaped = Some(text);
        } else {
            plain = Some(text);
        }
    }
    let (shaped, plain) = (shaped.unwrap(), plain.unwrap());
    let head = header_of(&shaped);
    // One Received: sluice's own, first; the injector's two are gone.
    assert_eq!(head.matches("Received:").count(), 1, "{head}");
    assert!(head.starts_with("Received: from "), "{head}");
    assert!(head.contains("by relay.test"), "{head}");
    assert!(!head.contains("app1.internal"), "{head}");
    assert!(!head.contains("X-Mailer") && !head.contains("X-Envid"), "{head}");
    assert!(!head.contains("X-Internal-Route"), "the destination's remove-header: {head}");
    assert!(head.contains("\r\nMessage-ID: <") && head.contains("@relay.test>"), "{head}");
    assert!(head.contains("\r\nDate: "), "{head}");
    assert!(
        shaped.ends_with("\r\n\r\nReceived: this line is body, not header\r\nX-Mailer: so is this\r\n"),
        "{shaped}"
    );
    // Another source, another destination: the message as it came (plus sluice's Received).
    let head = header_of(&plain);
    assert_eq!(head.matches("Received:").count(), 3, "{head}");
    for kept in ["X-Mailer: CampaignTool 4.2", "X-Internal-Route: blue", "X-Envid: batch-2026-12-01-42"] {
        assert!(head.contains(kept), "{kept}: {head}");
    }
    assert!(!head.contains("Message-ID") && !head.contains("\r\nDate:"), "{head}");
    // The envelope id from X-Envid is in the accounting file.
    let d = relay.wait_rows("d", 2, Duration::from_secs(10));
    let row = d.iter().find(|r| r["rcpt"] == "reader@dest.test").unwrap();
    assert_eq!(row["envId"], "batch-2026-12-01-42", "{row:?}");
    let row = d.iter().find(|r| r["rcpt"] == "reader@other.test").unwrap();
    assert_eq!(row["envId"], "", "{row:?}");
}

/// `verp-default yes`: each recipient goes in its own transaction with PowerMTA's VERP return
/// path (`sender-rcptlocal=rcptdomain@senderdomain`); the accounting `orig` stays the
/// injected sender. Without it, one transaction carries both recipients.
#[test]
fn verp_default_gives_each_recipient_its_own_return_path() {
    let mx = ScriptedMx::start("127.0.0.1", MxScript::default());
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n verp-default yes\n</source>\n\
             <source 127.0.0.2>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            mx.addr.port()
        ),
        Some(1),
    );
    let msg = b"From: news@src.test\r\nSubject: verp\r\n\r\nhello\r\n";
    assert_eq!(smtplib_send(&relay, "127.0.0.1", "bounces@src.test", &["ann@dest.test", "bob@dest.test"], msg), "sent");
    let d = relay.wait_rows("d", 2, Duration::from_secs(20));
    assert!(d.iter().all(|r| r["orig"] == "bounces@src.test"), "{d:?}");
    assert_eq!(smtplib_send(&relay, "127.0.0.2", "bounces@src.test", &["cy@dest.test", "di@dest.test"], msg), "sent");
    relay.wait_rows("d", 4, Duration::from_secs(20));
    let mut mails: Vec<String> = mx.log().into_iter().filter(|l| l.starts_with("MAIL FROM:")).collect();
    assert_eq!(mails.len(), 3, "two VERP transactions, then one for both: {mails:?}");
    mails[..2].sort(); // the two VERP transactions may go on two connections at once
    assert!(mails[0].starts_with("MAIL FROM:<bounces-ann=dest.test@src.test>"), "{mails:?}");
    assert!(mails[1].starts_with("MAIL FROM:<bounces-bob=dest.test@src.test>"), "{mails:?}");
    assert!(mails[2].starts_with("MAIL FROM:<bounces@src.test>"), "{mails:?}");
}

/// `add-x-virtual-mta-header`: the receiver sees which VMTA sent the message (a pool's member),
/// unless the message carried the field already; sources without it send none.
#[test]
fn add_x_virtual_mta_header_names_the_sending_vmta() {
    let receiver = PyReceiver::start();
    let relay = Relay::start(
        &format!(
            "<virtual-mta mta1>\n smtp-source-host 127.0.0.1 mta1.test\n</virtual-mta>\n\
             <virtual-mta-pool pool1>\n virtual-mta mta1\n</virtual-mta-pool>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n default-virtual-mta pool1\n add-x-virtual-mta-header yes\n</source>\n\
             <source 127.0.0.2>\n always-allow-relaying yes\n default-virtual-mta pool1\n</source>\n\
             <domain dest.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            receiver.addr.port()
        ),
        Some(1),
    );
    let msg = |subject: &str| format!("From: a@src.test\r\nTo: r@dest.test\r\nSubject: {subject}\r\n\r\nbody\r\n");
    assert_eq!(smtplib_send(&relay, "127.0.0.1", "a@src.test", &["r@dest.test"], msg("added").as_bytes()), "sent");
    assert_eq!(smtplib_send(&relay, "127.0.0.2", "a@src.test", &["r@dest.test"], msg("none").as_bytes()), "sent");
    let files = wait_for("2 messages", Duration::from_secs(20), || {
        let f = receiver.files();
        (f.len() == 2).then_some(f)
    });
    let texts: Vec<String> = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    let added = texts.iter().find(|t| t.contains("Subject: added")).unwrap();
    assert!(header_of(added).contains("X-Virtual-MTA: mta1\r\n"), "{added}");
    let none = texts.iter().find(|t| t.contains("Subject: none")).unwrap();
    assert!(!none.to_ascii_lowercase().contains("x-virtual-mta"), "{none}");
    relay.wait_rows("d", 2, Duration::from_secs(10));
}

/// `date-header-time delivery` with `add-date-header override`: the Date a receiver sees is
/// the delivery's (here 3 s after the message was taken, the receiver being down at first),
/// and sluice's DKIM signature, made again over it, verifies in dkimpy.
#[test]
fn date_header_time_delivery_dates_the_attempt_and_the_signature_holds() {
    let keys = TempDir::new("date-keys");
    let (pem, record) = dkim_keypair(keys.path(), "s1", "rsa-pkcs8");
    let port = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "domain-key s1,src.test,{}\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n add-date-header override\n date-header-time delivery\n</source>\n\
             <domain dest.test>\n smtp-hosts [127.0.0.1]:{port}\n retry-after 1s\n dkim-sign yes\n</domain>\n",
            pem.display()
        ),
        Some(1),
    );
    let taken = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let msg = "From: a@src.test\r\nTo: r@dest.test\r\nDate: Sat, 01 Jan 2000 00:00:00 +0000\r\nSubject: dated\r\n\r\nbody\r\n";
    assert_eq!(smtplib_send(&relay, "127.0.0.1", "a@src.test", &["r@dest.test"], msg.as_bytes()), "sent");
    std::thread::sleep(Duration::from_secs(3));
    let receiver = PyReceiver::start_on(port);
    let files = wait_for("the message", Duration::from_secs(30), || {
        let f = receiver.files();
        (f.len() == 1).then_some(f)
    });
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let date = header_of(&text).lines().find_map(|l| l.strip_prefix("Date: ")).expect("a Date").to_string();
    assert_eq!(header_of(&text).matches("Date: ").count(), 1, "{text}");
    let (code, out) = run(std::process::Command::new("python3").args([
        "-c",
        "import email.utils, sys; print(int(email.utils.parsedate_to_datetime(sys.argv[1]).timestamp()))",
        &date,
    ]));
    assert_eq!(code, 0, "{out}");
    let dated: u64 = out.trim().parse().unwrap();
    assert!(dated >= taken + 2, "dated at delivery ({date}), not at reception ({taken})");
    let keys_file = keys.path().join("txt.tsv");
    std::fs::write(&keys_file, format!("s1._domainkey.src.test\t{record}\n")).unwrap();
    let (code, py) = run(std::process::Command::new(VENV_PYTHON)
        .arg(py_script("dkim_verify_each.py"))
        .arg(&keys_file)
        .arg(&files[0]));
    assert_eq!(code, 0, "{py}");
    assert!(py.contains("d=src.test s=s1") && py.trim_end().ends_with("verified=True"), "{py}");
}
