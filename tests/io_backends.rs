//! sluice where io_uring is refused (a default container: Docker's seccomp profile,
//! Kubernetes' `RuntimeDefault`, gVisor): under a seccomp filter answering EPERM to the three
//! io_uring calls, `io-backend auto` (the default) runs the shards on epoll and relays every
//! message; `io-backend io_uring` refuses to start and says why. `scripts/test` also runs the
//! relay tests a second time with `SLUICE_TEST_IO_BACKEND=epoll`.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const MESSAGES: u64 = 3_000;

#[test]
fn refused_io_uring_relays_every_message_on_epoll() {
    let sink = SluiceSink::start(&[], MESSAGES);
    let body = format!(
        "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n max-smtp-out 20\n</domain>\n",
        sink.port
    );
    let mut relay = Relay::prepare(&body, Some(2), &[]);
    relay.confined = true;
    relay.spawn();
    // The load generator is confined too: it falls back the same way.
    let (code, out) = run(deny_io_uring(&mut Command::new(BIN))
        .args(["loadgen", "--quiet", "--json", "-", "--messages", &MESSAGES.to_string(), "--connections", "20"])
        .args(["--size", "1K:6,20K:3,200K:1", "--domains", "40", "--target", &relay.addr().to_string()]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(json_u64(&out, "messages_ok"), MESSAGES, "{out}");
    let st = sink.finish();
    assert_eq!(
        (json_u64(&st, "messages"), json_u64(&st, "corrupt"), json_u64(&st, "duplicates")),
        (MESSAGES, 0, 0),
        "every message delivered once, intact: {st}"
    );
    let rows = relay.wait_rows("d", MESSAGES as usize, Duration::from_secs(30));
    let ids: std::collections::HashSet<&str> = rows.iter().map(|r| r["rcpt"].as_str()).collect();
    assert_eq!((rows.len(), ids.len()), (MESSAGES as usize, MESSAGES as usize), "one delivery row per message");
    let log = relay.log();
    assert_eq!(log.matches("io_uring is refused here").count(), 1, "said once, with the reason:\n{}", tail(&log, 20));
    assert!(log.contains("epoll backend"), "{}", tail(&log, 20));
}

#[test]
fn io_uring_by_name_where_it_is_refused_fails_with_the_reason() {
    let dir = TempDir::new("io-uring-named");
    let config = dir.path().join("sluice.conf");
    let port = free_port("127.0.0.1");
    std::fs::write(
        &config,
        format!("io-backend io_uring\nsmtp-listener 127.0.0.1:{port}\nspool {}\n", dir.path().join("spool").display()),
    )
    .unwrap();
    let child = deny_io_uring(&mut Command::new(BIN))
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("io_uring is not available") && text.contains("io-backend auto"), "{text}");
}
