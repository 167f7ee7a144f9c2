//! RFC 3464 delivery status notifications: the bounce message sent to a message's envelope
//! sender when recipients fail (a `<source>` with `generate-bounces yes`). Built as a
//! multipart/report (RFC 6522) with a human-readable part, the message/delivery-status part
//! and the original header (text/rfc822-headers), in SMTP transparency form, as the spool
//! keeps every message.

use crate::time::rfc5322_date;

/// Original header bytes returned at most (RET=HDRS is what a bulk sender wants back).
pub const RETURNED_HEADER_BYTES_MAX: usize = 64 * 1024;

/// One recipient that failed, as the accounting `b` record has it.
#[derive(Debug, Clone)]
pub struct Failed {
    pub rcpt: String,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: String,
    /// The receiver's reply line, e.g. `550 5.1.1 no such user`.
    pub diagnostic: String,
    /// The host that gave the reply (empty when none did, e.g. expiry in the queue).
    pub remote_mta: String,
    /// `failed`, or `relayed` (delivered to a receiver without DSN, for `NOTIFY=SUCCESS`).
    pub action: &'static str,
    /// The recipient's `ORCPT` (`rfc822;address`), when the injector gave one.
    pub orcpt: String,
}

pub struct Report<'a> {
    /// This relay's name (`host-name`).
    pub reporting_mta: &'a str,
    pub sender: &'a str,
    pub arrival_unix_ms: u64,
    pub now_unix_ms: u64,
    /// Makes the Message-ID and the MIME boundary unique.
    pub id: &'a str,
    /// The original message, in transparency form.
    pub original: &'a [u8],
    pub failed: &'a [Failed],
    /// The injector's `ENVID` (RFC 3461 §4.4), empty for none.
    pub envid: &'a str,
    /// `RET=FULL`: the whole message comes back (as message/rfc822), not just its header.
    pub full: bool,
}

/// The most of a message `RET=FULL` returns whole; a larger one comes back as its header.
pub const RETURNED_MESSAGE_BYTES_MAX: usize = 10 << 20;

/// No control characters (a CR or LF would end the field early) and no line longer than
/// RFC 5322 allows.
fn field(value: &str) -> String {
    value.chars().map(|c| if c.is_control() { ' ' } else { c }).take(900).collect()
}

