//! Jobs: with `process-x-job yes` the `x-job:` header (or the source's `jobid-header`) names
//! the message's job; every accounting record of its recipients carries it as `jobId`, also
//! after a crash and restart (the job id is in the spool record), and the header is removed
//! before delivery unless `retain-x-job yes`.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn job_ids_reach_every_record_and_survive_a_crash() {
    let sink_port = free_port("127.0.0.1");
    let mut relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n process-x-job yes\n</source>\n\
             <source 127.0.0.2>\n always-allow-relaying yes\n process-x-job yes\n jobid-header X-Campaign\n retain-x-job yes\n</source>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{sink_port}\n retry-after 1s\n</domain>\n"
        ),
        Some(1),
    );
    let message = |header: &str| format!("From: news@example.com\r\nSubject: sale\r\n{header}\r\nHello.\r\n");
    // The receiver is down: the first attempt defers, with the job id.
    assert_eq!(
        smtplib_send(
            &relay,
            "127.0.0.1",
            "news@example.com",
            &["a@dest.test"],
            message("X-Job: spring-sale\r\n").as_bytes()
        ),
        "sent"
    );
    assert_eq!(
        smtplib_send(
            &relay,
            "127.0.0.2",
            "news@example.com",
            &["b@dest.test"],
            message("X-Campaign: c-77\r\n").as_bytes()
        ),
        "sent"
    );
    let t = relay.wait_rows("t", 2, Duration::from_secs(20));
    let job = |rows: &[std::collections::HashMap<String, String>], rcpt: &str| {
        rows.iter()
            .find(|r| r["rcpt"] == rcpt)
            .map(|r| r["jobId"].clone())
            .unwrap_or_else(|| panic!("{rcpt}: {rows:?}"))
    };
    assert_eq!((job(&t, "a@dest.test"), job(&t, "b@dest.test")), ("spring-sale".to_string(), "c-77".to_string()));
    let r = relay.rows_of("r");
    assert_eq!((job(&r, "a@dest.test"), job(&r, "b@dest.test")), ("spring-sale".to_string(), "c-77".to_string()));
    // A crash, then the receiver comes up: the job ids come back from the spool.
    relay.kill9();
    let sink = SmtpSink::start("127.0.0.1", sink_port, &[], true);
    relay.spawn();
    let d = relay.wait_rows("d", 2, Duration::from_secs(20));
    assert_eq!((job(&d, "a@dest.test"), job(&d, "b@dest.test")), ("spring-sale".to_string(), "c-77".to_string()));
    let messages = wait_for("both at the sink", Duration::from_secs(10), || {
        let m = sink.messages();
        (m.len() == 2).then_some(m)
    });
    assert!(messages.iter().all(|m| !m.contains("X-Job:")), "x-job removed before delivery");
    assert!(messages.iter().any(|m| m.contains("X-Campaign: c-77")), "retain-x-job keeps it");
}
