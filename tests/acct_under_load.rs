//! Accounting housekeeping under steady traffic (issue 22): `move-interval` rotation (and the
//! flush, `delete-after` and pipe restarts with it) once ran only after the control plane had
//! gone 100 ms without a request, so with mail flowing steadily the file was never turned
//! over. Here messages flow for 5 s without a pause and the file must move on its 1 s
//! interval meanwhile, every record landing in exactly one file.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn move_interval_rotates_while_mail_flows_without_a_pause() {
    let dir = TempDir::new("acct-load");
    let archive = dir.path().join("archive");
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], false);
    let relay = Relay::start(
        &format!(
            "<acct-file {base}>\n records d\n move-interval 1s\n move-to {archive}\n</acct-file>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{sink}\n</domain>\n",
            base = dir.path().join("steady.csv").display(),
            archive = archive.display(),
            sink = sink.addr.port(),
        ),
        Some(2),
    );
    let port = relay.port;
    let started = Instant::now();
    let load =
        std::thread::spawn(move || loadgen(port, &["--messages", "2500", "--rate", "500", "--connections", "4"]));
    // While the load runs (5 s), finished files must appear in move-to.
    let moved_during = wait_for("a file moved while mail flows", Duration::from_secs(4), || {
        let n = acct_files_of(&archive, "steady").len();
        (n >= 2).then_some(n)
    });
    assert!(started.elapsed() < Duration::from_secs(5), "moved during the load");
    let _summary = load.join().unwrap();
    assert!(moved_during >= 2);
    // Every delivery recorded once, across the moved files and the current one.
    let rows = wait_for("2,500 d records", Duration::from_secs(30), || {
        let files = acct_files_of(&archive, "steady").into_iter().chain(acct_files_of(dir.path(), "steady"));
        let rows: Vec<_> =
            files.flat_map(|f| parse_csv_rows(&std::fs::read_to_string(f).unwrap_or_default())).collect();
        (rows.iter().filter(|r| r["type"] == "d").count() >= 2500).then_some(rows)
    });
    let mut rcpts: Vec<&str> = rows.iter().filter(|r| r["type"] == "d").map(|r| r["rcpt"].as_str()).collect();
    let total = rcpts.len();
    rcpts.sort_unstable();
    rcpts.dedup();
    assert_eq!((total, rcpts.len()), (2500, 2500), "each record once");
}
