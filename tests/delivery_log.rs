//! What the log says about deliveries: one info line per deferral, bounce and failed
//! connection, naming the queue, the host and the reply; delivered mail only at debug; and a
//! storm of failures cut to the shard's log budget with a line saying how many were left out
//! (the accounting file keeps every outcome).

mod common;
use common::*;
use std::time::Duration;

#[test]
fn failures_are_logged_once_each_and_a_storm_is_bounded() {
    let sink = SluiceSink::start(
        &[
            "--reply",
            "defer.test:451 4.7.1 greylisted, come back later:100%",
            "--reply",
            "bounce.test:550 5.1.1 no such user:100%",
        ],
        u64::MAX,
    );
    let closed = free_port("127.0.0.1"); // nothing listens there
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n retry-after 1h\n</domain>\n\
             <domain down.test>\n smtp-hosts [127.0.0.1]:{closed}\n</domain>\n",
            sink.port
        ),
        Some(1),
    );
    for rcpt in ["a@ok.test", "b@defer.test", "c@bounce.test", "d@down.test"] {
        swaks_send(&relay, rcpt);
    }
    relay.wait_rows("b", 1, Duration::from_secs(20));
    relay.wait_rows("t", 2, Duration::from_secs(20));
    relay.wait_rows("d", 1, Duration::from_secs(20));
    let log = wait_for("the log lines", Duration::from_secs(10), || {
        let log = relay.log();
        (log.contains("connection failed") && log.contains("bounced") && log.contains("deferred")).then_some(log)
    });
    let line = |what: &str, queue: &str| -> String {
        log.lines()
            .find(|l| l.contains(what) && l.contains(&format!("queue={queue}")))
            .unwrap_or_else(|| panic!("a `{what}` line for {queue} in\n{log}"))
            .to_string()
    };
    let deferred = line("deferred", "defer.test/default");
    assert!(deferred.contains(" INFO ") && deferred.contains("host=127.0.0.1"), "{deferred}");
    assert!(deferred.contains("451 4.7.1 greylisted, come back later"), "{deferred}");
    let bounced = line("bounced", "bounce.test/default");
    assert!(bounced.contains("550 5.1.1 no such user") && bounced.contains("category=bad-mailbox"), "{bounced}");
    let down = line("connection failed", "down.test/default");
    assert!(down.contains(&format!("127.0.0.1:{closed}")) || down.contains("no answer from any host"), "{down}");
    assert!(!log.contains("delivered"), "delivered mail is logged at debug only:\n{log}");

    // A storm: 1,500 deferrals within seconds. The log gets the burst and the rate, not
    // 1,500 lines, and a line counts what it left out.
    let lg = loadgen(relay.port, &["--messages", "1500", "--connections", "8", "--domain-suffix", "defer.test"]);
    assert_eq!(json_u64(&lg, "messages_ok"), 1500, "{lg}");
    relay.wait_rows("t", 1502, Duration::from_secs(60));
    let summary = wait_for("the left-out count", Duration::from_secs(15), || {
        relay.log().lines().find(|l| l.contains("delivery log lines left out")).map(str::to_string)
    });
    assert!(summary.contains(" WARN "), "{summary}");
    let deferred_lines = relay.log().lines().filter(|l| l.contains(" deferred")).count();
    assert!(deferred_lines < 600, "{deferred_lines} deferral lines for 1,500 deferrals");
}
