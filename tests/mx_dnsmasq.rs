//! Next hops from DNS (RFC 5321 §5.1) against a real dnsmasq on loopback: MX hosts tried in
//! preference order (a dead first choice falls through to the next), the implicit MX (A
//! record) when there is no MX unless `bounce-upon-no-mx` says to bounce, RFC 7505 null MX
//! and NXDOMAIN bounced as bad-domain.
//! Delivery goes to port 25 on 127.0.x.y, so this test runs as root (as CI does).

mod common;
use common::*;
use std::time::Duration;

fn dnsmasq(port: u16, net: u8) -> Dnsmasq {
    let ip = |host: u8| format!("127.0.{net}.{host}");
    Dnsmasq::start(
        port,
        &[
            // mx.test: preference 10 is dead, preference 20 answers.
            "--mx-host=mx.test,dead.mx.test,10".into(),
            "--mx-host=mx.test,live.mx.test,20".into(),
            format!("--host-record=dead.mx.test,{}", ip(6)),
            format!("--host-record=live.mx.test,{}", ip(5)),
            // amx.test: no MX, only an address: the implicit MX.
            format!("--host-record=amx.test,{}", ip(7)),
            // nomx.test and aged.test: no MX either, and `bounce-upon-no-mx` (at once; for
            // mail queued 3 s) says not to use the address (aged.test's is dead).
            format!("--host-record=nomx.test,{}", ip(7)),
            format!("--host-record=aged.test,{}", ip(8)),
            // nullmx.test: MX 0 "." (RFC 7505).
            "--dns-rr=nullmx.test,15,000000".into(),
            "--address=/nxdomain.test/".into(),
        ],
    )
}

fn scenario(shards: Option<u32>, net: u8) {
    require("swaks");
    require_root("this test binds port 25 on loopback");
    let dns_port = free_port("127.0.0.1");
    let _dns = dnsmasq(dns_port, net);
    let live = SmtpSink::start(&format!("127.0.{net}.5"), 25, &[], true);
    let implicit = SmtpSink::start(&format!("127.0.{net}.7"), 25, &[], true);
    let relay = Relay::start(
        &format!("dns-server 127.0.0.1:{dns_port}\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n retry-after 1s\n</domain>\n\
             <domain nomx.test>\n bounce-upon-no-mx yes\n</domain>\n<domain aged.test>\n bounce-upon-no-mx 3s\n</domain>\n"),
        shards,
    );
    for rcpt in ["a@mx.test", "b@amx.test", "c@nullmx.test", "d@nxdomain.test", "e@nomx.test", "f@aged.test"] {
        swaks_send(&relay, rcpt);
    }
    let row = |kind: &str, rcpt: &str| relay.rows_of(kind).into_iter().find(|r| r["rcpt"] == rcpt);
    let d = wait_for("delivery via the second MX", Duration::from_secs(20), || row("d", "a@mx.test"));
    assert_eq!(d["dlvDestinationIp"], format!("127.0.{net}.5"));
    assert_eq!(d["dsnMta"], format!("live.mx.test (127.0.{net}.5)"));
    let d = wait_for("delivery via the implicit MX", Duration::from_secs(20), || row("d", "b@amx.test"));
    assert_eq!(d["dlvDestinationIp"], format!("127.0.{net}.7"));
    let b = wait_for("null MX bounce", Duration::from_secs(20), || row("b", "c@nullmx.test"));
    assert_eq!(
        (b["dsnStatus"].as_str(), b["bounceCat"].as_str()),
        ("5.1.10 (recipient address has null MX)", "bad-domain"),
        "{b:?}"
    );
    let b = wait_for("NXDOMAIN bounce", Duration::from_secs(20), || row("b", "d@nxdomain.test"));
    assert_eq!(
        (b["dsnStatus"].as_str(), b["bounceCat"].as_str()),
        ("5.1.2 (bad destination system: no such domain)", "bad-domain"),
        "{b:?}"
    );
    let b = wait_for("bounce-upon-no-mx yes", Duration::from_secs(20), || row("b", "e@nomx.test"));
    assert!(b["dsnDiag"].contains("no MX record (bounce-upon-no-mx)"), "{b:?}");
    assert!(b["dsnStatus"].starts_with("5.1.2"), "{b:?}");
    // Deferred at the dead address while young, bounced once queued 3 s.
    let t = wait_for("aged.test deferred first", Duration::from_secs(20), || row("t", "f@aged.test"));
    assert!(t["dsnDiag"].contains("4.4.1"), "{t:?}");
    let b = wait_for("aged.test bounced", Duration::from_secs(20), || row("b", "f@aged.test"));
    assert!(b["dsnDiag"].contains("no MX record, and queued over 3s"), "{b:?}");
    assert_eq!(live.messages().len(), 1);
    assert_eq!(implicit.messages().len(), 1, "nomx.test's address was not used");
}

#[test]
fn mx_resolution_one_shard() {
    scenario(Some(1), 31);
}

#[test]
fn mx_resolution_default_shards() {
    scenario(None, 32);
}
