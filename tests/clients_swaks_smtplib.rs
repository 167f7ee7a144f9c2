//! Real clients (swaks, Python's smtplib) inject through sluice; the sink receives each
//! message with its body intact and sluice's Received header on top.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn scenario(shards: Option<u32>) {
    require("swaks");
    require("python3");
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let relay = Relay::start(
        &format!("<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain sink.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n", sink.addr.port()),
        shards,
    );
    let (code, out) = run(Command::new("swaks")
        .args(["--server", &relay.addr().to_string(), "--from", "swaks@src.test", "--to", "a@sink.test,b@sink.test"])
        .args(["--header", "X-Test-Id: swaks-1", "--body", "hello from swaks"]));
    assert_eq!(code, 0, "swaks failed: {out}");
    assert!(out.contains("<-  250 2.0.0 Ok: queued as "), "{out}");
    let script = format!(
        r#"
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "py@src.test"; m["To"] = "c@sink.test"; m["Subject"] = "smtplib"; m["X-Test-Id"] = "smtplib-1"
m.set_content("hello from smtplib\n.leading dot line\n")
with smtplib.SMTP("127.0.0.1", {port}) as s:
    s.ehlo("py.client")
    assert s.has_extn("pipelining") and s.has_extn("size") and s.has_extn("8bitmime"), s.esmtp_features
    refused = s.send_message(m)
    assert refused == {{}}, refused
print("sent")
"#,
        port = relay.port
    );
    let (code, out) = run(Command::new("python3").arg("-c").arg(script));
    assert_eq!((code, out.trim()), (0, "sent"), "{out}");
    let rows = relay.wait_rows("d", 3, Duration::from_secs(30));
    // One `r` row per accepted recipient, saying who sent it.
    let received = relay.rows_of("r");
    let mut r_rcpts: Vec<&str> = received.iter().map(|r| r["rcpt"].as_str()).collect();
    r_rcpts.sort();
    assert_eq!(r_rcpts, ["a@sink.test", "b@sink.test", "c@sink.test"]);
    let py = received.iter().find(|r| r["rcpt"] == "c@sink.test").unwrap();
    assert_eq!((py["orig"].as_str(), py["srcMta"].as_str()), ("py@src.test", "py.client (127.0.0.1)"));
    let mut rcpts: Vec<&str> = rows.iter().map(|r| r["rcpt"].as_str()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["a@sink.test", "b@sink.test", "c@sink.test"]);
    // swaks' two recipients travel in one transaction: one dumped message for them.
    let messages = wait_for("two messages at the sink", Duration::from_secs(10), || {
        let m = sink.messages();
        (m.len() == 2).then_some(m)
    });
    let swaks = messages.iter().find(|m| m.contains("X-Test-Id: swaks-1")).expect("swaks message delivered");
    assert!(swaks.contains("X-Rcpt-Args: <a@sink.test>") && swaks.contains("X-Rcpt-Args: <b@sink.test>"), "{swaks}");
    assert!(swaks.contains("hello from swaks"));
    let py = messages.iter().find(|m| m.contains("X-Test-Id: smtplib-1")).expect("smtplib message delivered");
    assert!(py.contains("hello from smtplib"), "{py}");
    for m in &messages {
        let received = m.find("by relay.test (sluice) with ESMTP id").expect("sluice's Received header");
        let first_header = m.find("\nFrom: ").or_else(|| m.find("\nDate: ")).unwrap();
        assert!(received < first_header, "Received is prepended: {m}");
    }
}

#[test]
fn swaks_and_smtplib_one_shard() {
    scenario(Some(1));
}

#[test]
fn swaks_and_smtplib_default_shards() {
    scenario(None);
}
