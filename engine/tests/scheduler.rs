//! The delivery scheduler in simulated time: start-up delay and ramp, message rates per
//! second, backoff and `backoff-to-normal-after`, adaptive rate. Each runs minutes or hours
//! of simulated time in milliseconds of real time, deterministically; the receiver answers
//! every transaction at once with a reply the test picks. (One wall-clock end-to-end test
//! per feature remains in the root `tests/`.)

use sluice_engine::acct::Kind;
use sluice_engine::queue::{AttemptInfo, Job, Recipient};
use sluice_engine::route::{Hop, Resolution};
use sluice_engine::sched::backlog::MemBacklog;
use sluice_engine::sched::limits::source_limits;
use sluice_engine::sched::stats::ShardStats;
use sluice_engine::sched::{Intent, Message, Scheduler};
use sluice_engine::smtp::reply::Reply;
use sluice_engine::time::Now;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Clone, Debug)]
struct Msg;

impl Message for Msg {
    fn data(&self) -> &[u8] {
        b"Subject: x\r\n\r\nbody\r\n"
    }
    fn sender(&self) -> &str {
        "s@src.test"
    }
    fn client_ip(&self) -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }
}

fn job(i: u32) -> Job<Msg> {
    Job {
        msg: Msg,
        mail_from: "s@src.test".into(),
        rcpts: vec![Recipient { index: 0, address: format!("r{i}@dest.test") }],
        attempts: 1,
        first_attempt_unix_ms: 0,
        queued_unix_ms: 0,
        size: 100,
        job_id: String::new(),
        drew_421: Vec::new(),
    }
}

/// A world of one shard, one destination and a receiver that answers `reply(now_ms)` (or
/// `reply(now_ms, vmta)`: the VMTA the connection went out through).
struct World {
    s: Scheduler<Msg>,
    now_ms: u64,
    /// (time, connection) of every transaction started.
    starts: Vec<(u64, u64)>,
    open: Vec<u64>,
    max_open: usize,
    records: Vec<sluice_engine::acct::Record>,
    /// The VMTA of every connection opened, in order, and by connection.
    vmtas: Vec<String>,
    conn_vmta: std::collections::HashMap<u64, String>,
}

impl World {
    fn new(conf: &str) -> World {
        let text = format!("smtp-listener 127.0.0.1:25\n{conf}\n");
        let config = Arc::new(sluice_config::load("t.conf", &text, &mut |_| Err("no includes".into())).unwrap());
        let limits = Arc::new(source_limits(&config));
        let s =
            Scheduler::new(0, 1, config, limits, Arc::new(ShardStats::default()), MemBacklog::factory(), Now::at_ms(0));
        World {
            s,
            now_ms: 0,
            starts: Vec::new(),
            open: Vec::new(),
            max_open: 0,
            records: Vec::new(),
            vmtas: Vec::new(),
            conn_vmta: Default::default(),
        }
    }

    fn now(&self) -> Now {
        Now::at_ms(self.now_ms)
    }

    fn queue(&mut self, n: u32) {
        for i in 0..n {
            self.s.dispatch("dest.test", "default".into(), job(i), None);
        }
    }

    /// Runs until `until_ms` in steps of `step_ms`, ticking every 50 ms as the shard does.
    fn run(&mut self, until_ms: u64, step_ms: u64, reply: &dyn Fn(u64) -> Reply) {
        self.run_by_vmta(until_ms, step_ms, &|t, _| reply(t));
    }

    /// As `run`, the receiver's reply depending on the connection's VMTA too.
    fn run_by_vmta(&mut self, until_ms: u64, step_ms: u64, reply: &dyn Fn(u64, &str) -> Reply) {
        while self.now_ms < until_ms {
            self.now_ms += step_ms;
            if self.now_ms % 50 < step_ms {
                self.s.tick(self.now());
            }
            self.s.pump(self.now());
            self.answer_intents(reply);
        }
    }

