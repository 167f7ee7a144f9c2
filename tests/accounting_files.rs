//! Accounting files as operators shape them: `record-fields` picks the columns, `privacy-policy
//! hmac-sha256` hashes local parts (the same person's records still match), `max-size` starts
//! a new file (PowerMTA's names, `custom-YYYY-MM-DD-NNNN.csv`, each with its header line) and
//! `delete-after` removes old finished files.

mod common;
use common::*;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

#[test]
fn fields_privacy_and_rotation() {
    let dir = TempDir::new("acct");
    let custom = dir.path().join("custom.csv");
    // An old finished file, two days old: delete-after 1d removes it at the next turnover.
    let stale = dir.path().join("custom-2026-11-01-0000.csv");
    std::fs::write(&stale, "old").unwrap();
    assert_eq!(run(Command::new("touch").args(["-d", "2 days ago"]).arg(&stale)).0, 0);
    let sink = SluiceSink::start(&[], 60);
    let relay = Relay::start(
        &format!(
            "<acct-file {}>\n records d\n record-fields d timeLogged,rcpt,dlvSize\n privacy-policy hmac-sha256 k1\n max-size 2K\n delete-after 1d\n</acct-file>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            custom.display(),
            sink.port
        ),
        Some(1),
    );
    let (code, out) = run(Command::new(BIN).args([
        "loadgen",
        "--quiet",
        "--messages",
        "60",
        "--connections",
        "2",
        "--target",
        &relay.addr().to_string(),
    ]));
    assert_eq!(code, 0, "{out}");
    sink.finish();
    let plain = relay.wait_rows("d", 60, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500)); // the writer flushes when the channel goes quiet
    let files = acct_files_of(dir.path(), "custom");
    assert!(!stale.exists(), "delete-after removed the old finished file");
    assert!(files.len() >= 3, "rotated at 2 KiB: {files:?}");
    let mut hashed = HashSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("type,timeLogged,rcpt,dlvSize"), "{f:?}");
        for line in lines {
            let cols: Vec<&str> = line.split(',').collect();
            assert_eq!((cols.len(), cols[0]), (4, "d"), "{line}");
            let (local, domain) = cols[2].split_once('@').unwrap();
            assert!(
                local.len() == 64 && local.bytes().all(|b| b.is_ascii_hexdigit()) && domain == "sink.test",
                "{line}"
            );
            hashed.insert(cols[2].to_string());
        }
    }
    let expected: HashSet<String> =
        plain.iter().map(|r| sluice_engine::acct::private_address(&r["rcpt"], b"k1")).collect();
    assert_eq!(hashed, expected, "every recipient, hashed the same way");
}

#[test]
fn header_columns_carry_the_messages_header_values() {
    let dir = TempDir::new("acct");
    let custom = dir.path().join("headers.csv");
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], false);
    let relay = Relay::start(
        &format!(
            "<acct-file {}>\n records r,d\n record-fields r,d rcpt,header_Subject,header_List-Id\n</acct-file>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            custom.display(),
            sink.addr.port()
        ),
        Some(2),
    );
    let server = relay.addr().to_string();
    let with_list = ["--header", "Subject: Spring sale, \"50%\" off", "--header", "List-Id: <spring.news.src.test>"];
    let (code, out) = swaks(&server, "a@a.test", &with_list);
    assert_eq!(code, 0, "{out}");
    let (code, out) = swaks(&server, "b@b.test", &["--header", "Subject: no list"]);
    assert_eq!(code, 0, "{out}");
    relay.wait_rows("d", 2, Duration::from_secs(20));
    let rows = wait_for("4 rows in the header file", Duration::from_secs(10), || {
        let file = acct_files_of(dir.path(), "headers").pop()?;
        let text = std::fs::read_to_string(file).ok()?;
        (text.lines().count() == 5).then_some(text)
    });
    assert!(rows.starts_with("type,rcpt,header_Subject,header_List-Id\n"), "{rows}");
    let parsed = parse_csv_rows(&rows);
    for kind in ["r", "d"] {
        let a = parsed.iter().find(|r| r["type"] == kind && r["rcpt"] == "a@a.test").unwrap();
        assert_eq!(a["header_Subject"], "Spring sale, \"50%\" off", "commas and quotes survive the CSV: {rows}");
        assert_eq!(a["header_List-Id"], "<spring.news.src.test>");
        let b = parsed.iter().find(|r| r["type"] == kind && r["rcpt"] == "b@b.test").unwrap();
        assert_eq!((b["header_Subject"].as_str(), b["header_List-Id"].as_str()), ("no list", ""), "{rows}");
    }
}

