//! Accounting records in PowerMTA's CSV layout (RFC 4180 quoting, header line first).

use crate::time::iso8601;

/// The columns of every record, in PowerMTA's order (then sluice's own).
pub const COLUMNS: &[&str] = sluice_config::ACCT_FIELDS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Delivered,
    Bounced,
    Transient,
    /// `tq`: something happened to a whole queue (mode or rate change).
    QueueEvent,
    /// `r`: a recipient was accepted (its message is on disk).
    Received,
    /// `f`: a feedback-loop (complaint) report.
    Feedback,
    /// `rb`: an asynchronous (remote) bounce.
    RemoteBounce,
}

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::Delivered => "d",
            Kind::Bounced => "b",
            Kind::Transient => "t",
            Kind::QueueEvent => "tq",
            Kind::Received => "r",
            Kind::Feedback => "f",
            Kind::RemoteBounce => "rb",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub time_logged_ms: u64,
    pub time_queued_ms: u64,
    pub orig: String,
    pub rcpt: String,
    pub dsn_status: String,
    pub dsn_diag: String,
    pub dsn_mta: String,
    pub bounce_cat: String,
    pub src_mta: String,
    pub dlv_source_ip: String,
    pub dlv_destination_ip: String,
    pub dlv_esmtp_available: bool,
    pub dlv_size: u64,
    pub vmta: String,
    pub job_id: String,
    pub env_id: String,
    pub queue: String,
    pub vmta_pool: String,
    /// The SMTP AUTH user who injected the message (`r` records).
    pub rcv_smtp_user: String,
    /// The delivery's TLS protocol and cipher suite (empty: plain text).
    pub dlv_tls_protocol: String,
    pub dlv_tls_cipher: String,
    /// Inbound authentication results (`r` records): `spf=pass dkim=pass dmarc=pass arc=none`.
    pub auth_results: String,
    /// `f` records: the report's format (arf, xarf) and what it says.
    pub format: String,
    pub feedback_type: String,
    pub user_agent: String,
    pub reporting_mta: String,
    pub source_ip: String,
    /// `header_NAME` columns: the message's header values, in the order of
    /// `Config::acct_headers` (empty when no accounting file asks for one).
    pub headers: Vec<String>,
}

pub fn header_line() -> String {
    header_line_of(&(0..COLUMNS.len()).collect::<Vec<_>>(), &[])
}

/// The header line for a selection of columns: indexes into `COLUMNS`, and past them into
/// `headers`, the names of the `header_NAME` columns (`Config::acct_headers`).
pub fn header_line_of(columns: &[usize], headers: &[String]) -> String {
    let names: Vec<String> = columns
        .iter()
        .map(|&c| match COLUMNS.get(c) {
            Some(name) => name.to_string(),
            None => format!("header_{}", headers.get(c - COLUMNS.len()).map_or("", String::as_str)),
        })
        .collect();
    let mut s = names.join(",");
    s.push('\n');
    s
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

fn push_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// What an `r` record says of the message its recipient came in.
pub struct Received<'a> {
    pub orig: &'a str,
    /// `helo (ip)` of the client.
    pub src_mta: &'a str,
    pub size: u64,
    pub vmta: &'a str,
    pub smtp_user: &'a str,
    pub auth_results: &'a str,
    pub job_id: &'a str,
}