    /// The world answers each of the scheduler's intents at once (resolutions, connections,
    /// transactions with the reply the test picks). Not the shard's glue: no spool, sockets or
    /// accounting writer here; the product's shards run in `netio/tests/relay_sim.rs`.
    fn answer_intents(&mut self, reply: &dyn Fn(u64, &str) -> Reply) {
        let now = self.now();
        while let Some(intent) = self.s.poll_intent() {
            match intent {
                Intent::Resolve { domain, .. } => {
                    let hop = Hop { host: "mx.dest.test".into(), addr: "192.0.2.1:25".parse().unwrap() };
                    self.s.on_resolved(&domain, Resolution::Hops(vec![vec![hop]]), 3_600_000, None, now);
                }
                Intent::Connect { conn, plan } => {
                    self.vmtas.push(plan.vmta.clone());
                    self.conn_vmta.insert(conn, plan.vmta.clone());
                    self.open.push(conn);
                    self.max_open = self.max_open.max(self.open.len());
                    self.s.conn_ready(conn, now);
                }
                Intent::Start { conn, job, .. } => {
                    self.starts.push((self.now_ms, conn));
                    let vmta = self.conn_vmta.get(&conn).map_or("", String::as_str);
                    let replies = vec![reply(self.now_ms, vmta); job.rcpts.len()];
                    let hop = "192.0.2.1:25".parse().ok();
                    let info = AttemptInfo { mx_host: "mx.dest.test".into(), hop, ..Default::default() };
                    self.s.txn_done(conn, job, &replies, info, true, now);
                }
                Intent::Quit { conn } => {
                    self.open.retain(|c| *c != conn);
                    self.s.conn_closed(conn, None);
                }
                Intent::Idle { .. } => {} // waits for work (no idle timeout here)
                Intent::Record(r) => self.records.push(*r),
                Intent::Dispatch { .. } | Intent::Outcome { .. } | Intent::Dsn { .. } => {}
            }
        }
    }

    fn starts_between(&self, from_ms: u64, to_ms: u64) -> usize {
        self.starts.iter().filter(|(t, _)| *t > from_ms && *t <= to_ms).count()
    }

    fn events(&self) -> Vec<String> {
        self.records.iter().filter(|r| r.kind == Kind::QueueEvent).map(|r| r.dsn_diag.clone()).collect()
    }
}

fn ok(_: u64) -> Reply {
    Reply::new(250, "2.0.0 ok")
}

#[test]
fn startup_delay_then_a_ramp_of_connections() {
    let mut w = World::new(
        "startup-delivery-delay 30s\nstartup-ramp 10m\n<domain *>\n max-smtp-out 20\n max-msg-per-connection 1\n</domain>",
    );
    w.queue(30_000);
    w.run(29_900, 100, &ok);
    assert!(w.starts.is_empty(), "nothing delivered during the delay");
    // Just after the delay: 10% of max-smtp-out (rounded up as it grows).
    w.run(31_000, 100, &ok);
    assert!(w.max_open <= 3 && !w.starts.is_empty(), "{} open", w.max_open);
    // Half way through the ramp: about 55%.
    w.max_open = 0;
    w.run(30_000 + 300_000, 500, &ok);
    assert!((10..=12).contains(&w.max_open), "{} open half way", w.max_open);
    w.max_open = 0;
    w.run(30_000 + 600_000 + 1_000, 500, &ok);
    assert_eq!(w.max_open, 20, "the whole of max-smtp-out after the ramp");
}

#[test]
fn max_msg_rate_per_second_holds_over_a_simulated_minute() {
    let mut w = World::new("<domain *>\n max-msg-rate 10/s\n max-smtp-out 5\n</domain>");
    w.queue(10_000);
    w.run(60_000, 10, &ok);
    // 10 a second, and no burst beyond one tick's worth.
    for second in 1..60 {
        let n = w.starts_between(second * 1000, (second + 1) * 1000);
        assert!((9..=11).contains(&n), "{n} messages in second {second}");
    }
    assert!((590..=602).contains(&w.starts.len()), "{} in a minute", w.starts.len());
}

