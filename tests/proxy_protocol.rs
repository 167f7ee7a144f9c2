//! Sending through a proxy host, as PowerMTA does (`smtp-proxy-source-host`, `<proxy>`,
//! `use-proxy`, `proxy-protocol`): sluice connects to Debian's haproxy, writes the PROXY
//! protocol header (v1 text or v2 binary) naming the address to send from and the receiver,
//! and haproxy opens the connection from that address. The receiver (aiosmtpd) sees the
//! proxy's client address and the proxy's EHLO name; accounting says the same; a dead proxy
//! fails over to the next one `use-proxy` lists.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Debian's haproxy as a forwarding proxy: whatever a PROXY header asks (v1 or v2), it
/// connects to the header's destination from the header's source address.
struct Haproxy {
    child: Child,
    _dir: TempDir,
}

impl Haproxy {
    fn start(port: u16) -> Haproxy {
        require("haproxy");
        let dir = TempDir::new("haproxy");
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 200\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                 frontend from_sluice\n  bind 127.0.0.1:{port} accept-proxy\n  default_backend to_receivers\n\
                 backend to_receivers\n  source 0.0.0.0 usesrc clientip\n  server dest 0.0.0.0:0\n"
            ),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        wait_port(std::net::SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(10));
        Haproxy { child, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mail_leaves_from_the_proxy_clients_address_with_v1_and_v2_and_fails_over() {
    require_root("haproxy sends from the PROXY header's address (IP_TRANSPARENT)");
    let receiver = PyReceiver::start();
    let proxy_port = free_port("127.0.0.1");
    let _haproxy = Haproxy::start(proxy_port);
    // A proxy nobody listens on: `use-proxy` goes on to the next.
    let dead = free_port("127.0.0.1");
    let relay = Relay::start(
        &format!(
            "<proxy dead-proxy>\n server 127.0.0.1:{dead}\n client 127.0.0.9 dead.test\n</proxy>\n\
             <proxy Live-Proxy>\n server localhost:{proxy_port}\n client 127.0.0.5:0 proxied-b.test\n protocol-version 2\n</proxy>\n\
             <virtual-mta v1>\n smtp-proxy-source-host 127.0.0.1 127.0.0.1:{proxy_port} 127.0.0.4 proxied-v1.test\n</virtual-mta>\n\
             <virtual-mta v2>\n smtp-proxy-source-host 127.0.0.0/8 127.0.0.1:{proxy_port} 127.0.0.3 proxied-v2.test\n proxy-protocol 2\n</virtual-mta>\n\
             <virtual-mta failover>\n smtp-source-host 127.0.0.1 pmta01.test\n use-proxy dead-proxy,live-proxy\n</virtual-mta>\n\
             <source 127.0.0.1>\n always-allow-relaying yes\n process-x-virtual-mta yes\n</source>\n\
             <domain sink.test>\n smtp-hosts [127.0.0.1]:{}\n max-msg-per-connection 1\n</domain>\n",
            receiver.addr.port()
        ),
        None,
    );
    let cases = [
        ("v1", "127.0.0.4", "proxied-v1.test"),
        ("v2", "127.0.0.3", "proxied-v2.test"),
        ("failover", "127.0.0.5", "proxied-b.test"),
    ];
    for (vmta, _, _) in cases {
        let msg = format!("From: s@src.test\r\nTo: {vmta}@sink.test\r\nX-Virtual-MTA: {vmta}\r\nSubject: {vmta}\r\n\r\nthrough a proxy\r\n");
        let reply = smtplib_send(&relay, "127.0.0.1", "s@src.test", &[&format!("{vmta}@sink.test")], msg.as_bytes());
        assert_eq!(reply, "sent", "{vmta}: {}", relay.log());
    }
    let rows = relay.wait_rows("d", 3, Duration::from_secs(60));
    let files = wait_for("3 messages at the receiver", Duration::from_secs(10), || {
        let f = receiver.files();
        (f.len() == 3).then_some(f)
    });
    for (vmta, ip, ehlo) in cases {
        let rcpt = format!("{vmta}@sink.test");
        let env = files
            .iter()
            .map(|f| std::fs::read_to_string(f.with_extension("env")).unwrap())
            .find(|e| e.lines().nth(1) == Some(rcpt.as_str()))
            .unwrap_or_else(|| panic!("{rcpt} at the receiver"));
        // The receiver's peer and the EHLO it heard: the proxy's client, not this host.
        assert_eq!(env.lines().nth(3), Some(format!("{ip} {ehlo}").as_str()), "{vmta}: {env}");
        let row = rows.iter().find(|r| r["rcpt"] == rcpt).unwrap();
        assert_eq!((row["vmta"].as_str(), row["dlvSourceIp"].as_str()), (vmta, ip), "{row:?}");
        assert_eq!(row["dlvDestinationIp"], "127.0.0.1");
    }
}
