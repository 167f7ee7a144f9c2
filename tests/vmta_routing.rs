//! Routing as PowerMTA configurations write it: a source's `<pattern-list>` picks the VMTA by
//! sender, recipient or header (with `call-to:` into another list), `<rewrite-list>` rewrites
//! the envelope sender and the From domain, a cold VMTA takes its daily share of a warm one's
//! mail per destination (`cold-virtual-mta`, `max-cold-virtual-mta-msg`), and
//! `reroute-to-virtual-mta` / `type discard` change where a destination's mail goes. What is
//! asserted is what the receiver and the accounting file see.

mod common;
use common::*;
use std::time::Duration;

const VMTAS: &str = "<virtual-mta news>\n smtp-source-host 127.0.0.2 news.test\n</virtual-mta>\n\
                     <virtual-mta billing>\n smtp-source-host 127.0.0.3 billing.test\n</virtual-mta>\n\
                     <virtual-mta vip>\n smtp-source-host 127.0.0.4 vip.test\n</virtual-mta>\n";

fn vmta_of(relay: &Relay, rcpt: &str) -> String {
    let d = wait_for(&format!("delivery to {rcpt}"), Duration::from_secs(20), || {
        relay.rows_of("d").into_iter().find(|r| r["rcpt"] == rcpt)
    });
    format!("{} {}", d["vmta"], d["dlvSourceIp"])
}

#[test]
fn pattern_list_picks_the_vmta_and_rewrite_list_the_sender() {
    let mx = ScriptedMx::start("127.0.0.1", MxScript::default());
    let relay = Relay::start(
        &format!(
            "{VMTAS}\
             <pattern-list by-header>\n header X-Priority /^\\s*1/ virtual-mta=vip\n</pattern-list>\n\
             <pattern-list routing>\n \
               mail-from /@news\\.src\\.test$/ virtual-mta=news\n \
               rcpt-to /^invoices-.*@/ virtual-mta=billing\n \
               header Subject /your order/i virtual-mta=billing\n \
               * call-to:by-header\n\
             </pattern-list>\n\
             <rewrite-list bounces>\n mail-from *@news.src.test *@bounces.src.test\n \
               from-domain [*.]old-brand.test new-brand.test\n</rewrite-list>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n pattern-list routing\n rewrite-list bounces\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            mx.addr.port()
        ),
        Some(1),
    );
    let send = |from: &str, to: &str, headers: &str| {
        let msg = format!("From: Shop <shop@mail.old-brand.test>\r\n{headers}Subject: hello\r\n\r\nbody\r\n");
        assert_eq!(smtplib_send(&relay, "127.0.0.1", from, &[to], msg.as_bytes()), "sent");
    };
    send("list@news.src.test", "a@dest.test", "");
    send("app@src.test", "invoices-7@dest.test", "");
    send("app@src.test", "b@dest.test", "X-Priority: 1 (Highest)\r\n");
    send("app@src.test", "c@dest.test", "");
    let msg = b"From: app@src.test\r\nSubject: Your Order 42\r\n\r\nbody\r\n";
    assert_eq!(smtplib_send(&relay, "127.0.0.1", "app@src.test", &["d@dest.test"], msg), "sent");
    assert_eq!(vmta_of(&relay, "a@dest.test"), "news 127.0.0.2");
    assert_eq!(vmta_of(&relay, "invoices-7@dest.test"), "billing 127.0.0.3");
    assert_eq!(vmta_of(&relay, "b@dest.test"), "vip 127.0.0.4", "through call-to:by-header");
    assert_eq!(vmta_of(&relay, "c@dest.test"), "default 127.0.0.1", "no rule: the default");
    assert_eq!(vmta_of(&relay, "d@dest.test"), "billing 127.0.0.3", "a case-insensitive header rule");
    // The rewrite list: the news sender's envelope domain, everyone's From domain.
    let log = mx.log();
    assert!(log.iter().any(|l| l.starts_with("MAIL FROM:<list@bounces.src.test>")), "{log:?}");
    assert!(log.iter().any(|l| l.starts_with("MAIL FROM:<app@src.test>")), "{log:?}");
    let bodies: Vec<&String> = log.iter().filter(|l| l.starts_with("BODY ")).collect();
    assert_eq!(bodies.len(), 5);
    assert!(bodies.iter().filter(|b| b.contains("From: Shop <shop@new-brand.test>\r\n")).count() == 4, "{bodies:?}");
    assert!(bodies.iter().all(|b| !b.contains("old-brand")), "{bodies:?}");
    let a = relay.rows_of("d").into_iter().find(|r| r["rcpt"] == "a@dest.test").unwrap();
    assert_eq!(a["orig"], "list@bounces.src.test", "accounting shows the sender as sent");
}

#[test]
fn a_cold_vmta_takes_its_daily_share_per_destination() {
    let mx = ScriptedMx::start("127.0.0.1", MxScript::default());
    let relay = Relay::start(
        &format!(
            "<virtual-mta warm-cold>\n smtp-source-host 127.0.0.5 cold.test\n</virtual-mta>\n\
             <virtual-mta warm>\n smtp-source-host 127.0.0.2 warm.test\n cold-virtual-mta warm-cold\n \
               <domain *>\n max-cold-virtual-mta-msg 3/day,10/day\n </domain>\n</virtual-mta>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n default-virtual-mta warm\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            mx.addr.port()
        ),
        Some(1),
    );
    for i in 0..5 {
        swaks_send(&relay, &format!("u{i}@one.test"));
        swaks_send(&relay, &format!("u{i}@two.test"));
    }
    let d = relay.wait_rows("d", 10, Duration::from_secs(30));
    for domain in ["one.test", "two.test"] {
        let cold = d.iter().filter(|r| r["rcpt"].ends_with(domain) && r["vmta"] == "warm-cold").count();
        let warm = d.iter().filter(|r| r["rcpt"].ends_with(domain) && r["vmta"] == "warm").count();
        assert_eq!((cold, warm), (3, 2), "{domain}: the first day's three go cold, the rest warm");
    }
    assert!(d.iter().filter(|r| r["vmta"] == "warm-cold").all(|r| r["dlvSourceIp"] == "127.0.0.5"));
}

