//! The management API and the operator's commands against a running daemon: every read
//! endpoint and CLI verb, queue and job control with what it does to delivery and
//! accounting, access levels and the API key, HTTP injection, reload (the CLI, SIGHUP, a bad
//! configuration refused, reload under load with nothing lost), and the web monitor in a
//! headless browser.

mod common;
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const KEY: &str = "test-api-key-0123456789";

struct Daemon {
    relay: Relay,
    api: SocketAddr,
}

/// A relay with its management API on a free port (`extra` goes in the global section).
fn daemon(sink_port: u16, extra: &str, shards: Option<u32>) -> Daemon {
    let port = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "http-mgmt-port 127.0.0.1:{port}\n{extra}\n<source 127.0.0.1>\n always-allow-relaying yes\n process-x-job yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{sink_port}\n</domain>\n"
        ),
        shards,
    );
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(api, Duration::from_secs(10));
    Daemon { relay, api }
}

impl Daemon {
    fn cli(&self, args: &[&str]) -> String {
        let (code, out) = sluice_cli(&self.relay.config, args);
        assert_eq!(code, 0, "sluice {args:?}: {out}");
        out
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = http(self.api, "GET", path, None, "");
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    fn queue(&self, name: &str) -> Option<Value> {
        let q = self.cli_json(&["show", "queues"]);
        q["queues"].as_array().unwrap().iter().find(|q| q["queue"] == name).cloned()
    }
}

fn send_job(relay: &Relay, rcpt: &str, job: &str) {
    let (code, out) = swaks(&relay.addr().to_string(), rcpt, &["--header", &format!("X-Job: {job}")]);
    assert_eq!(code, 0, "swaks to {rcpt}: {out}");
}

/// Waits for a `tq` record of `queue` whose diagnostic contains `text`.
fn wait_tq(relay: &Relay, queue: &str, text: &str) {
    wait_for(&format!("a tq record `{text}`"), Duration::from_secs(10), || {
        relay.rows_of("tq").iter().any(|r| r["queue"] == queue && r["dsnDiag"].contains(text)).then_some(())
    });
}

fn rows_to(relay: &Relay, kind: &str, domain: &str) -> usize {
    relay.rows_of(kind).iter().filter(|r| r["rcpt"].ends_with(domain)).count()
}

#[test]
fn queues_and_jobs_pause_resume_and_delete() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], false);
    let d = daemon(sink.addr.port(), "", Some(2));
    let relay = &d.relay;

    // A paused queue takes mail but delivers none of it until resumed.
    assert!(d.cli(&["pause", "queue", "a.test"]).contains("paused: 0"), "no queue existed yet");
    send_job(relay, "a1@a.test", "j1");
    send_job(relay, "a2@a.test", "j1");
    send_job(relay, "b1@b.test", "j2");
    relay.wait_rows("d", 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(rows_to(relay, "d", "a.test"), 0, "a paused queue delivers nothing");
    let q = d.queue("a.test/default").expect("the paused queue is listed");
    assert_eq!((q["rcpts"].as_u64(), q["mode"].as_str()), (Some(2), Some("paused")), "{q}");
    let table = d.cli(&["show", "queues"]);
    assert!(table.contains("a.test/default") && table.contains("paused"), "{table}");
    assert!(d.cli(&["resume", "queue", "a.test"]).contains("resumed: 1"));
    relay.wait_rows("d", 3, Duration::from_secs(20));
    assert_eq!(rows_to(relay, "d", "a.test"), 2);

    // A paused job is held (its new mail too) on every shard; deleting it writes a `b`
    // record per recipient and it is never delivered, not even after a restart.
    assert!(d.cli(&["pause", "job", "j3"]).contains("held: 0"));
    for i in 0..3 {
        send_job(relay, &format!("c{i}@c{i}.test"), "j3");
    }
    send_job(relay, "e1@e.test", "j4");
    relay.wait_rows("d", 4, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rows_to(relay, "d", "0.test") + rows_to(relay, "d", "1.test") + rows_to(relay, "d", "2.test"), 0);
    let jobs = d.cli_json(&["show", "jobs"]);
    let j3 = jobs["jobs"].as_array().unwrap().iter().find(|j| j["jobId"] == "j3").cloned().expect("j3 listed");
    assert_eq!((j3["rcpts"].as_u64(), j3["state"].as_str()), (Some(3), Some("paused")), "{jobs}");
    assert!(d.cli(&["show", "jobs"]).contains("j3"));
    assert!(d.cli(&["delete", "--jobId=j3"]).contains("deleted: 3"));
    let bounced = relay.wait_rows("b", 3, Duration::from_secs(10));
    assert!(
        bounced.iter().all(|r| r["jobId"] == "j3" && r["dsnDiag"].contains("deleted by an operator")),
        "{bounced:?}"
    );
    let jobs = d.cli_json(&["show", "jobs"]);
    assert!(jobs["jobs"].as_array().unwrap().iter().all(|j| j["jobId"] != "j3" || j["rcpts"] == 0), "{jobs}");

    // Resuming a job releases what it held.
    d.cli(&["pause", "job", "j5"]);
    send_job(relay, "f1@f.test", "j5");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rows_to(relay, "d", "f.test"), 0);
    assert!(d.cli(&["resume", "job", "j5"]).contains("released: 1"));
    relay.wait_rows("d", 5, Duration::from_secs(20));

    // The deletions are journaled: a restart finds nothing to deliver.
    let mut d = d;
    assert_eq!(d.relay.terminate(Duration::from_secs(20)), 0);
    d.relay.spawn();
    wait_port(d.api, Duration::from_secs(10));
    assert_eq!(d.get("/status")["startup"]["recoveredMessages"], 0, "{}", tail(&d.relay.log(), 5));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.relay.rows_of("d").len(), 5);
}

