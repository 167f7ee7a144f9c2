//! Relaying through a provider that wants a login, as PowerMTA does it (`auth-username`,
//! `auth-password`, `use-unencrypted-plain-auth` in `<domain>`): an aiosmtpd receiver that
//! requires AUTH takes the mail for each mechanism PowerMTA has (PLAIN, LOGIN, CRAM-MD5), PLAIN
//! inside STARTTLS without `use-unencrypted-plain-auth`; a wrong password defers (never
//! bounces); the credentials never reach the session log.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn each_mechanism_logs_in_to_a_receiver_that_requires_it() {
    let dir = TempDir::new("smarthost");
    let (cert, key) = self_signed(dir.path(), "smarthost.test");
    let auth = ["--auth", "relayuser", "pa55word"];
    let plain = PyReceiver::start_with(&[&auth[..], &["--auth-only", "PLAIN"]].concat());
    let login = PyReceiver::start_with(&[&auth[..], &["--auth-only", "LOGIN"]].concat());
    let cram = PyReceiver::start_with(&[&auth[..], &["--auth-only", "CRAM-MD5"]].concat());
    let tls = PyReceiver::start_with(&[&auth[..], &["--auth-only", "PLAIN", "--tls", &cert, &key]].concat());
    let wrong = PyReceiver::start_with(&[&auth[..], &["--auth-only", "PLAIN"]].concat());
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n log-commands yes\n auth-username relayuser\n auth-password pa55word\n</domain>\n\
             <domain plain.test>\n smtp-hosts [127.0.0.1]:{}\n use-unencrypted-plain-auth yes\n</domain>\n\
             <domain login.test>\n smtp-hosts [127.0.0.1]:{}\n use-unencrypted-plain-auth yes\n</domain>\n\
             <domain cram.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n\
             <domain tls.test>\n smtp-hosts [127.0.0.1]:{}\n use-starttls yes\n</domain>\n\
             <domain wrong.test>\n smtp-hosts [127.0.0.1]:{}\n use-unencrypted-plain-auth yes\n auth-password \"not-it\"\n</domain>\n",
            plain.addr.port(),
            login.addr.port(),
            cram.addr.port(),
            tls.addr.port(),
            wrong.addr.port()
        ),
        None,
    );
    for domain in ["plain.test", "login.test", "cram.test", "tls.test", "wrong.test"] {
        let rcpt = format!("user@{domain}");
        let msg = format!("From: s@src.test\r\nTo: {rcpt}\r\nSubject: via a smarthost\r\n\r\nbody\r\n");
        assert_eq!(smtplib_send(&relay, "127.0.0.1", "s@src.test", &[&rcpt], msg.as_bytes()), "sent");
    }
    let rows = relay.wait_rows("d", 4, Duration::from_secs(60));
    for (receiver, domain) in [(&plain, "plain.test"), (&login, "login.test"), (&cram, "cram.test"), (&tls, "tls.test")]
    {
        let files = receiver.files();
        assert_eq!(files.len(), 1, "{domain}: {}", relay.log());
        let env = std::fs::read_to_string(files[0].with_extension("env")).unwrap();
        assert_eq!(env.lines().nth(4), Some("relayuser"), "{domain} logged in: {env}");
        assert!(rows.iter().any(|r| r["rcpt"] == format!("user@{domain}")), "{domain}: {rows:?}");
    }
    let tls_row = rows.iter().find(|r| r["rcpt"] == "user@tls.test").unwrap();
    assert!(tls_row["dlvTlsProtocol"].starts_with("TLS"), "PLAIN went inside TLS: {tls_row:?}");
    // The wrong password: deferred with the receiver's words, not bounced, nothing delivered.
    let deferred = relay.wait_rows("t", 1, Duration::from_secs(30));
    let t = deferred.iter().find(|r| r["rcpt"] == "user@wrong.test").expect("a t row for the wrong password");
    assert!(t["dsnDiag"].contains("refused our AUTH") && t["dsnDiag"].contains("535"), "{t:?}");
    assert!(relay.rows_of("b").is_empty(), "a refused login bounces nothing");
    assert!(wrong.files().is_empty());
    // log-commands shows the AUTH step, never the credentials (base64 of them included).
    let log = relay.log();
    assert!(log.contains("> AUTH LOGIN") && log.contains("> (credentials, not logged)"), "{}", tail(&log, 40));
    for secret in ["pa55word", "cGE1NXdvcmQ=", "AHJlbGF5dXNlcgBwYTU1d29yZA==", "not-it"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}
