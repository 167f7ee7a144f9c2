//! SIGTERM: idle clients are told 421, new connections are refused, sluice exits cleanly,
//! and queued mail survives the stop and is delivered after the next start.

mod common;
use common::*;
use std::net::TcpStream;
use std::time::Duration;

fn scenario(shards: Option<u32>) {
    require("swaks");
    let sink_port = free_port("127.0.0.1");
    let mut relay = Relay::start(
        &format!("<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain later.test>\n smtp-hosts [127.0.0.1]:{sink_port}\n retry-after 1s\n</domain>\n"),
        shards,
    );
    for i in 0..3 {
        swaks_send(&relay, &format!("r{i}@later.test"));
    }
    // Nothing listens at the next hop yet: the messages wait in the spool.
    relay.wait_rows("t", 3, Duration::from_secs(15));
    let (mut idle, _) = Talk::connect(relay.addr());
    assert!(idle.cmd("EHLO idle.test").starts_with("250"));
    assert_eq!(relay.terminate(Duration::from_secs(15)), 0, "clean exit");
    assert!(idle.reply().starts_with("421 4.3.2"), "an idle session hears why it is closed");
    assert!(TcpStream::connect(relay.addr()).is_err(), "no longer accepting");
    assert!(!relay.segments().is_empty(), "queued mail kept in the spool");
    assert!(relay.log().contains("signal received: stopping"));

    let _sink = SmtpSink::start("127.0.0.1", sink_port, &[], false);
    relay.spawn();
    let rows = relay.wait_rows("d", 3, Duration::from_secs(20));
    let mut rcpts: Vec<&str> = rows.iter().map(|r| r["rcpt"].as_str()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["r0@later.test", "r1@later.test", "r2@later.test"]);
    wait_for("the spool to empty", Duration::from_secs(10), || relay.segments().is_empty().then_some(()));
}

#[test]
fn sigterm_one_shard() {
    scenario(Some(1));
}

#[test]
fn sigterm_default_shards() {
    scenario(None);
}
