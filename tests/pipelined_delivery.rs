//! Transactions pipelined behind the end of data (RFC 2920 §3.1: the message content may be
//! the first "command" of a group, DATA its last): with mail waiting for a connection to a
//! receiver that offers PIPELINING, the next message's MAIL, RCPT and DATA go in the same
//! write as the end of data, so a message costs one round trip, not two. The receiver is
//! Postfix's smtp-sink (a real, independent implementation); `ignore-pipelining yes` turns it
//! off with the rest of pipelining.

mod common;
use common::*;
use std::time::Duration;

const MESSAGES: usize = 6;

/// Injects `MESSAGES` messages for one destination that takes one connection (`max-smtp-out
/// 1`) to smtp-sink, which waits a second before answering DATA (so the mail queues behind
/// the first), and returns the relay's log once every message is delivered once.
fn deliver_queued(domain_extra: &str) -> String {
    let port = free_port("127.0.0.1");
    let sink = SmtpSink::start("127.0.0.1", port, &["-w", "1"], true);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain pipe.test>\n smtp-hosts [127.0.0.1]:{port}\n max-smtp-out 1\n log-commands yes\n{domain_extra}</domain>\n"
        ),
        Some(1),
    );
    for i in 0..MESSAGES {
        let data = format!("Subject: queued {i}\r\n\r\nmessage {i}\r\n..dot line\r\n.\r\n");
        talk_send_data(&relay, "s@src.test", &format!("r{i}@pipe.test"), &data);
    }
    let rows = relay.wait_rows("d", MESSAGES, Duration::from_secs(60));
    assert_eq!(rows.len(), MESSAGES, "{}", tail(&relay.log(), 30));
    let messages = sink.messages();
    assert_eq!(messages.len(), MESSAGES, "each message once at the receiver");
    for i in 0..MESSAGES {
        // smtp-sink's dumps have LF line ends, the transparency undone.
        let got: Vec<&String> = messages.iter().filter(|m| m.contains(&format!("Subject: queued {i}\n"))).collect();
        assert_eq!(got.len(), 1, "message {i}");
        assert!(got[0].contains(&format!("\n\nmessage {i}\n.dot line\n")), "message {i}: {}", got[0]);
    }
    relay.log()
}

/// How many times the outbound transcript shows a MAIL sent right after a 354, before the
/// reply to that message's end of data: a transaction pipelined behind a body.
fn pipelined(log: &str) -> usize {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("out pipe.test")).collect();
    lines.windows(2).filter(|w| w[0].contains("< 354") && w[1].contains("> MAIL FROM:")).count()
}

#[test]
fn queued_messages_ride_behind_each_others_end_of_data_to_smtp_sink() {
    let log = deliver_queued("");
    // The first goes alone; the others queued meanwhile (smtp-sink waits before its 354).
    let n = pipelined(&log);
    assert!(n >= MESSAGES - 2, "{n} transactions pipelined behind a body:\n{}", tail(&log, 60));
}

#[test]
fn ignore_pipelining_sends_each_message_after_the_last_reply() {
    let log = deliver_queued(" ignore-pipelining yes\n");
    assert_eq!(pipelined(&log), 0, "{}", tail(&log, 60));
    assert!(log.contains("> MAIL FROM:"), "the transcript is there: {}", tail(&log, 20));
}
