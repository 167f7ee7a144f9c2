//! `adaptive-rate yes`: the queue's message rate follows a receiver's hidden acceptance rate
//! like TCP congestion control (additive increase on 2xx, halving on 4.7.x), so it settles
//! near what the receiver takes instead of hammering it at `max-msg-rate`. End to end, on the
//! wall clock; the comparison with a fixed rate runs in simulated time
//! (`engine/tests/scheduler.rs`).

mod common;
use common::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

const MESSAGES: usize = 400;
const HIDDEN_RATE: usize = 40;

fn run_adaptive() -> (BTreeMap<String, usize>, usize) {
    let sink = SluiceSink::start(&["--accept-rate", &format!("{HIDDEN_RATE}/s")], u64::MAX);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain ad.test>\n smtp-hosts [127.0.0.1]:{}\n\
             adaptive-rate {}\n max-msg-rate 400/s\n retry-after 1s\n</domain>\n",
            sink.port, "yes"
        ),
        Some(1),
    );
    let (code, out) = run(Command::new(BIN)
        .args(["loadgen", "--quiet", "--duration", "60s", "--messages", &MESSAGES.to_string(), "--connections", "10"])
        .args(["--domain-suffix", "ad.test", "--target", &relay.addr().to_string()]));
    assert_eq!(code, 0, "{out}");
    let rows = relay.wait_rows("d", MESSAGES, Duration::from_secs(90));
    let mut per_second = BTreeMap::new();
    for r in &rows {
        *per_second.entry(r["timeLogged"].clone()).or_default() += 1;
    }
    let deferred = relay.rows_of("t").len();
    let rate_changes = relay.rows_of("tq").iter().filter(|r| r["dsnDiag"].starts_with("rate=")).count();
    assert!(rate_changes > 0, "adaptive rate changes are tq records");
    let _ = sink.terminate();
    (per_second, deferred)
}

#[test]
fn adaptive_rate_settles_near_the_receivers_rate() {
    let (per_second, deferred) = run_adaptive();
    eprintln!("adaptive: deliveries per second {per_second:?}, {deferred} deferred");
    let counts: Vec<usize> = per_second.values().copied().collect();
    let middle = &counts[1..counts.len() - 1];
    let mean = middle.iter().sum::<usize>() as f64 / middle.len() as f64;
    assert!(
        mean >= HIDDEN_RATE as f64 * 0.5,
        "settles near the receiver's {HIDDEN_RATE}/s, not far below: {mean:.1}/s"
    );
    assert!(deferred * 2 <= MESSAGES, "backs off instead of hammering: {deferred} deferrals for {MESSAGES} messages");
}