impl Record {
    /// RFC 3464 action for this record.
    pub fn dsn_action(&self) -> &'static str {
        match self.kind {
            Kind::Delivered => "relayed",
            Kind::Bounced => "failed",
            Kind::Transient => "delayed",
            Kind::RemoteBounce => "failed",
            Kind::QueueEvent | Kind::Received | Kind::Feedback => "",
        }
    }

    /// An `r` row: `rcpt` of a message from `orig`, accepted from `src_mta`.
    /// An `f` row from a feedback report.
    pub fn feedback(now_ms: u64, f: &crate::feedback::Feedback) -> Record {
        let mut r = Record::queue_event(now_ms, "", "", String::new());
        r.kind = Kind::Feedback;
        r.orig = f.orig.clone();
        r.rcpt = f.rcpt.clone();
        r.job_id = f.job_id.clone();
        r.format = f.format.to_string();
        r.feedback_type = f.feedback_type.clone();
        r.user_agent = f.user_agent.clone();
        r.reporting_mta = f.reporting_mta.clone();
        r.source_ip = f.source_ip.clone();
        r
    }

    /// An `rb` row for one recipient of an asynchronous bounce, with its category.
    pub fn remote_bounce(now_ms: u64, b: &crate::feedback::RemoteBounce, category: &str) -> Record {
        let mut r = Record::queue_event(now_ms, "", "", String::new());
        r.kind = Kind::RemoteBounce;
        r.rcpt = b.rcpt.clone();
        r.dsn_status = b.status.clone();
        r.dsn_diag = format!("smtp;{}", b.diagnostic);
        r.dsn_mta = b.mta.clone();
        r.bounce_cat = category.to_string();
        r.job_id = b.job_id.clone();
        r
    }

    pub fn received(now_ms: u64, rcpt: &str, m: &Received) -> Record {
        let mut r = Record::queue_event(now_ms, "", m.vmta, String::new());
        r.kind = Kind::Received;
        r.orig = m.orig.to_string();
        r.rcpt = rcpt.to_string();
        r.src_mta = m.src_mta.to_string();
        r.dlv_size = m.size;
        r.rcv_smtp_user = m.smtp_user.to_string();
        r.auth_results = m.auth_results.to_string();
        r.job_id = m.job_id.to_string();
        r
    }

    /// A `tq` row: `diag` says what changed and why; the queue columns say where.
    pub fn queue_event(now_ms: u64, queue: &str, vmta: &str, diag: String) -> Record {
        Record {
            kind: Kind::QueueEvent,
            time_logged_ms: now_ms,
            time_queued_ms: now_ms,
            orig: String::new(),
            rcpt: String::new(),
            dsn_status: String::new(),
            dsn_diag: diag,
            dsn_mta: String::new(),
            bounce_cat: String::new(),
            src_mta: String::new(),
            dlv_source_ip: String::new(),
            dlv_destination_ip: String::new(),
            dlv_esmtp_available: false,
            dlv_size: 0,
            vmta: vmta.to_string(),
            job_id: String::new(),
            env_id: String::new(),
            queue: queue.to_string(),
            vmta_pool: String::new(),
            rcv_smtp_user: String::new(),
            dlv_tls_protocol: String::new(),
            dlv_tls_cipher: String::new(),
            auth_results: String::new(),
            format: String::new(),
            feedback_type: String::new(),
            user_agent: String::new(),
            reporting_mta: String::new(),
            source_ip: String::new(),
            headers: Vec::new(),
        }
    }

    /// One CSV line (with the newline).
    pub fn csv_line(&self) -> String {
        self.csv_line_of(&(0..COLUMNS.len()).collect::<Vec<_>>())
    }

    /// One CSV line of the chosen columns (indexes into `COLUMNS`).
    pub fn csv_line_of(&self, columns: &[usize]) -> String {
        let size = self.dlv_size.to_string();
        let fields: [&str; 32] = [
            self.kind.code(),
            &iso8601(self.time_logged_ms),
            &iso8601(self.time_queued_ms),
            &self.orig,
            &self.rcpt,
            "",
            self.dsn_action(),
            &self.dsn_status,
            &self.dsn_diag,
            &self.dsn_mta,
            &self.bounce_cat,
            "smtp",
            &self.src_mta,
            "smtp",
            &self.dlv_source_ip,
            &self.dlv_destination_ip,
            if self.dlv_esmtp_available { "yes" } else { "" },
            &size,
            &self.vmta,
            &self.job_id,
            &self.env_id,
            &self.queue,
            &self.vmta_pool,
            &self.rcv_smtp_user,
            &self.dlv_tls_protocol,
            &self.dlv_tls_cipher,
            &self.auth_results,
            &self.format,
            &self.feedback_type,
            &self.user_agent,
            &self.reporting_mta,
            &self.source_ip,
        ];
        let mut out = String::with_capacity(256);
        for (i, &c) in columns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match fields.get(c) {
                Some(f) => push_field(&mut out, f),
                None => push_field(&mut out, self.headers.get(c - fields.len()).map_or("", String::as_str)),
            }
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_columns() {
        let r = Record {
            kind: Kind::Bounced,
            time_logged_ms: 0,
            time_queued_ms: 0,
            orig: "a@b".into(),
            rcpt: "c@d".into(),
            dsn_status: "5.1.1 (bad destination mailbox address)".into(),
            dsn_diag: "smtp;550 5.1.1 \"x\", y".into(),
            dsn_mta: "".into(),
            bounce_cat: "bad-mailbox".into(),
            src_mta: "".into(),
            dlv_source_ip: "".into(),
            dlv_destination_ip: "".into(),
            dlv_esmtp_available: true,
            dlv_size: 10,
            vmta: "".into(),
            job_id: "".into(),
            env_id: "".into(),
            queue: "d/".into(),
            vmta_pool: "".into(),
            rcv_smtp_user: "".into(),
            dlv_tls_protocol: "".into(),
            dlv_tls_cipher: "".into(),
            auth_results: "".into(),
            format: "".into(),
            feedback_type: "".into(),
            user_agent: "".into(),
            reporting_mta: "".into(),
            source_ip: "".into(),
            headers: Vec::new(),
        };
        let line = r.csv_line();
        assert!(line.starts_with("b,1970-01-01 00:00:00+0000,1970-01-01 00:00:00+0000,a@b,c@d,,failed,"), "{line}");
        assert!(line.contains(",\"smtp;550 5.1.1 \"\"x\"\", y\","), "{line}");
        assert_eq!(header_line().split(',').count(), COLUMNS.len());
    }
}