#[test]
fn backoff_on_a_pattern_then_back_to_normal_after_its_time() {
    let conf = "<smtp-pattern-list slow>\n reply /^421 .* slow down/ mode=backoff,backoff-to-normal-after=30m\n</smtp-pattern-list>\n\
                <domain *>\n max-msg-rate 600/m\n backoff-max-msg-rate 60/h\n smtp-pattern-list slow\n retry-after 1m\n</domain>";
    let mut w = World::new(conf);
    w.queue(8_000);
    // The receiver says slow down for the first two seconds.
    let reply = |t: u64| if t < 2_000 { Reply::new(421, "4.7.0 slow down") } else { Reply::new(250, "ok") };
    w.run(10 * 60_000, 50, &reply);
    let events = w.events();
    assert!(events.iter().any(|e| e.starts_with("mode=backoff for 1800s")), "{events:?}");
    // Backing off: 60/h, so about 10 in the 10 minutes (against 6,000 at the normal rate).
    let during = w.starts_between(2_000, 10 * 60_000);
    assert!(during <= 12, "{during} started while backing off");
    w.run(31 * 60_000, 1_000, &reply);
    assert!(w.events().iter().any(|e| e == "mode=normal (backoff-to-normal-after)"), "{:?}", w.events());
    let after = w.starts_between(31 * 60_000 - 1_000, 32 * 60_000);
    w.run(32 * 60_000, 50, &reply);
    let after = w.starts_between(31 * 60_000, 32 * 60_000) + after;
    assert!(after >= 500, "normal rate again: {after} in a minute");
}

#[test]
fn adaptive_rate_halves_on_throttling_and_climbs_on_clean_deliveries() {
    let conf = "<domain *>\n adaptive-rate yes\n max-msg-rate 100/s\n max-smtp-out 10\n retry-after 1m\n</domain>";
    let mut w = World::new(conf);
    w.queue(20_000);
    // Clean for 10 s, throttled (4.7.x) for 5 s, clean again.
    let reply = |t: u64| {
        if (10_000..15_000).contains(&t) {
            Reply::new(451, "4.7.1 rate limited")
        } else {
            Reply::new(250, "ok")
        }
    };
    w.run(10_000, 10, &reply);
    let clean = w.starts_between(9_000, 10_000);
    w.run(15_000, 10, &reply);
    let throttled = w.starts_between(14_000, 15_000);
    assert!(throttled * 10 < clean, "throttled to a trickle: {throttled} vs {clean} a second");
    let decreases = w.events().iter().filter(|e| e.contains("(decrease on: 451 4.7.1")).count();
    assert!(decreases >= 5, "{:?}", w.events());
    w.run(45_000, 10, &reply);
    let recovered = w.starts_between(44_000, 45_000);
    assert!(recovered > throttled * 2, "climbing again: {recovered} vs {throttled}");
    assert!(w.events().iter().any(|e| e.contains("(increase)")));
}

