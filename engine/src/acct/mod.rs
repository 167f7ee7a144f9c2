//! Accounting records in PowerMTA's CSV layout (User's Guide chapter 11): one `Record` per
//! recipient event, each column's value as PowerMTA writes it (`dsnStatus` with its RFC 3463
//! text, `srcMta` as `helo (ip)`, times as `YYYY-MM-DD HH:MM:SS+0000` or Unix seconds), and
//! the CSV line for a file's columns (RFC 4180 quoting).

pub mod gate;

use crate::time::iso8601;
use sluice_config::AcctField;
use std::borrow::Cow;

/// A record's type: PowerMTA's `d`, `b`, `t`, `tq`, `r`, `f`, `rb`, `rs`.
pub type Kind = sluice_config::RecordType;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub time_logged_ms: u64,
    pub time_queued_ms: u64,
    /// When delivery of the message was first tried (0: not yet, or not known after a
    /// restart).
    pub time_first_attempt_ms: u64,
    pub orig: String,
    pub rcpt: String,
    /// The recipient's DSN `ORCPT` (`rfc822;a@b.example`), as given.
    pub orcpt: String,
    /// `X.Y.Z` (the text is added when written).
    pub dsn_status: String,
    /// `smtp;250 2.0.0 ok`.
    pub dsn_diag: String,
    /// `mx.example.com (192.0.2.1)`.
    pub dsn_mta: String,
    /// `rb` records: the MTA that made the DSN.
    pub dsn_reporting_mta: String,
    pub bounce_cat: String,
    /// Injected over HTTP (`srcType` api) rather than SMTP.
    pub src_api: bool,
    /// `helo (ip)` of the client that injected the message.
    pub src_mta: String,
    /// `smtp`, or `discard` for a queue of `type discard`.
    pub dlv_type: &'static str,
    pub dlv_source_ip: String,
    pub dlv_destination_ip: String,
    /// The receiver's service extensions, comma-separated (`PIPELINING,8BITMIME,SIZE`).
    pub dlv_esmtp_available: String,
    pub dlv_size: u64,
    pub vmta: String,
    pub job_id: String,
    pub env_id: String,
    pub queue: String,
    pub vmta_pool: String,
    /// The SMTP AUTH user who injected the message.
    pub rcv_smtp_user: String,
    /// `r` records: the client's address and the local address it connected to.
    pub rcv_source_ip: String,
    pub rcv_destination_ip: String,
    /// The delivery's TLS protocol and cipher suite (empty: plain text).
    pub dlv_tls_protocol: String,
    pub dlv_tls_cipher: String,
    /// Inbound authentication results (`r` records): `spf=pass dkim=pass dmarc=pass arc=none`.
    pub auth_results: String,
    /// `f`/`rb` records: the report's format (arf, xarf, dsn) and what it says.
    pub format: String,
    pub feedback_type: String,
    pub user_agent: String,
    pub reporting_mta: String,
    /// `f` records: the ARF `Source-IP` (where the reported mail came from: our address).
    pub source_ip: String,
    pub reported_domain: String,
    /// `f` records: the address that handed us the report.
    pub rep_source_ip: String,
    /// `header_NAME` columns: the message's header values, in the order of
    /// `Config::acct_headers` (empty when no accounting file asks for one).
    pub headers: Vec<String>,
}

/// The VMTA a returned message names (`X-Virtual-MTA`, kept by `retain-x-virtual-mta`), if
/// it does.
fn returned_vmta(original: &[(String, String)]) -> String {
    crate::feedback::returned_field(original, "x-virtual-mta").to_string()
}

/// `privacy-policy hmac-sha256 KEY`: the local part of an address becomes the hex
/// HMAC-SHA256 of it (lower-cased), the domain stays, so records still group by domain and
/// one person's records still match each other.
pub fn private_address(address: &str, key: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let Some((local, domain)) = address.rsplit_once('@') else { return address.to_string() };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(local.to_ascii_lowercase().as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}@{domain}")
}

