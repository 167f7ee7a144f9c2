//! MX rollup: domains whose MX hosts are the same (as at a large mailbox provider hosting
//! many domains) share one queue, so `max-smtp-out` and the other limits hold for the
//! receiver as a whole, not once per domain. `disable-mx-rollup yes` keeps one queue per
//! domain. Next hops come from a real dnsmasq; delivery goes to port 25 on 127.0.x.y.

mod common;
use common::*;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

const MESSAGES: u64 = 150;

fn scenario(shards: Option<u32>, net: u8, rollup: bool) {
    require_root("this test binds port 25 on loopback");
    let dns_port = free_port("127.0.0.1");
    let mx = format!("127.0.{net}.5");
    // Three domains, one provider: the same MX host for all.
    let mut records: Vec<String> = (0..3).map(|i| format!("--mx-host=d{i}.roll.test,mx.provider.test,10")).collect();
    records.push(format!("--host-record=mx.provider.test,{mx}"));
    let _dns = Dnsmasq::start(dns_port, &records);
    // With rollup, the provider takes 2 connections from us at a time and answers 421 to any
    // more (without, it would refuse most of the third queue's: no cap then).
    let cap = if rollup { "2" } else { "0" };
    let sink = SluiceSink::start_on(&format!("{mx}:25"), &["--max-connections", cap, "--latency", "5ms"], MESSAGES);
    let opt_out = if rollup { "" } else { " disable-mx-rollup yes\n" };
    let relay = Relay::start(
        &format!(
            "dns-server 127.0.0.1:{dns_port}\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n max-smtp-out 2\n retry-after 1s\n{opt_out}</domain>\n"
        ),
        shards,
    );
    let (code, out) = run(Command::new(BIN)
        .args(["loadgen", "--quiet", "--duration", "60s", "--messages", &MESSAGES.to_string(), "--connections", "6"])
        .args(["--domains", "3", "--domain-suffix", "roll.test", "--target", &relay.addr().to_string()]));
    assert_eq!(code, 0, "{out}");
    let totals = sink.finish();
    assert_eq!(json_u64(&totals, "messages"), MESSAGES, "{totals}");
    let rows = relay.wait_rows("d", MESSAGES as usize, Duration::from_secs(10));
    let queues: HashSet<&str> = rows.iter().map(|r| r["queue"].as_str()).collect();
    let domains: HashSet<&str> = rows.iter().map(|r| r["rcpt"].rsplit('@').next().unwrap()).collect();
    assert_eq!(domains.len(), 3);
    if rollup {
        assert_eq!(queues.len(), 1, "one queue for the three domains: {queues:?}");
        assert_eq!(json_u64(&totals, "refused_connections"), 0, "never more than 2 connections in all: {totals}");
    } else {
        assert_eq!(queues.len(), 3, "a queue per domain: {queues:?}");
    }
}

#[test]
fn mx_rollup_one_shard() {
    scenario(Some(1), 33, true);
}

#[test]
fn mx_rollup_default_shards() {
    scenario(None, 34, true);
}

#[test]
fn mx_rollup_disabled() {
    scenario(None, 35, false);
}
