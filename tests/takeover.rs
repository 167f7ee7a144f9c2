//! Spool takeover (`spool-takeover` in `<cluster>`): three sluice hosts on one real
//! `redis-server`, each spool under one shared directory. Host 2 is killed with `-9` (or
//! stopped with SIGSTOP) holding mail; a peer adopts its spool within `takeover-after` and
//! the receiver (aiosmtpd, tests/py/receiver.py) gets every acknowledged message, once but for
//! deliveries in flight at the moment of death; host 2, restarted on its old spool, sends none
//! of it again, a host that wakes up after its spool was adopted sends nothing and stops, and a
//! host starting while a live peer holds its spool waits for the release.

mod common;
use common::*;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

const TAKEOVER_AFTER_S: u64 = 3;
/// Connections per host to the receiver.
const MAX_SMTP_OUT: usize = 4;

struct Host {
    relay: Relay,
    api: SocketAddr,
}

/// The three hosts (index 0..3 = mta-1..mta-3), sending dest.test to `receiver_port`.
fn fleet(redis: &Redis, root: &Path, receiver_port: u16) -> Vec<Host> {
    (1..=3)
        .map(|i| {
            let api_port = free_port("127.0.0.1");
            let relay = Relay::start(
                &format!(
                    "spool {root}/mta-{i}\n\
                     http-mgmt-port 127.0.0.1:{api_port}\nhttp-access 127.0.0.1 admin\n\
                     <source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
                     <domain dest.test>\n smtp-hosts [127.0.0.1]:{receiver_port}\n max-smtp-out {MAX_SMTP_OUT}\n retry-after 1s\n</domain>\n\
                     <cluster>\n redis-server 127.0.0.1:{redis}\n node-name mta-{i}\n spool-takeover {root}\n \
                     takeover-after {TAKEOVER_AFTER_S}s\n</cluster>\n",
                    root = root.display(),
                    redis = redis.port,
                ),
                Some(2),
            );
            let api: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
            wait_port(api, Duration::from_secs(10));
            Host { relay, api }
        })
        .collect()
}

/// Sends messages `tag-0` .. `tag-(n-1)` over one connection; returns those answered 250
/// (until the connection breaks: the host was killed).
fn inject(addr: SocketAddr, tag: &str, n: usize) -> HashSet<String> {
    let mut acked = HashSet::new();
    let Ok(s) = TcpStream::connect(addr) else { return acked };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let reply = |r: &mut BufReader<TcpStream>| -> Option<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return Some(all);
            }
        }
    };
    let say = |w: &mut TcpStream, r: &mut BufReader<TcpStream>, line: &str| -> Option<String> {
        w.write_all(line.as_bytes()).ok()?;
        reply(r)
    };
    if reply(&mut r).is_none() || say(&mut w, &mut r, "EHLO injector.test\r\n").is_none() {
        return acked;
    }
    for i in 0..n {
        let id = format!("{tag}-{i}");
        let body = format!(
            "From: s@src.test\r\nTo: u{i}@dest.test\r\nSubject: {id}\r\nMessage-ID: <{id}@src.test>\r\n\r\nmessage {id}\r\n.\r\n"
        );
        let steps =
            ["MAIL FROM:<s@src.test>\r\n".to_string(), format!("RCPT TO:<u{i}@dest.test>\r\n"), "DATA\r\n".into()];
        for step in steps {
            match say(&mut w, &mut r, &step) {
                Some(rep) if rep.starts_with('2') || rep.starts_with('3') => {}
                _ => return acked,
            }
        }
        match say(&mut w, &mut r, &body) {
            Some(rep) if rep.starts_with("250") => {
                acked.insert(id);
            }
            _ => return acked,
        }
    }
    let _ = say(&mut w, &mut r, "QUIT\r\n");
    acked
}

/// How many times the receiver got each message, by Subject.
fn arrivals(rx: &PyReceiver) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for f in rx.files() {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        if let Some(subject) = text.lines().find_map(|l| l.strip_prefix("Subject: ")) {
            *seen.entry(subject.trim().to_string()).or_insert(0) += 1;
        }
    }
    seen
}

fn of_tag(seen: &BTreeMap<String, usize>, tag: &str) -> BTreeMap<String, usize> {
    seen.iter().filter(|(k, _)| k.starts_with(&format!("{tag}-"))).map(|(k, v)| (k.clone(), *v)).collect()
}

/// Adoptions made by the hosts still running (`/status`'s cluster.spoolTakeover).
fn adoptions(hosts: &[&Host]) -> u64 {
    hosts
        .iter()
        .map(|h| {
            let (code, status) = http(h.api, "GET", "/status", None, "");
            assert_eq!(code, 200);
            status["cluster"]["spoolTakeover"]["adoptions"].as_u64().unwrap_or(0)
        })
        .sum()
}

