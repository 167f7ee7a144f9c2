//! What a panic ends (issue 27). A panic while one connection's input is handled ends that
//! connection only: it is told 421 and closed, the panic is logged with the peer, and the
//! shard and every other connection — one in the middle of its DATA included — go on. A panic
//! anywhere else ends the process, at once, so its supervisor restarts it; the restarted relay
//! recovers its spool as after `kill -9` and delivers what was acknowledged. Both panics are
//! injected on purpose (`SLUICE_FAULTS=conn-panic` / `shard-panic`, test-only).

mod common;
use common::*;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

fn config(sink_port: u16) -> String {
    format!(
        "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
         <domain *>\n smtp-hosts [127.0.0.1]:{sink_port}\n retry-after 1s\n</domain>\n"
    )
}

/// A session with its DATA begun: the message's first half is sent.
fn half_sent(relay: &Relay, rcpt: &str) -> Talk {
    let (mut t, greeting) = Talk::connect(relay.addr());
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(t.cmd("EHLO bystander.example").starts_with("250"));
    assert!(t.cmd("MAIL FROM:<s@example.com>").starts_with("250"));
    assert!(t.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(t.cmd("DATA").starts_with("354"));
    t.send(b"Subject: bystander\r\n\r\nfirst half\r\n");
    t
}

#[test]
fn a_panic_in_one_connection_ends_that_connection_only() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let mut relay = Relay::start_with_env(&config(sink.addr.port()), Some(2), &[("SLUICE_FAULTS", "conn-panic")]);
    let mut bystanders: Vec<Talk> = (0..4).map(|i| half_sent(&relay, &format!("bystander{i}@dest.example"))).collect();
    // Ten connections (over both shards) whose input panics while it is handled.
    for i in 0..10 {
        let (mut t, greeting) = Talk::connect(relay.addr());
        assert!(greeting.starts_with("220"), "connection {i}: {greeting}");
        assert!(t.cmd("EHLO victim.example").starts_with("250"));
        let reply = t.cmd("XFAULT-CONN-PANIC now");
        assert!(reply.starts_with("421 4.3.0"), "connection {i}: {reply}");
        assert_eq!(t.rest(), "", "connection {i} is closed after its 421");
    }
    // The connections in the middle of their DATA finish, and are acknowledged.
    for (i, t) in bystanders.iter_mut().enumerate() {
        t.send(b"second half\r\n.\r\n");
        let reply = t.reply();
        assert!(reply.starts_with("250"), "bystander {i}: {reply}");
        t.cmd("QUIT");
    }
    // New connections are greeted by both shards and their mail is delivered.
    for i in 0..10 {
        talk_send(&relay, "s@example.com", &format!("after{i}@dest.example"));
    }
    wait_for("14 messages at the sink", Duration::from_secs(60), || (sink.messages().len() >= 14).then_some(()));
    assert!(relay.wait_exit(Duration::from_millis(100)).is_none(), "the relay is still running");
    let log = relay.log();
    let logged = log.lines().filter(|l| l.contains("handling a client's input panicked")).collect::<Vec<_>>();
    assert_eq!(logged.len(), 10, "one line per panicked connection:\n{}", tail(&log, 30));
    assert!(logged.iter().all(|l| l.contains("peer=127.0.0.1") && l.contains("conn-panic")), "{}", logged[0]);
}

#[test]
fn a_panic_outside_any_connection_ends_the_process_and_a_restart_delivers_the_spool() {
    // The receiver is not there yet: the acknowledged message waits in the spool.
    let sink_port = free_port("127.0.0.1");
    let mut relay = Relay::start_with_env(&config(sink_port), Some(2), &[("SLUICE_FAULTS", "shard-panic")]);
    talk_send(&relay, "s@example.com", "kept@dest.example");
    let (mut t, greeting) = Talk::connect(relay.addr());
    assert!(greeting.starts_with("220"), "{greeting}");
    t.send(b"XFAULT-SHARD-PANIC now\r\n");
    // The process exits by itself, at once (abort), instead of leaving a listener no shard serves.
    let status = relay
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("sluice still runs 20 s after a shard panicked:\n{}", tail(&relay.log(), 30)));
    assert_eq!(status.signal(), Some(6), "ended by abort (SIGABRT): {status:?}");
    let log = relay.log();
    assert!(log.contains("sluice exits so its supervisor restarts it"), "{}", tail(&log, 30));
    assert!(log.contains("thread 'shard-"), "the panic report names the shard:\n{}", tail(&log, 30));
    // Its supervisor starts it again: the acknowledged message is recovered and delivered.
    let sink = SmtpSink::start("127.0.0.1", sink_port, &[], true);
    relay.env.clear();
    relay.spawn();
    wait_for("the kept message at the sink", Duration::from_secs(60), || {
        sink.messages().iter().any(|m| m.contains("kept@dest.example")).then_some(())
    });
}
