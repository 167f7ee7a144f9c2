//! A fleet of three sluice hosts on one real `redis-server`, each sending from its own source
//! address (127.0.0.2, .3, .4) to one receiver: a `cluster-max-msg-rate` holds for the three
//! together (where per-host limits alone give three times the rate), a complaint taken by one
//! host is refused at RCPT by the others within a second, an address any other client adds to
//! the shared set with a plain `SADD` is refused by every host within a second (with keyspace
//! notifications, and on a server that refuses `CONFIG`), a job paused on one host is held on
//! all, and with Redis killed the hosts go on at their local share and rejoin when it is back.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Host {
    relay: Relay,
    api: SocketAddr,
}

/// Three hosts: `domain` says what every `<domain>` block holds; `extra` goes in each config.
fn fleet(redis: Option<&Redis>, domain: &str, extra: &str) -> Vec<Host> {
    (0..3)
        .map(|i| {
            let api_port = free_port("127.0.0.1");
            let cluster = redis
                .map(|r| {
                    format!(
                        "<cluster>\n redis-server 127.0.0.1:{}\n node-name host-{i}\n expected-nodes 3\n</cluster>\n",
                        r.port
                    )
                })
                .unwrap_or_default();
            let relay = Relay::start(
                &format!(
                    "{cluster}http-mgmt-port 127.0.0.1:{api_port}\nhttp-access 127.0.0.1 admin\n\
                     <virtual-mta out>\n smtp-source-host 127.0.0.{} host{i}.test\n</virtual-mta>\n\
                     <source 127.0.0.1>\n always-allow-relaying yes\n default-virtual-mta out\n process-x-job yes\n</source>\n\
                     {extra}\n<domain *>\n{domain}\n</domain>\n",
                    i + 2
                ),
                Some(1),
            );
            let api: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
            wait_port(api, Duration::from_secs(10));
            Host { relay, api }
        })
        .collect()
}

/// Deliveries per second (`timeLogged`), over every host.
fn per_second(hosts: &[Host]) -> BTreeMap<String, usize> {
    let mut seconds = BTreeMap::new();
    for h in hosts {
        for r in h.relay.rows_of("d") {
            *seconds.entry(r["timeLogged"].clone()).or_default() += 1;
        }
    }
    seconds
}

