//! PowerMTA's mail merge over SMTP (`allow-mailmerge yes`), driven the way its public
//! clients drive it (the PHP PowerMta_Mail_Protocol and Ruby `powermta` gem: XACK, XMRG
//! FROM, XDFN then RCPT per recipient, XPRT parts each answered 354 then 250): each recipient
//! gets a message of its own at an aiosmtpd receiver, with its own values, the parts its
//! `*parts` names, `[*to]`, its `*jobid` in the accounting rows and its `*vmta` choosing the
//! source address. The 250 after the last part comes once every message is fsynced (the `r`
//! rows are there).

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

/// A client written after PowerMta_Mail_Protocol (PHP): each command, then its expected
/// reply code; XDFN and RCPT unanswered after `XACK OFF`.
const CLIENT: &str = r#"
import socket, sys
host, port, xack = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "on"
s = socket.create_connection((host, port)); f = s.makefile("rb")
def reply():
    lines = []
    while True:
        line = f.readline().decode()
        lines.append(line.strip())
        if line[3:4] != "-":
            return lines
def cmd(line, want=None):
    s.sendall(line.encode() + b"\r\n")
    if want is None:
        return
    r = reply()
    if not r[-1].startswith(str(want)):
        print("FAILED", line, r); sys.exit(1)
    return r[-1]
reply()
cmd("EHLO merge-client.test", 250)
cmd("XACK " + ("ON" if xack else "OFF"), 250)
cmd("XMRG FROM:<news@src.test> VERP", 250)
people = [("ann@rcv.test", "Ann", "1,2", "spring-ann", "v2"), ("bob@rcv.test", "Bob \"B\" Smith", "1", "spring-bob", "v1"),
          ("cy@rcv.test", "Cy", "1,2", "spring-cy", "v1")]
for (to, first, parts, job, vmta) in people:
    first = first.replace('"', '\\"')
    cmd('XDFN FIRSTNAME="%s" *parts="%s" *jobid="%s"' % (first, parts, job), 250 if xack else None)
    cmd('XDFN *vmta="%s"' % vmta, 250 if xack else None)
    cmd("RCPT TO:<%s>" % to, 250 if xack else None)
cmd("XPRT 1", 354)
for line in ["From: News <news@src.test>", "To: [*to]", "Subject: Hello [firstname]", "", "Dear [FirstName],", ".a dot line", "[undefined]end"]:
    s.sendall((("." + line) if line.startswith(".") else line).encode() + b"\r\n")
cmd(".", 250)
cmd("XPRT 2 LAST", 354)
s.sendall(b"P.S. only for some\r\n")
print(cmd(".", 250))
cmd("QUIT", 221)
"#;

fn scenario(xack: bool) {
    let receiver = PyReceiver::start();
    let relay = Relay::start(
        &format!(
            "<source 127.0.0.1>\n always-allow-relaying yes\n allow-mailmerge yes\n</source>\n\
             <virtual-mta v1>\n smtp-source-host 127.0.0.2 v1.test\n</virtual-mta>\n\
             <virtual-mta v2>\n smtp-source-host 127.0.0.3 v2.test\n</virtual-mta>\n\
             <domain rcv.test>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
            receiver.addr.port()
        ),
        None,
    );
    let (code, out) = run(Command::new("python3").args([
        "-c",
        CLIENT,
        "127.0.0.1",
        &relay.port.to_string(),
        if xack { "on" } else { "off" },
    ]));
    assert_eq!(code, 0, "{out}\n{}", relay.log());
    assert!(out.starts_with("250 2.0.0 Ok: queued as"), "{out}");
    // The last 250 came after the fsync of every message; their `r` rows follow (the
    // accounting writer is not on the reply's path).
    let received = relay.wait_rows("r", 3, Duration::from_secs(10));
    assert_eq!(received.len(), 3, "{received:?}");
    let rows = relay.wait_rows("d", 3, Duration::from_secs(30));
    let files = wait_for("3 messages", Duration::from_secs(10), || {
        let f = receiver.files();
        (f.len() == 3).then_some(f)
    });
    let message_for = |to: &str| {
        files
            .iter()
            .find(|f| std::fs::read_to_string(f.with_extension("env")).unwrap().lines().nth(1) == Some(to))
            .map(|f| (std::fs::read_to_string(f).unwrap(), std::fs::read_to_string(f.with_extension("env")).unwrap()))
            .unwrap_or_else(|| panic!("a message for {to}"))
    };
    for (to, first, ps, job, vmta, ip) in [
        ("ann@rcv.test", "Ann", true, "spring-ann", "v2", "127.0.0.3"),
        ("bob@rcv.test", "Bob \"B\" Smith", false, "spring-bob", "v1", "127.0.0.2"),
        ("cy@rcv.test", "Cy", true, "spring-cy", "v1", "127.0.0.2"),
    ] {
        let (m, env) = message_for(to);
        assert!(
            m.contains(&format!("To: {to}\r\nSubject: Hello {first}\r\n\r\nDear {first},\r\n.a dot line\r\nend\r\n")),
            "{m}"
        );
        assert_eq!(m.contains("P.S. only for some"), ps, "{to}'s *parts: {m}");
        for other in ["Ann", "Cy"].iter().filter(|o| !first.starts_with(**o)) {
            assert!(!m.contains(&format!("Dear {other}")), "{to} got {other}'s: {m}");
        }
        // VERP (XMRG's) makes each return path the recipient's own.
        let (local, domain) = to.split_once('@').unwrap();
        assert_eq!(env.lines().next(), Some(format!("news-{local}={domain}@src.test").as_str()), "{env}");
        assert_eq!(env.lines().nth(3).map(|l| l.split(' ').next().unwrap()), Some(ip), "{to} left from its *vmta");
        let row = rows.iter().find(|r| r["rcpt"] == to).unwrap();
        assert_eq!((row["jobId"].as_str(), row["vmta"].as_str()), (job, vmta), "{row:?}");
    }
}

#[test]
fn mail_merge_with_acknowledgements() {
    scenario(true);
}

#[test]
fn mail_merge_without_acknowledgements() {
    scenario(false);
}
