//! A misbehaving DNS server (issue 22): SERVFAIL, REFUSED and unanswered queries defer mail
//! (`4.4.3` with the resolver's error) and never bounce it, nor fall back to the domain's own
//! address; only NXDOMAIN, or no record of the type asked (NODATA), mean "none" (RFC 5321
//! §5.1): NXDOMAIN bounces `5.1.2`, a null MX `5.1.10` (RFC 7505), an MX host without any
//! address `5.4.4` naming the host, NODATA for MX takes the implicit MX. When the server
//! answers again, the deferred mail is delivered. The server is a scripted one in this test
//! (hickory's message codec on UDP); delivery goes to port 25 on 127.0.9.x, so this runs as
//! root (as CI does).

mod common;
use common::*;
use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, MX};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the scripted server answers to a (name, type) question.
#[derive(Clone, Debug)]
enum Answer {
    Code(ResponseCode),
    /// No answer at all: the resolver times out.
    Drop,
    Mx(Vec<(u16, &'static str)>),
    A(Ipv4Addr),
}

type Script = Arc<Mutex<HashMap<(String, RecordType), Answer>>>;

/// A DNS server on 127.0.0.1:`port` answering from `script`; anything not in it is NXDOMAIN
/// for its name's A question and NODATA otherwise (as for a name that exists).
struct ScriptedDns {
    stop: Arc<AtomicBool>,
}

impl ScriptedDns {
    fn start(port: u16, script: Script) -> ScriptedDns {
        let socket = UdpSocket::bind(("127.0.0.1", port)).expect("bind the DNS port");
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                if let Some(reply) = answer(&query, &script.lock().unwrap()) {
                    let _ = socket.send_to(&reply.to_vec().unwrap(), from);
                }
            }
        });
        ScriptedDns { stop }
    }
}