/// `move-interval` starts a new file on the interval, `move-to` takes the finished one away,
/// `world-readable` opens its mode, `user-string` fills `userString`, `map-header-to-field`
/// puts a header's value in a field, `iso-times no` writes Unix seconds.
#[test]
fn move_interval_move_to_and_the_other_file_options() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("acct");
    let archive = dir.path().join("archive");
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], false);
    let relay = Relay::start(
        &format!(
            "<acct-file {base}>\n records d\n record-fields d timeLogged,orig,rcpt,userString,header_X-Campaign\n \
             map-header-to-field d header_X-Orig orig\n move-interval 2s\n move-to {archive}\n world-readable yes\n \
             user-string eu-west 1\n iso-times no\n</acct-file>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{port}\n</domain>\n",
            base = dir.path().join("rolled.csv").display(),
            archive = archive.display(),
            port = sink.addr.port()
        ),
        Some(1),
    );
    let server = relay.addr().to_string();
    let (code, out) =
        swaks(&server, "a@a.test", &["--header", "X-Orig: list-owner@src.test", "--header", "X-Campaign: c7"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = swaks(&server, "b@b.test", &[]);
    assert_eq!(code, 0, "{out}");
    relay.wait_rows("d", 2, Duration::from_secs(20));
    let moved = wait_for("the finished file in move-to", Duration::from_secs(10), || {
        let files = acct_files_of(&archive, "rolled");
        let text = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect::<String>();
        (text.lines().filter(|l| l.starts_with("d,")).count() == 2).then_some(files)
    });
    let rows: Vec<_> = moved.iter().flat_map(|f| parse_csv_rows(&std::fs::read_to_string(f).unwrap())).collect();
    let a = rows.iter().find(|r| r["rcpt"] == "a@a.test").unwrap();
    assert_eq!(a["orig"], "list-owner@src.test", "the header mapped to orig");
    assert_eq!((a["userString"].as_str(), a["header_X-Campaign"].as_str()), ("eu-west 1", "c7"));
    let b = rows.iter().find(|r| r["rcpt"] == "b@b.test").unwrap();
    assert_eq!(b["orig"], "s@src.test", "no header: the field keeps its value");
    let logged: u64 = b["timeLogged"].parse().expect("Unix seconds");
    assert!(logged > 1_700_000_000, "{logged}");
    let mode = std::fs::metadata(&moved[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "world-readable");
    // A new file keeps starting in place, header first, every interval.
    let current = wait_for("a current file", Duration::from_secs(5), || acct_files_of(dir.path(), "rolled").pop());
    assert!(std::fs::read_to_string(current)
        .unwrap()
        .starts_with("type,timeLogged,orig,rcpt,userString,header_X-Campaign\n"));
}

/// A `d` row as PowerMTA writes one (a real PowerMTA line: `...,relayed,2.0.0 (success),
/// smtp;250 ok ...,mx (ip),success,smtp,...,"PIPELINING,8BITMIME,SIZE,STARTTLS",...`):
/// `bounceCat` is `success`, and `dlvEsmtpAvailable` lists the extensions the receiver
/// offered, here Postfix's smtp-sink.
#[test]
fn delivered_rows_say_success_and_list_the_receivers_extensions() {
    let sink = SmtpSink::start("127.0.0.1", free_port("127.0.0.1"), &[], false);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            sink.addr.port()
        ),
        Some(1),
    );
    swaks_send(&relay, "r@sink.test");
    let d = relay.wait_rows("d", 1, Duration::from_secs(10));
    assert_eq!((d[0]["dsnStatus"].as_str(), d[0]["bounceCat"].as_str()), ("2.0.0 (success)", "success"));
    assert_eq!(d[0]["dlvEsmtpAvailable"], "PIPELINING,8BITMIME,AUTH,XCLIENT,XFORWARD,ENHANCEDSTATUSCODES,DSN");
    let text: String = relay.acct_files().iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    assert!(text.contains(",\"PIPELINING,8BITMIME,AUTH,XCLIENT,XFORWARD,ENHANCEDSTATUSCODES,DSN\","), "{text}");
}
