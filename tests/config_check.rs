//! Configuration as an operator meets it: the sample PowerMTA config parses (unimplemented
//! directives reported with file:line, never silently ignored), mistakes fail with
//! file:line and a hint, and `sluice run` without -c serves the embedded default.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample-powermta.conf")
}

/// The sample's `domain-key` names /etc/sluice/dkim/example.com.pem, which this machine does
/// not have: check-config says so at its line. With a real key in its place (what an
/// operator does), the sample is accepted.
#[test]
fn sample_powermta_config_parses_and_reports_what_is_not_supported_yet() {
    let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(sample()));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with(&format!("{}:21: cannot read DKIM key /etc/sluice/dkim/example.com.pem", sample().display())),
        "{out}"
    );
    let dir = TempDir::new("sample");
    let (key, _) = dkim_keypair(dir.path(), "example", "rsa-pkcs8");
    // The sample's suppression files, as an operator would have them.
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, "someone@example.com\n").unwrap();
    let hashed = dir.path().join("sha256.txt");
    std::fs::write(&hashed, sluice_engine::suppress::address_hash("someone@example.com", None) + "\n").unwrap();
    let text = std::fs::read_to_string(sample())
        .unwrap()
        .replace("/etc/sluice/dkim/example.com.pem", key.to_str().unwrap())
        .replace("/etc/sluice/suppress/plain.txt", plain.to_str().unwrap())
        .replace("/etc/sluice/suppress/sha256.txt", hashed.to_str().unwrap());
    let conf = dir.path().join("sample-powermta.conf");
    std::fs::write(&conf, text).unwrap();
    let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(&conf));
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().last(), Some("ok"));
    assert!(!out.contains("`domain-key` is not supported"), "DKIM signing is read now: {out}");
    assert!(
        out.contains(
            "sample-powermta.conf:13: `min-free-space` is a PowerMTA directive sluice does not implement; ignored (changes nothing a receiver sees: sluice answers 452 4.3.1 when the spool's disk is full (never 250 for bytes not on disk))"
        ),
        "{out}"
    );
    assert!(!out.contains("http-"), "the management API is read now: {out}");
    assert!(
        !out.contains("`feedback-loop-processor` is not supported")
            && !out.contains("`bounce-processor` is not supported"),
        "feedback loops and bounce processing are read now: {out}"
    );
    assert!(!out.contains("`smtp-pattern-list` is not supported"), "pattern lists are read now: {out}");
    // Read now: source-IP limits, per-domain rates.
    assert!(
        !out.contains("`source-ip-max-msg-rate` is not supported") && !out.contains("`max-msg-rate` is not supported"),
        "{out}"
    );
    // Virtual MTAs and pools are read now: no warning for them.
    assert!(
        !out.contains("`virtual-mta` is not supported") && !out.contains("`virtual-mta-pool` is not supported"),
        "{out}"
    );
    let mut lines: Vec<&str> = out.lines().collect();
    let before = lines.len();
    lines.dedup();
    assert_eq!(before, lines.len(), "each warning once");
}

#[test]
fn errors_name_file_line_and_a_hint() {
    let dir = TempDir::new("cfg");
    let cases = [
        ("smtp-listener 127.0.0.1:2525\n<domain *>\n  max-smtp-outt 5\n</domain>\n", "bad.conf:3: unknown directive `max-smtp-outt` in <domain> (hint: did you mean `max-smtp-out`?)"),
        ("smtp-listner 127.0.0.1:2525\n", "bad.conf:1: unknown directive `smtp-listner` in the global section (hint: did you mean `smtp-listener`?)"),
        ("smtp-listener 127.0.0.1:2525\n<domain x.test>\n  retry-after 10m,soon\n</domain>\n", "bad.conf:3: `soon` is not a duration; write e.g. 30s, 10m, 4h, 4d12h"),
        ("smtp-listener 127.0.0.1:2525\n<source 10.0.0.0/8>\n  always-allow-relaying maybe\n</source>\n", "bad.conf:3: `maybe` is not a boolean; use yes or no"),
        ("smtp-listener 127.0.0.1:2525\n<domain x.test>\n", "bad.conf:2: `<domain>` is never closed (hint: add `</domain>`)"),
        ("smtp-listener 127.0.0.1:2525\n<domain $nope>\n</domain>\n", "bad.conf:2: domain macro `$nope` is not defined (hint: define it above with `domain-macro NAME a.com,b.com`)"),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("bad.conf");
        std::fs::write(&path, text).unwrap();
        let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(&path));
        assert_eq!(code, 2, "{out}");
        let shown = out.trim().replace(&format!("{}/", dir.path().display()), "");
        assert_eq!(shown, format!("{expected}\n1 error, 0 warnings"));
        // The same error stops `sluice run` before it binds anything.
        let (code, out) = run(Command::new(BIN).arg("run").arg("-c").arg(&path));
        assert_eq!(code, 2);
        assert!(out.contains(expected.split(": ").nth(1).unwrap()), "{out}");
    }
}

