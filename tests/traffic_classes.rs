//! `<traffic-class>`: shards reserved for one stream of mail. Three shards, one reserved for
//! `transactional` (a source and a VMTA in the class): every message from the class's sources
//! is received and spooled on shard 2 (its `250 ... queued as SHARD.SEGMENT.OFFSET`), every
//! other one on shards 0 and 1 (connections the kernel handed to the wrong shard are handed
//! over); the queues of the class's VMTA, of the class's source whose VMTA has no class, and
//! of messages that name the class in `x-traffic-class:` (from a source that may) live on
//! shard 2, and no other queue does (`/queues`), before and after a restart; `/status` says
//! which shards run what; and every message is delivered once the receiver is up, none with
//! its `x-traffic-class:` header.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

const DOMAINS: usize = 8;

/// Sends one message from `source_ip` to `rcpt` with Python's smtplib; the shard that spooled
/// it (the first part of the id its 250 gives).
fn spooling_shard(relay: &Relay, source_ip: &str, rcpt: &str) -> u32 {
    spooling_shard_with(relay, source_ip, rcpt, "")
}

/// As `spooling_shard`, with `header` (a whole field, or nothing) on top of the message.
fn spooling_shard_with(relay: &Relay, source_ip: &str, rcpt: &str, header: &str) -> u32 {
    let header = match header {
        "" => String::new(),
        h => format!("{h}\\r\\n"),
    };
    let script = format!(
        "import smtplib\nwith smtplib.SMTP('127.0.0.1', {}, source_address=('{source_ip}', 0)) as s:\n    \
         s.ehlo('c.example')\n    s.mail('app@src.example')\n    s.rcpt('{rcpt}')\n    \
         code, text = s.data(b'{header}Subject: class test\\r\\n\\r\\nhello\\r\\n')\n    print(code, text.decode())\n",
        relay.port
    );
    let (code, out) = run(std::process::Command::new("python3").args(["-c", &script]));
    assert_eq!(code, 0, "{out}");
    let id = out.trim().rsplit(' ').next().unwrap_or_default().to_string();
    assert!(out.starts_with("250"), "{out}");
    u32::from_str_radix(id.split('.').next().unwrap(), 16).unwrap_or_else(|_| panic!("a queue id in {out}"))
}

/// Where each kind of queue lives (`/queues`, once all `total` recipients are queued):
/// panics on a queue on the wrong side; the domains of the class's queues.
fn class_queues(api: SocketAddr, total: u64) -> BTreeSet<String> {
    let queues = wait_for("every queue", Duration::from_secs(10), || {
        let (_, q) = http(api, "GET", "/queues", None, "");
        let list = q["queues"].as_array().cloned().unwrap_or_default();
        let rcpts: u64 = list.iter().map(|q| q["rcpts"].as_u64().unwrap_or(0)).sum();
        (rcpts == total).then_some(list)
    });
    let mut class_domains = BTreeSet::new();
    for q in &queues {
        let shard = q["shard"].as_u64().unwrap();
        let domain = q["domain"].as_str().unwrap().to_string();
        // d*: the class's VMTA (and bulk's default); c*: the class's source, default VMTA;
        // h*: the header, from a source that may; x*: the header, from one that may not.
        let class = (q["vmta"] == "tx") || domain.starts_with('c') || domain.starts_with('h');
        match class {
            true => {
                assert_eq!(shard, 2, "a transactional queue on shard {shard}: {q}");
                class_domains.insert(domain);
            }
            false => assert!(shard < 2, "another queue on the reserved shard: {q}"),
        }
    }
    class_domains
}

#[test]
fn a_class_is_received_spooled_and_delivered_on_its_own_shards_only() {
    let api_port = free_port("127.0.0.1");
    let receiver_port = free_port("127.0.0.1");
    let mut relay = Relay::start(
        &format!(
            "http-mgmt-port 127.0.0.1:{api_port}\nhttp-access 127.0.0.1 admin\n\
             <traffic-class transactional>\n shards 1\n</traffic-class>\n\
             <virtual-mta tx>\n traffic-class transactional\n</virtual-mta>\n\
             <source 127.0.0.2>\n always-allow-relaying yes\n traffic-class transactional\n default-virtual-mta tx\n</source>\n\
             <source 127.0.0.3>\n always-allow-relaying yes\n traffic-class transactional\n</source>\n\
             <source 127.0.0.4>\n always-allow-relaying yes\n process-x-traffic-class yes\n</source>\n\
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
    let named = "X-Traffic-Class: transactional";
    for i in 0..DOMAINS {
        let tx = spooling_shard(&relay, "127.0.0.2", &format!("user{i}@d{i}.test"));
        assert_eq!(tx, 2, "a transactional message spooled on shard {tx}");
        let tx = spooling_shard(&relay, "127.0.0.3", &format!("user{i}@c{i}.test"));
        assert_eq!(tx, 2, "a message of the class's source spooled on shard {tx}");
        let bulk = spooling_shard(&relay, "127.0.0.1", &format!("user{i}@d{i}.test"));
        assert!(bulk < 2, "a bulk message spooled on the reserved shard");
        bulk_shards.insert(bulk);
        // Named by its header: received where it came in, queued with its class.
        assert!(spooling_shard_with(&relay, "127.0.0.4", &format!("user{i}@h{i}.test"), named) < 2);
        assert!(spooling_shard_with(&relay, "127.0.0.1", &format!("user{i}@x{i}.test"), named) < 2);
    }
    let total = 5 * DOMAINS;
    let class_domains = class_queues(api, total as u64);
    assert_eq!(class_domains.len(), 3 * DOMAINS, "{class_domains:?}");
    // A restart finds every message's class again.
    assert_eq!(relay.terminate(Duration::from_secs(20)), 0);
    relay.spawn();
    wait_port(api, Duration::from_secs(10));
    assert_eq!(class_queues(api, total as u64), class_domains, "after a restart");
    // The receiver comes up: everything is delivered, from the queues where it waited, and
    // no receiver sees the header that named a class.
    let rx = PyReceiver::start_at(receiver_port, &[]);
    let d = relay.wait_rows("d", total, Duration::from_secs(30));
    assert_eq!(d.len(), total);
    let files = wait_for("every message at the receiver", Duration::from_secs(10), || {
        let f = rx.files();
        (f.len() == total).then_some(f)
    });
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.to_ascii_lowercase().contains("x-traffic-class"), "{text}");
    }
    eprintln!("bulk messages were spooled on shards {bulk_shards:?}");
}