/// A receiver that takes 40 a second and answers 451 4.7.1 beyond (its hidden rate): with a
/// fixed 400/s most attempts are refused; with `adaptive-rate` the rate settles near what the
/// receiver takes and few are.
#[test]
fn adaptive_rate_settles_near_a_hidden_receiver_rate_where_a_fixed_rate_hammers() {
    let run = |adaptive: bool| {
        let conf = format!(
            "<domain *>\n adaptive-rate {}\n max-msg-rate 400/s\n max-smtp-out 10\n retry-after 1s\n</domain>",
            if adaptive { "yes" } else { "no" }
        );
        let mut w = World::new(&conf);
        w.queue(2_000);
        // The receiver's token bucket: 40 a second, a burst of 4.
        let bucket = std::cell::Cell::new((4.0f64, 0u64));
        let reply = |t: u64| {
            let (tokens, last) = bucket.get();
            let tokens = (tokens + (t - last) as f64 * 40.0 / 1000.0).min(4.0);
            if tokens >= 1.0 {
                bucket.set((tokens - 1.0, t));
                Reply::new(250, "ok")
            } else {
                bucket.set((tokens, t));
                Reply::new(451, "4.7.1 too fast, slow down")
            }
        };
        w.run(30_000, 10, &reply);
        let deferred = w.records.iter().filter(|r| r.kind == Kind::Transient).count();
        let delivered = w.records.iter().filter(|r| r.kind == Kind::Delivered).count();
        (delivered, deferred)
    };
    let (fixed_ok, fixed_refused) = run(false);
    let (adaptive_ok, adaptive_refused) = run(true);
    assert!(fixed_refused > fixed_ok * 5, "a fixed rate hammers: {fixed_ok} delivered, {fixed_refused} refused");
    assert!(
        adaptive_refused * 2 < adaptive_ok,
        "adaptive backs off: {adaptive_ok} delivered, {adaptive_refused} refused"
    );
    assert!(adaptive_ok >= 30 * 40 / 2, "and still delivers near the receiver's rate: {adaptive_ok} in 30 s");
}

/// `max-msg-rate 0` holds a queue's mail (PowerMTA configs use it for spam traps), also
/// through the start-up ramp; other queues deliver.
#[test]
fn a_zero_message_rate_holds_the_queue() {
    let mut w = World::new("startup-ramp 1m\n<domain dest.test>\n max-msg-rate 0\n</domain>");
    w.queue(50);
    w.run(600_000, 100, &ok);
    assert!(w.starts.is_empty(), "nothing sent to a queue held at rate 0: {:?}", w.starts.len());
    let mut w = World::new("<domain other.test>\n max-msg-rate 0\n</domain>");
    w.queue(50);
    w.run(10_000, 100, &ok);
    assert_eq!(w.starts.len(), 50, "a queue without the rule delivers");
}

/// `mx-connection-attempts N`: a connection tries at most N next hops; the plan carries the
/// destination's client settings.
#[test]
fn a_connection_tries_at_most_mx_connection_attempts_hops() {
    for (conf, expect) in
        [("", 4), ("<domain dest.test>\n mx-connection-attempts 2\n connect-timeout 7s\n</domain>", 2)]
    {
        let mut w = World::new(conf);
        w.queue(1);
        w.s.pump(w.now());
        let mut plan = None;
        while let Some(intent) = w.s.poll_intent() {
            match intent {
                Intent::Resolve { domain, .. } => {
                    let hops = (1..=4)
                        .map(|i| Hop {
                            host: format!("mx{i}.dest.test"),
                            addr: format!("192.0.2.{i}:25").parse().unwrap(),
                        })
                        .collect();
                    w.s.on_resolved(&domain, Resolution::Hops(vec![hops]), 3_600_000, None, w.now());
                    w.s.pump(w.now());
                }
                Intent::Connect { plan: p, .. } => plan = Some(p),
                _ => {}
            }
        }
        let plan = plan.expect("a connection was opened");
        assert_eq!(plan.hops.len(), expect, "{conf}");
        if expect == 2 {
            assert_eq!(plan.smtp.connect_timeout, std::time::Duration::from_secs(7));
        }
    }
}

/// `max-errors-per-connection`: a session whose recipients keep being refused is closed
/// after that many, and a fresh one opened.
#[test]
fn a_connection_closes_after_max_errors() {
    let mut w = World::new("<domain dest.test>\n max-smtp-out 1\n max-errors-per-connection 3\n</domain>");
    w.queue(9);
    w.run(5_000, 10, &|_| Reply::new(550, "5.1.1 unknown"));
    assert_eq!(w.starts.len(), 9);
    let conns: std::collections::BTreeSet<u64> = w.starts.iter().map(|(_, c)| *c).collect();
    assert_eq!(conns.len(), 3, "three transactions a connection: {:?}", w.starts);
}

