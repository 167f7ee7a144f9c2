//! Who may relay and what is refused, end to end: the replies a client sees and the fact
//! that nothing refused reaches the sink.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn py_send(port: u16, source_ip: &str, rcpt: &str) -> String {
    let script = format!(
        r#"
import smtplib
try:
    with smtplib.SMTP("127.0.0.1", {port}, source_address=("{source_ip}", 0)) as s:
        s.sendmail("a@src.test", ["{rcpt}"], "Subject: x\r\n\r\nbody\r\n")
    print("accepted")
except smtplib.SMTPRecipientsRefused as e:
    code, msg = list(e.recipients.values())[0]
    print(code, msg.decode())
except smtplib.SMTPConnectError as e:
    print(e.smtp_code, e.smtp_error.decode())
"#
    );
    run(Command::new("python3").arg("-c").arg(script)).1.trim().to_string()
}

fn scenario(shards: Option<u32>) {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n max-message-size 10K\n max-rcpt-per-message 2\n</source>\n\
             <source 127.0.0.3>\n smtp-service no\n</source>\n<source 0/0>\n always-allow-relaying no\n</source>\n\
             <domain sink.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            sink.addr.port()
        ),
        shards,
    );
    // RFC 5321 §3.6.2 / open relay: a source without relaying rights is refused at RCPT.
    assert_eq!(py_send(relay.port, "127.0.0.2", "x@sink.test"), "550 5.7.1 Relaying denied");
    // `smtp-service no` refuses at the greeting.
    assert!(py_send(relay.port, "127.0.0.3", "x@sink.test").starts_with("554 5.7.1"));
    assert_eq!(py_send(relay.port, "127.0.0.1", "ok@sink.test"), "accepted");

    let (mut t, greeting) = Talk::connect(relay.addr());
    assert!(greeting.starts_with("220 relay.test"), "{greeting}");
    assert!(t.cmd("EHLO c.test").contains("250-SIZE 10240"));
    // RFC 1870: declared size over the limit.
    assert!(t.cmd("MAIL FROM:<a@src.test> SIZE=20000").starts_with("552 5.3.4"));
    assert!(t.cmd("MAIL FROM:<a@src.test>").starts_with("250"));
    assert!(t.cmd("RCPT TO:<1@sink.test>").starts_with("250"));
    assert!(t.cmd("RCPT TO:<2@sink.test>").starts_with("250"));
    // RFC 5321 §4.5.3.1.10: too many recipients → 452.
    assert!(t.cmd("RCPT TO:<3@sink.test>").starts_with("452 4.5.3"));
    assert!(t.cmd("DATA").starts_with("354"));
    // SMTP smuggling: "\n.\n" must not end the data; the smuggled MAIL is message text.
    t.send(b"Subject: smuggle\r\n\r\nhello\n.\nMAIL FROM:<evil@src.test>\r\nRCPT TO:<victim@sink.test>\r\nDATA\r\nevil\r\n.\r\n");
    let reply = t.reply();
    assert!(reply.starts_with("550 5.6.0"), "bare LF refused: {reply}");
    // A real message is too large: 552 after the data.
    assert!(t.cmd("MAIL FROM:<a@src.test>").starts_with("250"));
    assert!(t.cmd("RCPT TO:<big@sink.test>").starts_with("250"));
    assert!(t.cmd("DATA").starts_with("354"));
    t.send(
        format!("Subject: big\r\n\r\n{}.\r\n", "0123456789012345678901234567890123456789\r\n".repeat(400)).as_bytes(),
    );
    assert!(t.reply().starts_with("552 5.3.4"));
    assert!(t.cmd("QUIT").starts_with("221"));

    let rows = relay.wait_rows("d", 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let rcpts_of = |kind: &str| -> Vec<String> { relay.rows_of(kind).iter().map(|r| r["rcpt"].clone()).collect() };
    assert_eq!(rcpts_of("d"), vec!["ok@sink.test".to_string()], "only the accepted message is delivered");
    assert_eq!(rcpts_of("r"), vec!["ok@sink.test".to_string()], "nothing refused was recorded as received");
    assert_eq!(relay.acct_rows().len(), 2);
    assert_eq!(rows.len(), 1);
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert!(!msgs[0].contains("evil"), "{}", msgs[0]);
}

#[test]
fn inbound_policy_one_shard() {
    scenario(Some(1));
}

#[test]
fn inbound_policy_default_shards() {
    scenario(None);
}
