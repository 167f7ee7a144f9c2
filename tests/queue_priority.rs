//! `queue-priority`: queues that share a source IP's `source-ip-max-smtp-out` places get them
//! in priority order, across shards. A backlog for a low-priority domain is already using
//! both places when mail for a high-priority domain arrives; as connections turn over
//! (`max-msg-per-connection`), the high-priority queue takes every freed place, so its mail
//! goes out ahead of the backlog.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const LOW: u64 = 100;
const HIGH: u64 = 40;

const URGENT: &str = "z-urgent.test";

fn inject(relay: &Relay, suffix: &str, messages: u64) {
    let (code, out) = run(Command::new(BIN)
        .args(["loadgen", "--quiet", "--duration", "30s", "--messages", &messages.to_string(), "--connections", "4"])
        .args(["--domain-suffix", suffix, "--target", &relay.addr().to_string()]));
    assert_eq!(code, 0, "{out}");
}

/// Low-priority deliveries logged while the high-priority mail was going out, and after it.
fn interleaved(shards: Option<u32>, bulk: &str, low_priority: u8) -> (usize, usize) {
    let sink = SluiceSink::start(&["--latency", "80ms"], LOW + HIGH);
    let domain = |name: &str, priority: u8| {
        format!(
            "<domain {name}>\n smtp-hosts [127.0.0.1]:{}\n max-msg-per-connection 5\n queue-priority {priority}\n</domain>\n",
            sink.port
        )
    };
    let relay = Relay::start(
        &format!(
            "<virtual-mta mta2>\n smtp-source-host 127.0.0.2 mta2.test\n</virtual-mta>\n\
             source-ip-max-smtp-out 127.0.0.2 2\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n default-virtual-mta mta2\n</source>\n{}{}",
            domain(bulk, low_priority),
            domain(URGENT, 90)
        ),
        shards,
    );
    inject(&relay, bulk, LOW);
    inject(&relay, URGENT, HIGH);
    let totals = sink.finish();
    assert_eq!(json_u64(&totals, "messages"), LOW + HIGH);
    let rows = relay.wait_rows("d", (LOW + HIGH) as usize, Duration::from_secs(10));
    let is_high = |r: &std::collections::HashMap<String, String>| r["rcpt"].ends_with(&format!("@{URGENT}"));
    let first = rows.iter().position(is_high).expect("high rows");
    let last = rows.iter().rposition(is_high).expect("high rows");
    let low_between = rows[first..=last].iter().filter(|r| !is_high(r)).count();
    (low_between, rows.len() - 1 - last)
}

fn scenario(shards: Option<u32>, bulk: &str) {
    // The low-priority domain sorts first by name: without priorities it would go first.
    let (between, after) = interleaved(shards, bulk, 10);
    assert!(after >= LOW as usize / 2, "only {after} low-priority deliveries were left when the high ones were done");
    // Each of the 2 connections open when the high mail arrives may finish its 5 messages.
    assert!(between <= 14, "{between} low-priority deliveries went out among the high-priority ones");
}

#[test]
fn queue_priority_one_shard() {
    scenario(Some(1), "a-bulk.test");
}

/// The two queues on different shards: the priority holds through the shared claim.
#[test]
fn queue_priority_across_shards() {
    let urgent_shard = sluice_netio::owner_shard(URGENT, 2);
    let bulk = (0..)
        .map(|i| format!("a-bulk{i}.test"))
        .find(|d| sluice_netio::owner_shard(d, 2) != urgent_shard)
        .expect("some name lands on the other shard");
    scenario(Some(2), &bulk);
}
