//! sluice's accounting read the way public PowerMTA tools read it: a bounce handler that takes
//! columns by position under its own `record-fields b timeQueued,bounceCat,vmta,orig,rcpt,...`
//! (both from a file and from an `<acct-file |program>` pipe), and a per-job report that
//! takes them by header name from files holding several record types. Both must count what
//! happened: 3 delivered, 2 bounced (bad mailbox), 1 deferred and then expired.

mod common;
use common::*;
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

const HANDLER_FIELDS: &str = "timeQueued,bounceCat,vmta,orig,rcpt,srcMta,dlvSourceIp,jobId,dsnStatus,dsnMta,dsnDiag";

#[test]
fn bounce_handler_by_position_and_job_report_by_name() {
    require("swaks");
    let py = VENV_PYTHON;
    let dir = TempDir::new("tools");
    let ok = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], false);
    let hard =
        SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &["-f", "RCPT", "-B", "550 5.1.1 user unknown"], false);
    let full =
        SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &["-r", "RCPT", "-b", "452 4.2.2 mailbox full"], false);
    let piped = dir.path().join("piped.jsonl");
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n process-x-job yes\n</source>\n\
             <domain ok.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <domain hard.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <domain full.test>\n smtp-hosts [127.0.0.1]:{}\n retry-after 1s\n bounce-after 3s\n</domain>\n\
             # The bounce handler's own column order, to a file and to its pipe.\n\
             <acct-file {bounces}>\n records b\n record-fields b {HANDLER_FIELDS}\n</acct-file>\n\
             <acct-file |{py} {handler} {piped}>\n records bounce\n record-fields bounce {HANDLER_FIELDS}\n</acct-file>\n\
             # What a report script reads by name: every type in one file.\n\
             <acct-file {all}>\n records d,b,t\n move-interval 1h\n</acct-file>\n",
            ok.addr.port(),
            hard.addr.port(),
            full.addr.port(),
            bounces = dir.path().join("bounce.csv").display(),
            handler = py_script("bounce_handler.py").display(),
            piped = piped.display(),
            all = dir.path().join("acct.csv").display(),
        ),
        Some(2),
    );
    let job = |j: &str| vec!["--header".to_string(), format!("X-Job: {j}")];
    let send = |to: &str, j: &str| {
        let extra = job(j);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (code, out) = swaks(&relay.addr().to_string(), to, &extra);
        assert_eq!(code, 0, "{out}");
    };
    for i in 0..3 {
        send(&format!("reader{i}@ok.test"), "spring");
    }
    send("gone1@hard.test", "spring");
    send("gone2@hard.test", "autumn");
    send("inbox@full.test", "autumn");
    relay.wait_rows("d", 3, Duration::from_secs(20));
    let expired = wait_for("the expiry", Duration::from_secs(20), || {
        relay.rows_of("b").into_iter().find(|r| r["bounceCat"] == "message-expired")
    });
    assert_eq!(expired["rcpt"], "inbox@full.test");
    std::thread::sleep(Duration::from_millis(1500)); // the writer flushes when traffic goes quiet

    // The handler reading the file by position, then what it read from its pipe.
    let files = acct_files_of(dir.path(), "bounce");
    assert_eq!(files.len(), 1, "{files:?}");
    let header = std::fs::read_to_string(&files[0]).unwrap().lines().next().unwrap().to_string();
    assert_eq!(header, format!("type,{HANDLER_FIELDS}"), "the columns in the order the handler lists them");
    let from_file = dir.path().join("from-file.jsonl");
    let (code, out) = run(Command::new(py).arg(py_script("bounce_handler.py")).arg(&from_file).arg(&files[0]));
    assert_eq!(code, 0, "{out}");
    for seen in [from_file, piped] {
        let lines = wait_for("the handler's output", Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&seen).ok()?;
            (text.lines().count() == 3).then_some(text)
        });
        let bounces: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let by_rcpt: HashMap<&str, &serde_json::Value> =
            bounces.iter().map(|b| (b["rcpt"].as_str().unwrap(), b)).collect();
        for gone in ["gone1@hard.test", "gone2@hard.test"] {
            let b = by_rcpt[gone];
            assert_eq!(b["hard"], true, "{seen:?}: {b}");
            assert_eq!(b["status"], "5.1.1 (bad destination mailbox address)");
            assert_eq!(b["orig"], "s@src.test");
        }
        assert_eq!(by_rcpt["gone1@hard.test"]["job"], "spring");
        let e = by_rcpt["inbox@full.test"];
        assert_eq!((e["hard"].as_bool(), e["category"].as_str()), (Some(false), Some("message-expired")), "{e}");
        assert_eq!(e["status"], "5.4.7 (delivery time expired)");
    }

    // The report by header name over the file with every type.
    let files = acct_files_of(dir.path(), "acct");
    let (code, out) = run(Command::new(py).arg(py_script("acct_report.py")).args(&files));
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["spring"], serde_json::json!({"delivered": 3, "bounced": 1, "expired": 0, "deferred": 0}));
    assert_eq!(report["autumn"], serde_json::json!({"delivered": 0, "bounced": 1, "expired": 1, "deferred": 1}));
}
