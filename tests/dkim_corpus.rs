//! DKIM on real mail (issue 22): 345 messages nobody here wrote — CPython's email test data,
//! flufl.bounce's bounces, enmime's test mail and low-quality mail, and ham from jwz's test
//! corpus (`tests/fixtures/real-mail/SOURCES.md`) — relayed with signing on to a receiver
//! with 8BITMIME and to one without it (there 8-bit content is converted, and signed again).
//! Every message arrives, decoding to the same header values and MIME parts as the file it
//! came from; every signature verifies with two independent verifiers, Python's dkimpy and
//! Perl's Mail::DKIM, on the bytes each receiver got.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Messages sent without a signature, and why: no From address with a domain to sign for, or
/// a header section verifiers read differently (then no signature beats one that fails).
const UNSIGNED: &[(&str, &str)] = &[
    ("cpython-test_email/msg_05.txt", "From: foo (no domain)"),
    ("cpython-test_email/msg_11.txt", "no From field"),
    ("cpython-test_email/msg_18.txt", "no From field"),
    ("cpython-test_email/msg_19.txt", "no From field"),
    ("cpython-test_email/msg_35.txt", "a line of text in the header section, no blank line before the body"),
    ("cpython-test_email/msg_37.txt", "no From field"),
    ("cpython-test_email/msg_38.txt", "no From field"),
    ("cpython-test_email/msg_39.txt", "no From field"),
    ("cpython-test_email/msg_40.txt", "no From field"),
    ("cpython-test_email/msg_43.txt", "From: MAILER DAEMON <> (no address)"),
    ("enmime/low-quality-bad-header-start.raw", "the first header line starts with a space"),
    ("enmime/mail-erroneous.raw", "not a message: one line of text"),
    ("enmime/mail-qp-utf8-header-no-break.raw", "no blank line between the header section and the body"),
    ("flufl-bounce/bounce_01.txt", "From: \"Jetmail System\" <> (no address)"),
    ("flufl-bounce/simple_13.txt", "no From field"),
    ("flufl-bounce/simple_24.txt", "From: Postmaster <> (no address)"),
    ("flufl-bounce/simple_31.txt", "From: Mail Delivery System <> (no address)"),
];

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real-mail")
}

/// `FILE rest` lines → `FILE → rest`.
fn by_file(out: &str) -> BTreeMap<String, String> {
    out.lines().filter_map(|l| l.split_once(' ')).map(|(f, r)| (f.to_string(), r.to_string())).collect()
}

#[test]
fn real_messages_arrive_intact_and_their_signatures_verify_in_dkimpy_and_mail_dkim() {
    require("perl");
    let keys = TempDir::new("corpus-keys");
    let (pem, record) = dkim_keypair(keys.path(), "corpus", "rsa-pkcs1");
    let txt = keys.path().join("corpus.txt");
    std::fs::write(&txt, &record).unwrap();
    let eight = PyReceiver::start();
    let seven = PyReceiver::start_with(&["--no-8bitmime"]);
    let relay = Relay::start(
        &format!(
            "domain-key corpus,*,{}\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain eight.test>\n smtp-hosts [127.0.0.1]:{}\n dkim-sign yes\n</domain>\n\
             <domain seven.test>\n smtp-hosts [127.0.0.1]:{}\n dkim-sign yes\n</domain>\n",
            pem.display(),
            eight.addr.port(),
            seven.addr.port()
        ),
        Some(2),
    );
    let dirs: Vec<PathBuf> =
        std::fs::read_dir(corpus()).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    let (code, out) = run(Command::new(VENV_PYTHON)
        .arg(py_script("corpus_send.py"))
        .args(["127.0.0.1", &relay.port.to_string(), "r@eight.test,r@seven.test"])
        .args(&dirs));
    assert_eq!(code, 0, "{out}");
    let sent = out.lines().filter(|l| l.starts_with("sent ")).count();
    let refused: Vec<&str> = out.lines().filter(|l| l.starts_with("refused ")).collect();
    assert!(sent >= 300, "{sent} sent; refused: {refused:#?}");
    assert!(refused.is_empty(), "real mail refused: {refused:#?}");
    let mut received = Vec::new();
    for (name, r) in [("8BITMIME", &eight), ("7-bit", &seven)] {
        let files = wait_for(&format!("{sent} messages at the {name} receiver"), Duration::from_secs(180), || {
            let f = r.files();
            (f.len() >= sent).then_some(f)
        });
        assert_eq!(files.len(), sent, "{name}: each message once");
        received.extend(files);
    }
    let paths: Vec<String> = received.iter().map(|p| p.display().to_string()).collect();
    // Two independent verifiers.
    let (code, py) =
        run(Command::new(VENV_PYTHON).arg(py_script("dkim_verify_any.py")).arg("corpus").arg(&txt).args(&paths));
    assert_eq!(code, 0, "{py}");
    let pl_script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/perl/dkim_verify.pl");
    let (code, pl) = run(Command::new("perl").arg(pl_script).arg("corpus").arg(&txt).args(&paths));
    assert_eq!(code, 0, "{pl}");
    let (code, same) = run(Command::new(VENV_PYTHON).arg(py_script("corpus_compare.py")).arg(corpus()).args(&paths));
    assert_eq!(code, 0, "{same}");
    let (py, pl, same) = (by_file(&py), by_file(&pl), by_file(&same));
    let corpus_name = |path: &str| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.split("X-Corpus: ").nth(1).and_then(|r| r.lines().next()).unwrap_or("?").to_string()
    };
    let mut failures = Vec::new();
    for path in &paths {
        let name = corpus_name(path);
        let (p, l, s) = (&py[path], &pl[path], &same[path]);
        let unsigned = UNSIGNED.iter().any(|(n, _)| *n == name);
        let verified = p.ends_with(" pass") && l.contains(" pass ");
        if !(s == "same" && (verified || (unsigned && p == "none" && l == "none"))) {
            failures.push(format!("{name} ({path}): dkimpy {p}; Mail::DKIM {l}; content {s}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} deliveries:\n{}", failures.len(), paths.len(), failures.join("\n"));
}