/// `helo (ip)`, as accounting writes `srcMta` (for `r` rows and delivery rows alike: one
/// format); formatted once for the last client seen on this thread (a campaign's messages
/// come from a few injecting hosts), copied after.
pub fn src_mta(helo: &str, ip: std::net::IpAddr) -> String {
    if ip.is_unspecified() {
        return helo.to_string();
    }
    thread_local!(static LAST: std::cell::RefCell<(std::net::IpAddr, String, String)> = const {
        std::cell::RefCell::new((std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), String::new(), String::new()))
    });
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != ip || last.1 != helo {
            let text = if helo.is_empty() { format!("({ip})") } else { format!("{helo} ({ip})") };
            *last = (ip, helo.to_string(), text);
        }
        last.2.clone()
    })
}

/// Appends one CSV field (RFC 4180: quoted when it holds a comma, a quote or a line end).
pub fn push_field(out: &mut String, field: &str) {
    let b = field.as_bytes();
    if memchr::memchr3(b',', b'"', b'\n', b).is_some() || memchr::memchr(b'\r', b).is_some() {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// The text PowerMTA writes after an enhanced status code (RFC 3463's names, lower case):
/// `5.1.1` → `5.1.1 (bad destination mailbox address)`.
pub fn status_with_text(status: &str) -> String {
    if status.is_empty() {
        return String::new();
    }
    let mut parts = status.splitn(3, '.');
    let class = parts.next().unwrap_or("");
    let subject = parts.next().unwrap_or("");
    let detail = parts.next().unwrap_or("");
    let text = match (class, subject, detail) {
        ("2", "0", "0") => "success",
        (_, "0", "0") => "other undefined status",
        (_, "1", "0") => "other address status",
        (_, "1", "1") => "bad destination mailbox address",
        (_, "1", "2") => "bad destination system: no such domain",
        (_, "1", "3") => "bad destination mailbox address syntax",
        (_, "1", "4") => "destination mailbox address ambiguous",
        (_, "1", "5") => "destination mailbox address valid",
        (_, "1", "6") => "mailbox has moved",
        (_, "1", "7") => "bad sender's mailbox address syntax",
        (_, "1", "8") => "bad sender's system address",
        (_, "1", "10") => "recipient address has null MX",
        (_, "2", "0") => "other or undefined mailbox status",
        (_, "2", "1") => "mailbox disabled, not accepting messages",
        (_, "2", "2") => "mailbox full",
        (_, "2", "3") => "message length exceeds administrative limit",
        (_, "2", "4") => "mailing list expansion problem",
        (_, "3", "0") => "other or undefined mail system status",
        (_, "3", "1") => "mail system full",
        (_, "3", "2") => "system not accepting network messages",
        (_, "3", "3") => "system not capable of selected features",
        (_, "3", "4") => "message too big for system",
        (_, "3", "5") => "system incorrectly configured",
        (_, "4", "0") => "other or undefined network or routing status",
        (_, "4", "1") => "no answer from host",
        (_, "4", "2") => "bad connection",
        (_, "4", "3") => "routing server failure",
        (_, "4", "4") => "unable to route",
        (_, "4", "5") => "network congestion",
        (_, "4", "6") => "routing loop detected",
        (_, "4", "7") => "delivery time expired",
        (_, "5", "0") => "other or undefined protocol status",
        (_, "5", "1") => "invalid command",
        (_, "5", "2") => "syntax error",
        (_, "5", "3") => "too many recipients",
        (_, "5", "4") => "invalid command arguments",
        (_, "5", "5") => "wrong protocol version",
        (_, "6", "0") => "other or undefined media error",
        (_, "6", "1") => "media not supported",
        (_, "6", "2") => "conversion required and prohibited",
        (_, "6", "3") => "conversion required but not supported",
        (_, "6", "4") => "conversion with loss performed",
        (_, "6", "5") => "conversion failed",
        (_, "6", "7") => "non-ASCII addresses not permitted",
        (_, "7", "0") => "other or undefined security status",
        (_, "7", "1") => "delivery not authorized",
        (_, "7", "2") => "mailing list expansion prohibited",
        (_, "7", "3") => "security conversion required but not possible",
        (_, "7", "4") => "security features not supported",
        (_, "7", "5") => "cryptographic failure",
        (_, "7", "6") => "cryptographic algorithm not supported",
        (_, "7", "7") => "message integrity failure",
        (_, "7", "8") => "authentication credentials invalid",
        (_, "7", "9") => "authentication mechanism is too weak",
        (_, "7", "10") => "encryption needed",
        (_, "7", "13") => "user account disabled",
        (_, "7", "25") => "reverse DNS validation failed",
        (_, "7", "26") => "multiple authentication checks failed",
        (_, "7", "27") => "sender address has null MX",
        (_, "1", _) => "other address status",
        (_, "2", _) => "other or undefined mailbox status",
        (_, "3", _) => "other or undefined mail system status",
        (_, "4", _) => "other or undefined network or routing status",
        (_, "5", _) => "other or undefined protocol status",
        (_, "6", _) => "other or undefined media error",
        (_, "7", _) => "other or undefined security status",
        _ => return status.to_string(),
    };
    format!("{status} ({text})")
}

/// A time as an accounting file writes it: `2026-12-01 10:30:06+0000`, or with `iso-times
/// no` Unix seconds; 0 (not known) is empty.
fn time(unix_ms: u64, iso: bool) -> String {
    match (unix_ms, iso) {
        (0, _) => String::new(),
        (ms, true) => iso8601(ms),
        (ms, false) => (ms / 1000).to_string(),
    }
}

impl Record {
    /// RFC 3464 action for this record.
    pub fn dsn_action(&self) -> &'static str {
        match self.kind {
            Kind::Delivered => "relayed",
            Kind::Bounced | Kind::RemoteBounce => "failed",
            Kind::Transient => "delayed",
            Kind::RemoteStatus => "delivered",
            Kind::QueueEvent | Kind::Received | Kind::Feedback => "",
        }
    }

    /// One column's value (`header_NAME` columns are the writer's: see `headers`).
    pub fn value(&self, field: &AcctField, iso_times: bool) -> Cow<'_, str> {
        use AcctField::*;
        // The record's own strings, borrowed (a copy of every column cost the writer an
        // allocation per field per row).
        fn s(v: &str) -> Cow<'_, str> {
            Cow::Borrowed(v)
        }
        match field {
            Type => Cow::Borrowed(self.kind.code()),
            TimeLogged => Cow::Owned(time(self.time_logged_ms, iso_times)),
            TimeQueued => Cow::Owned(time(self.time_queued_ms, iso_times)),
            TimeFirstAttempt => Cow::Owned(time(self.time_first_attempt_ms, iso_times)),
            TotalSecondsQueued if self.time_queued_ms == 0 => Cow::Borrowed(""),
            TotalSecondsQueued => {
                Cow::Owned((self.time_logged_ms.saturating_sub(self.time_queued_ms) / 1000).to_string())
            }
            TimeImprinted | UserString | Header(_) => Cow::Borrowed(""),
            Orig => s(&self.orig),
            Rcpt => s(&self.rcpt),
            Orcpt => s(&self.orcpt),
            DsnAction => Cow::Borrowed(self.dsn_action()),
            DsnStatus => Cow::Owned(status_with_text(&self.dsn_status)),
            DsnDiag => s(&self.dsn_diag),
            DsnMta => s(&self.dsn_mta),
            DsnReportingMta => s(&self.dsn_reporting_mta),
            BounceCat => s(&self.bounce_cat),
            SrcType => Cow::Borrowed(if self.src_api { "api" } else { "smtp" }),
            SrcMta => s(&self.src_mta),
            DlvType => Cow::Borrowed(self.dlv_type),
            DlvSourceIp if self.kind == Kind::Feedback => s(&self.source_ip),
            DlvSourceIp => s(&self.dlv_source_ip),
            DlvDestinationIp => s(&self.dlv_destination_ip),
            DlvEsmtpAvailable => s(&self.dlv_esmtp_available),
            DlvSize if self.dlv_size == 0 => Cow::Borrowed(""),
            DlvSize => Cow::Owned(self.dlv_size.to_string()),
            Vmta => s(&self.vmta),
            JobId => s(&self.job_id),
            EnvId => s(&self.env_id),
            Queue => s(&self.queue),
            VmtaPool => s(&self.vmta_pool),
            DlvTlsProtocol => s(&self.dlv_tls_protocol),
            DlvTlsCipher => s(&self.dlv_tls_cipher),
            RcvSmtpUser => s(&self.rcv_smtp_user),
            RcvSourceIp => s(&self.rcv_source_ip),
            RcvDestinationIp => s(&self.rcv_destination_ip),
            RepSourceIp => s(&self.rep_source_ip),
            FeedbackType => s(&self.feedback_type),
            Format => s(&self.format),
            UserAgent => s(&self.user_agent),
            ReportingMta => s(&self.reporting_mta),
            ReportedDomain => s(&self.reported_domain),
            AuthResults => s(&self.auth_results),
        }
    }

    /// An empty record of `kind` at `now_ms`: the constructors below fill what they know.
    pub fn new(kind: Kind, now_ms: u64) -> Record {
        Record {
            kind,
            time_logged_ms: now_ms,
            time_queued_ms: 0,
            time_first_attempt_ms: 0,
            orig: String::new(),
            rcpt: String::new(),
            orcpt: String::new(),
            dsn_status: String::new(),
            dsn_diag: String::new(),
            dsn_mta: String::new(),
            dsn_reporting_mta: String::new(),
            bounce_cat: String::new(),
            src_api: false,
            src_mta: String::new(),
            dlv_type: "smtp",
            dlv_source_ip: String::new(),
            dlv_destination_ip: String::new(),
            dlv_esmtp_available: String::new(),
            dlv_size: 0,
            vmta: String::new(),
            job_id: String::new(),
            env_id: String::new(),
            queue: String::new(),
            vmta_pool: String::new(),
            rcv_smtp_user: String::new(),
            rcv_source_ip: String::new(),
            rcv_destination_ip: String::new(),
            dlv_tls_protocol: String::new(),
            dlv_tls_cipher: String::new(),
            auth_results: String::new(),
            format: String::new(),
            feedback_type: String::new(),
            user_agent: String::new(),
            reporting_mta: String::new(),
            source_ip: String::new(),
            reported_domain: String::new(),
            rep_source_ip: String::new(),
            headers: Vec::new(),
        }
    }

    /// An `f` row from a feedback report; `headers` are the `header_*` columns asked for
    /// (`Config::acct_headers`), read from the reported message when the report returns it.
    pub fn feedback(now_ms: u64, f: &crate::feedback::Feedback, headers: &[String]) -> Record {
        let mut r = Record::new(Kind::Feedback, now_ms);
        r.headers = crate::feedback::header_values(&f.original, headers);
        r.vmta = returned_vmta(&f.original);
        r.orig = f.orig.clone();
        r.rcpt = f.rcpt.clone();
        r.job_id = f.job_id.clone();
        r.format = f.format.to_string();
        r.feedback_type = f.feedback_type.clone();
        r.user_agent = f.user_agent.clone();
        r.reporting_mta = f.reporting_mta.clone();
        r.source_ip = f.source_ip.clone();
        r.reported_domain = f.reported_domain.clone();
        r
    }

    /// An `rb` row for one recipient of an asynchronous bounce, with its category; `headers`
    /// as for `feedback`, from the returned headers of the original message.
    pub fn remote_bounce(now_ms: u64, b: &crate::feedback::RemoteBounce, category: &str, headers: &[String]) -> Record {
        let mut r = Record::new(Kind::RemoteBounce, now_ms);
        r.headers = crate::feedback::header_values(&b.original, headers);
        r.vmta = returned_vmta(&b.original);
        r.orig = b.orig.clone();
        r.rcpt = b.rcpt.clone();
        r.dsn_status = b.status.clone();
        r.dsn_diag = format!("smtp;{}", b.diagnostic);
        r.dsn_mta = b.mta.clone();
        r.dsn_reporting_mta = b.reporting_mta.clone();
        r.bounce_cat = category.to_string();
        r.job_id = b.job_id.clone();
        r.format = "dsn".into();
        r
    }

    /// An `r` row: `rcpt` of a message accepted from a client.
    pub fn received(now_ms: u64, rcpt: &str, m: &Received) -> Record {
        let mut r = Record::new(Kind::Received, now_ms);
        r.vmta = m.vmta.to_string();
        r.orig = m.orig.to_string();
        r.rcpt = rcpt.to_string();
        r.src_mta = m.src_mta.to_string();
        r.src_api = m.api;
        r.rcv_source_ip = m.source_ip.to_string();
        r.rcv_destination_ip = m.destination_ip.to_string();
        r.dlv_size = m.size;
        r.rcv_smtp_user = m.smtp_user.to_string();
        r.auth_results = m.auth_results.to_string();
        r.job_id = m.job_id.to_string();
        r.env_id = m.envid.to_string();
        r
    }

    /// A `tq` row: `diag` says what changed and why; the queue columns say where.
    pub fn queue_event(now_ms: u64, queue: &str, vmta: &str, diag: String) -> Record {
        let mut r = Record::new(Kind::QueueEvent, now_ms);
        r.queue = queue.to_string();
        r.vmta = vmta.to_string();
        r.dsn_diag = diag;
        r
    }

    /// The CSV line of every field of its type (PowerMTA's `*` list), for tests and tools.
    pub fn csv_line(&self) -> String {
        let fields: Vec<AcctField> =
            std::iter::once(AcctField::Type).chain(sluice_config::acct::default_fields(self.kind)).collect();
        let mut out = String::with_capacity(256);
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_field(&mut out, &self.value(f, true));
        }
        out.push('\n');
        out
    }
}

