//! The benchmark tools as a user runs them: loadgen's counts match the sink's, checksums
//! survive the trip through sluice, scripted replies show up in loadgen's reply counts, the
//! connection cap answers 421, and --json writes a summary.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn direct_counts_and_checksums_match() {
    let s = SluiceSink::start(&[], 3000);
    let lg = loadgen(
        s.port,
        &["--messages", "3000", "--connections", "8", "--size", "512:1,5K:1,50K:1", "--per-connection", "100"],
    );
    assert_eq!(json_u64(&lg, "messages_ok"), 3000);
    let st = s.finish();
    assert_eq!(
        (json_u64(&st, "messages"), json_u64(&st, "corrupt"), json_u64(&st, "duplicates"), json_u64(&st, "without_id")),
        (3000, 0, 0, 0)
    );
    assert!(json_u64(&st, "connections") >= 30, "reconnects every 100 messages: {st}");
}

#[test]
fn through_sluice_checksums_survive_and_domains_spread() {
    let s = SluiceSink::start(&[], 2000);
    let relay = Relay::start(&format!("<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n", s.port), None);
    let lg = loadgen(
        relay.port,
        &["--messages", "1000", "--rcpts", "2", "--domains", "50", "--size", "2K", "--no-pipelining"],
    );
    assert_eq!(json_u64(&lg, "recipients_ok"), 2000);
    let st = s.finish();
    assert_eq!(json_u64(&st, "corrupt"), 0, "{st}");
    assert_eq!(json_u64(&st, "recipients"), 2000);
    let queues: std::collections::HashSet<String> =
        relay.wait_rows("d", 2000, Duration::from_secs(30)).iter().map(|r| r["queue"].clone()).collect();
    assert_eq!(queues.len(), 50, "one queue per destination domain");
}

#[test]
fn scripted_replies_and_connection_cap() {
    let s = SluiceSink::start(&["--reply", "sink.test:451 4.7.1 try later:20%", "--max-connections", "2"], u64::MAX);
    let lg = loadgen(s.port, &["--messages", "1000", "--connections", "4"]);
    let deferred = json_u64(&lg, "451");
    assert!((120..=280).contains(&deferred), "about 20% of 1000 deferred: {lg}");
    // Connections over the cap were refused with 421; loadgen backed off and reconnected.
    let refused = json_u64(&lg, "connect_errors");
    assert!(refused >= 2, "{lg}");
    assert!(json_u64(&lg, "messages_ok") + json_u64(&lg, "messages_failed") >= 1000, "{lg}");
    let st = s.terminate();
    assert_eq!(json_u64(&st, "refused_connections"), refused, "{st}");
    assert_eq!(json_u64(&st, "messages"), json_u64(&lg, "messages_ok"));
    assert_eq!(json_u64(&st, "scripted_4xx"), deferred);
}

#[test]
fn latency_is_added_and_measured() {
    let s = SluiceSink::start(&["--latency", "20ms"], 40);
    let lg = loadgen(s.port, &["--messages", "40", "--connections", "2"]);
    let p50 = lg.split("\"data_ack\":").nth(1).map(|d| json_u64(d, "p50_us")).unwrap();
    // The histogram keeps 3 significant digits and the two clocks start a few µs apart.
    assert!(p50 >= 19_500, "data-ack p50 includes the sink's 20ms: {p50}us");
    s.finish();
}

#[test]
fn open_loop_rate_and_extra_headers() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let started = std::time::Instant::now();
    let lg = loadgen(
        sink.addr.port(),
        &["--messages", "60", "--rate", "100", "--header", "X-Virtual-MTA: mta7", "--connections", "4"],
    );
    let elapsed = started.elapsed();
    assert_eq!(json_u64(&lg, "messages_ok"), 60);
    assert!(elapsed >= Duration::from_millis(550), "60 messages at 100/s take at least ~0.6s: {elapsed:?}");
    let messages = wait_for("60 dumped messages", Duration::from_secs(10), || {
        let m = sink.messages();
        (m.len() == 60).then_some(m)
    });
    assert!(messages.iter().all(|m| m.contains("\nX-Virtual-MTA: mta7\n") && m.contains("\nX-Sluice-Sum: ")));
}

