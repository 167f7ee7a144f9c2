//! Per-destination connection limits as PowerMTA users rely on them: `max-smtp-out` caps
//! concurrent connections to a destination (the sink's own cap answers 421 to any extra one),
//! and `max-msg-per-connection` makes sluice close and reopen connections; `ip-connection-limit`
//! caps the connections to one receiver address across every queue that uses it.

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

/// `ip-connection-limit` (and `mx-connection-limit`): however many domains (queues) share a
/// receiver, no more connections to its address than the limit from one source IP. Five
/// domains with `max-smtp-out 3` each, all on one receiver that refuses a third connection:
/// with `ip-connection-limit 127.0.0.1 2` it refuses none; without, it must refuse some (the
/// run that shows the limit is what holds them back).
fn shared_receiver(limit: bool) -> u64 {
    const N: u64 = 150;
    let sink = SluiceSink::start(&["--max-connections", "2", "--latency", "5ms"], N);
    let sink_port = sink.port;
    let rule = if limit { "ip-connection-limit 127.0.0.0/8 5\nip-connection-limit 127.0.0.1 2\n" } else { "" };
    let relay = Relay::start(
        &format!(
            "{rule}<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain [*.]sink.test>\n smtp-hosts [127.0.0.1]:{sink_port}\n max-smtp-out 3\n retry-after 1s\n</domain>\n"
        ),
        None,
    );
    let (code, out) = run(Command::new(BIN)
        .args(["loadgen", "--quiet", "--duration", "60s", "--messages", &N.to_string(), "--connections", "10"])
        .args(["--domains", "5", "--target", &relay.addr().to_string()]));
    assert_eq!(code, 0, "{out}");
    if !limit {
        // Enough to see the queues open more than two: not waiting for the refused ones.
        std::thread::sleep(Duration::from_secs(3));
        return json_u64(&sink.terminate(), "refused_connections");
    }
    let totals = sink.finish();
    assert_eq!(json_u64(&totals, "messages"), N, "{totals}");
    assert_eq!(relay.wait_rows("d", N as usize, Duration::from_secs(30)).len(), N as usize);
    json_u64(&totals, "refused_connections")
}

#[test]
fn ip_connection_limit_holds_across_queues() {
    assert_eq!(shared_receiver(true), 0, "never a third connection to the address");
    assert!(shared_receiver(false) > 0, "without the limit, the five queues open more than two");
}
