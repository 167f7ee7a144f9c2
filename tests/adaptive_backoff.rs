//! Adaptive backoff (`<smtp-pattern-list>`): a receiver that starts answering
//! `421 4.7.0 too many errors` drives its queue into backoff; the delivery rate drops to
//! `backoff-max-msg-rate` (±10%) and returns to full speed after `backoff-to-normal-after`.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

const MESSAGES: usize = 400;

#[test]
fn backoff_slows_to_its_rate_and_recovers() {
    // RCPT commands 150..154 (counted across the sink) get the 421.
    let sink = SluiceSink::start(&["--reply", "bo.test:421 4.7.0 too many errors:100%@150-155"], u64::MAX);
    let relay = Relay::start(
        &format!(
            "<smtp-pattern-list errs>\n reply /^421 .*too many errors/ mode=backoff\n</smtp-pattern-list>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain bo.test>\n smtp-hosts [127.0.0.1]:{}\n smtp-pattern-list errs\n backoff-max-msg-rate 10/s\n\
             backoff-to-normal-after 3s\n retry-after 1s\n backoff-retry-after 1s\n</domain>\n",
            sink.port
        ),
        Some(1),
    );
    let (code, out) = run(Command::new(BIN)
        .args(["loadgen", "--quiet", "--duration", "60s", "--messages", &MESSAGES.to_string(), "--connections", "10"])
        .args(["--domain-suffix", "bo.test", "--target", &relay.addr().to_string()]));
    assert_eq!(code, 0, "{out}");
    let rows = relay.wait_rows("d", MESSAGES, Duration::from_secs(60));
    let mut per_second: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        *per_second.entry(r["timeLogged"].clone()).or_default() += 1;
    }
    eprintln!("deliveries per second: {per_second:?}");
    let counts: Vec<usize> = per_second.values().copied().collect();
    // The backoff seconds: whole seconds in the middle at 10/s ±10%.
    let slow: Vec<usize> = (1..counts.len().saturating_sub(1)).filter(|&i| (9..=11).contains(&counts[i])).collect();
    assert!(slow.len() >= 2, "at least two whole seconds at backoff-max-msg-rate: {per_second:?}");
    // The first and last seconds are partial (the load starts and ends inside them), and so
    // are the two the mode changed in (full speed, then backoff, in one second; and back):
    // any count. Every other second is either in backoff or at full speed.
    let (first_slow, last_slow) = (slow[0], *slow.last().unwrap());
    let steady: Vec<usize> = (1..counts.len().saturating_sub(1))
        .filter(|&i| i + 1 != first_slow && i != last_slow + 1)
        .map(|i| counts[i])
        .collect();
    assert!(
        steady.iter().all(|&n| n <= 11 || n > 30),
        "a whole second is either in backoff (≤ 11) or at full speed: {per_second:?}"
    );
    assert!(
        counts[last_slow + 1..].iter().any(|&n| n > 30),
        "full speed again after backoff-to-normal-after: {per_second:?}"
    );
    assert!(counts[..slow[0]].iter().any(|&n| n > 30), "full speed before the 421s: {per_second:?}");
    assert!(relay.log().contains("queue mode or rate changed"), "mode changes are logged");
    let tq: Vec<String> = relay.rows_of("tq").iter().map(|r| format!("{} {}", r["queue"], r["dsnDiag"])).collect();
    assert!(
        tq.iter().any(|t| t.starts_with("bo.test/default mode=backoff for 3s (on: 421 4.7.0 too many errors)")),
        "{tq:?}"
    );
    assert!(tq.iter().any(|t| t == "bo.test/default mode=normal (backoff-to-normal-after)"), "{tq:?}");
    let _ = sink.terminate();
}
