//! SMTP AUTH in the inbound session (RFC 4954), as (input, expected reply codes) tables:
//! each mechanism's exchange, the replies for every refusal, and what AUTH changes
//! (relaying, sender restrictions, the Received header).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sluice_config::SenderRestrictions;
use sluice_engine::smtp::auth::Users;
mod common;
use sluice_engine::smtp::server::{Session, SessionPolicy};
use std::sync::Arc;

fn users() -> Arc<Users> {
    let text = "smtp-listener 127.0.0.1:25\n\
                <smtp-user alice>\n password s3cret\n</smtp-user>\n\
                <smtp-user bulk>\n password pw2\n allowed-mail-from-domain news.test\n</smtp-user>\n\
                <source {auth}>\n always-allow-relaying yes\n</source>\n";
    Arc::new(Users::from_config(&sluice_config::load("t.conf", text, &mut |_| Err("no".into())).unwrap(), 7))
}

/// A source with `allow-unencrypted-plain-auth yes`, as the sessions below run without TLS.
fn policy() -> SessionPolicy {
    SessionPolicy {
        host_name: "mx.test".into(),
        auth: Some(users()),
        add_received_header: false,
        plain_auth_in_clear: true,
        ..Default::default()
    }
}

/// Runs the input through a session; returns every reply line and the stored messages.
fn run(policy: SessionPolicy, input: &str) -> (Vec<String>, Vec<Vec<u8>>) {
    common::drive(policy, input.as_bytes(), false)
}

use common::codes;

fn b64(s: &str) -> String {
    B64.encode(s)
}

const TXN: &str = "MAIL FROM:<a@src.test>\r\nRCPT TO:<x@far.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n";

#[test]
fn ehlo_advertises_auth_only_where_it_may_be_used_rfc4954_3() {
    let (lines, _) = run(policy(), "EHLO c\r\n");
    assert!(lines.contains(&"250-AUTH PLAIN LOGIN CRAM-MD5".to_string()), "{lines:?}");
    let (lines, _) = run(SessionPolicy { auth: None, ..policy() }, "EHLO c\r\n");
    assert!(!lines.iter().any(|l| l.contains("AUTH")), "{lines:?}");
    // require-starttls-before-auth on a plain session: not offered, and refused (RFC 4954 §6).
    let (lines, _) = run(SessionPolicy { auth_needs_tls: true, ..policy() }, "EHLO c\r\nAUTH PLAIN =\r\n");
    assert!(!lines.iter().any(|l| l.contains("AUTH")), "{lines:?}");
    assert_eq!(codes(&lines), vec![220, 250, 538]);
    // PowerMTA's default, `allow-unencrypted-plain-auth no`: outside TLS only CRAM-MD5 is
    // offered, and PLAIN or LOGIN get 538 (the password would cross in the clear).
    let clear = SessionPolicy { plain_auth_in_clear: false, ..policy() };
    let creds = b64("\0alice\0s3cret");
    let input =
        format!("EHLO c\r\nAUTH PLAIN {creds}\r\nAUTH LOGIN\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<x@far.test>\r\n");
    let (lines, _) = run(clear, &input);
    assert!(lines.contains(&"250-AUTH CRAM-MD5".to_string()), "{lines:?}");
    assert_eq!(codes(&lines), vec![220, 250, 538, 538, 250, 550], "{lines:?}");
}

#[test]
fn plain_with_initial_response_and_by_continuation_rfc4616() {
    let creds = b64("\0alice\0s3cret");
    let (lines, msgs) = run(policy(), &format!("EHLO c\r\nAUTH PLAIN {creds}\r\n{TXN}QUIT\r\n"));
    assert_eq!(codes(&lines), vec![220, 250, 235, 250, 250, 354, 250, 221], "{lines:?}");
    assert_eq!(msgs.len(), 1, "authenticated: relaying allowed");
    let (lines, _) = run(policy(), &format!("EHLO c\r\nAUTH PLAIN\r\n{creds}\r\nQUIT\r\n"));
    assert_eq!(codes(&lines), vec![220, 250, 334, 235, 221]);
}

