//! 10,000 messages from Postfix's smtp-source relayed through sluice to Postfix's smtp-sink:
//! every message delivered once (one `d` row each), and the spool empty afterwards.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const MESSAGES: usize = 10_000;

fn scenario(shards: Option<u32>) {
    require("smtp-source");
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], false);
    let relay = Relay::start(&format!("<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain sink.test>\n smtp-hosts [127.0.0.1]:{}\n max-smtp-out 20\n</domain>\n", sink.addr.port()), shards);
    let (code, out) = run(Command::new("smtp-source")
        .args(["-s", "20", "-m", &MESSAGES.to_string(), "-l", "1024", "-f", "sender@src.test", "-t", "rcpt@sink.test"])
        .arg(relay.addr().to_string()));
    assert_eq!(code, 0, "smtp-source failed: {out}");
    let rows = relay.wait_rows("d", MESSAGES, Duration::from_secs(120));
    assert_eq!(rows.len(), MESSAGES, "exactly one d row per message");
    for r in &rows {
        assert_eq!(r["rcpt"], "rcpt@sink.test");
        assert_eq!(r["orig"], "sender@src.test");
        assert_eq!(r["dsnStatus"], "2.0.0 (success)");
        assert_eq!(r["dlvDestinationIp"], "127.0.0.1");
        assert!(r["dsnDiag"].starts_with("smtp;250"), "{r:?}");
    }
    assert!(relay.rows_of("b").is_empty() && relay.rows_of("t").is_empty());
    wait_for("the spool to empty", Duration::from_secs(20), || relay.segments().is_empty().then_some(()));
}

#[test]
fn ten_thousand_messages_one_shard() {
    scenario(Some(1));
}

#[test]
fn ten_thousand_messages_default_shards() {
    scenario(None);
}
