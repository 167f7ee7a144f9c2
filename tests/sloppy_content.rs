//! Common but sloppy content from careless templates and injectors, relayed to a byte-exact
//! receiver (aiosmtpd): LF-only line ends are normalized to CRLF (`bare-lf normalize`, the
//! default) while every smuggling form stays refused; a line over 998 octets is wrapped as
//! quoted-printable; 8-bit mail for a receiver without 8BITMIME (RFC 6152 §3) is converted to
//! quoted-printable, and Python's own MIME parser decodes each back to the original text;
//! `downgrade-8bit bounce` bounces it instead with 5.6.3.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The decoded text body of a received message, by Python's `email` package.
fn decoded_body(eml: &std::path::Path) -> String {
    let script = "import email,sys\nm=email.message_from_binary_file(open(sys.argv[1],'rb'))\n\
                  p=m if not m.is_multipart() else m.get_payload()[0]\n\
                  sys.stdout.write(p.get_payload(decode=True).decode(p.get_content_charset() or 'ascii'))";
    let out = Command::new(VENV_PYTHON).arg("-c").arg(script).arg(eml).stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().replace("\r\n", "\n")
}

fn in_data(relay: &Relay, rcpt: &str) -> Talk {
    let (mut t, _) = Talk::connect(relay.addr());
    assert!(t.cmd("EHLO sloppy.test").starts_with("250"));
    assert!(t.cmd("MAIL FROM:<s@src.test>").starts_with("250"));
    assert!(t.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(t.cmd("DATA").starts_with("354"));
    t
}

#[test]
fn sloppy_content_is_normalized_or_converted_and_decodes_to_the_original() {
    let eight = PyReceiver::start();
    let seven = PyReceiver::start_with(&["--no-8bitmime"]);
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain eight.test>\n smtp-hosts [127.0.0.1]:{e}\n</domain>\n\
             <domain seven.test>\n smtp-hosts [127.0.0.1]:{s}\n</domain>\n\
             <domain strict.test>\n smtp-hosts [127.0.0.1]:{s}\n downgrade-8bit bounce\n</domain>\n",
            e = eight.addr.port(),
            s = seven.addr.port()
        ),
        Some(1),
    );
    // 1. LF-only line ends: accepted, and delivered with CRLF.
    let mut t = in_data(&relay, "lf@eight.test");
    t.send(b"Subject: lf only\nFrom: s@src.test\n\nfirst line\n..a stuffed dot line\nlast line\r\n.\r\n");
    let reply = t.reply();
    assert!(reply.starts_with("250"), "{reply}");
    // 2. Every smuggling form is still refused (tests/protocol_abuse.rs has them all).
    for fake in ["\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r\n"] {
        t.cmd("RSET");
        assert!(t.cmd("MAIL FROM:<s@src.test>").starts_with("250"));
        assert!(t.cmd("RCPT TO:<smuggle@eight.test>").starts_with("250"));
        assert!(t.cmd("DATA").starts_with("354"));
        t.send(format!("Subject: s\r\n\r\nx{fake}MAIL FROM:<e@x.test>\r\n.\r\n").as_bytes());
        let reply = t.reply();
        assert!(reply.starts_with("550 5.6.0"), "{fake:?}: {reply}");
    }
    assert!(t.cmd("QUIT").starts_with("221"));
    // 3. A 3,000-octet line.
    let long = (0..300).map(|i| format!("w{i:04}.x")).collect::<Vec<_>>().join(" ");
    let mut t = in_data(&relay, "long@eight.test");
    t.send(format!("Subject: long\r\nFrom: s@src.test\r\n\r\n{long}\r\nend\r\n.\r\n").as_bytes());
    assert!(t.reply().starts_with("250"));
    t.cmd("QUIT");
    // 4. 8-bit text to a 7-bit receiver, and to one whose domain says bounce.
    let text = "Grüße aus Köln — ça marche très bien.\r\nZweite Zeile.\r\n";
    let eight_bit = format!(
        "Subject: 8bit\r\nFrom: s@src.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{text}"
    );
    for rcpt in ["u@seven.test", "u@strict.test", "u@eight.test"] {
        assert_eq!(smtplib_send(&relay, "127.0.0.1", "s@src.test", &[rcpt], eight_bit.as_bytes()), "sent");
    }

    relay.wait_rows("d", 4, Duration::from_secs(20));
    let bounced = relay.wait_rows("b", 1, Duration::from_secs(20));
    assert_eq!(
        (bounced[0]["rcpt"].as_str(), bounced[0]["dsnStatus"].as_str()),
        ("u@strict.test", "5.6.3 (conversion required but not supported)")
    );
    let at = |r: &PyReceiver, subject: &str| -> std::path::PathBuf {
        r.files()
            .into_iter()
            .find(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).contains(&format!("Subject: {subject}\r\n")))
            .unwrap_or_else(|| panic!("`{subject}` delivered"))
    };
    let lf = std::fs::read(at(&eight, "lf only")).unwrap();
    assert!(
        lf.ends_with(b"Subject: lf only\r\nFrom: s@src.test\r\n\r\nfirst line\r\n.a stuffed dot line\r\nlast line\r\n")
    );
    assert!(!lf.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'), "CRLF only");
    let wrapped = at(&eight, "long");
    let raw = std::fs::read(&wrapped).unwrap();
    assert!(raw.split(|b| *b == b'\n').all(|l| l.len() <= 1000), "no line over 998 octets");
    assert_eq!(decoded_body(&wrapped), format!("{long}\r\nend\r\n").replace("\r\n", "\n"));
    let converted = at(&seven, "8bit");
    let raw = std::fs::read(&converted).unwrap();
    assert!(raw.iter().all(|b| *b < 0x80), "7-bit on the wire to a receiver without 8BITMIME");
    assert!(String::from_utf8_lossy(&raw).contains("Content-Transfer-Encoding: quoted-printable\r\n"));
    assert_eq!(decoded_body(&converted), text.replace("\r\n", "\n"));
    // The receiver that offers 8BITMIME gets the bytes as they were, with BODY=8BITMIME.
    let as_is = std::fs::read(at(&eight, "8bit")).unwrap();
    assert!(as_is.ends_with(eight_bit.as_bytes()));
    let envelopes: Vec<String> = std::fs::read_dir(eight.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "env"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(envelopes.iter().any(|e| e.contains("u@eight.test") && e.contains("BODY=8BITMIME")), "{envelopes:?}");
}