#[test]
fn include_and_domain_macro() {
    let dir = TempDir::new("cfg");
    std::fs::write(
        dir.path().join("domains.conf"),
        "domain-macro big a.test,b.test\n<domain $big>\n max-smtp-out 3\n</domain>\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("main.conf"), "smtp-listener 127.0.0.1:2525\ninclude domains.conf\n").unwrap();
    let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(dir.path().join("main.conf")));
    assert_eq!((code, out.trim()), (0, "0 errors, 0 warnings\nok"));
    std::fs::write(dir.path().join("main.conf"), "smtp-listener 127.0.0.1:2525\ninclude missing.conf\n").unwrap();
    let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(dir.path().join("main.conf")));
    assert_eq!(code, 2);
    assert!(out.contains("main.conf:2: cannot include `missing.conf`"), "{out}");
}

#[test]
fn run_without_config_serves_the_embedded_default() {
    let dir = TempDir::new("default");
    let mut child =
        Command::new(BIN).arg("run").current_dir(dir.path()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let addr = "127.0.0.1:2525".parse().unwrap();
    wait_port(addr, Duration::from_secs(20));
    let (mut t, greeting) = Talk::connect(addr);
    assert!(greeting.starts_with("220 localhost ESMTP sluice"), "{greeting}");
    // Relays for 127.0.0.1 (the default's <source 127.0.0.1>).
    assert!(t.cmd("EHLO me.test").starts_with("250"));
    assert!(t.cmd("MAIL FROM:<a@src.test>").starts_with("250"));
    assert!(t.cmd("RCPT TO:<b@elsewhere.test>").starts_with("250"));
    t.cmd("QUIT");
    assert!(dir.path().join("spool").is_dir(), "spool in ./spool");
    assert_eq!(acct_files_of(dir.path(), "acct").len(), 1, "accounting in ./acct-YYYY-MM-DD-0000.csv");
    // SAFETY: signalling our own child.
    unsafe { kill(child.id() as i32, 15) };
    assert!(child.wait().unwrap().success());
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn a_second_instance_on_the_same_port_is_refused() {
    let dir = TempDir::new("twice");
    let port = free_port("127.0.0.1");
    let conf = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                "smtp-listener 127.0.0.1:{port}\nspool {}\n",
                dir.path().join(name).with_extension("spool").display()
            ),
        )
        .unwrap();
        p
    };
    let (a, b) = (conf("a.conf"), conf("b.conf"));
    let mut first = Command::new(BIN).arg("run").arg("-c").arg(&a).stderr(std::process::Stdio::null()).spawn().unwrap();
    wait_port(format!("127.0.0.1:{port}").parse().unwrap(), Duration::from_secs(20));
    let (code, out) = run(Command::new(BIN).arg("run").arg("-c").arg(&b));
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(code, 1);
    assert!(out.contains(&format!("cannot listen on 127.0.0.1:{port}: Address already in use")), "{out}");
}

/// check-config reports every problem in the file, errors and warnings, each at its line,
/// then the count; warnings alone do not fail it.
#[test]
fn every_problem_is_reported_with_a_count() {
    let dir = TempDir::new("cfg");
    let path = dir.path().join("many.conf");
    let text = "smtp-listener 127.0.0.1:2525\n\
                run-as-root no\n\
                smtp-listner 127.0.0.1:2526\n\
                <domain *>   # every domain\n\
                \x20 max-smtp-out lots\n\
                \x20 pix-bug-workaround yes\n\
                \x20 retry-aftr 10m\n\
                </domain>\n\
                <source 0/0>\n\
                \x20 max-smtp-out 5\n\
                </source>\n";
    std::fs::write(&path, text).unwrap();
    let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(&path));
    assert_eq!(code, 2, "{out}");
    let shown = out.replace(&format!("{}/", dir.path().display()), "");
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(
        lines,
        [
            "many.conf:3: unknown directive `smtp-listner` in the global section (hint: did you mean `smtp-listener`?)",
            "many.conf:5: `lots` is not a whole number",
            "many.conf:7: unknown directive `retry-aftr` in <domain> (hint: did you mean `retry-after`?)",
            "warning: many.conf:2: `run-as-root` is a PowerMTA directive sluice does not implement; ignored (changes nothing a receiver sees: sluice runs as the user that starts it)",
            "warning: many.conf:6: `pix-bug-workaround` is a PowerMTA directive sluice does not implement; ignored (changes nothing a receiver sees: Cisco PIX workaround; modern receivers do not need it)",
            "warning: many.conf:10: `max-smtp-out` does not belong in <source>: it goes in <domain>, <virtual-mta>, <virtual-mta-pool>; ignored",
            "3 errors, 3 warnings",
        ]
    );
    // The errors fixed, the warnings remain: it passes.
    let fixed = text.replace("smtp-listner", "smtp-listener").replace("lots", "5").replace("retry-aftr", "retry-after");
    std::fs::write(&path, fixed).unwrap();
    let (code, out) = run(Command::new(BIN).arg("check-config").arg("-c").arg(&path));
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("0 errors, 3 warnings\nok\n"), "{out}");
}