/// Injects `n` messages into every host at once (loadgen, 5 connections each).
fn inject_all(hosts: &[Host], n: u64, headers: &[&str]) {
    let ports: Vec<u16> = hosts.iter().map(|h| h.relay.port).collect();
    std::thread::scope(|s| {
        for port in ports {
            s.spawn(move || {
                let mut args = vec![
                    "--messages".to_string(),
                    n.to_string(),
                    "--connections".into(),
                    "5".into(),
                    "--domain-suffix".into(),
                    "fleet.test".into(),
                ];
                for h in headers {
                    args.push("--header".into());
                    args.push(h.to_string());
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = loadgen(port, &args);
                assert_eq!(json_u64(&out, "messages_ok"), n, "{out}");
            });
        }
    });
}

#[test]
fn a_fleet_rate_holds_for_the_three_hosts_together() {
    let sink = SluiceSink::start(&[], 1_000_000);
    let to_sink = format!(" smtp-hosts [127.0.0.1]:{}\n max-smtp-out 10\n", sink.port);
    // Alone: each host's own 100/s, three times that for the three.
    let alone = fleet(None, &format!("{to_sink} max-msg-rate 100/s"), "");
    let started = Instant::now();
    inject_all(&alone, 300, &[]);
    wait_for("900 deliveries", Duration::from_secs(60), || {
        (alone.iter().map(|h| h.relay.rows_of("d").len()).sum::<usize>() == 900).then_some(())
    });
    let alone_secs = started.elapsed().as_secs_f64();
    let alone_peak = per_second(&alone).values().copied().max().unwrap();
    drop(alone);
    // A fleet: 100/s for the three together.
    let redis = Redis::start();
    let hosts = fleet(Some(&redis), &format!("{to_sink} cluster-max-msg-rate 100/s"), "");
    let started = Instant::now();
    inject_all(&hosts, 200, &[]);
    wait_for("600 deliveries", Duration::from_secs(60), || {
        (hosts.iter().map(|h| h.relay.rows_of("d").len()).sum::<usize>() == 600).then_some(())
    });
    let fleet_secs = started.elapsed().as_secs_f64();
    let seconds = per_second(&hosts);
    let inner: Vec<usize> = seconds.values().copied().collect();
    // Whole seconds inside the run (not the partial first and last): at most the rate plus a
    // lease (10) per host.
    let peak = inner[1..inner.len() - 1].iter().copied().max().unwrap_or(0);
    assert!(peak <= 130, "fleet peak {peak}/s: {seconds:?}");
    assert!(fleet_secs >= 5.0, "600 at 100/s take about 6 s, not {fleet_secs:.1}");
    assert!(alone_peak >= 200, "alone, about 300/s: peak {alone_peak} in {alone_secs:.1}s");
    // The hosts all took part, and say so.
    for h in &hosts {
        assert!(h.relay.rows_of("d").len() >= 100, "{}", h.relay.rows_of("d").len());
    }
    let (_, status) = http(hosts[0].api, "GET", "/status", None, "");
    assert_eq!(status["cluster"]["connected"], true, "{status}");
    assert_eq!(status["cluster"]["node"], "host-0");
    let (code, metrics) = http(hosts[0].api, "GET", "/metrics", None, "");
    assert_eq!(code, 200);
    assert!(metrics.as_str().unwrap().contains("cluster_connected 1"), "{metrics}");
}

/// The reply to RCPT TO `rcpt` from the source that uses the shared list (127.0.0.5).
fn rcpt_reply(h: &Host, rcpt: &str) -> String {
    let (code, out) = run(std::process::Command::new("python3").arg(py_script("smtp_probe.py")).args([
        &h.relay.port.to_string(),
        "127.0.0.5",
        "news@example.com",
        rcpt,
    ]));
    assert_eq!(code, 0, "{out}");
    out.trim().to_string()
}

#[test]
fn an_address_any_client_adds_to_the_shared_set_is_refused_within_a_second() {
    let lists = "<address-list fleet-suppress>\n redis-set suppress:global\n</address-list>\n\
                 <source 127.0.0.5>\n always-allow-relaying yes\n suppression-lists fleet-suppress\n</source>\n";
    // A server sluice may configure (it turns keyspace notifications on), and one that
    // refuses CONFIG, as managed services do (sluice follows the set's size).
    for (redis, notified) in [(Redis::start(), true), (Redis::start_with(&["--rename-command", "CONFIG", ""]), false)] {
        let sink = SluiceSink::start(&[], 1_000_000);
        let hosts = fleet(Some(&redis), &format!(" smtp-hosts [127.0.0.1]:{}", sink.port), lists);
        for h in &hosts {
            wait_for("the host on the fleet", Duration::from_secs(10), || {
                let (_, status) = http(h.api, "GET", "/status", None, "");
                (status["cluster"]["connected"] == true).then_some(())
            });
        }
        for (i, address) in
            ["unsubscribed@mailbox-provider.example", "later@mailbox-provider.example"].iter().enumerate()
        {
            assert_eq!(rcpt_reply(&hosts[i], address), "mail=250 rcpt=250", "not suppressed yet");
            // An application's unsubscribe handler: a plain SADD, no sluice involved.
            let added = Instant::now();
            assert_eq!(redis.cli(&["SADD", "suppress:global", address]), "1");
            for h in &hosts {
                wait_for("the address refused", Duration::from_secs(5), || {
                    (rcpt_reply(h, address) == "mail=250 rcpt=550").then_some(())
                });
            }
            let took = added.elapsed();
            // The probes themselves take a while: three of them within the second and a half.
            assert!(took < Duration::from_millis(1500), "within a second (notified {notified}): {took:?}");
        }
        // A reload makes the lists anew: the set's addresses are back in them at once.
        hosts[2].relay.signal(libc::SIGHUP);
        let reloaded = Instant::now();
        wait_for("the reload logged", Duration::from_secs(5), || {
            hosts[2].relay.log().contains("configuration reloaded").then_some(())
        });
        let held = (0..10).all(|_| rcpt_reply(&hosts[2], "later@mailbox-provider.example") == "mail=250 rcpt=550");
        assert!(held, "refused all along after the reload ({:?} after it)", reloaded.elapsed());
        if notified {
            let flags = redis.cli(&["CONFIG", "GET", "notify-keyspace-events"]);
            assert!(flags.contains('K') && flags.contains('s'), "sluice turned keyspace notifications on: {flags}");
        }
    }
}

#[test]
fn a_complaint_on_one_host_is_refused_by_the_others_within_a_second() {
    let redis = Redis::start();
    let sink = SluiceSink::start(&[], 1_000_000);
    let lists = "<address-list fleet-suppress>\n redis-set suppress:global\n</address-list>\n\
                 <feedback-loop-processor>\n deliver-unmatched-email no\n auto-suppress-list fleet-suppress\n\
                 <address-list>\n address /^fbl@fbl\\.example\\.com$/\n </address-list>\n</feedback-loop-processor>\n\
                 <source 127.0.0.5>\n always-allow-relaying yes\n suppression-lists fleet-suppress\n</source>\n";
    let hosts = fleet(Some(&redis), &format!(" smtp-hosts [127.0.0.1]:{}", sink.port), lists);
    let rcpt_reply = |h: &Host| rcpt_reply(h, "complainer@mailbox-provider.example");
    assert_eq!(rcpt_reply(&hosts[1]), "mail=250 rcpt=250", "not suppressed yet");
    let report =
        std::fs::read_to_string(format!("{}/tests/fixtures/arf/rfc5965-style-abuse.eml", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .replace("\r\n", "\n")
            .replace('\n', "\r\n");
    let sent = Instant::now();
    let outcome = smtplib_send(
        &hosts[0].relay,
        "127.0.0.5",
        "reports@provider.example",
        &["fbl@fbl.example.com"],
        report.as_bytes(),
    );
    assert_eq!(outcome, "sent");
    for h in &hosts[1..] {
        wait_for("the complainer refused on another host", Duration::from_secs(5), || {
            (rcpt_reply(h) == "mail=250 rcpt=550").then_some(())
        });
    }
    assert!(sent.elapsed() < Duration::from_millis(1500), "within a second: {:?}", sent.elapsed());
    // A host that starts later reads the set whole.
    let late = fleet(Some(&redis), &format!(" smtp-hosts [127.0.0.1]:{}", sink.port), lists).remove(0);
    wait_for("the late host refuses too", Duration::from_secs(5), || {
        (rcpt_reply(&late) == "mail=250 rcpt=550").then_some(())
    });
    // And on the host that took the report.
    assert_eq!(rcpt_reply(&hosts[0]), "mail=250 rcpt=550");
}

#[test]
fn a_job_paused_on_one_host_is_held_on_every_host() {
    let redis = Redis::start();
    let sink = SluiceSink::start(&[], 1_000_000);
    let hosts = fleet(Some(&redis), &format!(" smtp-hosts [127.0.0.1]:{}", sink.port), "");
    let (code, body) = http(hosts[1].api, "POST", "/pauseJob?jobId=spring", None, "");
    assert_eq!(code, 200, "{body}");
    std::thread::sleep(Duration::from_millis(500));
    inject_all(&hosts, 20, &["x-job: spring"]);
    inject_all(&hosts, 10, &["x-job: other"]);
    // The other job goes out everywhere; spring is held on all three.
    wait_for("the other job delivered", Duration::from_secs(20), || {
        (hosts.iter().map(|h| h.relay.rows_of("d").len()).sum::<usize>() == 30).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let count = |job: &str| -> usize {
        hosts.iter().map(|h| h.relay.rows_of("d").iter().filter(|r| r["jobId"] == job).count()).sum()
    };
    assert_eq!(count("spring"), 0, "held on every host");
    // A host that starts now obeys the pause as well.
    let late = fleet(Some(&redis), &format!(" smtp-hosts [127.0.0.1]:{}", sink.port), "").remove(0);
    inject_all(std::slice::from_ref(&late), 5, &["x-job: spring"]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(late.relay.rows_of("d").is_empty(), "{:?}", late.relay.rows_of("d"));
    // Resumed on another host: released everywhere.
    let (code, _) = http(hosts[2].api, "POST", "/resumeJob?jobId=spring", None, "");
    assert_eq!(code, 200);
    wait_for("spring delivered everywhere", Duration::from_secs(20), || {
        (count("spring") == 60 && late.relay.rows_of("d").len() == 5).then_some(())
    });
}

#[test]
fn with_redis_gone_the_hosts_go_on_at_their_share_and_rejoin() {
    let mut redis = Redis::start();
    let sink = SluiceSink::start(&[], 1_000_000);
    let hosts = fleet(
        Some(&redis),
        &format!(" smtp-hosts [127.0.0.1]:{}\n cluster-max-msg-rate 90/s\n cluster-max-smtp-out 6", sink.port),
        "",
    );
    inject_all(&hosts, 20, &[]);
    wait_for("the first deliveries", Duration::from_secs(20), || {
        (hosts.iter().map(|h| h.relay.rows_of("d").len()).sum::<usize>() == 60).then_some(())
    });
    redis.kill();
    let down = Instant::now();
    inject_all(&hosts, 60, &[]);
    // Each host alone at 90/3 = 30/s: 60 more each take about 2 s, and all arrive.
    wait_for("delivery without Redis", Duration::from_secs(30), || {
        (hosts.iter().map(|h| h.relay.rows_of("d").len()).sum::<usize>() == 240).then_some(())
    });
    let took = down.elapsed().as_secs_f64();
    assert!(took >= 1.5, "each host at its share (30/s), not unbounded: {took:.1}s");
    let (_, status) = http(hosts[0].api, "GET", "/status", None, "");
    assert_eq!(status["cluster"]["connected"], false, "{status}");
    assert!(hosts[0].relay.log().contains("Redis unreachable"), "{}", tail(&hosts[0].relay.log(), 20));
    // Redis back: they rejoin.
    redis.spawn();
    for h in &hosts {
        wait_for("rejoined", Duration::from_secs(10), || {
            let (_, status) = http(h.api, "GET", "/status", None, "");
            (status["cluster"]["connected"] == true).then_some(())
        });
    }
    inject_all(&hosts, 10, &[]);
    wait_for("delivery after the rejoin", Duration::from_secs(20), || {
        (hosts.iter().map(|h| h.relay.rows_of("d").len()).sum::<usize>() == 270).then_some(())
    });
}

#[test]
fn a_fleet_connection_cap_holds_for_the_three_hosts_together() {
    let redis = Redis::start();
    let slow =
        ScriptedMx::start("127.0.0.1", MxScript { final_delay: Duration::from_millis(200), ..Default::default() });
    let hosts = fleet(
        Some(&redis),
        &format!(" smtp-hosts [127.0.0.1]:{}\n max-smtp-out 10\n cluster-max-smtp-out 4", slow.addr.port()),
        "",
    );
    inject_all(&hosts, 30, &[]);
    wait_for("90 deliveries", Duration::from_secs(60), || {
        (hosts.iter().map(|h| h.relay.rows_of("d").len()).sum::<usize>() == 90).then_some(())
    });
    // Three hosts that could open ten each: never more than four at once, over them all.
    assert!(slow.max_open() <= 4, "{} at once", slow.max_open());
    assert!(slow.max_open() >= 2, "the cap was used: {}", slow.max_open());
    let (_, status) = http(hosts[0].api, "GET", "/status", None, "");
    assert_eq!(status["cluster"]["limits"][0]["maxSmtpOut"], 4, "{status}");
}