#[test]
fn queue_modes_and_schedule_on_a_deferring_queue() {
    // Nothing listens on the next hop: every attempt defers, retries wait an hour.
    let dead = free_port("127.0.0.1");
    let d = daemon(dead, "", Some(1));
    let relay = &d.relay;
    std::fs::write(
        &relay.config,
        std::fs::read_to_string(&relay.config).unwrap().replace(" smtp-hosts", " retry-after 1h\n smtp-hosts"),
    )
    .unwrap();
    assert!(d.cli(&["reload"]).contains("reloaded: true"));
    swaks_send(relay, "x@slow.test");
    relay.wait_rows("t", 1, Duration::from_secs(20));
    let q = d.queue("slow.test/default").expect("queue listed");
    assert!(q["nextRetryInS"].as_u64().unwrap() > 3000, "retry in an hour: {q}");
    assert!(q["lastError"].as_str().unwrap().contains("4.4.1"), "{q}");
    let detail = d.get("/queueDetail?queue=slow.test/default");
    assert_eq!(detail["queues"][0]["rcpts"], 1);
    let (status, _) = http(d.api, "GET", "/queueDetail?queue=none.test/default", None, "");
    assert_eq!(status, 404);

    assert!(d.cli(&["set", "queue", "--mode=backoff", "slow.test/default"]).contains("changed: 1"));
    assert_eq!(d.queue("slow.test/default").unwrap()["mode"], "backoff");
    wait_tq(relay, "slow.test/default", "mode=backoff (operator)");
    d.cli(&["set", "queue", "--mode=normal", "slow.test/default"]);
    assert_eq!(d.queue("slow.test/default").unwrap()["mode"], "normal");
    assert!(d.cli(&["pause", "queue", "slow.test/default"]).contains("paused: 1"));
    assert_eq!(d.queue("slow.test/default").unwrap()["mode"], "paused");
    wait_tq(relay, "slow.test/default", "mode=paused (operator)");
    assert!(d.cli(&["resume", "queue", "*/*"]).contains("resumed: 1"), "a wildcard resumes it");
    wait_tq(relay, "slow.test/default", "mode=resumed (operator)");

    // `schedule`: the hour-long wait is cut short, the recipient is tried again now.
    assert!(d.cli(&["schedule", "slow.test"]).contains("scheduled: 1"));
    relay.wait_rows("t", 2, Duration::from_secs(20));

    // Delete a queue: its recipient bounces with a `b` record.
    assert!(d.cli(&["delete", "--queue=slow.test/default"]).contains("deleted: 1"));
    let b = relay.wait_rows("b", 1, Duration::from_secs(10));
    assert_eq!(b[0]["rcpt"], "x@slow.test");
    assert!(d.queue("slow.test/default").is_none());
}