/// `total-max-smtp-out`: connections across every queue stay within the host's cap.
#[test]
fn total_max_smtp_out_caps_every_queue_together() {
    let mut w = World::new("total-max-smtp-out 3\n<domain dest.test>\n max-smtp-out 20\n</domain>");
    w.queue(200);
    w.run(2_000, 10, &ok);
    assert_eq!(w.max_open, 3);
    let mut w = World::new("<domain dest.test>\n max-smtp-out 20\n</domain>");
    w.queue(200);
    w.run(2_000, 10, &ok);
    assert!(w.max_open > 3, "{}", w.max_open);
}

/// Runs `conf` with `n` messages to dest.test for `ms`, answering `reply`; returns the VMTA of
/// every connection opened and the records.
fn routed(
    conf: &str,
    n: u32,
    ms: u64,
    reply: &dyn Fn(u64) -> Reply,
) -> (Vec<String>, Vec<sluice_engine::acct::Record>) {
    let mut w = World::new(conf);
    w.queue(n);
    w.run(ms, 10, reply);
    (w.vmtas, w.records)
}

const VMTAS: &str = "<virtual-mta v1>\n smtp-source-host 127.0.0.2 v1.test\n</virtual-mta>\n\
                     <virtual-mta v2>\n smtp-source-host 127.0.0.3 v2.test\n</virtual-mta>\n";

/// `type discard`: recorded as delivered (or bounced, `discard-as-bounce`), never sent;
/// `type file` (not implemented) holds the mail rather than sending it over SMTP.
#[test]
fn discard_and_unimplemented_queue_types() {
    let (conns, records) = routed("<domain dest.test>\n type discard\n</domain>", 5, 1_000, &ok);
    assert!(conns.is_empty());
    let d: Vec<_> = records.iter().filter(|r| r.kind == Kind::Delivered).collect();
    assert_eq!(d.len(), 5);
    assert!(d[0].dsn_diag.contains("discarded"), "{:?}", d[0]);
    let (_, records) = routed("<domain dest.test>\n type discard\n discard-as-bounce yes\n</domain>", 5, 1_000, &ok);
    assert_eq!(records.iter().filter(|r| r.kind == Kind::Bounced).count(), 5);
    let (conns, records) = routed("<domain dest.test>\n type file\n</domain>", 5, 1_000, &ok);
    assert!(conns.is_empty() && records.iter().all(|r| r.kind == Kind::QueueEvent), "{records:?}");
}

/// `reroute-to-virtual-mta`: the queue's mail goes out through the other VMTA; a loop does
/// not hang the scheduler (the mail stays where the loop closes).
#[test]
fn reroute_to_virtual_mta_and_its_loops() {
    let conf = format!("{VMTAS}<domain dest.test>\n reroute-to-virtual-mta v2\n</domain>");
    let (conns, records) = routed(&conf, 5, 1_000, &ok);
    assert!(!conns.is_empty() && conns.iter().all(|v| v == "v2"), "{conns:?}");
    let d: Vec<_> = records.iter().filter(|r| r.kind == Kind::Delivered).collect();
    assert_eq!(d.len(), 5);
    assert_eq!(d[0].queue, "dest.test/v2");
    let looped = "<virtual-mta v1>\n <domain dest.test>\n reroute-to-virtual-mta v2\n </domain>\n</virtual-mta>\n\
                  <virtual-mta v2>\n <domain dest.test>\n reroute-to-virtual-mta v1\n </domain>\n</virtual-mta>\n\
                  <domain dest.test>\n reroute-to-virtual-mta v1\n</domain>";
    let (_, records) = routed(looped, 3, 1_000, &ok);
    assert_eq!(records.iter().filter(|r| r.kind == Kind::Delivered).count(), 3);
}

