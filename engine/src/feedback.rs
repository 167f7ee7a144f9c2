//! Reports that come back to a sender: feedback-loop reports — ARF (RFC 5965, multipart/report
//! with a message/feedback-report part and the returned message or its headers) and XARF v4
//! (JSON, as the body or an attachment) — each becoming an `f` accounting record; and
//! asynchronous bounces — DSNs (RFC 3464) as Postfix, Exchange and others write them — each
//! failed recipient becoming an `rb` record. Recipients that are redacted or missing are
//! recovered from a VERP address (`prefix+local=domain@host`) when there is one.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Feedback {
    /// `arf` or `xarf`.
    pub format: &'static str,
    /// ARF Feedback-Type (`abuse`, `fraud`, ...) or the XARF `class/type`.
    pub feedback_type: String,
    pub user_agent: String,
    pub reporting_mta: String,
    pub source_ip: String,
    /// The complaining recipient (Original-Rcpt-To, recovered when redacted).
    pub rcpt: String,
    /// The original envelope sender (Original-Mail-From, XARF smtp_from).
    pub orig: String,
    /// From the returned message's `x-job` header, when it has one.
    pub job_id: String,
    /// ARF `Reported-Domain` (XARF: the reported sender domain), when given.
    pub reported_domain: String,
    /// The reported message's header fields (names lower-cased), when the report returns it:
    /// the `header_*` accounting columns come from them.
    pub original: Vec<(String, String)>,
}

/// The values of `names` (as `acct-file` columns name them, any case) among a returned
/// message's header fields; empty where it has none.
pub fn header_values(original: &[(String, String)], names: &[String]) -> Vec<String> {
    names.iter().map(|n| returned_field(original, n).to_string()).collect()
}

/// One field of a returned message, by name in any case; empty where it has none.
pub fn returned_field<'a>(original: &'a [(String, String)], name: &str) -> &'a str {
    field(original, &name.to_ascii_lowercase()).unwrap_or("")
}

