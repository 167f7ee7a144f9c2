//! `<traffic-class>`: shards reserved for one stream of mail. Three shards, one reserved for
//! `transactional` (a source and a VMTA in the class): every message from the class's source
//! is received and spooled on shard 2 (its `250 ... queued as SHARD.SEGMENT.OFFSET`), every
//! other one on shards 0 and 1 (connections the kernel handed to the wrong shard are handed
//! over), every queue of the class's VMTA lives on shard 2 and no other queue does
//! (`/queues`), `/status` says which shards run what, and every message is delivered once the
//! receiver is up.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

const DOMAINS: usize = 8;

/// Sends one message from `source_ip` to `rcpt` with Python's smtplib; the shard that spooled
/// it (the first part of the id its 250 gives).
fn spooling_shard(relay: &Relay, source_ip: &str, rcpt: &str) -> u32 {
    let script = format!(
        "import smtplib\nwith smtplib.SMTP('127.0.0.1', {}, source_address=('{source_ip}', 0)) as s:\n    \
         s.ehlo('c.example')\n    s.mail('app@src.example')\n    s.rcpt('{rcpt}')\n    \
         code, text = s.data(b'Subject: class test\\r\\n\\r\\nhello\\r\\n')\n    print(code, text.decode())\n",
        relay.port
    );
    let (code, out) = run(std::process::Command::new("python3").args(["-c", &script]));
    assert_eq!(code, 0, "{out}");
    let id = out.trim().rsplit(' ').next().unwrap_or_default().to_string();
    assert!(out.starts_with("250"), "{out}");
    u32::from_str_radix(id.split('.').next().unwrap(), 16).unwrap_or_else(|_| panic!("a queue id in {out}"))
}

#[test]
fn a_class_is_received_spooled_and_delivered_on_its_own_shards_only() {
    let api_port = free_port("127.0.0.1");
    let receiver_port = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "http-mgmt-port 127.0.0.1:{api_port}\nhttp-access 127.0.0.1 admin\n\
             <traffic-class transactional>\n shards 1\n</traffic-class>\n\
             <virtual-mta tx>\n traffic-class transactional\n</virtual-mta>\n\
             <source 127.0.0.2>\n always-allow-relaying yes\n traffic-class transactional\n default-virtual-mta tx\n</source>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{receiver_port}\n retry-after 1s\n</domain>\n"
        ),
        Some(3),
    );
    let api: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    wait_port(api, Duration::from_secs(10));
    let (_, status) = http(api, "GET", "/status", None, "");
    assert_eq!(status["trafficClasses"]["general"], serde_json::json!([0, 1]), "{status}");
    assert_eq!(status["trafficClasses"]["classes"][0]["name"], "transactional", "{status}");
    assert_eq!(status["trafficClasses"]["classes"][0]["shards"], serde_json::json!([2]), "{status}");
    // The receiver is down: the mail waits in its queues.
    let mut bulk_shards = BTreeSet::new();
    for i in 0..DOMAINS {
        let tx = spooling_shard(&relay, "127.0.0.2", &format!("user{i}@d{i}.test"));
        assert_eq!(tx, 2, "a transactional message spooled on shard {tx}");
        let bulk = spooling_shard(&relay, "127.0.0.1", &format!("user{i}@d{i}.test"));
        assert!(bulk < 2, "a bulk message spooled on the reserved shard");
        bulk_shards.insert(bulk);
    }
    let queues = wait_for("both kinds of queue", Duration::from_secs(10), || {
        let (_, q) = http(api, "GET", "/queues", None, "");
        let list = q["queues"].as_array().cloned().unwrap_or_default();
        let rcpts: u64 = list.iter().map(|q| q["rcpts"].as_u64().unwrap_or(0)).sum();
        (rcpts == 2 * DOMAINS as u64).then_some(list)
    });
    let mut tx_domains = BTreeSet::new();
    for q in &queues {
        let shard = q["shard"].as_u64().unwrap();
        if q["vmta"] == "tx" {
            assert_eq!(shard, 2, "a transactional queue on shard {shard}: {q}");
            tx_domains.insert(q["domain"].as_str().unwrap().to_string());
        } else {
            assert!(shard < 2, "another queue on the reserved shard: {q}");
        }
    }
    assert_eq!(tx_domains.len(), DOMAINS, "{queues:?}");
    // The receiver comes up: everything is delivered, from the queues where it waited.
    let sink = SluiceSink::start_on(&format!("127.0.0.1:{receiver_port}"), &[], 2 * DOMAINS as u64);
    let d = relay.wait_rows("d", 2 * DOMAINS, Duration::from_secs(30));
    assert_eq!(d.len(), 2 * DOMAINS);
    let out = sink.finish();
    assert_eq!(json_u64(&out, "messages"), 2 * DOMAINS as u64, "{out}");
    eprintln!("bulk messages were spooled on shards {bulk_shards:?}");
}