/// `backoff-reroute-to-virtual-mta`: once a pattern puts the queue into backoff, its mail
/// goes through the other VMTA.
#[test]
fn backoff_reroutes_to_another_virtual_mta() {
    let conf = concat!(
        "<virtual-mta v2>\n smtp-source-host 127.0.0.3 v2.test\n</virtual-mta>\n",
        "<smtp-pattern-list slow>\n reply /slow down/ mode=backoff\n</smtp-pattern-list>\n",
        "<virtual-mta v1>\n smtp-source-host 127.0.0.2 v1.test\n <domain dest.test>\n smtp-pattern-list slow\n backoff-reroute-to-virtual-mta v2\n \
         max-smtp-out 1\n backoff-retry-after 10m\n </domain>\n</virtual-mta>\n"
    );
    let mut w = World::new(conf);
    for i in 0..20 {
        w.s.dispatch("dest.test", "v1".into(), job(i), None);
    }
    // v1 is throttled on its third message; v2 takes everything.
    let sent_v1 = std::cell::Cell::new(0);
    w.run_by_vmta(3_000, 10, &|_, vmta| {
        if vmta != "v1" {
            return Reply::new(250, "ok");
        }
        sent_v1.set(sent_v1.get() + 1);
        if sent_v1.get() >= 3 {
            Reply::new(421, "4.7.0 slow down")
        } else {
            Reply::new(250, "ok")
        }
    });
    let delivered: Vec<_> = w.records.iter().filter(|r| r.kind == Kind::Delivered).collect();
    assert!(w.vmtas.contains(&"v2".to_string()), "{:?}", w.vmtas);
    assert!(delivered.iter().filter(|r| r.queue == "dest.test/v2").count() >= 15, "{}", delivered.len());
    assert!(w.events().iter().any(|e| e.contains("rerouted to v2")), "{:?}", w.events());
}

/// A resolution whose answer never comes back (the control plane dropped it: a full mailbox)
/// is asked for again, and the mail goes once an answer lands (issue 22: the queue stayed in
/// "resolving" for ever).
#[test]
fn a_lost_dns_answer_is_asked_for_again() {
    let mut w = World::new("");
    w.queue(3);
    w.s.pump(w.now());
    let asked = |w: &mut World| {
        let mut n = 0;
        while let Some(intent) = w.s.poll_intent() {
            n += usize::from(matches!(intent, Intent::Resolve { .. }));
        }
        n
    };
    assert_eq!(asked(&mut w), 1, "asked once");
    // The answer is lost. Time passes with the shard's ticks; nothing is asked meanwhile.
    for _ in 0..(sluice_engine::sched::RESOLVE_ANSWER_WAIT_MS / 50 - 1) {
        w.now_ms += 50;
        w.s.tick(w.now());
        w.s.pump(w.now());
        assert_eq!(asked(&mut w), 0, "at {} ms", w.now_ms);
    }
    w.run(w.now_ms + 200, 50, &ok);
    assert_eq!(w.starts.len(), 3, "asked again, answered, delivered");
}

/// `retry-after-dns-error` (the Guide's default: 1m): mail deferred by a failed lookup is
/// tried again, and the domain looked up again, after that long (not `retry-after`'s 10m).
#[test]
fn a_failed_lookup_is_retried_after_retry_after_dns_error() {
    let second_ask = |conf: &str| {
        let mut w = World::new(conf);
        w.queue(1);
        w.s.pump(w.now());
        let mut asks = Vec::new();
        while w.now_ms < 200_000 && asks.len() < 2 {
            while let Some(intent) = w.s.poll_intent() {
                if let Intent::Resolve { domain, .. } = intent {
                    asks.push(w.now_ms);
                    let servfail = Resolution::Temporary(Reply::new(451, "4.4.3 SERVFAIL"));
                    w.s.on_resolved(&domain, servfail, 5_000, None, w.now());
                }
            }
            w.now_ms += 50;
            w.s.tick(w.now());
            w.s.pump(w.now());
        }
        asks.get(1).copied().expect("looked up again")
    };
    let at = second_ask("<domain dest.test>\n retry-after-dns-error 30s\n retry-after 10m\n</domain>\n");
    assert!((30_000..31_000).contains(&at), "{at}");
    let at = second_ask("<domain dest.test>\n retry-after 10m\n</domain>\n");
    assert!((60_000..61_000).contains(&at), "{at}");
}

