//! `queue-to`: a domain's mail joins another domain's queue, with that queue's settings and
//! next hops (PowerMTA's explicit rollup: googlemail.com into gmail.com's queue).

mod common;
use common::*;
use std::time::Duration;

#[test]
fn queue_to_joins_the_target_queue() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain gmail.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n<domain googlemail.test>\n queue-to gmail.test\n</domain>\n",
            sink.addr.port()
        ),
        None,
    );
    // googlemail.test has no next hop of its own: it can only be delivered through gmail.test's.
    swaks_send(&relay, "a@googlemail.test,b@gmail.test");
    let rows = relay.wait_rows("d", 2, Duration::from_secs(20));
    for rcpt in ["a@googlemail.test", "b@gmail.test"] {
        let r = rows.iter().find(|r| r["rcpt"] == rcpt).unwrap_or_else(|| panic!("d row for {rcpt}"));
        assert_eq!(r["queue"], "gmail.test/default", "{rcpt} went through gmail.test's queue");
    }
    assert!(sink.messages().iter().any(|m| m.contains("X-Rcpt-Args: <a@googlemail.test>")));
}