impl Drop for ScriptedDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(query: &Message, script: &HashMap<(String, RecordType), Answer>) -> Option<Message> {
    let q = query.queries().first()?;
    let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let mut reply = Message::new();
    reply.set_id(query.id()).set_message_type(MessageType::Response).set_recursion_available(true);
    reply.set_recursion_desired(query.recursion_desired()).add_query(q.clone());
    let known = script.keys().any(|(n, _)| *n == name);
    let a = script.get(&(name.clone(), q.query_type())).cloned();
    match a {
        Some(Answer::Drop) => return None,
        Some(Answer::Code(code)) => {
            reply.set_response_code(code);
        }
        Some(Answer::Mx(list)) => {
            for (pref, host) in list {
                let rdata = RData::MX(MX::new(pref, Name::from_ascii(host).unwrap()));
                reply.add_answer(Record::from_rdata(q.name().clone(), 1, rdata));
            }
        }
        Some(Answer::A(ip)) => {
            reply.add_answer(Record::from_rdata(q.name().clone(), 1, RData::A(A(ip))));
        }
        None if known => {} // NODATA: the name exists, not this type
        None => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    Some(reply)
}

#[test]
fn dns_failures_defer_and_only_definite_answers_bounce() {
    require_root("this test binds port 25 on loopback");
    use Answer::*;
    let fallback = SmtpSink::start("127.0.9.1", 25, &[], true);
    let good = SmtpSink::start("127.0.9.2", 25, &[], true);
    let s = |n: &str, t: RecordType, a: Answer| ((n.to_string(), t), a);
    let script: Script = Arc::new(Mutex::new(HashMap::from([
        // The MX question fails; the domain's own address must not be used.
        s("servfail.test", RecordType::MX, Code(ResponseCode::ServFail)),
        s("servfail.test", RecordType::A, A(Ipv4Addr::new(127, 0, 9, 1))),
        s("refused.test", RecordType::MX, Code(ResponseCode::Refused)),
        s("refused.test", RecordType::A, A(Ipv4Addr::new(127, 0, 9, 1))),
        s("timeout.test", RecordType::MX, Drop),
        s("timeout.test", RecordType::A, A(Ipv4Addr::new(127, 0, 9, 1))),
        // The MX host's address question fails: deferred too.
        s("slowaddr.test", RecordType::MX, Mx(vec![(10, "mx.slowaddr.test.")])),
        s("mx.slowaddr.test", RecordType::A, Drop),
        s("mx.slowaddr.test", RecordType::AAAA, Drop),
        // Definite answers.
        s("nullmx.test", RecordType::MX, Mx(vec![(0, ".")])),
        s("noaddr.test", RecordType::MX, Mx(vec![(10, "mx.noaddr.test.")])),
        s("nodata.test", RecordType::A, A(Ipv4Addr::new(127, 0, 9, 2))),
        s("good.test", RecordType::MX, Mx(vec![(10, "mx.good.test.")])),
        s("mx.good.test", RecordType::A, A(Ipv4Addr::new(127, 0, 9, 2))),
    ])));
    let dns_port = free_port("127.0.0.1");
    let _dns = ScriptedDns::start(dns_port, script.clone());
    let relay = Relay::start(
        &format!(
            "dns-server 127.0.0.1:{dns_port}\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n\
             <domain *>\n retry-after 1s\n retry-after-dns-error 1s\n</domain>\n"
        ),
        Some(2),
    );
    let deferred = ["a@servfail.test", "b@refused.test", "c@timeout.test", "d@slowaddr.test"];
    for rcpt in deferred.iter().chain(&["e@nxdomain.test", "f@nullmx.test", "g@noaddr.test", "h@nodata.test"]) {
        talk_send(&relay, "", rcpt);
    }
    let row = |kind: &str, rcpt: &str| relay.rows_of(kind).into_iter().find(|r| r["rcpt"] == rcpt);
    // Definite answers bounce at once, each with its own status.
    let b = wait_for("NXDOMAIN bounced", Duration::from_secs(30), || row("b", "e@nxdomain.test"));
    assert!(b["dsnStatus"].starts_with("5.1.2"), "{b:?}");
    let b = wait_for("null MX bounced", Duration::from_secs(30), || row("b", "f@nullmx.test"));
    assert!(b["dsnStatus"].starts_with("5.1.10"), "{b:?}");
    let b = wait_for("MX host without address bounced", Duration::from_secs(30), || row("b", "g@noaddr.test"));
    assert!(b["dsnStatus"].starts_with("5.4.4"), "{b:?}");
    assert!(b["dsnDiag"].contains("mx.noaddr.test"), "the host is named: {b:?}");
    let d = wait_for("NODATA for MX: the implicit MX", Duration::from_secs(30), || row("d", "h@nodata.test"));
    assert_eq!(d["dlvDestinationIp"], "127.0.9.2");
    // Failures defer, with the resolver's words, and never bounce.
    for rcpt in deferred {
        let t = wait_for(&format!("{rcpt} deferred"), Duration::from_secs(40), || row("t", rcpt));
        assert!(t["dsnStatus"].starts_with("4.4.3"), "{rcpt}: {t:?}");
    }
    std::thread::sleep(Duration::from_secs(3));
    for rcpt in deferred {
        assert!(row("b", rcpt).is_none(), "{rcpt} bounced: {:?}", row("b", rcpt));
    }
    assert!(fallback.messages().is_empty(), "no fallback to the A record on a failed MX lookup");
    // DNS answers again: the deferred mail goes out.
    {
        let mut script = script.lock().unwrap();
        for domain in ["servfail.test", "refused.test", "timeout.test"] {
            script.insert((domain.to_string(), RecordType::MX), Mx(vec![(10, "mx.good.test.")]));
        }
        script.insert(("mx.slowaddr.test".to_string(), RecordType::A), A(Ipv4Addr::new(127, 0, 9, 2)));
        script.remove(&("mx.slowaddr.test".to_string(), RecordType::AAAA));
    }
    for rcpt in deferred {
        let d = wait_for(&format!("{rcpt} delivered once DNS answers"), Duration::from_secs(60), || row("d", rcpt));
        assert_eq!(d["dlvDestinationIp"], "127.0.9.2");
    }
    assert!(fallback.messages().is_empty());
    assert_eq!(good.messages().len(), 5);
}
