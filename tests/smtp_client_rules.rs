//! The delivery-tuning directives PowerMTA configurations set in `<domain>`, against
//! receivers that answer the way the directive is about: a 5xx greeting
//! (`bounce-upon-5xx-greeting`), a 421 in the middle of a session
//! (`smtp-421-means-mx-unavailable`), a 553 without an enhanced code
//! (`smtp-553-means-invalid-mailbox`), an end of data never answered
//! (`smtp-data-termination-timeout`, `assume-delivery-upon-data-termination-timeout`), a
//! greeting that never comes (`smtp-greeting-timeout`), a host that never accepts
//! (`connect-timeout`), every recipient refused (`max-errors-per-connection`), 8BITMIME and
//! PIPELINING offered but not to be used (`ignore-8bitmime`, `ignore-pipelining`), and a
//! host-wide cap on connections (`total-max-smtp-out`).

mod common;
use common::*;
use std::time::{Duration, Instant};

const RELAYING: &str = "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n";

fn row_for(relay: &Relay, kind: &str, rcpt: &str) -> Option<std::collections::HashMap<String, String>> {
    relay.rows_of(kind).into_iter().find(|r| r["rcpt"] == rcpt)
}

fn hosts(mx: &[&ScriptedMx]) -> String {
    // `;` separates preference levels: the first host is tried first.
    mx.iter().map(|m| format!("[127.0.0.1]:{}", m.addr.port())).collect::<Vec<_>>().join("; ")
}

#[test]
fn greetings_and_421_move_on_or_bounce_as_configured() {
    require("swaks");
    let refusing = ScriptedMx::start(
        "127.0.0.1",
        MxScript { greeting: "554 5.7.1 mx.test: no mail from you".into(), ..Default::default() },
    );
    let closing = ScriptedMx::start(
        "127.0.0.1",
        MxScript { rcpt: |_| "421 4.7.0 mx.test: too busy, closing".into(), ..Default::default() },
    );
    let good = ScriptedMx::start("127.0.0.1", MxScript::default());
    let relay = Relay::start(
        &format!(
            "{RELAYING}\
             <domain bounce.test>\n smtp-hosts {}\n</domain>\n\
             <domain nextmx.test>\n smtp-hosts {}\n bounce-upon-5xx-greeting no\n</domain>\n\
             <domain moves.test>\n smtp-hosts {}\n smtp-421-means-mx-unavailable yes\n</domain>\n\
             <domain stays.test>\n smtp-hosts {}\n</domain>\n",
            hosts(&[&refusing, &good]),
            hosts(&[&refusing, &good]),
            hosts(&[&closing, &good]),
            hosts(&[&closing, &good]),
        ),
        Some(1),
    );
    swaks_send(&relay, "a@bounce.test");
    swaks_send(&relay, "b@nextmx.test");
    swaks_send(&relay, "c@moves.test");
    swaks_send(&relay, "d@stays.test");

    // PowerMTA's default (and RFC 5321 §3.1's): a 5xx greeting bounces, with its words.
    let b = wait_for("bounce on the 5xx greeting", Duration::from_secs(20), || row_for(&relay, "b", "a@bounce.test"));
    assert_eq!(b["dsnDiag"], "smtp;554 5.7.1 mx.test: no mail from you", "{b:?}");
    assert_eq!(b["dsnAction"], "failed");
    // `bounce-upon-5xx-greeting no`: the next MX takes it.
    let d =
        wait_for("delivery past the refusing MX", Duration::from_secs(20), || row_for(&relay, "d", "b@nextmx.test"));
    assert_eq!(d["dsnAction"], "relayed");
    // `smtp-421-means-mx-unavailable yes`: the 421 sends the message to the next MX at once,
    // not counted as a deferral.
    let d = wait_for("delivery past the 421", Duration::from_secs(20), || row_for(&relay, "d", "c@moves.test"));
    assert_eq!(d["dsnAction"], "relayed");
    assert!(row_for(&relay, "t", "c@moves.test").is_none(), "moved on without a deferral");
    // Without it the 421 defers the message (retried later per retry-after).
    let t = wait_for("deferral on the 421", Duration::from_secs(20), || row_for(&relay, "t", "d@stays.test"));
    assert_eq!(t["dsnDiag"], "smtp;421 4.7.0 mx.test: too busy, closing", "{t:?}");
    assert!(row_for(&relay, "d", "d@stays.test").is_none());
    assert_eq!(good.count("MESSAGE"), 2, "the good MX got the two that moved on: {:?}", good.log());
}