/// The goal: 300 messages waiting on host 2 (receiver down); host 2 killed with -9; receiver
/// up: a peer delivers all 300 within 60 s, exactly once; host 2 restarted on its old spool
/// sends none of them again. Then: host 2 paused (SIGSTOP) past its lease while holding mail,
/// its spool adopted and delivered meanwhile; woken up, it sends nothing and stops.
#[test]
fn a_dead_hosts_queue_is_delivered_once_by_a_peer() {
    let redis = Redis::start();
    let root = TempDir::new("spools");
    let receiver_port = free_port("127.0.0.1");
    let mut hosts = fleet(&redis, root.path(), receiver_port);
    let spool2 = root.path().join("mta-2");

    let acked = inject(hosts[1].relay.addr(), "dead", 300);
    assert_eq!(acked.len(), 300, "host 2 took every message");
    hosts[1].relay.kill9();
    let killed = Instant::now();
    let rx = PyReceiver::start_at(receiver_port, &[]);
    wait_for("a peer to deliver host 2's 300 messages", Duration::from_secs(60), || {
        let seen = of_tag(&arrivals(&rx), "dead");
        (seen.len() == 300).then_some(())
    });
    let took = killed.elapsed();
    // Let any second copy arrive before counting.
    std::thread::sleep(Duration::from_secs(2));
    let seen = of_tag(&arrivals(&rx), "dead");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), acked);
    assert_eq!(adoptions(&[&hosts[0], &hosts[2]]), 1, "exactly one peer adopted the spool");
    assert!(segments_in(&spool2).is_empty(), "the adopted spool's files are gone once moved");
    let moved: u64 = [&hosts[0], &hosts[2]]
        .iter()
        .map(|h| {
            let (_, m) = http(h.api, "GET", "/metrics", None, "");
            let m = m.as_str().unwrap().to_string();
            assert!(m.contains("sluice_cluster_spool_lease_held 1"), "{m}");
            m.lines()
                .find_map(|l| l.strip_prefix("sluice_cluster_spool_adopted_messages_total "))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap())
        })
        .sum();
    assert_eq!(moved, 300, "/metrics counts the messages moved");
    println!("host 2's 300 messages delivered by a peer {took:?} after kill -9");

    // Host 2 comes back on its old spool: nothing of it is sent again.
    hosts[1].relay.spawn();
    std::thread::sleep(Duration::from_secs(3));
    let again = of_tag(&arrivals(&rx), "dead");
    assert_eq!(again, seen, "the restarted host sent none of its old mail again");
    assert!(hosts[1].relay.log().contains("spool claimed"), "{}", tail(&hosts[1].relay.log(), 20));

    // Host 2 paused past its lease holding mail the receiver cannot take yet.
    drop(rx);
    let acked = inject(hosts[1].relay.addr(), "paused", 50);
    assert_eq!(acked.len(), 50);
    hosts[1].relay.signal(19); // SIGSTOP
    let rx = PyReceiver::start_at(receiver_port, &[]);
    wait_for("a peer to deliver the paused host's 50 messages", Duration::from_secs(60), || {
        (of_tag(&arrivals(&rx), "paused").len() == 50).then_some(())
    });
    hosts[1].relay.signal(18); // SIGCONT
    let status = hosts[1].relay.wait_exit(Duration::from_secs(10)).expect("the fenced host stops");
    assert_eq!(status.code(), Some(75), "{}", tail(&hosts[1].relay.log(), 20));
    assert!(hosts[1].relay.log().contains("was taken over"), "{}", tail(&hosts[1].relay.log(), 20));
    std::thread::sleep(Duration::from_secs(1));
    let paused = of_tag(&arrivals(&rx), "paused");
    assert!(paused.values().all(|n| *n == 1), "the woken host sent nothing again: {paused:?}");
    assert_eq!(adoptions(&[&hosts[0], &hosts[2]]), 2);

    // Host 2 starting while a live peer holds its spool waits for the release before it
    // recovers anything or listens (the peer here is redis-cli playing one: `mta-9`, alive).
    redis.cli(&["SET", "sluice:alive:mta-9", "1", "EX", "60"]);
    redis.cli(&["HSET", "sluice:spool:mta-2", "holder", "mta-9"]);
    let port = redis.port;
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "HDEL", "sluice:spool:mta-2", "holder"])
            .output()
            .unwrap();
        assert!(out.status.success());
    });
    let started = Instant::now();
    hosts[1].relay.spawn();
    release.join().unwrap();
    assert!(started.elapsed() >= Duration::from_secs(3), "host 2 listened while its spool was held");
    let log = hosts[1].relay.log();
    assert!(log.contains("taken over by mta-9: waiting for it to be released"), "{}", tail(&log, 20));
    assert_eq!(redis.cli(&["HGET", "sluice:spool:mta-2", "holder"]), "mta-2", "claimed once released");
}

