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

/// PowerMTA's place for the timeouts: `smtp-command-timeout` in the client's `<source>`
/// (the global setting, 5 minutes here, is not what applies).
#[test]
fn a_sources_own_command_timeout_applies() {
    let relay = Relay::start(
        "<source 127.0.0.1>\n always-allow-relaying yes\n smtp-command-timeout 1s\n smtp-data-timeout 1s\n</source>\n",
        Some(1),
    );
    for data in [false, true] {
        let (mut idle, _) = Talk::connect(relay.addr());
        assert!(idle.cmd("EHLO idle.test").starts_with("250"));
        if data {
            assert!(idle.cmd("MAIL FROM:<a@src.test>").starts_with("250"));
            assert!(idle.cmd("RCPT TO:<b@dst.test>").starts_with("250"));
            assert!(idle.cmd("DATA").starts_with("354"));
        }
        let started = Instant::now();
        let reply = idle.reply();
        let waited = started.elapsed();
        assert!(reply.starts_with("421 4.4.2"), "{reply}");
        assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "in DATA {data}: {waited:?}");
    }
}
