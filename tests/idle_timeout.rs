//! RFC 5321 §4.5.3.2: a client idle past the command timeout is told 421 and disconnected,
//! without disturbing other sessions.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn scenario(shards: Option<u32>) {
    let relay =
        Relay::start("smtp-command-timeout 1s\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n", shards);
    let (mut idle, _) = Talk::connect(relay.addr());
    assert!(idle.cmd("EHLO idle.test").starts_with("250"));
    let started = Instant::now();
    // Another client keeps working meanwhile.
    let (mut busy, _) = Talk::connect(relay.addr());
    for _ in 0..5 {
        assert!(busy.cmd("NOOP").starts_with("250"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let reply = idle.reply();
    let waited = started.elapsed();
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "timed out after {waited:?}");
    assert_eq!(idle.rest(), "", "connection closed after the 421");
    assert!(busy.cmd("NOOP").starts_with("250"), "the other session is unaffected");
}

#[test]
fn idle_client_times_out_one_shard() {
    scenario(Some(1));
}

#[test]
fn idle_client_times_out_default_shards() {
    scenario(None);
}