/// Header fields of a block (`Name: value`, folded lines joined), names lower-cased.
fn fields(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Splits a message into its header block and body.
fn split(message: &str) -> (&str, &str) {
    let message = message.trim_start_matches(['\r', '\n']);
    for sep in ["\r\n\r\n", "\n\n"] {
        if let Some(i) = message.find(sep) {
            return (&message[..i], &message[i + sep.len()..]);
        }
    }
    (message, "")
}

/// The parts of a multipart body: (header fields, body) each.
fn parts(headers: &[(String, String)], body: &str) -> Vec<(Vec<(String, String)>, String)> {
    let Some(ct) = field(headers, "content-type") else { return Vec::new() };
    let Some(boundary) = ct.split(';').find_map(|p| p.trim().strip_prefix("boundary=")) else { return Vec::new() };
    let delimiter = format!("--{}", boundary.trim_matches('"'));
    body.split(delimiter.as_str())
        .skip(1)
        .filter(|p| !p.starts_with("--"))
        .map(|p| {
            let (h, b) = split(p);
            (fields(h), b.to_string())
        })
        .collect()
}

fn bare(addr: &str) -> String {
    addr.trim().trim_start_matches('<').trim_end_matches('>').trim().to_ascii_lowercase()
}

/// `bounces+local=domain@host` → `local@domain`.
fn verp_recipient(return_path: &str) -> Option<String> {
    let (local, _) = return_path.split_once('@')?;
    let (_, encoded) = local.split_once('+')?;
    let (l, d) = encoded.rsplit_once('=')?;
    (!l.is_empty() && d.contains('.')).then(|| format!("{l}@{d}"))
}

fn is_redacted(rcpt: &str) -> bool {
    rcpt.is_empty() || rcpt.split('@').next().is_some_and(|l| l.contains("redacted") || l.chars().all(|c| c == 'x'))
}

fn mime_type(fields: &[(String, String)]) -> String {
    field(fields, "content-type").unwrap_or("text/plain").split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Parses a report, ARF or XARF; None when the message is neither.
pub fn parse(message: &str) -> Option<Feedback> {
    let (head, body) = split(message);
    let headers = fields(head);
    let parts = parts(&headers, body);
    if let Some((_, report)) = parts.iter().find(|(h, _)| mime_type(h) == "message/feedback-report") {
        return Some(arf(&headers, report, &parts));
    }
    // XARF: the body itself, or a JSON part (possibly base64).
    let mut candidates = vec![body.to_string()];
    for (h, b) in &parts {
        if mime_type(h).contains("json") {
            let b64 = field(h, "content-transfer-encoding").is_some_and(|e| e.eq_ignore_ascii_case("base64"));
            let text = if b64 {
                String::from_utf8(B64.decode(b.split_whitespace().collect::<String>()).ok()?).ok()?
            } else {
                b.clone()
            };
            candidates.push(text);
        }
    }
    candidates.iter().find_map(|c| xarf(c.trim()))
}

fn arf(headers: &[(String, String)], report: &str, parts: &[(Vec<(String, String)>, String)]) -> Feedback {
    let r = fields(report);
    let original = parts
        .iter()
        .find(|(h, _)| matches!(mime_type(h).as_str(), "message/rfc822" | "text/rfc822-headers"))
        .map(|(_, b)| fields(split(b).0))
        .unwrap_or_default();
    let orig = bare(field(&r, "original-mail-from").unwrap_or(""));
    let mut rcpt = bare(field(&r, "original-rcpt-to").or_else(|| field(&r, "removal-recipient")).unwrap_or(""));
    if is_redacted(&rcpt) {
        if let Some(v) = verp_recipient(&orig) {
            rcpt = v;
        }
    }
    let reporting_mta = field(&r, "reporting-mta")
        .map(|m| m.split_once(';').map_or(m, |(_, h)| h).trim().to_string())
        .unwrap_or_else(|| bare(field(headers, "from").unwrap_or("")));
    Feedback {
        format: "arf",
        feedback_type: field(&r, "feedback-type").unwrap_or("").to_ascii_lowercase(),
        user_agent: field(&r, "user-agent").unwrap_or("").to_string(),
        reporting_mta,
        source_ip: field(&r, "source-ip").unwrap_or("").to_string(),
        rcpt,
        orig,
        job_id: field(&original, "x-job").unwrap_or("").to_string(),
        reported_domain: field(&r, "reported-domain").unwrap_or("").trim().to_ascii_lowercase(),
        original,
    }
}

fn xarf(text: &str) -> Option<Feedback> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("xarf_version")?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let reporter = v.get("reporter");
    let r = |k: &str| reporter.and_then(|x| x.get(k)).and_then(|x| x.as_str()).unwrap_or("").to_string();
    // The returned message, when given as evidence, names the recipient and the job.
    let evidence = v.get("evidence").and_then(|e| e.as_array()).into_iter().flatten().find_map(|e| {
        let payload = e.get("payload")?.as_str()?;
        String::from_utf8(B64.decode(payload).ok()?).ok()
    });
    let original = evidence.map(|m| fields(split(&m).0)).unwrap_or_default();
    let orig = bare(&s("smtp_from"));
    let mut rcpt = bare(&s("smtp_to"));
    if rcpt.is_empty() {
        rcpt = bare(field(&original, "to").unwrap_or(""));
    }
    if is_redacted(&rcpt) {
        rcpt = verp_recipient(&orig).unwrap_or(rcpt);
    }
    Some(Feedback {
        format: "xarf",
        feedback_type: format!("{}/{}", s("class"), s("type")),
        user_agent: r("org"),
        reporting_mta: r("contact"),
        source_ip: s("source_identifier"),
        reported_domain: orig.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default(),
        rcpt,
        orig,
        job_id: field(&original, "x-job").unwrap_or("").to_string(),
        original,
    })
}

/// One recipient of an asynchronous bounce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteBounce {
    pub rcpt: String,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: String,
    /// The receiver's words (`smtp; 550 5.1.1 ...` without the type).
    pub diagnostic: String,
    /// The host that refused (Remote-MTA, else Reporting-MTA).
    pub mta: String,
    /// The Reporting-MTA (`dsnReportingMta`).
    pub reporting_mta: String,
    pub job_id: String,
    /// The original message's envelope sender: its returned `Return-Path`, else the address
    /// the bounce came to (the return path it was sent from, VERP or not).
    pub orig: String,
    /// The returned header fields of the original message (names lower-cased).
    pub original: Vec<(String, String)>,
}

/// The failed recipients of a DSN (`Action: failed`); None when the message is no DSN.
/// `envelope_rcpt` is the address the bounce came to: a VERP one names the recipient when
/// the report does not.
pub fn parse_dsn(message: &str, envelope_rcpt: &str) -> Option<Vec<RemoteBounce>> {
    let (head, body) = split(message);
    let headers = fields(head);
    let parts = parts(&headers, body);
    let (_, status) = parts.iter().find(|(h, _)| mime_type(h) == "message/delivery-status")?;
    let original = parts
        .iter()
        .find(|(h, _)| matches!(mime_type(h).as_str(), "message/rfc822" | "text/rfc822-headers"))
        .map(|(_, b)| fields(split(b).0))
        .unwrap_or_default();
    let job_id = field(&original, "x-job").unwrap_or("").to_string();
    // Blocks separated by blank lines: the per-message one, then one per recipient.
    let text = status.replace("\r\n", "\n");
    let mut blocks = text.split("\n\n").map(fields).filter(|b| !b.is_empty());
    let per_message = blocks.next().unwrap_or_default();
    let reporting = field(&per_message, "reporting-mta").map(type_value).unwrap_or_default();
    let verp = verp_recipient(envelope_rcpt);
    let orig =
        field(&original, "return-path").map(bare).filter(|o| !o.is_empty()).unwrap_or_else(|| bare(envelope_rcpt));
    let mut out = Vec::new();
    for b in blocks {
        if !field(&b, "action").is_some_and(|a| a.eq_ignore_ascii_case("failed")) {
            continue;
        }
        let mut rcpt = field(&b, "final-recipient").or_else(|| field(&b, "original-recipient")).map(type_value);
        if rcpt.as_deref().is_none_or(is_redacted) {
            rcpt = verp.clone().or(rcpt);
        }
        out.push(RemoteBounce {
            rcpt: rcpt.unwrap_or_default().to_ascii_lowercase(),
            status: field(&b, "status").unwrap_or("5.0.0").to_string(),
            diagnostic: field(&b, "diagnostic-code").map(type_value).unwrap_or_default(),
            mta: field(&b, "remote-mta").map(type_value).unwrap_or_else(|| reporting.clone()),
            reporting_mta: reporting.clone(),
            job_id: job_id.clone(),
            orig: orig.clone(),
            original: original.clone(),
        });
    }
    Some(out)
}

