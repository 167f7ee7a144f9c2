//! A session whose message waits for the control plane (inbound SPF/DKIM/DMARC checks) when the
//! answer is lost on the way, as a full shard mailbox loses it (issue 22): the client is told
//! `451` within `smtp-data-timeout` and the session goes on, instead of waiting with no socket
//! operation and no deadline for ever (a leaked connection). `SLUICE_FAULTS=lose-answers`
//! drops every such answer (test-only).

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn a_lost_answer_to_the_checks_is_a_451_in_time_not_a_hung_session() {
    let dns_port = free_port("127.0.0.1"); // nothing answers there: lookups fail at once
    let relay = Relay::start_with_env(
        &format!(
            "dns-server 127.0.0.1:{dns_port}\nsmtp-data-timeout 2s\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n check-spf-inbound yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:9\n</domain>\n"
        ),
        Some(1),
        &[("SLUICE_FAULTS", "lose-answers")],
    );
    let (mut t, greeting) = Talk::connect(relay.addr());
    assert!(greeting.starts_with("220"));
    assert!(t.cmd("EHLO c.example").starts_with("250"));
    for i in 0..2 {
        assert!(t.cmd("MAIL FROM:<s@sender.example>").starts_with("250"));
        assert!(t.cmd("RCPT TO:<r@dest.example>").starts_with("250"));
        assert!(t.cmd("DATA").starts_with("354"));
        let start = Instant::now();
        t.send(b"Subject: checked\r\n\r\nhello\r\n.\r\n");
        let reply = t.reply();
        let waited = start.elapsed();
        assert!(reply.starts_with("451 4.3.0 The message checks did not answer in time"), "message {i}: {reply}");
        assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10), "{waited:?}");
    }
    assert!(t.cmd("NOOP").starts_with("250"), "the session goes on");
    assert!(relay.log().contains("no answer from the message checks in time"), "{}", tail(&relay.log(), 10));
}
