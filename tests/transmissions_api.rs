//! PowerMTA's HTTP Transmissions API as its Guide configures it (chapter 8.1): a
//! `<transmissions-api-listener>` with a `tls-certificate` (certificate and key in one PEM
//! file), `<transmissions-api>` with an `api-key`, `<source {transmissions-api}>` settings.
//! A client (Python's urllib over TLS, as curl --insecure) without the key gets 401; with it,
//! the message (and each recipient's substitutions) is fsynced before the 200 and delivered,
//! the named source's `process-x-virtual-mta` choosing the VMTA.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const KEY: &str = "0f5019df4641c37a65212564980f5c320d9a5d84";

/// POSTs `body` over HTTPS (the certificate not checked, as `curl --insecure`); returns the
/// status and the answer.
fn post(port: u16, key: Option<&str>, body: &str) -> (u16, String) {
    let auth = key.map(|k| format!("req.add_header('Authorization', '{k}')")).unwrap_or_default();
    let script = format!(
        "import ssl, sys, urllib.request, urllib.error\n\
         ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
         req = urllib.request.Request('https://127.0.0.1:{port}/api/v1/transmissions', data=sys.stdin.buffer.read(), method='POST')\n\
         req.add_header('Content-Type', 'application/json')\n{auth}\n\
         try:\n    r = urllib.request.urlopen(req, context=ctx, timeout=60)\n    print(r.status, r.read().decode())\n\
         except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n"
    );
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (code, rest) = out.split_once(' ').unwrap_or((&out, ""));
    (code.parse().unwrap_or(0), rest.to_string())
}

#[test]
fn the_guides_transmissions_api_setup_takes_mail_over_https() {
    let dir = TempDir::new("tapi");
    let (cert, key) = self_signed(dir.path(), "api.test");
    // One file, as `pmtakeytool newcert` writes it.
    let pem = dir.path().join("api.pem");
    let both = [std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap()].concat();
    std::fs::write(&pem, both).unwrap();
    let receiver = PyReceiver::start();
    let port = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "<transmissions-api-listener 127.0.0.1:{port}>\n tls-certificate {}\n tls-allow-tlsv1 no\n</transmissions-api-listener>\n\
             <transmissions-api>\n log-requests yes\n api-key {KEY}\n log-data no\n</transmissions-api>\n\
             <source {{transmissions-api}}>\n process-x-virtual-mta yes\n</source>\n\
             <virtual-mta api-vmta>\n smtp-source-host 127.0.0.3 api.test\n</virtual-mta>\n\
             <domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            pem.display(),
            receiver.addr.port()
        ),
        None,
    );
    wait_port(std::net::SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(10));
    let body = serde_json::json!({
        "return_path": "xyz@bounce.test",
        "campaign_id": "xmas2026",
        "recipients": [{"address": {"email": "fred@flintstone.test"}, "substitution_data": {"first": "Fred"}},
                       {"address": {"email": "wilma@flintstone.test"}, "substitution_data": {"first": "Wilma"}}],
        "content": {"email_rfc822": "From: xyz@src.test\nX-Virtual-MTA: api-vmta\nSubject: Hi {{first}}\n\nHello {{first}}\n"},
    })
    .to_string();
    let (code, answer) = post(port, None, &body);
    assert_eq!(code, 401, "{answer}");
    let (code, answer) = post(port, Some("not-the-key-not-the-key-not-the-key"), &body);
    assert_eq!(code, 401, "{answer}");
    let (code, answer) = post(port, Some(KEY), &body);
    assert_eq!(code, 200, "{answer}\n{}", relay.log());
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["results"]["total_accepted_recipients"], 2, "{answer}");
    // The 200 came after the fsync: the `r` rows are there.
    let received = relay.wait_rows("r", 2, Duration::from_secs(5));
    assert!(received.iter().all(|r| r["jobId"] == "xmas2026"), "{received:?}");
    let delivered = relay.wait_rows("d", 2, Duration::from_secs(30));
    for row in &delivered {
        // `<source {transmissions-api}>`'s process-x-virtual-mta chose the VMTA.
        assert_eq!((row["vmta"].as_str(), row["dlvSourceIp"].as_str()), ("api-vmta", "127.0.0.3"), "{row:?}");
    }
    let files = wait_for("2 messages", Duration::from_secs(10), || {
        let f = receiver.files();
        (f.len() == 2).then_some(f)
    });
    for name in ["Fred", "Wilma"] {
        let found = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .find(|m| m.contains(&format!("Subject: Hi {name}\r\n")));
        let m = found.unwrap_or_else(|| panic!("{name}'s message"));
        assert!(m.contains(&format!("Hello {name}\r\n")) && !m.to_ascii_lowercase().contains("x-virtual-mta"), "{m}");
    }
}

/// The Guide's rules: the listener needs its certificate, the API a key.
#[test]
fn a_listener_without_certificate_or_key_is_a_config_error() {
    let dir = TempDir::new("tapi-conf");
    let check = |body: &str| {
        let path = dir.path().join("t.conf");
        std::fs::write(&path, format!("smtp-listener 127.0.0.1:2525\n{body}")).unwrap();
        sluice_cli(&path, &["check-config"])
    };
    let (code, out) = check("<transmissions-api-listener 127.0.0.1:8585>\n</transmissions-api-listener>\n");
    assert_ne!(code, 0);
    assert!(out.contains("t.conf:2: <transmissions-api-listener> needs a `tls-certificate`"), "{out}");
    let (code, out) =
        check("<transmissions-api-listener 127.0.0.1:8585>\n tls-certificate /x.pem\n</transmissions-api-listener>\n");
    assert_ne!(code, 0);
    assert!(out.contains("t.conf:3: a <transmissions-api-listener> needs an `api-key`"), "{out}");
    let (code, out) = check("<transmissions-api>\n api-key short\n</transmissions-api>\n");
    assert_ne!(code, 0);
    assert!(out.contains("t.conf:3: an `api-key` is 32 to 128 characters"), "{out}");
}