/// DSNs for a bounce: with `generate-bounces yes` (PowerMTA's default, `suppress-local-dsn
/// no`), unless the sender's domain says `deliver-local-dsn no`.
#[test]
fn deliver_local_dsn_no_stops_dsns_for_that_senders_domain() {
    let dsns = |conf: &str| {
        let mut w = World::new(conf);
        w.queue(2);
        let mut n = 0;
        for _ in 0..200 {
            w.now_ms += 50;
            w.s.tick(w.now());
            w.s.pump(w.now());
            let now = w.now();
            while let Some(intent) = w.s.poll_intent() {
                match intent {
                    Intent::Resolve { domain, .. } => {
                        let hop = Hop { host: "mx.dest.test".into(), addr: "192.0.2.1:25".parse().unwrap() };
                        w.s.on_resolved(&domain, Resolution::Hops(vec![vec![hop]]), 3_600_000, None, now);
                    }
                    Intent::Connect { conn, .. } => w.s.conn_ready(conn, now),
                    Intent::Start { conn, job, .. } => {
                        let replies = vec![Reply::new(550, "5.1.1 no such user"); job.rcpts.len()];
                        w.s.txn_done(conn, job, &replies, AttemptInfo::default(), true, now);
                    }
                    Intent::Quit { conn } => w.s.conn_closed(conn, None),
                    Intent::Dsn { .. } => n += 1,
                    _ => {}
                }
            }
        }
        n
    };
    let source = "<source 127.0.0.1>\n suppress-local-dsn no\n</source>\n";
    assert_eq!(dsns(source), 2, "a DSN for each bounce");
    assert_eq!(dsns(&format!("{source}<domain src.test>\n deliver-local-dsn no\n</domain>\n")), 0);
    assert_eq!(
        dsns(&format!("{source}<domain other.test>\n deliver-local-dsn no\n</domain>\n")),
        2,
        "another domain's"
    );
}

/// `backoff-max-connect-rate`: while backing off, new connections come no faster than it
/// (one message each here, so the starts count them), though the backoff message rate would
/// allow far more; back to normal, `max-connect-rate` again.
#[test]
fn backoff_max_connect_rate_holds_connections_while_backing_off() {
    let starts_in_backoff = |connect: &str| {
        let conf = format!(
            "<smtp-pattern-list slow>\n reply /^421 .* slow down/ mode=backoff,backoff-to-normal-after=30m\n</smtp-pattern-list>\n\
             <domain *>\n max-msg-per-connection 1\n max-connect-rate 600/m\n backoff-max-msg-rate 6000/h\n{connect}\
              smtp-pattern-list slow\n retry-after 1m\n</domain>"
        );
        let mut w = World::new(&conf);
        w.queue(2_000);
        let reply = |t: u64| if t < 2_000 { Reply::new(421, "4.7.0 slow down") } else { Reply::new(250, "ok") };
        w.run(10 * 60_000, 50, &reply);
        assert!(w.events().iter().any(|e| e.starts_with("mode=backoff")), "{:?}", w.events());
        w.starts_between(2_000, 10 * 60_000)
    };
    let limited = starts_in_backoff(" backoff-max-connect-rate 60/h\n");
    assert!(limited <= 12, "{limited} connections in 10 minutes at 60/h");
    let unlimited = starts_in_backoff("");
    assert!(unlimited >= 500, "without it, the backoff message rate (100/m) sets the pace: {unlimited}");
}
