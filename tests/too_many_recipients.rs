//! A receiver that takes 50 recipients per transaction (aiosmtpd answering `452 4.5.3 Too
//! many recipients` past that): one message to 500 recipients is delivered to all of them in
//! further transactions straight away (RFC 5321 §4.5.3.1.10), not one `retry-after` later,
//! and no recipient gets a `t` record.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn recipients_past_the_receivers_limit_go_in_the_next_transactions_at_once() {
    let receiver = PyReceiver::start_with(&["--max-rcpt", "50"]);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain many.test>\n smtp-hosts [127.0.0.1]:{}\n max-rcpt-per-message 1000\n retry-after 10m\n max-smtp-out 1\n</domain>\n",
            receiver.addr.port()
        ),
        None,
    );
    let rcpts: Vec<String> = (0..500).map(|i| format!("r{i:03}@many.test")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let started = Instant::now();
    let sent = smtplib_send(&relay, "127.0.0.1", "s@src.test", &refs, b"Subject: many\r\n\r\nhello\r\n");
    assert_eq!(sent, "sent");
    let delivered = relay.wait_rows("d", 500, Duration::from_secs(30));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "all 500 within seconds, not a retry interval: {took:?}");
    let mut got: Vec<&str> = delivered.iter().map(|r| r["rcpt"].as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, refs, "every recipient delivered once");
    assert!(relay.rows_of("t").is_empty(), "no deferral record: {:?}", relay.rows_of("t").first());
    // What the receiver saw: transactions of at most 50, the 500 recipients in all, the
    // first one of 50 then the rest at the limit it showed (10 transactions).
    let envelopes: Vec<String> = std::fs::read_dir(receiver.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "env"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    let per_txn: Vec<usize> = envelopes.iter().map(|e| e.lines().nth(1).unwrap().split(',').count()).collect();
    assert!(per_txn.iter().all(|&n| n <= 50), "{per_txn:?}");
    assert_eq!(per_txn.iter().sum::<usize>(), 500, "{per_txn:?}");
    assert_eq!(per_txn.len(), 10, "{per_txn:?}");
}