/// What an `r` record says of the message its recipient came in.
pub struct Received<'a> {
    pub orig: &'a str,
    /// `helo (ip)` of the client.
    pub src_mta: &'a str,
    pub api: bool,
    pub source_ip: &'a str,
    pub destination_ip: &'a str,
    pub size: u64,
    pub vmta: &'a str,
    pub smtp_user: &'a str,
    pub auth_results: &'a str,
    pub job_id: &'a str,
    pub envid: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// The one-client cache never answers for another client, however they alternate.
    #[test]
    fn src_mta_is_each_clients_own() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let none = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        for _ in 0..2 {
            assert_eq!(src_mta("app1", a), "app1 (192.0.2.1)");
            assert_eq!(src_mta("app1", a), "app1 (192.0.2.1)");
            assert_eq!(src_mta("app2", a), "app2 (192.0.2.1)");
            assert_eq!(src_mta("app2", b), "app2 (2001:db8::2)");
            assert_eq!(src_mta("", b), "(2001:db8::2)");
            assert_eq!(src_mta("api", none), "api");
            assert_eq!(src_mta("", none), "");
        }
    }

    #[test]
    fn values_as_powermta_writes_them() {
        let mut r = Record::new(Kind::Bounced, 1_549_662_821_000);
        r.time_queued_ms = 1_549_662_800_000;
        r.dsn_status = "5.7.1".into();
        r.dsn_diag = "smtp;554 5.7.1 Denied, \"spam\"".into();
        r.src_mta = "foo.int.bar.com (127.0.0.1)".into();
        let line = r.csv_line();
        assert!(line.starts_with("b,2019-02-08 21:53:41+0000,2019-02-08 21:53:20+0000,,,,failed,5.7.1 (delivery not authorized),\"smtp;554 5.7.1 Denied, \"\"spam\"\"\","), "{line}");
        assert!(line.contains(",smtp,foo.int.bar.com (127.0.0.1),smtp,"), "{line}");
        assert_eq!(r.value(&AcctField::TotalSecondsQueued, true), "21");
        assert_eq!(r.value(&AcctField::TimeLogged, false), "1549662821");
        assert_eq!(r.value(&AcctField::TimeFirstAttempt, true), "", "not known");
    }

    #[test]
    fn status_texts() {
        assert_eq!(status_with_text("2.0.0"), "2.0.0 (success)");
        assert_eq!(status_with_text("5.1.1"), "5.1.1 (bad destination mailbox address)");
        assert_eq!(status_with_text("5.4.7"), "5.4.7 (delivery time expired)");
        assert_eq!(status_with_text("4.7.0"), "4.7.0 (other or undefined security status)");
        assert_eq!(status_with_text("5.1.99"), "5.1.99 (other address status)");
        assert_eq!(status_with_text(""), "");
    }
}