/// Host 2 killed with -9 at random moments while it takes and delivers mail (the receiver
/// keeps each message 20 ms before answering): every message it acknowledged is delivered,
/// and the only ones sent twice are deliveries in flight when it died: messages the receiver
/// had before the kill (kept but not answered, or answered but not yet journaled), counted.
#[test]
fn kill_9_at_random_moments_loses_nothing_and_repeats_only_deliveries_in_flight() {
    let redis = Redis::start();
    let root = TempDir::new("spools");
    let receiver_port = free_port("127.0.0.1");
    let rx = PyReceiver::start_at(receiver_port, &["--delay-ms", "20"]);
    let mut hosts = fleet(&redis, root.path(), receiver_port);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut summary = Vec::new();
    for run in 0..3 {
        let tag = format!("run{run}");
        let addr = hosts[1].relay.addr();
        let t = tag.clone();
        let injector = std::thread::spawn(move || inject(addr, &t, 300));
        let at = Duration::from_millis(next() % 1500);
        std::thread::sleep(at);
        hosts[1].relay.kill9();
        let acked = injector.join().unwrap();
        // What the receiver had from host 2 before it died (a peer adopts only after the
        // lease lapses, seconds later).
        std::thread::sleep(Duration::from_millis(300));
        let before = of_tag(&arrivals(&rx), &tag);
        // Every acknowledged message arrives (from host 2 before it died, or from the adopter).
        wait_for(
            &format!("seed {seed} run {run}: every acknowledged message delivered"),
            Duration::from_secs(60),
            || {
                let seen = of_tag(&arrivals(&rx), &tag);
                acked.iter().all(|id| seen.contains_key(id)).then_some(())
            },
        );
        std::thread::sleep(Duration::from_secs(2));
        // Host 2 back on its old spool: it must not send again what the adopter sent.
        hosts[1].relay.spawn();
        std::thread::sleep(Duration::from_secs(2));
        let seen = of_tag(&arrivals(&rx), &tag);
        let twice: Vec<&String> = seen.iter().filter(|(_, n)| **n > 1).map(|(k, _)| k).collect();
        let not_in_flight: Vec<_> = twice.iter().filter(|k| !before.contains_key(**k)).collect();
        assert!(
            not_in_flight.is_empty(),
            "seed {seed} run {run}: killed at {at:?}: sent twice though not delivered before the kill: {not_in_flight:?}"
        );
        assert!(seen.values().all(|n| *n <= 2), "seed {seed} run {run}: a message sent three times: {seen:?}");
        let twice = twice.len();
        summary.push(format!(
            "killed at {at:?}: {} acknowledged, {} delivered, {twice} twice",
            acked.len(),
            seen.len()
        ));
    }
    println!("seed {seed}: {}", summary.join("; "));
}

/// Redis restarted empty (no persistence) while the hosts run: meanwhile each host stops
/// taking mail (4xx: it cannot confirm its spool is its own), and once Redis is back each
/// records its spool again and goes on. None stops, and no spool changes hands.
#[test]
fn a_redis_restarted_empty_stops_no_host() {
    let mut redis = Redis::start();
    let root = TempDir::new("spools");
    let receiver_port = free_port("127.0.0.1");
    let rx = PyReceiver::start_at(receiver_port, &[]);
    let mut hosts = fleet(&redis, root.path(), receiver_port);
    assert_eq!(inject(hosts[0].relay.addr(), "before", 5).len(), 5);
    redis.kill();
    // Past half of takeover-after without a renewal: no message is taken.
    std::thread::sleep(Duration::from_millis(TAKEOVER_AFTER_S * 1000 / 2 + 700));
    let (mut t, _) = Talk::connect(hosts[0].relay.addr());
    t.cmd("EHLO injector.test");
    assert!(t.cmd("MAIL FROM:<s@src.test>").starts_with("250"));
    assert!(t.cmd("RCPT TO:<u@dest.test>").starts_with("250"));
    assert!(t.cmd("DATA").starts_with("354"));
    let refused = t.cmd("Subject: fenced-0\r\n\r\nnot now\r\n.");
    assert!(refused.starts_with('4'), "{refused}");
    redis.spawn();
    wait_for("every host to take mail again", Duration::from_secs(20), || {
        hosts.iter().all(|h| inject(h.relay.addr(), "probe", 1).len() == 1).then_some(())
    });
    let acked = inject(hosts[1].relay.addr(), "after", 5);
    assert_eq!(acked.len(), 5);
    wait_for("the messages after Redis came back", Duration::from_secs(20), || {
        (of_tag(&arrivals(&rx), "after").len() == 5).then_some(())
    });
    for (i, h) in hosts.iter_mut().enumerate() {
        assert!(h.relay.wait_exit(Duration::from_millis(10)).is_none(), "host {} stopped", i + 1);
        assert_eq!(redis.cli(&["HGET", &format!("sluice:spool:mta-{}", i + 1), "holder"]), format!("mta-{}", i + 1));
    }
    assert_eq!(adoptions(&[&hosts[0], &hosts[1], &hosts[2]]), 0);
    assert!(of_tag(&arrivals(&rx), "fenced").is_empty());
}
