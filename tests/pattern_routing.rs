//! `smtp-pattern-list` actions that route around trouble, as PowerMTA users write them:
//! `skip-mx` leaves a next hop that refuses and delivers through the next one at once (no
//! wait for `retry-after`); `disable-source-ip` takes a blocked source IP out of a pool's
//! rotation for `reenable-after` while the other members carry the mail. Both are written
//! as `tq` accounting records.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn inject(relay: &Relay, messages: u64) {
    let (code, out) = run(Command::new(BIN)
        .args(["loadgen", "--quiet", "--duration", "30s", "--messages", &messages.to_string(), "--connections", "4"])
        .args(["--target", &relay.addr().to_string()]));
    assert_eq!(code, 0, "{out}");
}

fn skip_mx(shards: Option<u32>) {
    const MESSAGES: u64 = 40;
    // The preferred host refuses everything with words the pattern list knows.
    let refusing = SluiceSink::start(&["--reply", "*:451 4.7.1 mx-a overloaded, use another MX:100%"], u64::MAX);
    let accepting = SluiceSink::start(&[], MESSAGES);
    let relay = Relay::start(
        &format!(
            "<smtp-pattern-list moves>\n reply /mx-a overloaded/ skip-mx\n</smtp-pattern-list>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain sink.test>\n smtp-hosts [127.0.0.1]:{};[127.0.0.1]:{}\n smtp-pattern-list moves\n retry-after 1h\n</domain>\n",
            refusing.port, accepting.port
        ),
        shards,
    );
    inject(&relay, MESSAGES);
    // With retry-after 1h, only skip-mx can get these delivered within the test.
    let start = std::time::Instant::now();
    while relay.rows_of("d").len() < MESSAGES as usize && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let delivered = relay.rows_of("d").len() == MESSAGES as usize;
    assert!(
        delivered,
        "not all delivered; t: {:?}\ntq: {:?}\n{}",
        relay.rows_of("t"),
        relay.rows_of("tq"),
        tail(&relay.log(), 40)
    );
    let totals = accepting.finish();
    assert_eq!(json_u64(&totals, "messages"), MESSAGES, "{totals}");
    let d = relay.wait_rows("d", MESSAGES as usize, Duration::from_secs(10));
    assert!(d.iter().all(|r| r["dlvDestinationIp"] == "127.0.0.1"));
    let t = relay.rows_of("t");
    assert!(!t.is_empty() && t.iter().all(|r| r["dsnDiag"].contains("mx-a overloaded")), "{t:?}");
    let tq = relay.rows_of("tq");
    assert!(tq.iter().any(|r| r["dsnDiag"].contains("skip-mx: 127.0.0.1 (127.0.0.1) skipped")), "{tq:?}");
    assert!(relay.rows_of("b").is_empty());
}

#[test]
fn skip_mx_one_shard() {
    skip_mx(Some(1));
}

#[test]
fn skip_mx_default_shards() {
    skip_mx(None);
}

/// A transaction pipelined behind a body whose reply trips `skip-mx` is not sent on: its
/// message goes back untried (the session is cut before its body) and is delivered through
/// the next hop; the skipped host gets one body per connection, not two.
#[test]
fn skip_mx_cuts_the_transaction_pipelined_behind() {
    const MESSAGES: u64 = 10;
    // Slow to greet, so that every message is queued when the session starts and the second
    // rides behind the first one's body.
    let refusing = ScriptedMx::start(
        "127.0.0.1",
        MxScript {
            final_reply: "451 4.7.1 mx-a overloaded, use another MX".into(),
            greeting_delay: Duration::from_millis(700),
            ..MxScript::default()
        },
    );
    let accepting = SluiceSink::start(&[], MESSAGES);
    let relay = Relay::start(
        &format!(
            "<smtp-pattern-list moves>\n reply /mx-a overloaded/ skip-mx\n</smtp-pattern-list>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain sink.test>\n smtp-hosts [127.0.0.1]:{};[127.0.0.1]:{}\n smtp-pattern-list moves\n retry-after 1h\n max-smtp-out 1\n</domain>\n",
            refusing.addr.port(),
            accepting.port
        ),
        Some(1),
    );
    inject(&relay, MESSAGES);
    let d = relay.wait_rows("d", MESSAGES as usize, Duration::from_secs(30));
    assert_eq!(d.len(), MESSAGES as usize);
    let log: Vec<String> = refusing.log().into_iter().filter(|l| !l.starts_with("BODY")).collect();
    assert_eq!(refusing.count("MAIL"), 2, "the second transaction was pipelined behind the first body: {log:?}");
    assert_eq!(refusing.count("MESSAGE"), 1, "no body after the reply that skips the host: {log:?}");
    let t = relay.rows_of("t");
    assert_eq!(t.len(), 1, "only the first message was tried at the skipped host: {t:?}");
    assert!(relay.rows_of("b").is_empty());
    assert_eq!(json_u64(&accepting.finish(), "messages"), MESSAGES);
}