#[test]
fn login_mechanism() {
    let input = format!("EHLO c\r\nAUTH LOGIN\r\n{}\r\n{}\r\nQUIT\r\n", b64("alice"), b64("s3cret"));
    let (lines, _) = run(policy(), &input);
    assert_eq!(codes(&lines), vec![220, 250, 334, 334, 235, 221]);
    assert!(lines.contains(&"334 VXNlcm5hbWU6".to_string()) && lines.contains(&"334 UGFzc3dvcmQ6".to_string()));
}

#[test]
fn cram_md5_rfc2195() {
    let mut s = Session::new(policy(), "127.0.0.1".parse().unwrap(), 7);
    s.receive(1_000, b"EHLO c\r\nAUTH CRAM-MD5\r\n");
    s.receive(1_000, b"AUTH CRAM-MD5\r\n");
    let out = String::from_utf8(s.output().to_vec()).unwrap();
    let challenge = B64.decode(out.lines().find_map(|l| l.strip_prefix("334 ")).unwrap()).unwrap();
    let mut mac = Hmac::<md5::Md5>::new_from_slice(b"s3cret").unwrap();
    mac.update(&challenge);
    let digest: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    s.clear_output();
    s.receive(1_000, format!("{}\r\n", b64(&format!("alice {digest}"))).as_bytes());
    assert_eq!(String::from_utf8(s.output().to_vec()).unwrap(), "235 2.7.0 Authentication successful\r\n");
    assert_eq!(s.auth_user(), Some("alice"));
}

#[test]
fn refusals_rfc4954_4_and_6() {
    let cases: &[(&str, &[u16])] = &[
        // Wrong password: 535; cancelled: 501; unknown mechanism: 504; before EHLO: 503.
        ("EHLO c\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\n", &[220, 250, 535]),
        ("EHLO c\r\nAUTH LOGIN\r\n*\r\n", &[220, 250, 334, 501]),
        ("EHLO c\r\nAUTH GSSAPI\r\n", &[220, 250, 504]),
        ("AUTH PLAIN =\r\n", &[220, 503]),
        ("EHLO c\r\nAUTH PLAIN !!notbase64\r\n", &[220, 250, 501]),
        // Not during a mail transaction; not twice.
        ("EHLO c\r\nMAIL FROM:<a@b.test>\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n", &[220, 250, 250, 503]),
        ("EHLO c\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n", &[220, 250, 235, 503]),
        // Another identity than the one authenticated (proxy authorization) is refused.
        ("EHLO c\r\nAUTH PLAIN Ym9iAGFsaWNlAHMzY3JldA==\r\n", &[220, 250, 535]),
    ];
    for (input, want) in cases {
        let (lines, _) = run(policy(), input);
        assert_eq!(codes(&lines), *want, "{input:?}: {lines:?}");
    }
}

#[test]
fn failures_close_the_session_and_a_blocked_address_gets_454() {
    let bad = "AUTH PLAIN AGFsaWNlAHdyb25n\r\n";
    let (lines, _) = run(policy(), &format!("EHLO c\r\n{bad}{bad}{bad}{bad}"));
    assert_eq!(codes(&lines), vec![220, 250, 535, 535, 535, 421], "closed after auth-failures-max (3)");
    let (lines, _) =
        run(SessionPolicy { auth_blocked: true, ..policy() }, "EHLO c\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n");
    assert_eq!(codes(&lines), vec![220, 250, 454]);
}