/// `rfc822; a@b` / `dns; host` / `smtp;550 ...` → the value.
fn type_value(v: &str) -> String {
    v.split_once(';').map_or(v, |(_, x)| x).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn rfc5965_report() {
        let f = parse(&fixture("arf/rfc5965-style-abuse.eml")).unwrap();
        assert_eq!(f.format, "arf");
        assert_eq!(f.feedback_type, "abuse");
        assert_eq!(f.user_agent, "SomeGenerator/1.0");
        assert_eq!(f.reporting_mta, "mail.mailbox-provider.example");
        assert_eq!(f.source_ip, "192.0.2.10");
        assert_eq!(f.rcpt, "complainer@mailbox-provider.example");
        assert_eq!(f.orig, "bounces+job42@bounces.example.com");
        assert_eq!(f.job_id, "job42");
    }

    #[test]
    fn provider_report_with_a_redacted_recipient() {
        let f = parse(&fixture("arf/redacted-provider-style.eml")).unwrap();
        assert_eq!((f.feedback_type.as_str(), f.user_agent.as_str()), ("abuse", "ProviderFBL/0.1"));
        assert_eq!(f.reporting_mta, "staff@feedback.mailbox-provider.example", "no Reporting-MTA: the sender");
        assert_eq!(f.job_id, "job7");
        assert_eq!(f.rcpt, "redacted@mailbox-provider.example", "no VERP to recover it from");
        // With a VERP return path the recipient comes back.
        let verp = fixture("arf/redacted-provider-style.eml")
            .replace("<bounce-job7@bounces.example.com>", "<bounce+jane=mailbox-provider.example@bounces.example.com>");
        assert_eq!(parse(&verp).unwrap().rcpt, "jane@mailbox-provider.example");
    }

    #[test]
    fn xarf_body_and_attachment() {
        let json = fixture("xarf/spam_spamcop_sample.json");
        let f =
            parse(&format!("From: reports@antispam-service.example\r\nContent-Type: application/json\r\n\r\n{json}"))
                .unwrap();
        assert_eq!(f.format, "xarf");
        assert_eq!(f.feedback_type, "messaging/spam");
        assert_eq!(f.user_agent, "Example Anti-Spam Service");
        assert_eq!(f.source_ip, "192.168.1.100");
        assert_eq!(f.orig, "marketing@example.com");
        let b64 = B64.encode(json.as_bytes());
        let mime = format!(
            "From: r@x\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nreport attached\r\n--b1\r\nContent-Type: application/json\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--b1--\r\n"
        );
        assert_eq!(parse(&mime).unwrap(), f);
        assert_eq!(parse("From: a@b\r\nSubject: hello\r\n\r\njust mail\r\n"), None);
    }

    fn dsn_fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/../tests/fixtures/dsn/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn postfix_and_exchange_dsns() {
        let p =
            parse_dsn(&dsn_fixture("postfix.eml"), "bounces+gone.user=receiver.example@bounces.example.com").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].rcpt.as_str(), p[0].status.as_str()), ("gone.user@receiver.example", "5.1.1"));
        assert_eq!(p[0].mta, "store.receiver.example");
        assert!(p[0].diagnostic.starts_with("550 5.1.1 <gone.user@receiver.example>: Recipient address rejected"));
        assert_eq!(p[0].job_id, "job-2026-11");
        let e = parse_dsn(&dsn_fixture("exchange.eml"), "bounces@bounces.example.com").unwrap();
        assert_eq!(
            (e[0].rcpt.as_str(), e[0].status.as_str(), e[0].mta.as_str()),
            ("full.box@corp.example", "5.2.2", "EX01.corp.example")
        );
        assert!(e[0].diagnostic.starts_with("552 5.2.2 mailbox full"));
        assert_eq!(parse_dsn("From: a@b\r\n\r\nhello\r\n", ""), None);
    }
}
