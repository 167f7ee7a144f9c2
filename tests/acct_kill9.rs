//! Accounting through crashes (issue 22): sluice is killed with SIGKILL five times while it
//! delivers to one receiver (Postfix's smtp-sink, which takes everything) and bounces to
//! another (smtp-sink refusing every RCPT with a 5xx), DSNs going to a third. After the last
//! restart every outcome has its accounting row: each recipient that reached the receiver
//! has a `d` row, each refused one a `b` row and a DSN. A row is written before its outcome is
//! journaled, so a crash in between repeats the delivery (a second copy at the receiver, with
//! a row of its own), never leaves an outcome without a row; no recipient has more `d` rows
//! than copies at the receiver.

mod common;
use common::inject::{Injectors, Plan};
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const INJECTORS: usize = 4;
const KILLS: usize = 5;
/// Injectors run until the last kill; these bound them in any case.
const MESSAGES_MAX: u64 = 50_000;
const INJECT_TIME_MAX: Duration = Duration::from_secs(40);

/// Message `id` to `r<id>@good.test` and `r<id>@bad.test`.
fn compose(id: u64) -> (Vec<String>, String) {
    let body = format!("Subject: acct {id}\r\nX-Acct-Id: {id}\r\n\r\n{}\r\n", "y".repeat(100 + (id as usize % 500)));
    (vec![format!("r{id}@good.test"), format!("r{id}@bad.test")], body)
}

/// `r<id>@<domain>` → id.
fn id_of(rcpt: &str, domain: &str) -> Option<u64> {
    rcpt.strip_prefix('r')?.strip_suffix(&format!("@{domain}"))?.parse().ok()
}

/// Per id, the copies in a sink's dumps (the first `X-Acct-Id` header or, in a DSN, the
/// failed recipient).
fn copies(messages: Vec<String>, dsn: bool) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for m in messages {
        let id = match dsn {
            false => m.lines().find_map(|l| l.strip_prefix("X-Acct-Id: ")).and_then(|v| v.trim().parse().ok()),
            true => m
                .lines()
                .find_map(|l| l.strip_prefix("Final-Recipient: rfc822;"))
                .and_then(|v| id_of(v.trim(), "bad.test")),
        };
        if let Some(id) = id {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    seen
}

/// Per id, the rows of `kind` for recipients in `domain`.
fn rows(relay: &Relay, kind: &str, domain: &str) -> HashMap<u64, usize> {
    let mut n = HashMap::new();
    for r in relay.rows_of(kind) {
        if let Some(id) = id_of(&r["rcpt"], domain) {
            *n.entry(id).or_insert(0) += 1;
        }
    }
    n
}

#[test]
fn sigkill_during_delivery_and_bounces_leaves_every_outcome_its_row() {
    let good = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let bad = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &["-f", "RCPT"], false);
    let senders = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let mut relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n generate-bounces yes\n</source>\n\
             <domain good.test>\n smtp-hosts [127.0.0.1]:{}\n retry-after 1s\n</domain>\n\
             <domain bad.test>\n smtp-hosts [127.0.0.1]:{}\n retry-after 1s\n</domain>\n\
             <domain src.test>\n smtp-hosts [127.0.0.1]:{}\n retry-after 1s\n</domain>\n\
             spool-segment-size 1M\n",
            good.addr.port(),
            bad.addr.port(),
            senders.addr.port()
        ),
        None,
    );
    // Paced (about 800 messages a second from all injectors): enough to have deliveries
    // under way at every kill, few enough that the rows are checked in seconds.
    let plan = Plan {
        threads: INJECTORS,
        messages_max: MESSAGES_MAX,
        time_max: INJECT_TIME_MAX,
        pace: Duration::from_millis(5),
        mail_from: "s@src.test",
        compose,
    };
    let injectors = Injectors::start(relay.addr(), plan);
    for k in 0..KILLS {
        // The kill lands while rows come in: in the middle of deliveries and bounces.
        let before = relay.rows_of("d").len() + relay.rows_of("b").len();
        wait_for("deliveries and bounces under way", Duration::from_secs(20), || {
            (relay.rows_of("d").len() + relay.rows_of("b").len() >= before + 20 * (k + 1)).then_some(())
        });
        assert!(!injectors.stopped(), "the injectors stopped before kill {k}");
        relay.kill9();
        std::thread::sleep(Duration::from_millis(100));
        relay.spawn();
    }
    let acked = injectors.finish();
    assert!(acked.len() > 100, "too few messages acknowledged to mean anything: {}", acked.len());

    // Every acknowledged message delivered to good.test and bounced for bad.test (with its
    // DSN), and every one of those outcomes with its row.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered = copies(good.messages(), false);
        let dsns = copies(senders.messages(), true);
        let (d, b) = (rows(&relay, "d", "good.test"), rows(&relay, "b", "bad.test"));
        let mut missing: Vec<String> = Vec::new();
        for id in &acked {
            if !delivered.contains_key(id) {
                missing.push(format!("{id}: not delivered"));
            }
            if !dsns.contains_key(id) {
                missing.push(format!("{id}: no DSN"));
            }
        }
        missing
            .extend(delivered.keys().filter(|id| !d.contains_key(id)).map(|id| format!("{id}: delivered, no d row")));
        missing.extend(dsns.keys().filter(|id| !b.contains_key(id)).map(|id| format!("{id}: DSN sent, no b row")));
        if missing.is_empty() {
            // Never more rows than events: a delivery's row stands for a copy received (read
            // again a moment later: the sink writes its file as it answers).
            std::thread::sleep(Duration::from_millis(500));
            let delivered = copies(good.messages(), false);
            for (id, rows) in &d {
                let got = delivered.get(id).copied().unwrap_or(0);
                assert!(*rows <= got, "r{id}@good.test: {rows} d rows for {got} copies received");
            }
            let extra_d: usize = d.values().map(|n| n - 1).sum();
            let extra_b: usize = b.values().map(|n| n - 1).sum();
            let duplicates: usize = delivered.values().map(|n| n - 1).sum();
            eprintln!(
                "{} acknowledged; {} delivered ({duplicates} repeated after a crash), {} bounced with DSNs; \
                 {} d rows ({extra_d} for repeats), {} b rows ({extra_b} for repeats) after {KILLS} SIGKILLs",
                acked.len(),
                delivered.len(),
                dsns.len(),
                d.values().sum::<usize>(),
                b.values().sum::<usize>()
            );
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "{} outcomes without their rows or never reached (e.g. {:?}); relay log:\n{}",
                missing.len(),
                &missing[..missing.len().min(10)],
                tail(&relay.log(), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