#[test]
fn reroute_and_discard_change_where_mail_goes() {
    let mx = ScriptedMx::start("127.0.0.1", MxScript::default());
    let relay = Relay::start(
        &format!(
            "{VMTAS}\
             <source 127.0.0.1>\n always-allow-relaying yes\n default-virtual-mta news\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <virtual-mta-pool unused>\n virtual-mta vip\n</virtual-mta-pool>\n\
             <domain moved.test>\n reroute-to-virtual-mta billing\n</domain>\n\
             <domain traps.test>\n type discard\n</domain>\n",
            mx.addr.port()
        ),
        Some(1),
    );
    swaks_send(&relay, "x@moved.test");
    swaks_send(&relay, "y@traps.test");
    swaks_send(&relay, "z@plain.test");
    assert_eq!(vmta_of(&relay, "x@moved.test"), "billing 127.0.0.3");
    assert_eq!(vmta_of(&relay, "z@plain.test"), "news 127.0.0.2");
    let d = wait_for("the discard record", Duration::from_secs(20), || {
        relay.rows_of("d").into_iter().find(|r| r["rcpt"] == "y@traps.test")
    });
    assert!(d["dsnDiag"].contains("discarded"), "{d:?}");
    std::thread::sleep(Duration::from_millis(300));
    let rcpts: Vec<String> = mx.log().into_iter().filter(|l| l.starts_with("RCPT")).collect();
    assert_eq!(rcpts.len(), 2, "the discarded one never went out: {rcpts:?}");
}

/// Names in another case than defined (VMTAs, pool, pattern list, address list), and
/// `<virtual-mta-group>` (an older name for a pool),
/// as real configurations write them: mail goes through the group's VMTAs, and rows name the
/// VMTAs and the pool as defined; the destination's pattern list is named in another case
/// too (the configuration loads: before, each of these was an error).
#[test]
fn names_in_another_case_and_a_virtual_mta_group_route_mail() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let relay = Relay::start(
        &format!(
            "<virtual-mta Mta-1>\n smtp-source-host 127.0.0.1 mta1.example.net\n</virtual-mta>\n\
             <virtual-mta mta-2>\n smtp-source-host 127.0.0.1 mta2.example.net\n</virtual-mta>\n\
             <virtual-mta-group Warmup>\n virtual-mta mta-1\n virtual-mta MTA-2\n</virtual-mta-group>\n\
             <smtp-pattern-list Sink-errors>\n reply /nothing matches this/ mode=backoff\n</smtp-pattern-list>\n\
             <address-list Blocked>\n address blocked@sink.test\n</address-list>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n default-virtual-mta warmup\n suppression-lists blocked\n</source>\n\
             <domain sink.test>\n smtp-hosts [127.0.0.1]:{}\n smtp-pattern-list sink-ERRORS\n</domain>\n",
            sink.addr.port()
        ),
        Some(1),
    );
    for i in 0..6 {
        swaks_send(&relay, &format!("r{i}@sink.test"));
    }
    let rows = relay.wait_rows("d", 6, Duration::from_secs(15));
    for r in &rows {
        assert!(["Mta-1", "mta-2"].contains(&r["vmta"].as_str()), "{r:?}");
        assert_eq!(r["vmtaPool"], "Warmup", "{r:?}");
    }
    // The address list, named `Blocked` and used as `blocked`, suppresses.
    let (mut t, _) = Talk::connect(relay.addr());
    t.cmd("EHLO c.test");
    t.cmd("MAIL FROM:<a@src.test>");
    let reply = t.cmd("RCPT TO:<blocked@sink.test>");
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
}

/// A global `smtp-source-host` (outside any `<virtual-mta>`, as real configurations write it):
/// mail through the default virtual MTA leaves from that address with that EHLO name; a
/// defined VMTA keeps its own.
#[test]
fn a_global_smtp_source_host_is_where_default_mail_leaves_from() {
    let receiver = PyReceiver::start();
    let relay = Relay::start(
        &format!(
            "smtp-source-host 127.0.0.3 out.example.test\n\
             <virtual-mta own>\n smtp-source-host 127.0.0.4 own.example.test\n</virtual-mta>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n process-x-virtual-mta yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            receiver.addr.port()
        ),
        Some(1),
    );
    swaks_send(&relay, "default@dest.test");
    let (code, out) = swaks(&relay.addr().to_string(), "own@dest.test", &["--header", "X-Virtual-MTA: own"]);
    assert_eq!(code, 0, "{out}");
    let files = wait_for("two messages", Duration::from_secs(15), || {
        let f = receiver.files();
        (f.len() == 2).then_some(f)
    });
    let mut seen = Vec::new();
    for f in files {
        let env = std::fs::read_to_string(f.with_extension("env")).unwrap();
        let lines: Vec<&str> = env.lines().collect();
        seen.push(format!("{} from {}", lines[1], lines[3]));
    }
    seen.sort();
    assert_eq!(
        seen,
        ["default@dest.test from 127.0.0.3 out.example.test", "own@dest.test from 127.0.0.4 own.example.test"]
    );
}