#[test]
fn status_metrics_and_read_endpoints() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], false);
    let d = daemon(sink.addr.port(), "", None);
    let relay = &d.relay;
    for rcpt in ["a1@a.test", "a2@a.test", "a3@a.test", "b1@b.test", "b2@b.test"] {
        swaks_send(relay, rcpt);
    }
    relay.wait_rows("d", 5, Duration::from_secs(20));
    let status = d.get("/status?format=json");
    let total = &status["traffic"]["total"];
    assert_eq!((total["in"]["msg"].as_u64(), total["out"]["rcpt"].as_u64()), (Some(5), Some(5)), "{status}");
    assert_eq!(status["traffic"]["lastMin"]["in"]["msg"], 5, "{status}");
    assert_eq!(status["traffic"]["lastHr"]["out"]["msg"], 5, "{status}");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptimeS"].is_u64() && status["startup"]["state"] == "running");
    assert!(status["spool"]["files"].is_u64() && status["conn"]["smtpIn"].is_u64());
    assert_eq!(status["queue"]["rcpt"], 0);

    let domains = d.get("/domains");
    let a = domains["domains"].as_array().unwrap().iter().find(|x| x["domain"] == "a.test").cloned().unwrap();
    assert_eq!(a["delivered"], 3, "{domains}");
    let vmtas = d.get("/vmtas");
    let v = vmtas["vmtas"].as_array().unwrap().iter().find(|x| x["vmta"] == "default").cloned().unwrap();
    assert_eq!(v["delivered"], 5, "{vmtas}");
    assert!(d.get("/queues")["queues"].is_array());
    assert!(d.get("/jobs")["jobs"].is_array());
    assert!(d.get("/settings?queue=a.test/default")["settings"].as_str().unwrap().contains("max_smtp_out"));
    let resolved = d.get("/resolve?domain=a.test");
    assert_eq!(resolved["hops"][0][0]["address"], format!("127.0.0.1:{}", sink.addr.port()), "{resolved}");

    let (status_code, metrics) = http(d.api, "GET", "/metrics", None, "");
    assert_eq!(status_code, 200);
    let metrics = metrics.as_str().unwrap().to_string();
    for line in [
        "sluice_messages_received_total 5",
        "sluice_messages_delivered_total{vmta=\"default\"} 5",
        "sluice_domain_recipients_total{domain=\"a.test\",outcome=\"delivered\"} 3",
        "sluice_delivery_latency_seconds_count 5",
        "sluice_delivery_latency_seconds_bucket{le=\"+Inf\"} 5",
        "# TYPE sluice_messages_bounced counter",
        "# TYPE sluice_connections gauge",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing `{line}` in\n{metrics}");
    }

    // The CLI's text forms.
    let text = d.cli(&["show", "status"]);
    assert!(text.contains("traffic.total.in.msg: 5"), "{text}");
    assert!(d.cli(&["show", "domains"]).lines().any(|l| l.starts_with("a.test")));
    assert!(d.cli(&["show", "vmtas"]).lines().any(|l| l.starts_with("default")));
    assert!(d.cli(&["show", "topqueues"]).starts_with("queue"));
    assert!(d.cli(&["show", "settings", "b.test"]).contains("retry_after"));
    assert!(d.cli(&["resolve", "b.test"]).contains(&format!("127.0.0.1:{}", sink.addr.port())));

    // `rotate acct`: a new file (the next number) starts with the header; the old one keeps
    // its rows.
    let before = relay.acct_files();
    d.cli(&["rotate", "acct"]);
    let new = wait_for("the new accounting file", Duration::from_secs(5), || {
        let files = relay.acct_files();
        let new = files.into_iter().find(|f| !before.contains(f))?;
        std::fs::read_to_string(&new).ok().filter(|t| t.starts_with("type,"))?;
        Some(new)
    });
    let old = parse_csv_rows(&std::fs::read_to_string(before.last().unwrap()).unwrap());
    assert_eq!(old.iter().filter(|r| r["type"] == "d").count(), 5, "the delivered rows stay in the old file");
    assert!(parse_csv_rows(&std::fs::read_to_string(new).unwrap()).is_empty());
}

