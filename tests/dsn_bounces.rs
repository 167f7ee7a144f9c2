//! RFC 3464 bounce messages: with `generate-bounces yes` on its `<source>`, a message whose
//! recipients fail (a 5xx, or expiry after `bounce-after`) comes back to its envelope sender
//! as a multipart/report DSN from the null sender, which Python's email parser reads field by
//! field. A source without the setting, and a message with the null sender, get none.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

/// The DSN's structure as Python's `email` package (an independent parser) reads it:
/// content types of the parts, then each per-recipient block's fields.
fn parse_dsn(message: &str) -> String {
    let script = r#"
import sys, email
from email import policy
raw = sys.stdin.read()
msg = email.message_from_string(raw[raw.index("\nFrom: ") + 1:], policy=policy.default)
print("type", msg.get_content_type(), msg.get_param("report-type"))
print("parts", " ".join(p.get_content_type() for p in msg.iter_parts()))
status = list(msg.iter_parts())[1]
for block in status.get_payload():
    print("block", "|".join(f"{k}={v}" for k, v in block.items()))
headers = list(msg.iter_parts())[2].get_payload()
print("subject-returned", "Subject: dsn-test" in str(headers))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(message.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// smtp-sink writes its dump files as the bytes arrive: only DSNs whose closing MIME
/// boundary is there are whole.
fn complete(messages: Vec<String>) -> Vec<String> {
    messages.into_iter().filter(|m| m.trim_end().ends_with("--") && m.contains("--sluice-dsn-")).collect()
}

fn send(relay: &Relay, from_ip: &str, from: &str, rcpt: &str) {
    let (code, out) = run(Command::new("swaks").args([
        "--server",
        &relay.addr().to_string(),
        "--local-interface",
        from_ip,
        "--from",
        from,
        "--to",
        rcpt,
        "--header",
        "Subject: dsn-test",
    ]));
    assert_eq!(code, 0, "{out}");
}

fn scenario(shards: Option<u32>) {
    require("swaks");
    // The receivers: bad.test refuses its recipient, slow.test defers forever.
    let receiver = SluiceSink::start(
        &[
            "--reply",
            "bad.test:550 5.1.1 <a@bad.test>: no such user:100%",
            "--reply",
            "slow.test:451 4.3.0 try later:100%",
        ],
        u64::MAX,
    );
    // The senders' own mail server, where DSNs arrive.
    let senders = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let relay = Relay::start(
        &format!(
            "host-name relay.sluice.test\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n generate-bounces yes\n</source>\n\
             <source 127.0.0.4>\n always-allow-relaying yes\n</source>\n\
             <domain bad.test>\n smtp-hosts [127.0.0.1]:{r}\n</domain>\n\
             <domain slow.test>\n smtp-hosts [127.0.0.1]:{r}\n retry-after 1s\n bounce-after 2s\n</domain>\n\
             <domain src.test>\n smtp-hosts [127.0.0.1]:{s}\n</domain>\n",
            r = receiver.port,
            s = senders.addr.port()
        ),
        shards,
    );
    send(&relay, "127.0.0.1", "s@src.test", "a@bad.test");
    send(&relay, "127.0.0.1", "<>", "b@bad.test"); // null sender: never a DSN
    send(&relay, "127.0.0.4", "t@src.test", "c@bad.test"); // source without generate-bounces
    send(&relay, "127.0.0.1", "u@src.test", "d@slow.test"); // expires after 2s
    let dsn_rows = |n| {
        wait_for("DSN deliveries", Duration::from_secs(20), || {
            let d: Vec<_> = relay.rows_of("d").into_iter().filter(|r| r["orig"].is_empty()).collect();
            (d.len() >= n).then_some(d)
        })
    };
    let rows = dsn_rows(2);
    let mut to: Vec<&str> = rows.iter().map(|r| r["rcpt"].as_str()).collect();
    to.sort();
    assert_eq!(to, ["s@src.test", "u@src.test"], "one DSN to each sender whose source asks for them");
    assert_eq!(
        relay.rows_of("b").len(),
        4,
        "every failed recipient has its b record: {:?}",
        relay
            .rows_of("b")
            .iter()
            .map(|r| (r["orig"].clone(), r["rcpt"].clone(), r["dsnDiag"].clone()))
            .collect::<Vec<_>>()
    );
    let messages = wait_for("DSNs at the senders' server", Duration::from_secs(10), || {
        let m = complete(senders.messages());
        (m.len() == 2).then_some(m)
    });
    let find = |rcpt: &str| messages.iter().find(|m| m.contains(&format!("To: <{rcpt}>"))).expect("a DSN").as_str();
    let hard = parse_dsn(find("s@src.test"));
    assert!(hard.contains("type multipart/report delivery-status"), "{hard}");
    assert!(hard.contains("parts text/plain message/delivery-status text/rfc822-headers"), "{hard}");
    assert!(hard.contains("block Reporting-MTA=dns; relay.sluice.test|Arrival-Date="), "{hard}");
    assert!(
        hard.contains("block Final-Recipient=rfc822; a@bad.test|Action=failed|Status=5.1.1|Remote-MTA=dns; 127.0.0.1|Diagnostic-Code=smtp; 550 5.1.1 <a@bad.test>: no such user|Last-Attempt-Date="),
        "{hard}"
    );
    assert!(hard.contains("subject-returned True"), "{hard}");
    let expired = parse_dsn(find("u@src.test"));
    assert!(
        expired.contains("block Final-Recipient=rfc822; d@slow.test|Action=failed|Status=5.4.7|Remote-MTA=dns; 127.0.0.1|Diagnostic-Code=smtp; 451 4.3.0 try later"),
        "{expired}"
    );
    // The DSN goes out from the null sender (RFC 5321 §4.5.5), so it can never bounce back.
    assert!(find("s@src.test").contains("\nX-Mail-Args: <> "), "{}", find("s@src.test"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(senders.messages().len(), 2, "no other DSN");
}

#[test]
fn dsn_one_shard() {
    scenario(Some(1));
}

#[test]
fn dsn_default_shards() {
    scenario(None);
}

/// A DSN is spooled like any accepted message: one waiting for the sender's server (down)
/// survives a SIGKILL and is delivered after the restart.
#[test]
fn dsn_survives_a_crash() {
    require("swaks");
    let receiver = SluiceSink::start(&["--reply", "bad.test:550 5.1.1 no such user:100%"], u64::MAX);
    let senders_port = free_port("127.0.0.1");
    let mut relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n generate-bounces yes\n</source>\n\
             <domain bad.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <domain src.test>\n smtp-hosts [127.0.0.1]:{senders_port}\n retry-after 1s\n</domain>\n",
            receiver.port
        ),
        Some(1),
    );
    send(&relay, "127.0.0.1", "s@src.test", "a@bad.test");
    wait_for("the DSN deferred: the senders' server is down", Duration::from_secs(20), || {
        relay.rows_of("t").into_iter().find(|r| r["rcpt"] == "s@src.test" && r["orig"].is_empty())
    });
    relay.kill9();
    let senders = SmtpSink::start("127.0.0.1", senders_port, &[], true);
    relay.spawn();
    let messages = wait_for("the DSN after the restart", Duration::from_secs(20), || {
        let m = complete(senders.messages());
        (!m.is_empty()).then_some(m)
    });
    // At least once: a crash between the DSN's fsync and its bounce's journal entry would
    // send a second one, never none.
    for m in &messages {
        assert!(parse_dsn(m).contains("Final-Recipient=rfc822; a@bad.test|Action=failed|Status=5.1.1"), "{m}");
    }
}
