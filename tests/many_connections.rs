//! 10,000 outbound connections at once to a slow receiver (it answers the end of data after
//! four seconds): every message arrives, none twice, and the relay's memory grows by at most
//! 16 KiB per connection beyond what its baseline and the spool take (the kernel's socket
//! buffers are not counted in a process's RSS).

mod common;
use common::*;
use std::time::{Duration, Instant};

const MESSAGES: u64 = 10_000;

/// `VmHWM` / `VmRSS` of a process, in KiB.
fn mem_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn ten_thousand_outbound_connections_to_a_slow_receiver() {
    // Descriptors: 10,000 connections here, as many at the sink.
    // SAFETY: getrlimit on a local struct.
    let hard = unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_max
    };
    assert!(hard >= 12_000, "this test needs an open-files hard limit of 12000 or more (it is {hard})");
    let sink = SluiceSink::start(&["--latency", "4s"], MESSAGES);
    let api_port = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "http-mgmt-port 127.0.0.1:{api_port}\nhttp-access 127.0.0.1 admin\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n max-smtp-out 10000\n max-msg-per-connection 1\n</domain>\n",
            sink.port
        ),
        Some(2),
    );
    let api: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    wait_port(api, Duration::from_secs(10));
    let pid = relay.pid();
    std::thread::sleep(Duration::from_millis(500));
    let baseline = mem_kib(pid, "VmRSS:");
    // Everything queued first (the queue paused), then let go at once.
    assert_eq!(http(api, "POST", "/pause?queue=*/*", None, "").0, 200);
    let out = loadgen(relay.port, &["--messages", &MESSAGES.to_string(), "--connections", "200"]);
    assert_eq!(json_u64(&out, "messages_ok"), MESSAGES, "{out}");
    let started = Instant::now();
    assert_eq!(http(api, "POST", "/resume?queue=*/*", None, "").0, 200);
    // While the receiver sits on every end of data: the connections, all open at once.
    let mut peak_fds = 0;
    while started.elapsed() < Duration::from_secs(60) && relay.rows_of("d").len() < MESSAGES as usize {
        peak_fds = peak_fds.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let peak_kib = mem_kib(pid, "VmHWM:");
    let totals = sink.finish();
    assert_eq!(json_u64(&totals, "messages"), MESSAGES, "{totals}");
    assert_eq!(json_u64(&totals, "duplicates"), 0, "{totals}");
    assert_eq!(json_u64(&totals, "corrupt"), 0, "{totals}");
    let d = relay.wait_rows("d", MESSAGES as usize, Duration::from_secs(30));
    assert_eq!(d.len(), MESSAGES as usize);
    assert!(peak_fds >= 9_000, "about 10,000 connections at once, saw {peak_fds} descriptors");
    // The spool's pages (the messages, mapped) are in the RSS too: 1.4 KiB each here.
    let spool_kib = 2 * MESSAGES;
    let per_conn = (peak_kib.saturating_sub(baseline + spool_kib)) as f64 / peak_fds as f64;
    eprintln!("10k connections: baseline {baseline} KiB, peak {peak_kib} KiB, {peak_fds} fds: {per_conn:.1} KiB each");
    assert!(per_conn <= 16.0, "{per_conn:.1} KiB per connection (peak {peak_kib}, baseline {baseline})");
}

/// 5,000 injecting clients connected at once, each past EHLO and then quiet (clients that
/// keep a connection open between batches): the relay's memory grows by at most 16 KiB each
/// (receive buffers start at 4 KiB and grow only while reads fill them), and a large message
/// on some of those same connections afterwards arrives whole.
#[test]
fn five_thousand_idle_inbound_connections_cost_little() {
    const CLIENTS: usize = 5_000;
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        assert!(lim.rlim_max >= 6_000, "this test needs an open-files hard limit of 6000 or more");
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let sink = SluiceSink::start(&[], 20);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            sink.port
        ),
        Some(2),
    );
    let pid = relay.pid();
    std::thread::sleep(Duration::from_millis(500));
    let baseline = mem_kib(pid, "VmRSS:");
    let mut clients: Vec<Talk> = (0..CLIENTS)
        .map(|i| {
            let (mut t, greeting) = Talk::connect(relay.addr());
            assert!(greeting.starts_with("220"), "client {i}: {greeting}");
            assert!(t.cmd("EHLO idle.test").starts_with("250"));
            t
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let held = mem_kib(pid, "VmRSS:");
    let per_conn = held.saturating_sub(baseline) as f64 / CLIENTS as f64;
    eprintln!("{CLIENTS} idle inbound connections: baseline {baseline} KiB, then {held} KiB: {per_conn:.1} KiB each");
    assert!(per_conn <= 16.0, "{per_conn:.1} KiB per idle inbound connection");
    // Twenty of them now send 2 MB each: the buffers grow and the bytes arrive whole.
    let body: String =
        (0..20_000).map(|i| format!("line {i:06} of a large message, to fill the socket buffers ....\r\n")).collect();
    for t in clients.iter_mut().step_by(CLIENTS / 20) {
        assert!(t.cmd("MAIL FROM:<s@src.test>").starts_with("250"));
        assert!(t.cmd("RCPT TO:<r@d.test>").starts_with("250"));
        assert!(t.cmd("DATA").starts_with("354"));
        t.send(format!("Subject: big\r\n\r\n{body}.\r\n").as_bytes());
        let reply = t.reply();
        assert!(reply.starts_with("250"), "{reply}");
    }
    let totals = sink.finish();
    assert_eq!(json_u64(&totals, "messages"), 20, "{totals}");
    assert!(json_u64(&totals, "bytes") >= 20 * body.len() as u64, "{totals}");
    drop(clients);
}