/// The campaign presets through sluice: a Zipf mix over 20 domains (the first gets far more
/// than the last), receivers that wait 20 ms (+ jitter) at the end of data and 1 ms before
/// every other reply, a scripted 5xx share; the sink's delivery-latency percentiles include
/// its own waits, and it stops once every message has a final outcome.
#[test]
fn campaign_shape_through_sluice() {
    let s = SluiceSink::start_final(&["--campaign", "--reply", "*:550 5.1.1 no such user:10%"], 600);
    let relay = Relay::start(
        &format!("<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n", s.port),
        None,
    );
    let lg = loadgen(relay.port, &["--messages", "600", "--campaign", "--domains", "20", "--size", "2K:80,20K:20"]);
    assert_eq!(json_u64(&lg, "messages_ok"), 600, "{lg}");
    let st = s.finish();
    let (delivered, refused) = (json_u64(&st, "messages"), json_u64(&st, "scripted_5xx"));
    assert_eq!(delivered + refused, 600, "{st}");
    assert!((20..=110).contains(&refused), "about 10% refused: {st}");
    assert_eq!(json_u64(&st, "corrupt"), 0, "{st}");
    let p50 = st.split("\"latency_ms\":").nth(1).map(|l| json_u64(l, "p50")).expect("latency in the sink's totals");
    assert!(p50 >= 20, "loadgen's send to the sink's 250 includes the 20 ms wait: {st}");
    let rows = relay.wait_rows("d", delivered as usize, Duration::from_secs(30));
    let count = |q: &str| rows.iter().filter(|r| r["rcpt"].ends_with(q)).count();
    let (first, last) = (count("@d0.sink.test"), count("@d19.sink.test"));
    // Zipf 1 over 20 domains: the first gets 28% of the mail, the last 1.4%.
    let share = first * 100 / rows.len();
    assert!((20..=36).contains(&share) && last * 5 < first, "first domain {first} rows ({share}%), last {last}");
}

/// RFC 2920 §3.1: a client may pipeline its next MAIL, RCPT and DATA behind an end of data.
/// The sink answers the end of data and those commands in one write, as a real receiver
/// does (Postfix's smtpd flushes its replies once it has read its input): five writes for
/// this session (greeting, EHLO, the first group, the end of data with the group behind it,
/// the last end of data), not six.
#[test]
fn replies_to_commands_pipelined_behind_an_end_of_data_come_in_one_write() {
    use std::io::{Read, Write};
    let s = SluiceSink::start(&[], 2);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Reads until `lines` reply lines have come.
    let replies = |c: &mut std::net::TcpStream, lines: usize| {
        let (mut got, mut buf) = (String::new(), [0u8; 4096]);
        while got.matches("\r\n").count() < lines {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "the sink closed: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        got
    };
    assert!(replies(&mut c, 1).starts_with("220"));
    c.write_all(b"EHLO client.test\r\n").unwrap();
    assert!(replies(&mut c, 5).contains("PIPELINING"));
    c.write_all(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n").unwrap();
    assert!(replies(&mut c, 3).contains("354"));
    c.write_all(b"Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<c@dst.test>\r\nDATA\r\n")
        .unwrap();
    let group = replies(&mut c, 4);
    let codes: Vec<&str> = group.lines().map(|l| &l[..3]).collect();
    assert_eq!(codes, ["250", "250", "250", "354"], "{group:?}");
    c.write_all(b"Subject: two\r\n\r\nbody\r\n.\r\n").unwrap();
    assert!(replies(&mut c, 1).starts_with("250"));
    let st = s.finish();
    assert_eq!(json_u64(&st, "messages"), 2, "{st}");
    // A greeting for each connection (the test harness's port probe is one).
    assert_eq!(json_u64(&st, "reply_writes"), json_u64(&st, "connections") + 4, "{st}");
}

/// `sluice sink --chunking` offers CHUNKING, and sluice (whose `ignore-chunking` is no by
/// default, as in PowerMTA) sends every message in one `BDAT n LAST` chunk: all arrive,
/// their sums good, sizes from 1 KiB to 300 KiB.
#[test]
fn through_sluice_to_a_chunking_sink_every_message_comes_in_bdat() {
    const N: u64 = 600;
    let s = SluiceSink::start(&["--chunking"], N);
    let relay = Relay::start(&format!("<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n log-commands yes\n</domain>\n", s.port), None);
    let lg = loadgen(relay.port, &["--messages", &N.to_string(), "--connections", "10", "--size", "1K:8,50K:1,300K:1"]);
    assert_eq!(json_u64(&lg, "messages_ok"), N, "{lg}");
    let st = s.finish();
    assert_eq!((json_u64(&st, "messages"), json_u64(&st, "corrupt"), json_u64(&st, "duplicates")), (N, 0, 0), "{st}");
    let log = relay.log();
    assert_eq!(log.matches("> BDAT ").count() as u64, N, "{}", tail(&log, 20));
    assert!(!log.contains("> DATA"), "{}", tail(&log, 20));
}