#[test]
fn require_auth_refuses_mail_until_authenticated() {
    let p = SessionPolicy { require_auth: true, ..policy() };
    let (lines, _) = run(p.clone(), "EHLO c\r\nMAIL FROM:<a@src.test>\r\n");
    assert_eq!(codes(&lines), vec![220, 250, 530]);
    let (lines, _) = run(p, &format!("EHLO c\r\nAUTH PLAIN {}\r\nMAIL FROM:<a@src.test>\r\n", b64("\0alice\0s3cret")));
    assert_eq!(codes(&lines), vec![220, 250, 235, 250]);
}

#[test]
fn sender_restrictions_follow_the_user() {
    // bulk may only send as news.test (or below it).
    let auth = format!("EHLO c\r\nAUTH PLAIN {}\r\n", b64("\0bulk\0pw2"));
    for (from, want) in [("a@news.test", 250), ("a@mail.news.test", 250), ("a@other.test", 550), ("", 550)] {
        let (lines, _) = run(policy(), &format!("{auth}MAIL FROM:<{from}>\r\n"));
        assert_eq!(codes(&lines), vec![220, 250, 235, want], "{from}: {lines:?}");
        if want == 550 {
            assert!(lines.last().unwrap().contains("(allowed-mail-from-domain)"), "{lines:?}");
        }
    }
    // A source's own restriction applies without AUTH.
    let restricted = SessionPolicy {
        restrictions: SenderRestrictions { mail_from_domains: vec!["src.test".into()], virtual_mtas: vec![] },
        ..policy()
    };
    let (lines, _) = run(restricted, "EHLO c\r\nMAIL FROM:<a@evil.test>\r\n");
    assert_eq!(codes(&lines), vec![220, 250, 550]);
}

#[test]
fn authenticated_received_header_says_esmtpa_rfc3848() {
    let p = SessionPolicy { add_received_header: true, ..policy() };
    let (_, msgs) = run(p, &format!("EHLO c\r\nAUTH PLAIN {}\r\n{TXN}", b64("\0alice\0s3cret")));
    let text = String::from_utf8(msgs[0].clone()).unwrap();
    assert!(text.contains("(sluice) with ESMTPA id"), "{text}");
}

#[test]
fn starttls_then_auth_rfc3207() {
    let p = SessionPolicy { starttls: true, auth_needs_tls: true, add_received_header: true, ..policy() };
    let creds = b64("\0alice\0s3cret");
    let input =
        format!("EHLO a\r\nAUTH PLAIN {creds}\r\nSTARTTLS\r\nEHLO b\r\nSTARTTLS\r\nAUTH PLAIN {creds}\r\n{TXN}");
    let (lines, msgs) = run(p, &input);
    assert_eq!(codes(&lines), vec![220, 250, 538, 220, 250, 502, 235, 250, 250, 354, 250], "{lines:?}");
    // Before TLS: STARTTLS offered, AUTH not; inside TLS: the reverse.
    let ehlo: Vec<&String> = lines.iter().filter(|l| l.starts_with("250-")).collect();
    let first_end = ehlo.iter().position(|l| l.contains("Hello b")).unwrap();
    assert!(
        ehlo[..first_end].iter().any(|l| l.contains("STARTTLS"))
            && !ehlo[..first_end].iter().any(|l| l.contains("AUTH"))
    );
    assert!(
        !ehlo[first_end..].iter().any(|l| l.contains("STARTTLS"))
            && ehlo[first_end..].iter().any(|l| l.contains("AUTH"))
    );
    let text = String::from_utf8(msgs[0].clone()).unwrap();
    assert!(text.contains("with ESMTPSA id"), "{text}");
}

#[test]
fn starttls_refused_when_not_offered_or_with_arguments() {
    let (lines, _) = run(policy(), "EHLO a\r\nSTARTTLS\r\n");
    assert_eq!(codes(&lines), vec![220, 250, 502]);
    let (lines, _) = run(SessionPolicy { starttls: true, ..policy() }, "EHLO a\r\nSTARTTLS now\r\n");
    assert_eq!(codes(&lines), vec![220, 250, 501]);
}