#[test]
fn access_levels_and_the_api_key() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], false);
    let d = daemon(sink.addr.port(), &format!("http-access 127.0.0.1 monitor\nhttp-api-key {KEY}"), Some(1));
    // Monitor reads; it may not pause.
    assert_eq!(http(d.api, "GET", "/status", None, "").0, 200);
    let (code, body) = http(d.api, "POST", "/pause?queue=a.test", None, "");
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("operator"), "{body}");
    assert_eq!(http(d.api, "POST", "/pause?queue=a.test", Some("wrong-key-wrong-key"), "").0, 401);
    assert_eq!(http(d.api, "POST", "/pause?queue=a.test", Some(KEY), "").0, 200);
    // Only the API's routes exist: no file is ever served.
    for path in ["/../../etc/passwd", "/ui/../../../etc/passwd", "/ui/x", "/static/app.js", "/%2e%2e/etc/passwd"] {
        assert_eq!(http(d.api, "GET", path, None, "").0, 404, "{path}");
    }
    assert_eq!(http(d.api, "POST", "/status", None, "").0, 405);
    assert_eq!(http(d.api, "GET", "/pause?queue=a.test", None, "").0, 405);
    // The CLI sends the configuration's key: admin.
    assert!(d.cli(&["resume", "queue", "a.test"]).contains("resumed"));
    // A reload to `none`: this address is shut out (a key bearer is too: no access at all).
    let conf = std::fs::read_to_string(&d.relay.config).unwrap();
    std::fs::write(&d.relay.config, conf.replace("http-access 127.0.0.1 monitor", "http-access 127.0.0.1 none"))
        .unwrap();
    assert_eq!(http(d.api, "POST", "/reload", Some(KEY), "").0, 200);
    assert_eq!(http(d.api, "GET", "/status", None, "").0, 403);
    assert_eq!(http(d.api, "GET", "/status", Some(KEY), "").0, 403);
}

#[test]
fn http_injection_is_durable_counted_and_suppressed() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], true);
    let port = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "http-mgmt-port 127.0.0.1:{port}\nhttp-api-key {KEY}\n<address-list stop>\n address gone@a.test\n</address-list>\n<source 127.0.0.1>\n always-allow-relaying yes\n suppression-lists stop\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            sink.addr.port()
        ),
        Some(2),
    );
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(api, Duration::from_secs(10));
    let message =
        "From: news@src.test\nTo: list@a.test\nSubject: spring sale\n\nHello,\n.a line that starts with a dot\nbye\n";
    let body = serde_json::json!({
        "return_path": "bounces@src.test",
        "campaign_id": "spring-2026",
        "recipients": [{"address": "ok1@a.test"}, {"address": {"email": "ok2@b.test"}}, {"address": "gone@a.test"}, {"address": "not an address"}],
        "content": {"email_rfc822": message},
    })
    .to_string();
    assert_eq!(http(api, "POST", "/api/v1/transmissions", None, &body).0, 401, "no key, no injection");
    assert_eq!(http(api, "POST", "/api/v1/transmissions", Some("wrong-key-wrong-key"), &body).0, 401);
    let (code, reply) = http(api, "POST", "/api/v1/transmissions", Some(KEY), &body);
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["results"]["total_accepted_recipients"], 2, "{reply}");
    assert_eq!(reply["results"]["total_rejected_recipients"], 2, "{reply}");
    assert!(reply["rejected"].to_string().contains("suppressed by list stop"), "{reply}");
    // The 200 came after the fsync: the `r` records are there, with the campaign as job id.
    let received = relay.wait_rows("r", 2, Duration::from_secs(5));
    assert!(received.iter().all(|r| r["jobId"] == "spring-2026" && r["orig"] == "bounces@src.test"), "{received:?}");
    let delivered = relay.wait_rows("d", 2, Duration::from_secs(20));
    assert!(delivered.iter().all(|r| r["jobId"] == "spring-2026"));
    let msgs = wait_for("2 dumped messages", Duration::from_secs(10), || {
        let m = sink.messages();
        (m.len() == 2 && m.iter().all(|t| t.contains("bye"))).then_some(m)
    });
    for m in &msgs {
        assert!(m.contains("Subject: spring sale"), "{m}");
        assert!(m.contains("\n.a line that starts with a dot"), "the dot line arrives as written: {m}");
    }

    // A batch: one request, a thousand recipients, one spooled message.
    let rcpts: Vec<Value> = (0..1000).map(|i| serde_json::json!({ "address": format!("r{i}@batch.test") })).collect();
    let batch = serde_json::json!({ "recipients": rcpts, "content": { "email_rfc822": message } }).to_string();
    let (code, reply) = http(api, "POST", "/api/v1/transmissions", Some(KEY), &batch);
    assert_eq!((code, reply["results"]["total_accepted_recipients"].as_u64()), (200, Some(1000)), "{reply}");
    relay.wait_rows("d", 1002, Duration::from_secs(60));

    // Malformed requests get clear errors.
    let (code, reply) = http(api, "POST", "/api/v1/transmissions", Some(KEY), "{not json");
    assert_eq!(code, 400, "{reply}");
    let (code, reply) =
        http(api, "POST", "/api/v1/transmissions", Some(KEY), r#"{"recipients":[{"address":"a@a.test"}]}"#);
    assert_eq!(code, 422, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("email_rfc822"));
}

