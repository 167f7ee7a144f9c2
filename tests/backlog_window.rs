//! A backlog for an unreachable destination: more messages than a queue keeps in memory
//! (its window; the rest wait as references into the spool, most of them spilled to a file). Fresh mail to another domain is
//! not slowed by it, status counts the whole backlog, and once the destination answers every
//! message is delivered exactly once.

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Over the shard's in-memory window of 10,000 jobs per queue.
const BACKLOG: u64 = 12_500;

#[test]
fn a_backlog_past_the_window_is_counted_and_delivered_once() {
    let dead = free_port("127.0.0.1");
    let fresh = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], false);
    let api_port = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "http-mgmt-port 127.0.0.1:{api_port}\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain backlog.test>\n smtp-hosts [127.0.0.1]:{dead}\n retry-after 1s\n</domain>\n\
             <domain fresh.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            fresh.addr.port()
        ),
        Some(1),
    );
    let api: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let lg = loadgen(
        relay.port,
        &["--messages", &BACKLOG.to_string(), "--connections", "8", "--domain-suffix", "backlog.test", "--size", "512"],
    );
    assert_eq!(json_u64(&lg, "messages_ok"), BACKLOG);
    let (_, status) = http(api, "GET", "/status", None, "");
    assert_eq!(status["queue"]["rcpt"], BACKLOG, "the whole backlog is counted, parked or not: {status}");
    // Past the window, the backlog waits in an unnamed spill file in the spool, not in memory.
    let spool = relay.dir.path().join("spool");
    let spill_files = std::fs::read_dir(format!("/proc/{}/fd", relay.pid()))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
        .filter(|target| target.starts_with(&spool) && target.to_string_lossy().ends_with("(deleted)"))
        .count();
    assert_eq!(spill_files, 1, "one spill file for the one backlog");
    // Fresh mail to another destination goes straight through.
    let sent = Instant::now();
    swaks_send(&relay, "someone@fresh.test");
    wait_for("the fresh message", Duration::from_secs(10), || {
        relay.rows_of("d").iter().any(|r| r["rcpt"] == "someone@fresh.test").then_some(())
    });
    assert!(sent.elapsed() < Duration::from_secs(5), "fresh mail waited {:?}", sent.elapsed());
    // The destination comes back: everything is delivered, once.
    let sink = SluiceSink::start_on(&format!("127.0.0.1:{dead}"), &[], BACKLOG);
    // As an operator would: retry now, rather than after the connect backoff.
    assert_eq!(http(api, "POST", "/schedule?queue=backlog.test", None, "").0, 200);
    let st = sink.finish();
    assert_eq!(
        (json_u64(&st, "messages"), json_u64(&st, "duplicates"), json_u64(&st, "corrupt")),
        (BACKLOG, 0, 0),
        "{st}"
    );
    relay.wait_rows("d", BACKLOG as usize + 1, Duration::from_secs(30));
    let (_, status) = http(api, "GET", "/status", None, "");
    assert_eq!(status["queue"]["rcpt"], 0, "{status}");
}