/// The DSN, ready to be spooled: CRLF lines with leading dots doubled (RFC 5321 §4.5.2).
pub fn build(r: &Report) -> Vec<u8> {
    let boundary = format!("sluice-dsn-{}", r.id);
    let date = rfc5322_date(r.now_unix_ms);
    let mut text = String::with_capacity(2048);
    let mut line = |l: &str| {
        if l.starts_with('.') {
            text.push('.');
        }
        text.push_str(l);
        text.push_str("\r\n");
    };
    line(&format!("From: Mail Delivery System <MAILER-DAEMON@{}>", r.reporting_mta));
    line(&format!("To: <{}>", field(r.sender)));
    let any_failed = r.failed.iter().any(|f| f.action == "failed");
    line(if any_failed {
        "Subject: Undelivered Mail Returned to Sender"
    } else {
        "Subject: Delivery Status Notification (Relayed)"
    });
    line(&format!("Date: {date}"));
    line(&format!("Message-ID: <{}.dsn@{}>", r.id, r.reporting_mta));
    line("Auto-Submitted: auto-replied");
    line("MIME-Version: 1.0");
    line(&format!("Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\""));
    line("");
    line("This is a MIME-encapsulated message.");
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=utf-8");
    line("");
    line(&format!("This is the mail system at {}.", r.reporting_mta));
    line("");
    let (failed, relayed): (Vec<&Failed>, Vec<&Failed>) = r.failed.iter().partition(|f| f.action == "failed");
    if !failed.is_empty() {
        line("Your message could not be delivered to one or more recipients:");
        line("");
        for f in failed {
            line(&format!("<{}>: {}", field(&f.rcpt), field(&f.diagnostic)));
        }
        line("");
    }
    if !relayed.is_empty() {
        line("Your message was relayed to the following recipients' mail systems, which do not");
        line("send delivery notifications; no further notice will come from them:");
        line("");
        for f in relayed {
            line(&format!("<{}>: {}", field(&f.rcpt), field(&f.diagnostic)));
        }
    }
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: message/delivery-status");
    line("");
    if !r.envid.is_empty() {
        line(&format!("Original-Envelope-Id: {}", field(r.envid)));
    }
    line(&format!("Reporting-MTA: dns; {}", r.reporting_mta));
    line(&format!("Arrival-Date: {}", rfc5322_date(r.arrival_unix_ms)));
    for f in r.failed {
        line("");
        if !f.orcpt.is_empty() {
            let (kind, addr) = f.orcpt.split_once(';').unwrap_or(("rfc822", &f.orcpt));
            line(&format!("Original-Recipient: {}; {}", field(kind), field(addr)));
        }
        line(&format!("Final-Recipient: rfc822; {}", field(&f.rcpt)));
        line(&format!("Action: {}", f.action));
        line(&format!("Status: {}", field(&f.status)));
        if !f.remote_mta.is_empty() {
            line(&format!("Remote-MTA: dns; {}", field(&f.remote_mta)));
        }
        line(&format!("Diagnostic-Code: smtp; {}", field(&f.diagnostic)));
        line(&format!("Last-Attempt-Date: {date}"));
    }
    line("");
    line(&format!("--{boundary}"));
    let full = r.full && r.original.len() <= RETURNED_MESSAGE_BYTES_MAX;
    line(if full { "Content-Type: message/rfc822" } else { "Content-Type: text/rfc822-headers" });
    line("");
    let mut out = text.into_bytes();
    if full {
        // RET=FULL: the message as it came, already in transparency form.
        out.extend_from_slice(r.original);
        if !r.original.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        return out;
    }
    // The original header, already in transparency form: copied as it is.
    let header_end = crate::smtp::headers::header_bounds(r.original).0;
    let mut header = &r.original[..header_end.min(RETURNED_HEADER_BYTES_MAX)];
    if let Some(last_crlf) = memchr::memmem::rfind(header, b"\r\n") {
        header = &header[..last_crlf + 2]; // whole lines only
    }
    out.extend_from_slice(header);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_the_rfc3464_fields_and_the_original_header() {
        let original = b"Received: by relay\r\nSubject: hello\r\n..dotted: header\r\n\r\nbody\r\n..body dot\r\n";
        let failed = vec![
            Failed {
                rcpt: "a@b.test".into(),
                status: "5.1.1".into(),
                diagnostic: "550 5.1.1 no such user".into(),
                remote_mta: "mx.b.test".into(),
                action: "failed",
                orcpt: "rfc822;A@b.test".into(),
            },
            Failed {
                rcpt: "c@b.test".into(),
                status: "4.4.7".into(),
                diagnostic: "451 4.4.1 expired\r\nInjected: x".into(),
                remote_mta: String::new(),
                action: "failed",
                orcpt: String::new(),
            },
        ];
        let dsn = build(&Report {
            reporting_mta: "relay.test",
            sender: "s@src.test",
            arrival_unix_ms: 0,
            now_unix_ms: 1_000,
            id: "0.1.2",
            original,
            failed: &failed,
            envid: "batch 7",
            full: false,
        });
        let text = String::from_utf8(dsn).unwrap();
        for want in [
            "To: <s@src.test>\r\n",
            "Content-Type: multipart/report; report-type=delivery-status; boundary=\"sluice-dsn-0.1.2\"\r\n",
            "Reporting-MTA: dns; relay.test\r\n",
            "Original-Envelope-Id: batch 7\r\nReporting-MTA",
            "Original-Recipient: rfc822; A@b.test\r\nFinal-Recipient: rfc822; a@b.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.b.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n",
            "Final-Recipient: rfc822; c@b.test\r\nAction: failed\r\nStatus: 4.4.7\r\nDiagnostic-Code: smtp; 451 4.4.1 expired  Injected: x\r\n",
            "Content-Type: text/rfc822-headers\r\n\r\nReceived: by relay\r\nSubject: hello\r\n..dotted: header\r\n\r\n--sluice-dsn-0.1.2--\r\n",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        assert!(!text.contains("body"), "headers only");
        assert!(text.lines().all(|l| !l.starts_with('.') || l.starts_with("..")), "dot-stuffed");
    }
}
