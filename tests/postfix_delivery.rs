//! Delivery into a real Postfix smtpd (a private instance delivering to a maildir, offering
//! STARTTLS with a self-signed certificate): sluice delivers over TLS (opportunistic, the
//! default), the stored message has the client's bytes, dot-stuffing undone exactly once, and
//! sluice's Received header below Postfix's, which names the TLS protocol and cipher.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Matches `alternate_config_directories` written by scripts/install-test-deps.sh.
const POSTFIX_DIR: &str = "/tmp/sluice-postfix";

struct Postfix {
    dir: PathBuf,
}

impl Postfix {
    fn start(port: u16) -> Postfix {
        require("postfix");
        let dir = PathBuf::from(POSTFIX_DIR);
        let etc = dir.join("etc");
        let _ = Command::new("postfix").arg("-c").arg(&etc).arg("stop").output();
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["etc", "queue", "data", "mail"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let d = dir.display();
        let main_cf = format!(
            "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\nmail_owner = postfix\n\
             setgid_group = postdrop\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmyhostname = pf.test\n\
             mydestination =\nmynetworks = 127.0.0.0/8\nvirtual_mailbox_domains = pf.test\nvirtual_mailbox_base = {d}/mail\n\
             virtual_mailbox_maps = static:box/\nvirtual_uid_maps = static:65534\nvirtual_gid_maps = static:65534\n\
             alias_maps =\nalias_database =\nmaillog_file_prefixes = {d}\nmaillog_file = {d}/maillog\nsmtputf8_enable = no\n\
             smtpd_tls_cert_file = {d}/etc/cert.pem\nsmtpd_tls_key_file = {d}/etc/key.pem\n\
             smtpd_tls_security_level = may\nsmtpd_tls_received_header = yes\n"
        );
        let (code, out) = run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pf.test", "-keyout"])
            .arg(etc.join("key.pem"))
            .arg("-out")
            .arg(etc.join("cert.pem")));
        assert_eq!(code, 0, "{out}");
        std::fs::write(etc.join("main.cf"), main_cf).unwrap();
        std::fs::copy("/etc/postfix/master.cf", etc.join("master.cf")).expect("Postfix's master.cf");
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("chown").arg("postfix").arg(dir.join("data")));
        ok(Command::new("chown").arg("65534").arg(dir.join("mail")));
        ok(Command::new("postconf").arg("-c").arg(&etc).args(["-F", "*/*/chroot = n"]));
        ok(Command::new("postconf").arg("-c").arg(&etc).args(["-M#", "smtp/inet"]));
        ok(Command::new("postconf")
            .arg("-c")
            .arg(&etc)
            .arg("-Me")
            .arg(format!("127.0.0.1:{port}/inet = 127.0.0.1:{port} inet n - n - - smtpd")));
        let (code, out) = run(Command::new("postfix").arg("-c").arg(&etc).arg("start"));
        assert_eq!(
            code,
            0,
            "postfix start failed: {out}\n{}",
            std::fs::read_to_string(dir.join("maillog")).unwrap_or_default()
        );
        wait_port(format!("127.0.0.1:{port}").parse().unwrap(), Duration::from_secs(20));
        Postfix { dir }
    }

    fn maildir_messages(&self) -> Vec<String> {
        let new = self.dir.join("mail/box/new");
        std::fs::read_dir(&new)
            .into_iter()
            .flatten()
            .flatten()
            .map(|f| std::fs::read_to_string(f.path()).unwrap())
            .collect()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix").arg("-c").arg(Path::new(&self.dir).join("etc")).arg("stop").output();
    }
}

#[test]
fn delivers_exact_bytes_into_postfix() {
    require("python3");
    let port = free_port("127.0.0.1");
    let postfix = Postfix::start(port);
    // Both shard modes deliver into the same Postfix, one after the other, with CHUNKING as
    // PowerMTA does by default (the message goes in one BDAT, unstuffed); then once more with
    // `ignore-chunking yes` (DATA, dot-stuffed).
    let modes = [
        (SHARD_MODES[0], " log-commands yes\n"),
        (SHARD_MODES[1], " log-commands yes\n"),
        (Some(1), " ignore-chunking yes\n log-commands yes\n"),
    ];
    for (i, (shards, extra)) in modes.into_iter().enumerate() {
        let relay = Relay::start(&format!("<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain pf.test>\n smtp-hosts [127.0.0.1]:{port}\n{extra}</domain>\n"), shards);
        let body = format!(
            "Subject: exact bytes {i}\r\nFrom: s@src.test\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-Id: <m{i}@src.test>\r\nX-Mode: {i}\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n \r\ntabs\tand trailing space \r\n8bit: caf\u{e9}\r\nlast line\r\n"
        );
        // smtplib dot-stuffs on the way in; Postfix must see the original lines.
        assert_eq!(smtplib_send(&relay, "127.0.0.1", "s@src.test", &["u@pf.test"], body.as_bytes()), "sent");
        let d = relay.wait_rows("d", 1, Duration::from_secs(30));
        assert_eq!(d[0]["rcpt"], "u@pf.test");
        // After BDAT Postfix says "Ok: N bytes queued as ...".
        assert!(
            d[0]["dsnDiag"].starts_with("smtp;250 2.0.0 Ok: ") && d[0]["dsnDiag"].contains("queued as"),
            "{:?}",
            d[0]
        );
        let stored = wait_for("the message in Postfix's maildir", Duration::from_secs(20), || {
            postfix.maildir_messages().into_iter().find(|m| m.contains(&format!("X-Mode: {i}")))
        });
        // Maildir stores LF line ends.
        let expected_tail = body.replace("\r\n", "\n");
        let headers_end = expected_tail.find("Subject:").unwrap();
        assert!(stored.ends_with(&expected_tail[headers_end..]), "stored message differs:\n{stored}");
        let postfix_received = stored.find("by pf.test (Postfix)").expect("Postfix's Received");
        let sluice_received = stored.find("by relay.test (sluice)").expect("sluice's Received");
        assert!(postfix_received < sluice_received && sluice_received < stored.find("Subject:").unwrap());
        assert!(stored.contains("Received: from relay.test (localhost [127.0.0.1])"), "{stored}");
        // Over STARTTLS: Postfix says so, and so does the accounting record.
        assert!(stored.contains("(using TLSv1.3 with cipher "), "{stored}");
        assert_eq!(d[0]["dlvTlsProtocol"], "TLSv1.3", "{:?}", d[0]);
        assert!(d[0]["dlvTlsCipher"].starts_with("TLS13_"), "{:?}", d[0]);
        let log = relay.log();
        if extra.contains("ignore-chunking yes") {
            assert!(log.contains("> DATA") && !log.contains("> BDAT"), "{}", tail(&log, 30));
        } else {
            let bdat = log.lines().find(|l| l.contains("> BDAT ")).unwrap_or_else(|| panic!("{}", tail(&log, 30)));
            assert!(bdat.contains(" LAST"), "{bdat}");
            assert!(!log.contains("> DATA"), "{}", tail(&log, 30));
        }
    }
}