/// SparkPost's templated injection: one request, each recipient's `substitution_data` over
/// the request's, content as parts (from, subject, text, html) or a whole message; every
/// delivered message carries its own recipient's values (aiosmtpd keeps them byte for byte).
#[test]
fn http_injection_with_substitutions_personalizes_each_message() {
    let receiver = PyReceiver::start();
    let port = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "http-mgmt-port 127.0.0.1:{port}\nhttp-api-key {KEY}\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            receiver.addr.port()
        ),
        None,
    );
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(api, Duration::from_secs(10));
    let people = [("ann@a.test", "Ann", "Gold"), ("bob@b.test", "Bob", "Silver"), ("cy@a.test", "Cy <&>", "")];
    let recipients: Vec<Value> = people
        .iter()
        .map(|(a, first, tier)| serde_json::json!({"address": {"email": a}, "substitution_data": {"first": first, "account": {"tier": tier}}}))
        .collect();
    let body = serde_json::json!({
        "campaign_id": "welcome",
        "return_path": "bounces@src.test",
        "substitution_data": {"shop": "The Shop"},
        "recipients": recipients,
        "content": {"from": {"email": "news@src.test", "name": "The Shop"}, "subject": "Welcome, {{first}}",
                    "text": "Hello {{first}}, your tier at {{shop}}: {{account.tier}}.", "html": "<p>Hello {{first}}</p>"},
    })
    .to_string();
    let (code, reply) = http(api, "POST", "/api/v1/transmissions", Some(KEY), &body);
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["results"]["total_accepted_recipients"], 3, "{reply}");
    assert_eq!(reply["results"]["ids"].as_array().map(Vec::len), Some(3), "a message per recipient: {reply}");
    let rows = relay.wait_rows("d", 3, Duration::from_secs(30));
    assert!(rows.iter().all(|r| r["jobId"] == "welcome"), "{rows:?}");
    let files = wait_for("3 messages", Duration::from_secs(10), || {
        let f = receiver.files();
        (f.len() == 3).then_some(f)
    });
    for (address, first, tier) in people {
        let message = files
            .iter()
            .find(|f| std::fs::read_to_string(f.with_extension("env")).unwrap().lines().nth(1) == Some(address))
            .map(|f| std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|| panic!("a message for {address}"));
        assert!(message.contains(&format!("To: {address}\r\n")), "{message}");
        assert!(message.contains(&format!("Subject: Welcome, {first}\r\n")), "{message}");
        assert!(message.contains(&format!("Hello {first}, your tier at The Shop: {tier}.")), "{message}");
        let escaped = first.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        assert!(message.contains(&format!("<p>Hello {escaped}</p>")), "{message}");
        for (other, other_first, _) in people.iter().filter(|p| p.0 != address) {
            assert!(
                !message.contains(other) && !message.contains(&format!("Hello {other_first},")),
                "{address} got {other}'s: {message}"
            );
        }
    }
}