fn disable_source_ip(shards: Option<u32>) {
    const MESSAGES: u64 = 60;
    // The receiver blocks 127.0.0.2 and takes mail from 127.0.0.3.
    let sink =
        SluiceSink::start(&["--reply", "*/127.0.0.2:421 4.7.0 [127.0.0.2] blocked, try another IP:100%"], u64::MAX);
    let relay = Relay::start(
        &format!(
            "<virtual-mta mta2>\n smtp-source-host 127.0.0.2 mta2.test\n</virtual-mta>\n\
             <virtual-mta mta3>\n smtp-source-host 127.0.0.3 mta3.test\n</virtual-mta>\n\
             <virtual-mta-pool pool1>\n virtual-mta mta2\n virtual-mta mta3\n</virtual-mta-pool>\n\
             <smtp-pattern-list blocks>\n reply /blocked, try another IP/ disable-source-ip,reenable-after=3s\n</smtp-pattern-list>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n default-virtual-mta pool1\n</source>\n\
             <domain sink.test>\n smtp-hosts [127.0.0.1]:{}\n smtp-pattern-list blocks\n retry-after 1h\n max-smtp-out 4\n max-msg-per-connection 2\n</domain>\n",
            sink.port
        ),
        shards,
    );
    inject(&relay, MESSAGES);
    let d = relay.wait_rows("d", MESSAGES as usize, Duration::from_secs(20));
    assert!(d.iter().all(|r| r["dlvSourceIp"] == "127.0.0.3" && r["vmtaPool"] == "pool1"), "{d:?}");
    // Only connections opened before the block was seen tried 127.0.0.2.
    let t = relay.rows_of("t");
    assert!(t.iter().all(|r| r["dlvSourceIp"] == "127.0.0.2"), "{t:?}");
    assert!(!t.is_empty() && t.len() <= 4, "at most one refusal per connection open at the time: {}", t.len());
    let tq = relay.rows_of("tq");
    assert!(tq.iter().any(|r| r["dsnDiag"] == "source-ip disabled: mta2 (127.0.0.2) for 3s"), "{tq:?}");
    // After reenable-after, 127.0.0.2 is tried again (and blocked again).
    std::thread::sleep(Duration::from_millis(3_200));
    inject(&relay, 20);
    relay.wait_rows("d", MESSAGES as usize + 20, Duration::from_secs(20));
    let tq = relay.rows_of("tq");
    assert!(tq.iter().any(|r| r["dsnDiag"] == "source-ip re-enabled: mta2 (127.0.0.2)"), "{tq:?}");
    let disabled = tq.iter().filter(|r| r["dsnDiag"].starts_with("source-ip disabled")).count();
    assert!(disabled >= 2, "blocked again once re-enabled: {tq:?}");
    assert!(relay.rows_of("b").is_empty());
}

#[test]
fn disable_source_ip_one_shard() {
    disable_source_ip(Some(1));
}

#[test]
fn disable_source_ip_default_shards() {
    disable_source_ip(None);
}
