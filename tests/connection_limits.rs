//! Per-destination connection limits as PowerMTA users rely on them: `max-smtp-out` caps
//! concurrent connections to a destination (the sink's own cap answers 421 to any extra one),
//! and `max-msg-per-connection` makes sluice close and reopen connections.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const MESSAGES: u64 = 300;

fn scenario(shards: Option<u32>) {
    let sink = SluiceSink::start(&["--max-connections", "3", "--latency", "2ms"], MESSAGES);
    let sink_port = sink.port;
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain sink.test>\n smtp-hosts [127.0.0.1]:{sink_port}\n max-smtp-out 3\n max-msg-per-connection 10\n</domain>\n"
        ),
        shards,
    );
    let (code, out) = run(Command::new(BIN)
        .args(["loadgen", "--quiet", "--duration", "60s", "--messages", &MESSAGES.to_string(), "--connections", "20"])
        .args(["--target", &relay.addr().to_string()]));
    assert_eq!(code, 0, "{out}");
    let totals = sink.finish();
    assert_eq!(json_u64(&totals, "messages"), MESSAGES);
    assert_eq!(json_u64(&totals, "refused_connections"), 0, "never more than max-smtp-out at once: {totals}");
    assert!(json_u64(&totals, "connections") >= MESSAGES / 10, "a new connection every 10 messages: {totals}");
    assert_eq!(relay.wait_rows("d", MESSAGES as usize, Duration::from_secs(10)).len(), MESSAGES as usize);
}

#[test]
fn connection_limits_one_shard() {
    scenario(Some(1));
}

#[test]
fn connection_limits_default_shards() {
    scenario(None);
}

/// A receiver that answers 421 at the greeting to every connection beyond one: sluice backs
/// off instead of reconnecting in a loop, and still delivers everything over the connection
/// that is allowed.
fn refusing_receiver(shards: Option<u32>) {
    let sink = SluiceSink::start(&["--max-connections", "1", "--latency", "5ms"], 200);
    let sink_port = sink.port;
    let relay = Relay::start(
        &format!("<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain sink.test>\n smtp-hosts [127.0.0.1]:{sink_port}\n max-smtp-out 5\n retry-after 1s\n</domain>\n"),
        shards,
    );
    let (code, out) = run(Command::new(BIN)
        .args(["loadgen", "--quiet", "--duration", "60s", "--messages", "200", "--connections", "10"])
        .args(["--target", &relay.addr().to_string()]));
    assert_eq!(code, 0, "{out}");
    let totals = sink.finish();
    assert_eq!(json_u64(&totals, "messages"), 200);
    assert!(json_u64(&totals, "refused_connections") < 40, "backed off after 421 greetings: {totals}");
}

#[test]
fn refusing_receiver_one_shard() {
    refusing_receiver(Some(1));
}

#[test]
fn refusing_receiver_default_shards() {
    refusing_receiver(None);
}