#[test]
fn reload_swaps_lists_refuses_bad_configs_and_loses_nothing_under_load() {
    let s = SluiceSink::start(&[], u64::MAX);
    let port = free_port("127.0.0.1");
    let dir = TempDir::new("lists");
    let list = dir.path().join("gone.txt");
    std::fs::write(&list, "x@a.test\n").unwrap();
    let mut relay = Relay::start(
        &format!(
            "http-mgmt-port 127.0.0.1:{port}\n<address-list stop>\n address-file {}\n</address-list>\n<source 127.0.0.1>\n always-allow-relaying yes\n suppression-lists stop\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            list.display(),
            s.port
        ),
        Some(2),
    );
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(api, Duration::from_secs(10));
    let refused = |rcpt: &str| {
        let (code, out) = swaks(&relay.addr().to_string(), rcpt, &[]);
        assert!(code == 0 || out.contains("550 5.7.1"), "{out}");
        code != 0
    };
    assert!(refused("x@a.test"));
    assert!(!refused("y@a.test"));

    // The list file changes; `sluice reload` swaps it in.
    std::fs::write(&list, "y@a.test\n").unwrap();
    let (code, out) = sluice_cli(&relay.config, &["reload"]);
    assert_eq!(code, 0, "{out}");
    assert!(!refused("x@a.test"));
    assert!(refused("y@a.test"));
    let (_, status) = http(api, "GET", "/status", None, "");
    assert_eq!(status["suppressionLists"][0]["refused"], 2, "counted across the reload: {status}");

    // A bad configuration is refused with file:line; the old one stays in force.
    let good = std::fs::read_to_string(&relay.config).unwrap();
    std::fs::write(&relay.config, format!("{good}\nmax-smtp-outt 5\n")).unwrap();
    let (code, out) = sluice_cli(&relay.config, &["reload"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("sluice.conf:") && out.contains("unknown directive `max-smtp-outt`"), "{out}");
    assert!(refused("y@a.test"), "the old lists stay");
    std::fs::write(&relay.config, &good).unwrap();

    // SIGHUP reloads too.
    std::fs::write(&list, "z@a.test\n").unwrap();
    relay.signal(1);
    wait_for("SIGHUP's reload", Duration::from_secs(10), || {
        relay.log().contains("configuration reloaded").then_some(())
    });
    assert!(refused("z@a.test") && !refused("y@a.test"));

    // Under load: reloads while 2000 messages flow; every accepted one is delivered.
    let before = relay.wait_rows("d", 3, Duration::from_secs(20)).len();
    let reloader = {
        let config = relay.config.clone();
        std::thread::spawn(move || {
            for _ in 0..8 {
                std::thread::sleep(Duration::from_millis(150));
                let (code, out) = sluice_cli(&config, &["reload"]);
                assert_eq!(code, 0, "{out}");
            }
        })
    };
    let lg = loadgen(relay.port, &["--messages", "2000", "--connections", "8", "--domains", "20"]);
    reloader.join().unwrap();
    let ok = json_u64(&lg, "messages_ok");
    assert_eq!(ok, 2000, "{lg}");
    relay.wait_rows("d", before + 2000, Duration::from_secs(60));
    assert_eq!(relay.terminate(Duration::from_secs(20)), 0);
    let st = s.terminate();
    assert_eq!((json_u64(&st, "corrupt"), json_u64(&st, "duplicates")), (0, 0), "{st}");
}

#[test]
fn web_monitor_renders_in_a_headless_browser() {
    require("chromium-headless-shell");
    let d = daemon(free_port("127.0.0.1"), "", Some(1));
    swaks_send(&d.relay, "x@paused.test");
    d.cli(&["pause", "queue", "paused.test"]);
    let url = format!("http://{}/ui", d.api);
    let browser = |extra: &[&str]| {
        run(Command::new("timeout")
            .args(["60", "chromium-headless-shell", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"])
            .args(extra)
            .arg(&url))
    };
    let (code, dom) = browser(&["--dump-dom"]);
    assert_eq!(code, 0, "{dom}");
    assert!(dom.contains("data-loaded=\"yes\""), "the dashboard's script ran and drew: {dom}");
    assert!(dom.contains("<td>paused.test/default</td>"), "the queue is listed: {dom}");
    assert!(dom.contains("class=\"mode-paused\">paused</td>"), "with its mode: {dom}");
    // The screenshot is kept for people to look at.
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("ui.png");
    let (code, out) = browser(&["--window-size=1280,900", &format!("--screenshot={}", shot.display())]);
    assert_eq!(code, 0, "{out}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a real picture");
}
