//! Slow and idle clients do not stop service to others (slowloris): thousands of connections
//! that trickle a command a byte at a time are cut off with 421 once `smtp-command-timeout`
//! has passed since their command began (RFC 5321 §4.5.3.2 timeouts apply to the whole
//! command, not to each byte), while a normal client's mail goes through meanwhile.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SLOW: usize = 2000;

extern "C" {
    fn getrlimit(resource: i32, rlim: *mut [u64; 2]) -> i32;
    fn setrlimit(resource: i32, rlim: *const [u64; 2]) -> i32;
}

/// Thousands of sockets need more than the usual 1024 descriptors.
fn raise_fd_limit() {
    const RLIMIT_NOFILE: i32 = 7;
    let mut lim = [0u64; 2];
    // SAFETY: plain syscalls on a local array laid out as struct rlimit (two u64 on Linux).
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut lim) == 0 && lim[0] < lim[1] {
            lim[0] = lim[1];
            setrlimit(RLIMIT_NOFILE, &lim);
        }
    }
}

#[test]
fn tricklers_are_cut_off_and_others_are_served() {
    raise_fd_limit();
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], false);
    let relay = Relay::start(
        &format!(
            "smtp-command-timeout 2s\ntotal-max-smtp-in 5000\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            sink.addr.port()
        ),
        Some(2),
    );
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let s = TcpStream::connect(relay.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    for s in &mut slow {
        let mut greeting = [0u8; 512];
        let n = s.read(&mut greeting).unwrap();
        assert!(greeting[..n].starts_with(b"220"));
    }
    let started = Instant::now();
    // Trickle a command a byte each 200 ms on every connection for 6 s (never the line
    // end), while a normal client sends its mail.
    let line = format!("EHLO {}", "x".repeat(40));
    let line = line.as_bytes();
    let mut sent = 0;
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(6) {
        if sent < line.len() {
            for s in &mut slow {
                let _ = s.write_all(&line[sent..sent + 1]);
            }
            sent += 1;
        }
        if served < 5 {
            swaks_send(&relay, &format!("normal{served}@sink.test"));
            served += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(served, 5, "the normal client was served throughout");
    relay.wait_rows("d", 5, Duration::from_secs(20));
    // Every trickler got 421 and was closed about 2 s in, though it kept sending a byte
    // every 200 ms: the reply is already there when the trickling stops.
    for (i, s) in slow.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut rest = String::new();
        let _ = s.read_to_string(&mut rest);
        assert!(rest.starts_with("421 4.4.2"), "trickler {i}: {rest:?}");
    }
}

#[test]
fn a_message_trickled_a_byte_at_a_time_is_cut_off() {
    // Each read may take `smtp-data-timeout` (1 s here); the whole DATA phase three of them.
    let relay =
        Relay::start("smtp-data-timeout 1s\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n", Some(1));
    let mut s = TcpStream::connect(relay.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"EHLO slow.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@sink.test>\r\nDATA\r\n").unwrap();
    // The text waits for the 354 (RFC 2920: text sent with DATA is refused, as Postfix does).
    let mut all = String::new();
    let mut buf = [0u8; 1024];
    while !all.contains("354 ") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the 354: {all:?}");
        all.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let started = Instant::now();
    // A line every 300 ms, each read well inside the 1 s timeout, until the server hangs up.
    while started.elapsed() < Duration::from_secs(8) {
        if s.write_all(b"x\r\n").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = s.read_to_string(&mut all);
    assert!(all.contains("354") && all.trim_end().ends_with("Timeout, closing connection"), "{all:?}");
    assert!(all.contains("421 4.4.2"), "{all:?}");
    let cut = started.elapsed();
    assert!(cut < Duration::from_millis(4500), "cut off after {cut:?} (the phase may last 3 s)");
    assert!(relay.rows_of("r").is_empty(), "nothing was accepted");
}
