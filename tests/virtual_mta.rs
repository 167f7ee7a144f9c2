//! Virtual MTAs as a PowerMTA user configures them: the x-virtual-mta header picks the VMTA
//! (and is removed unless retained), the source's default-virtual-mta applies otherwise, a
//! pool rotates its members per connection, an unknown name is refused; each VMTA connects
//! from its own source address with its own EHLO name, and accounting says which did.

mod common;
use common::*;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

/// Sends one message from `source_ip` with an optional x-virtual-mta header; returns the
/// server's reply to the end of data ("250 ..." or the refusal).
fn send(port: u16, source_ip: &str, rcpt: &str, vmta: Option<&str>, tag: &str) -> String {
    let header = vmta.map(|v| format!("X-Virtual-MTA: {v}\\r\\n")).unwrap_or_default();
    let script = format!(
        r#"
import smtplib
msg = "From: s@src.test\r\nTo: {rcpt}\r\nSubject: {tag}\r\nX-Tag: {tag}\r\n{header}\r\nbody\r\n"
with smtplib.SMTP("127.0.0.1", {port}, source_address=("{source_ip}", 0)) as s:
    s.ehlo("client.test")
    s.mail("s@src.test")
    s.rcpt("{rcpt}")
    code, text = s.data(msg)
    print(code, text.decode())
"#
    );
    let (code, out) = run(Command::new("python3").arg("-c").arg(script));
    assert_eq!(code, 0, "{out}");
    out.trim().to_string()
}

fn scenario(shards: Option<u32>) {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let relay = Relay::start(
        &format!(
            "<virtual-mta mta1>\n smtp-source-host 127.0.0.2 mta1.test\n</virtual-mta>\n\
             <virtual-mta mta2>\n smtp-source-host 127.0.0.3 mta2.test\n</virtual-mta>\n\
             <virtual-mta-pool pool1>\n virtual-mta mta1\n virtual-mta mta2\n</virtual-mta-pool>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n process-x-virtual-mta yes\n default-virtual-mta mta2\n reject-invalid-virtual-mta yes\n</source>\n\
             <source 127.0.0.4>\n always-allow-relaying yes\n process-x-virtual-mta yes\n retain-x-virtual-mta yes\n</source>\n\
             <domain sink.test>\n smtp-hosts [127.0.0.1]:{}\n max-msg-per-connection 1\n</domain>\n",
            sink.addr.port()
        ),
        shards,
    );
    assert!(send(relay.port, "127.0.0.1", "a@sink.test", Some("mta1"), "t-mta1").starts_with("250"));
    assert!(send(relay.port, "127.0.0.1", "b@sink.test", None, "t-default").starts_with("250"));
    for i in 0..6 {
        assert!(send(relay.port, "127.0.0.1", &format!("p{i}@sink.test"), Some("pool1"), &format!("t-pool-{i}"))
            .starts_with("250"));
    }
    let refused = send(relay.port, "127.0.0.1", "c@sink.test", Some("nope"), "t-nope");
    assert!(refused.starts_with("550 5.7.1 Unknown virtual MTA `nope`"), "{refused}");
    assert!(send(relay.port, "127.0.0.4", "r@sink.test", Some("mta1"), "t-retain").starts_with("250"));

    let rows = relay.wait_rows("d", 9, Duration::from_secs(30));
    let row = |rcpt: &str| rows.iter().find(|r| r["rcpt"] == rcpt).unwrap_or_else(|| panic!("row for {rcpt}"));
    let r = row("a@sink.test");
    assert_eq!(
        (r["vmta"].as_str(), r["vmtaPool"].as_str(), r["queue"].as_str(), r["dlvSourceIp"].as_str()),
        ("mta1", "", "sink.test/mta1", "127.0.0.2")
    );
    let r = row("b@sink.test");
    assert_eq!(
        (r["vmta"].as_str(), r["queue"].as_str(), r["dlvSourceIp"].as_str()),
        ("mta2", "sink.test/mta2", "127.0.0.3")
    );
    let pool_vmtas: HashSet<&str> = (0..6).map(|i| row(&format!("p{i}@sink.test"))["vmta"].as_str()).collect();
    assert_eq!(pool_vmtas, HashSet::from(["mta1", "mta2"]), "the pool's members take turns");
    for i in 0..6 {
        let r = row(&format!("p{i}@sink.test"));
        assert_eq!((r["vmtaPool"].as_str(), r["queue"].as_str()), ("pool1", "sink.test/pool1"));
        let expected_ip = if r["vmta"] == "mta1" { "127.0.0.2" } else { "127.0.0.3" };
        assert_eq!(r["dlvSourceIp"], expected_ip);
    }
    assert!(!rows.iter().any(|r| r["rcpt"] == "c@sink.test"), "a refused message is not delivered");

    // What the receiver saw: the VMTA's address and EHLO name; the header gone unless retained.
    let messages = wait_for("9 messages at the sink", Duration::from_secs(10), || {
        let m = sink.messages();
        (m.len() == 9).then_some(m)
    });
    let by_tag = |tag: &str| {
        messages.iter().find(|m| m.contains(&format!("X-Tag: {tag}\n"))).unwrap_or_else(|| panic!("message {tag}"))
    };
    let m = by_tag("t-mta1");
    assert!(m.contains("X-Client-Addr: 127.0.0.2\n") && m.contains("X-Helo-Args: mta1.test\n"), "{m}");
    assert!(!m.to_ascii_lowercase().contains("x-virtual-mta"), "header removed: {m}");
    let m = by_tag("t-default");
    assert!(m.contains("X-Client-Addr: 127.0.0.3\n") && m.contains("X-Helo-Args: mta2.test\n"), "{m}");
    let m = by_tag("t-retain");
    assert!(m.contains("X-Virtual-MTA: mta1\n") && m.contains("X-Client-Addr: 127.0.0.2\n"), "retained: {m}");
}

#[test]
fn virtual_mtas_one_shard() {
    scenario(Some(1));
}

#[test]
fn virtual_mtas_default_shards() {
    scenario(None);
}
