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

/// `<mx-rollup-list>`: domains whose most preferred MX hosts are listed for a rollup join
/// the queue `NAME.rollup`, with that `<domain>`'s limits; by exact hosts (the rollup
/// delivers to them) and by wildcard with `rollup-by-ip` (to where the domain resolved).
/// Other domains keep their own queues.
#[test]
fn mx_rollup_list_names_the_rollup_queues() {
    require("swaks");
    require_root("this test binds port 25 on loopback");
    let net = 36;
    let dns_port = free_port("127.0.0.1");
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let _dns = Dnsmasq::start(
        dns_port,
        &[
            "--mx-host=a.listed.test,mx1.big.test,10".into(),
            "--mx-host=b.listed.test,mx1.big.test,10".into(),
            "--mx-host=b.listed.test,backup.big.test,20".into(),
            format!("--host-record=mx1.big.test,{}", ip(5)),
            format!("--host-record=backup.big.test,{}", ip(5)),
            "--mx-host=c.cloud.test,tenant-c.mail.cloud.test,10".into(),
            "--mx-host=d.cloud.test,tenant-d.mail.cloud.test,10".into(),
            format!("--host-record=tenant-c.mail.cloud.test,{}", ip(6)),
            format!("--host-record=tenant-d.mail.cloud.test,{}", ip(6)),
            "--mx-host=own.test,mx.own.test,10".into(),
            format!("--host-record=mx.own.test,{}", ip(7)),
        ],
    );
    let big = SmtpSink::start(&ip(5), 25, &[], true);
    let cloud = SmtpSink::start(&ip(6), 25, &[], true);
    let own = SmtpSink::start(&ip(7), 25, &[], true);
    let relay = Relay::start(
        &format!(
            "dns-server 127.0.0.1:{dns_port}\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <mx-rollup-list>\n mx mx1.big.test big.rollup\n mx *.mail.cloud.test cloud.rollup rollup-by-ip\n</mx-rollup-list>\n\
             <domain big.rollup>\n max-smtp-out 1\n</domain>\n"
        ),
        Some(1),
    );
    for rcpt in ["x@a.listed.test", "y@b.listed.test", "z@c.cloud.test", "w@d.cloud.test", "v@own.test"] {
        swaks_send(&relay, rcpt);
    }
    let rows = relay.wait_rows("d", 5, Duration::from_secs(30));
    let queue = |rcpt: &str| rows.iter().find(|r| r["rcpt"] == rcpt).map(|r| r["queue"].clone()).unwrap();
    assert_eq!(queue("x@a.listed.test"), "big.rollup/default");
    assert_eq!(queue("y@b.listed.test"), "big.rollup/default");
    assert_eq!(queue("z@c.cloud.test"), "cloud.rollup/default");
    assert_eq!(queue("w@d.cloud.test"), "cloud.rollup/default");
    assert_eq!(queue("v@own.test"), "own.test/default");
    assert_eq!(big.messages().len(), 2);
    assert_eq!(cloud.messages().len(), 2);
    assert_eq!(own.messages().len(), 1);
}