#[test]
fn a_553_without_an_enhanced_code_is_a_bad_mailbox_unless_told_otherwise() {
    require("swaks");
    let mx = ScriptedMx::start(
        "127.0.0.1",
        MxScript { rcpt: |_| "553 sorry, that mailbox is not here".into(), ..Default::default() },
    );
    let relay = Relay::start(
        &format!(
            "{RELAYING}\
             <domain rule.test>\n smtp-hosts {}\n</domain>\n\
             <domain literal.test>\n smtp-hosts {}\n smtp-553-means-invalid-mailbox no\n</domain>\n",
            hosts(&[&mx]),
            hosts(&[&mx])
        ),
        Some(1),
    );
    swaks_send(&relay, "x@rule.test");
    swaks_send(&relay, "y@literal.test");
    let b = wait_for("the 553 bounce", Duration::from_secs(20), || row_for(&relay, "b", "x@rule.test"));
    assert_eq!(
        (b["dsnStatus"].as_str(), b["bounceCat"].as_str()),
        ("5.1.1 (bad destination mailbox address)", "bad-mailbox"),
        "{b:?}"
    );
    let b = wait_for("the literal 553 bounce", Duration::from_secs(20), || row_for(&relay, "b", "y@literal.test"));
    assert!(!b["dsnStatus"].starts_with("5.1.1"), "{b:?}");
    assert_ne!(b["bounceCat"], "bad-mailbox", "{b:?}");
}

#[test]
fn timeouts_for_the_greeting_the_connect_and_the_end_of_data() {
    require("swaks");
    let slow_final = MxScript { final_delay: Duration::from_secs(4), ..Default::default() };
    let assumed = ScriptedMx::start("127.0.0.1", slow_final.clone());
    let waited = ScriptedMx::start("127.0.0.1", slow_final);
    let mute =
        ScriptedMx::start("127.0.0.1", MxScript { greeting_delay: Duration::from_secs(30), ..Default::default() });
    let (blackhole, _fillers, _listener) = unanswering_listener("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "{RELAYING}\
             <domain assumed.test>\n smtp-hosts {}\n smtp-data-termination-timeout 1s\n \
             assume-delivery-upon-data-termination-timeout yes\n</domain>\n\
             <domain waited.test>\n smtp-hosts {}\n smtp-data-termination-timeout 1s\n</domain>\n\
             <domain mute.test>\n smtp-hosts {}\n smtp-greeting-timeout 1s\n</domain>\n\
             <domain blackhole.test>\n smtp-hosts [127.0.0.1]:{}\n connect-timeout 1s\n</domain>\n",
            hosts(&[&assumed]),
            hosts(&[&waited]),
            hosts(&[&mute]),
            blackhole.port()
        ),
        Some(1),
    );
    let start = Instant::now();
    swaks_send(&relay, "a@assumed.test");
    swaks_send(&relay, "w@waited.test");
    swaks_send(&relay, "m@mute.test");
    swaks_send(&relay, "h@blackhole.test");

    let d = wait_for("the assumed delivery", Duration::from_secs(20), || row_for(&relay, "d", "a@assumed.test"));
    assert!(d["dsnDiag"].contains("assumed delivered"), "{d:?}");
    let t = wait_for("the end-of-data timeout", Duration::from_secs(20), || row_for(&relay, "t", "w@waited.test"));
    assert!(t["dsnDiag"].contains("4.4.2 timeout"), "{t:?}");
    let t = wait_for("the greeting timeout", Duration::from_secs(20), || row_for(&relay, "t", "m@mute.test"));
    assert!(t["dsnDiag"].contains("4.4.2 timeout"), "{t:?}");
    let t = wait_for("the connect timeout", Duration::from_secs(20), || row_for(&relay, "t", "h@blackhole.test"));
    assert!(t["dsnDiag"].contains("4.4.1"), "{t:?}");
    // Each gave up after its own second, far inside the defaults (10m, 5m, 2m).
    assert!(start.elapsed() < Duration::from_secs(15), "{:?}", start.elapsed());
    assert_eq!(relay.rows_of("d").len(), 1);
}

