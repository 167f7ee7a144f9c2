//! Per-source-IP limits shared by all shards (lock-free GCRA cells): a source IP limited to
//! 20 messages a second never carries more than that in any second, while another IP runs
//! unlimited; `source-ip-max-smtp-out` caps that IP's concurrent connections. Per-queue
//! `max-msg-rate` holds a domain to its rate.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

const MESSAGES: usize = 100;

fn loadgen(relay: &Relay, vmta: &str, domain: &str) {
    let (code, out) = run(Command::new(BIN)
        .args(["loadgen", "--quiet", "--duration", "60s", "--messages", &MESSAGES.to_string(), "--connections", "10"])
        .args(["--domain-suffix", domain, "--header", &format!("x-virtual-mta: {vmta}")])
        .args(["--target", &relay.addr().to_string()]));
    assert_eq!(code, 0, "{out}");
}

/// Deliveries per second (accounting's timeLogged) for the rows matching `pred`.
fn per_second(
    rows: &[std::collections::HashMap<String, String>],
    pred: impl Fn(&std::collections::HashMap<String, String>) -> bool,
) -> BTreeMap<String, usize> {
    let mut buckets = BTreeMap::new();
    for r in rows.iter().filter(|r| pred(r)) {
        *buckets.entry(r["timeLogged"].clone()).or_default() += 1;
    }
    buckets
}

fn scenario(shards: Option<u32>) {
    let sink = SluiceSink::start(&[], (2 * MESSAGES) as u64);
    // The limited IP's own receiver refuses a third concurrent connection with 421.
    let capped = SluiceSink::start(&["--max-connections", "2"], MESSAGES as u64);
    let relay = Relay::start(
        &format!(
            "source-ip-max-msg-rate 127.0.0.2 20/s\nsource-ip-max-smtp-out 127.0.0.2 2\n\
             <virtual-mta slow>\n smtp-source-host 127.0.0.2 slow.test\n <domain sink.test>\n  smtp-hosts [127.0.0.1]:{}\n </domain>\n</virtual-mta>\n\
             <virtual-mta fast>\n smtp-source-host 127.0.0.3 fast.test\n</virtual-mta>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n process-x-virtual-mta yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n<domain paced.test>\n max-msg-rate 25/s\n</domain>\n",
            capped.port, sink.port
        ),
        shards,
    );
    loadgen(&relay, "slow", "sink.test");
    loadgen(&relay, "fast", "sink.test");
    loadgen(&relay, "fast", "paced.test");
    let rows = relay.wait_rows("d", 3 * MESSAGES, Duration::from_secs(60));
    let totals = sink.finish();
    assert_eq!(json_u64(&totals, "messages"), (2 * MESSAGES) as u64);
    let capped = capped.finish();
    assert_eq!(json_u64(&capped, "messages"), MESSAGES as u64);
    assert_eq!(json_u64(&capped, "refused_connections"), 0, "never more than 2 connections from 127.0.0.2: {capped}");

    let slow = per_second(&rows, |r| r["dlvSourceIp"] == "127.0.0.2");
    let fast = per_second(&rows, |r| r["dlvSourceIp"] == "127.0.0.3" && r["rcpt"].ends_with("@sink.test"));
    let paced = per_second(&rows, |r| r["rcpt"].ends_with("@paced.test"));
    assert_eq!(slow.values().sum::<usize>(), MESSAGES);
    // rate × 1 s + burst (1), in every whole second.
    assert!(slow.values().all(|n| *n <= 21), "127.0.0.2 over 20/s: {slow:?}");
    assert!(slow.len() >= 5, "100 messages at 20/s take five seconds or more: {slow:?}");
    assert!(paced.values().all(|n| *n <= 26), "paced.test over 25/s: {paced:?}");
    assert!(paced.len() >= 4, "{paced:?}");
    // The unlimited IP is not held back by the other's limit.
    assert!(fast.len() <= 3, "127.0.0.3 ran unlimited: {fast:?}");
    assert!(fast.values().any(|n| *n > 21), "127.0.0.3 went faster than 127.0.0.2's limit: {fast:?}");
}

#[test]
fn source_ip_limits_one_shard() {
    scenario(Some(1));
}

#[test]
fn source_ip_limits_default_shards() {
    scenario(None);
}
