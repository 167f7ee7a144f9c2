//! Configurable start-up: `startup-delivery-delay` accepts mail at once but holds delivery
//! for its time (status says so), and `startup-ramp` starts rate limits at a fraction of
//! their value. The process starts without transparent huge pages.

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn start(sink_port: u16, extra: &str, domain: &str) -> (Relay, SocketAddr) {
    let port = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "http-mgmt-port 127.0.0.1:{port}\n{extra}\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{sink_port}\n{domain}\n</domain>\n"
        ),
        Some(1),
    );
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(api, Duration::from_secs(10));
    (relay, api)
}

#[test]
fn delivery_waits_for_the_startup_delay() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], false);
    let started = Instant::now();
    let (relay, api) = start(sink.addr.port(), "startup-delivery-delay 3s", "");
    swaks_send(&relay, "early@a.test");
    assert!(relay.rows_of("r").len() == 1 || relay.wait_rows("r", 1, Duration::from_secs(5)).len() == 1);
    let (_, status) = http(api, "GET", "/status", None, "");
    assert_eq!(status["startup"]["state"], "delaying", "{status}");
    assert!(status["startup"]["deliveryStartsInS"].as_u64().unwrap() <= 3);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(relay.rows_of("d").is_empty(), "accepted, not delivered, during the delay");
    relay.wait_rows("d", 1, Duration::from_secs(10));
    assert!(started.elapsed() >= Duration::from_secs(3), "delivered only after the delay");
    let (_, status) = http(api, "GET", "/status", None, "");
    assert_eq!(status["startup"]["state"], "running", "{status}");
}

#[test]
fn rate_limits_ramp_up_after_start() {
    let sink = SluiceSink::start(&[], u64::MAX);
    // 50 messages a second at full rate; a minute-long ramp starts at a tenth of that.
    let (relay, api) = start(sink.port, "startup-ramp 60s", " max-msg-rate 50/s");
    let (_, status) = http(api, "GET", "/status", None, "");
    assert_eq!(status["startup"]["state"], "ramping", "{status}");
    assert!(status["startup"]["limitsPercent"].as_u64().unwrap() < 20, "{status}");
    let lg = loadgen(relay.port, &["--messages", "60", "--connections", "4"]);
    assert_eq!(json_u64(&lg, "messages_ok"), 60);
    std::thread::sleep(Duration::from_secs(3));
    let delivered = relay.rows_of("d").len();
    // Unramped, all 60 would be out in about 1.2 s; at 10-15% of 50/s, about 20 in 3 s.
    assert!((3..40).contains(&delivered), "{delivered} delivered in the first seconds of the ramp");
}

/// `log-file PATH`: the log goes to the file too; after logrotate moves it away, SIGHUP makes
/// a new one.
#[test]
fn log_file_is_written_and_reopened_on_sighup() {
    let dir = TempDir::new("logfile");
    let path = dir.path().join("log/pmta.log");
    let relay = Relay::start(&format!("log-file {}\n", path.display()), Some(1));
    let text = wait_for("the log file", Duration::from_secs(10), || {
        std::fs::read_to_string(&path).ok().filter(|t| t.contains("sluice running"))
    });
    assert!(!text.contains("\u{1b}["), "plain text");
    let rotated = dir.path().join("log/pmta.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    relay.signal(1); // SIGHUP
    wait_for("a new log file after SIGHUP", Duration::from_secs(10), || {
        std::fs::read_to_string(&path).ok().filter(|t| !t.is_empty())
    });
    assert!(std::fs::read_to_string(&rotated).unwrap().contains("sluice running"));
}

/// The relay runs without transparent huge pages (its allocator would otherwise take 2 MiB
/// pages and clear each whole at its first touch: a fifth of the relay's CPU on a campaign
/// of large messages, `perf/RESULTS.md`).
#[test]
fn the_relay_runs_without_transparent_huge_pages() {
    let relay = Relay::start("", Some(1));
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
    let thp = status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(str::trim);
    // Kernels before 5.0 do not report it; this one does.
    assert_eq!(thp, Some("0"), "{status}");
}