#[test]
fn max_errors_per_connection_and_ignored_extensions() {
    require("swaks");
    let refusing =
        ScriptedMx::start("127.0.0.1", MxScript { rcpt: |_| "550 5.1.1 no such user".into(), ..Default::default() });
    let plain = ScriptedMx::start("127.0.0.1", MxScript::default());
    let relay = Relay::start(
        &format!(
            "{RELAYING}\
             <domain errors.test>\n smtp-hosts {}\n max-smtp-out 1\n max-errors-per-connection 2\n</domain>\n\
             <domain plain.test>\n smtp-hosts {}\n ignore-8bitmime yes\n ignore-pipelining yes\n</domain>\n",
            hosts(&[&refusing]),
            hosts(&[&plain])
        ),
        Some(1),
    );
    for i in 0..6 {
        swaks_send(&relay, &format!("u{i}@errors.test"));
    }
    let (code, out) = swaks(
        &relay.addr().to_string(),
        "p@plain.test",
        &["--body", "caf\u{e9} cr\u{e8}me, 8-bit", "--add-header", "Content-Transfer-Encoding: 8bit"],
    );
    assert_eq!(code, 0, "{out}");
    wait_for("six bounces", Duration::from_secs(20), || {
        (relay.rows_of("b").iter().filter(|r| r["rcpt"].ends_with("@errors.test")).count() == 6).then_some(())
    });
    // One connection at a time, closed after two refused recipients: at least three.
    assert!(refusing.count("CONNECT") >= 3, "{:?}", refusing.log());
    wait_for("the 8-bit message", Duration::from_secs(20), || row_for(&relay, "d", "p@plain.test"));
    let log = plain.log();
    let mail = log.iter().find(|l| l.starts_with("MAIL")).unwrap();
    assert!(!mail.contains("BODY=8BITMIME"), "ignore-8bitmime: {mail}");
    assert_eq!(plain.count("PIPELINED"), 0, "ignore-pipelining: {log:?}");
    assert!(refusing.count("PIPELINED") > 0, "pipelined where not ignored: {:?}", refusing.log());
    assert_eq!(plain.count("MESSAGE"), 1);
}

#[test]
fn total_max_smtp_out_caps_connections_across_domains() {
    require("swaks");
    let slow =
        ScriptedMx::start("127.0.0.1", MxScript { final_delay: Duration::from_millis(1500), ..Default::default() });
    let mut conf = format!("{RELAYING}total-max-smtp-out 2\n");
    for d in ["one", "two", "three"] {
        conf.push_str(&format!("<domain {d}.test>\n smtp-hosts {}\n max-smtp-out 5\n</domain>\n", hosts(&[&slow])));
    }
    let relay = Relay::start(&conf, None);
    for d in ["one", "two", "three"] {
        for i in 0..3 {
            swaks_send(&relay, &format!("r{i}@{d}.test"));
        }
    }
    wait_for("nine deliveries", Duration::from_secs(60), || (relay.rows_of("d").len() == 9).then_some(()));
    // Three queues that could open five each, but never more than two sessions at once.
    let open = slow.max_open();
    assert_eq!(open, 2, "two connections at once at most (and used): {:?}", slow.log());
}

#[test]
fn log_connections_commands_and_data_write_both_sessions_to_the_log() {
    require("swaks");
    let mx = ScriptedMx::start("127.0.0.1", MxScript::default());
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n log-connections yes\n log-commands yes\n</source>\n\
             <domain logged.test>\n smtp-hosts {}\n log-connections yes\n log-commands yes\n log-data yes\n</domain>\n\
             <domain quiet.test>\n smtp-hosts {}\n</domain>\n",
            hosts(&[&mx]),
            hosts(&[&mx])
        ),
        Some(1),
    );
    swaks_send(&relay, "x@logged.test");
    swaks_send(&relay, "y@quiet.test");
    wait_for("two deliveries", Duration::from_secs(20), || (relay.rows_of("d").len() == 2).then_some(()));
    let log = relay.log();
    let has = |s: &str| log.lines().any(|l| l.contains(s));
    // Inbound (the source's switches): the client's commands and our replies.
    assert!(has("in 127.0.0.1") && has("connected"), "{}", tail(&log, 40));
    assert!(has("< MAIL FROM:<") && has("> 250"), "{}", tail(&log, 40));
    // Outbound to logged.test: the connection, commands both ways, and the data.
    assert!(has("out logged.test/default") && has("connected to"), "{}", tail(&log, 40));
    assert!(has("> RCPT TO:<x@logged.test>"), "{}", tail(&log, 40));
    assert!(has("< 250 2.0.0 queued"), "{}", tail(&log, 40));
    assert!(log.contains("> data ("), "{}", tail(&log, 40));
    // quiet.test has no switches: nothing of its session.
    assert!(!has("out quiet.test") && !has("> RCPT TO:<y@quiet.test>"), "{}", tail(&log, 60));
}
