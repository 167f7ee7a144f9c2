//! Deferral and bounce, with the accounting rows a user reads: a 4xx is retried per
//! `retry-after` and then delivered; a 5xx bounces at once with its category; a deferral
//! past `bounce-after` expires with `message-expired`; an unreachable host is deferred.

mod common;
use common::*;
use std::time::Duration;

fn scenario(shards: Option<u32>) {
    require("swaks");
    let retry_port = free_port("127.0.0.1");
    let dead_port = free_port("127.0.0.1");
    let greylist =
        SmtpSink::start("127.0.0.1", retry_port, &["-r", "RCPT", "-b", "451 4.7.1 greylisted, try later"], false);
    let hard =
        SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &["-f", "RCPT", "-B", "550 5.1.1 user unknown"], false);
    let expire =
        SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &["-r", "RCPT", "-b", "452 4.2.2 mailbox full"], false);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain retry.test>\n smtp-hosts [127.0.0.1]:{retry_port}\n retry-after 1s\n</domain>\n\
             <domain bounce.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <domain expire.test>\n smtp-hosts [127.0.0.1]:{}\n retry-after 1s\n bounce-after 3s\n</domain>\n\
             <domain dead.test>\n smtp-hosts [127.0.0.1]:{dead_port}\n retry-after 1s\n bounce-after 3s\n</domain>\n",
            hard.addr.port(),
            expire.addr.port()
        ),
        shards,
    );
    swaks_send(&relay, "later@retry.test");
    swaks_send(&relay, "nobody@bounce.test");
    swaks_send(&relay, "full@expire.test");
    swaks_send(&relay, "x@dead.test");

    // 4xx → a `t` row, then, once the receiver accepts, a `d` row.
    let row_for = |kind: &str, rcpt: &str| relay.rows_of(kind).into_iter().find(|r| r["rcpt"] == rcpt);
    let t =
        wait_for("t row for the greylisted recipient", Duration::from_secs(15), || row_for("t", "later@retry.test"));
    assert_eq!((t["dsnAction"].as_str(), t["dsnStatus"].as_str()), ("delayed", "4.7.1 (delivery not authorized)"));
    assert_eq!(t["dsnDiag"], "smtp;451 4.7.1 greylisted, try later");
    greylist.stop();
    let _open = SmtpSink::start("127.0.0.1", retry_port, &[], false);
    let d = wait_for("d row after retry", Duration::from_secs(15), || row_for("d", "later@retry.test"));
    assert_eq!((d["dsnAction"].as_str(), d["queue"].as_str()), ("relayed", "retry.test/default"));

    // 5xx → one `b` row, classified, and no further attempt.
    let b = wait_for("b row for the unknown user", Duration::from_secs(15), || row_for("b", "nobody@bounce.test"));
    assert_eq!(
        (b["dsnAction"].as_str(), b["dsnStatus"].as_str(), b["bounceCat"].as_str()),
        ("failed", "5.1.1 (bad destination mailbox address)", "bad-mailbox")
    );
    assert_eq!(b["dsnDiag"], "smtp;550 5.1.1 user unknown");

    // Deferred past bounce-after → expired.
    let e = wait_for("expiry bounce", Duration::from_secs(20), || row_for("b", "full@expire.test"));
    assert_eq!(e["bounceCat"], "message-expired");
    // An expiry is a permanent failure (RFC 3463 5.4.7), not the last deferral's 4.x.x:
    // scripts that count 5.x.x as bounced count it.
    assert_eq!(
        (e["dsnAction"].as_str(), e["dsnStatus"].as_str()),
        ("failed", "5.4.7 (delivery time expired)"),
        "{e:?}"
    );
    assert!(
        relay.rows_of("t").iter().filter(|r| r["rcpt"] == "full@expire.test").count() >= 1,
        "deferred before expiring"
    );

    // Nobody listening: deferred as a connection failure, then expired.
    let dead_t = wait_for("deferral for the dead host", Duration::from_secs(15), || row_for("t", "x@dead.test"));
    assert!(dead_t["dsnDiag"].contains("4.4.1"), "{dead_t:?}");
    let dead_b = wait_for("dead host expiry", Duration::from_secs(20), || row_for("b", "x@dead.test"));
    assert_eq!(dead_b["bounceCat"], "message-expired");
    assert_eq!(dead_b["dsnStatus"], "5.4.7 (delivery time expired)", "{dead_b:?}");

    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(relay.rows_of("b").iter().filter(|r| r["rcpt"] == "nobody@bounce.test").count(), 1, "a bounce is final");
    assert_eq!(relay.rows_of("d").len(), 1);
    wait_for("the spool to empty", Duration::from_secs(10), || relay.segments().is_empty().then_some(()));
}

#[test]
fn retry_and_bounce_one_shard() {
    scenario(Some(1));
}

#[test]
fn retry_and_bounce_default_shards() {
    scenario(None);
}
