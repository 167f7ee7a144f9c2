//! What the management API reads from a request, sans-IO: the query string and the body of
//! an HTTP injection (`POST /api/v1/transmissions`, a SparkPost-compatible subset). Both come
//! from the network, so both are fuzzed (`fuzz/fuzz_targets/http_request.rs`).

use serde_json::Value;
use std::collections::HashMap;

/// Recipients in one injection request.
pub const INJECT_RCPTS_MAX: usize = 100_000;
/// Characters of `campaign_id` kept as the job id.
pub const CAMPAIGN_ID_CHARS_MAX: usize = 256;

/// `%XX` and `+` decoding of a query component (bytes that do not form UTF-8 become U+FFFD).
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes.get(i + 1..i + 3).and_then(hex_byte) {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Two hex digits as a byte (no sign, no space: `from_str_radix` would take `+1`).
pub(crate) fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    Some((digit(two[0])? * 16 + digit(two[1])?) as u8)
}

/// A query string as `name → value`, both decoded.
pub fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

/// A recipient address good enough to queue: one `@`, no spaces or angle brackets.
pub fn plausible_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && a.len() <= 320
        && !a.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'))
}

/// A message as RFC 5322 text → SMTP transparency form: CRLF line ends, a dot doubled at the
/// start of a line, ending with CRLF.
pub fn transparency_form(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 40 + 2);
    let mut line_start = true;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if line_start && b == b'.' {
            out.push(b'.');
        }
        match b {
            b'\r' if text.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
                line_start = true;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            _ => {
                out.push(b);
                line_start = false;
            }
        }
        i += 1;
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// An injection request's body, read: the message in transparency form, the return path, the
/// job, and the recipients (those that are no address are refused here, with why).
#[derive(Debug, PartialEq, Eq)]
pub struct Transmission {
    pub return_path: String,
    pub job_id: String,
    pub data: Vec<u8>,
    pub recipients: Vec<String>,
    /// `(address, reason)`.
    pub rejected: Vec<(String, String)>,
}

/// Reads `POST /api/v1/transmissions`'s body; an error is the HTTP status and why.
pub fn parse_transmission(body: &[u8]) -> Result<Transmission, (u16, String)> {
    let body: Value = serde_json::from_slice(body).map_err(|e| (400, format!("the body is not JSON: {e}")))?;
    let Some(content) = body.pointer("/content/email_rfc822").and_then(Value::as_str) else {
        return Err((422, "content.email_rfc822 is required (the whole message, headers and body)".into()));
    };
    let Some(recipients) = body.get("recipients").and_then(Value::as_array) else {
        return Err((422, "recipients is required: [{\"address\": \"a@example.com\"}, ...]".into()));
    };
    if recipients.len() > INJECT_RCPTS_MAX {
        return Err((413, format!("at most {INJECT_RCPTS_MAX} recipients per request")));
    }
    let return_path = body.get("return_path").and_then(Value::as_str).unwrap_or("").to_string();
    if !return_path.is_empty() && !plausible_address(&return_path) {
        return Err((422, format!("return_path `{return_path}` is not an address")));
    }
    let job_id = body.get("campaign_id").and_then(Value::as_str).unwrap_or("");
    let mut t = Transmission {
        return_path,
        job_id: job_id.chars().take(CAMPAIGN_ID_CHARS_MAX).collect(),
        data: transparency_form(content.as_bytes()),
        recipients: Vec::new(),
        rejected: Vec::new(),
    };
    for r in recipients {
        let address = match r.get("address") {
            Some(Value::String(s)) => s.as_str(),
            Some(Value::Object(o)) => o.get("email").and_then(Value::as_str).unwrap_or(""),
            _ => "",
        };
        let address = address.trim().to_string();
        if plausible_address(&address) {
            t.recipients.push(address);
        } else {
            t.rejected.push((address, "not an address".into()));
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded() {
        let q = parse_query("queue=gmail.com%2Fpool1&mode=backoff&x=a+b&bad=%zz&sign=%+1&end=%4");
        assert_eq!(q["queue"], "gmail.com/pool1");
        assert_eq!(q["mode"], "backoff");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["sign"], "% 1", "a sign is no hex digit");
        assert_eq!(q["end"], "%4");
        assert_eq!(url_decode("%C3%A9%"), "é%");
        assert_eq!(url_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn transparency_form_normalizes_line_ends_and_stuffs_dots() {
        assert_eq!(transparency_form(b"Subject: x\n\n.hidden\nend"), b"Subject: x\r\n\r\n..hidden\r\nend\r\n");
        assert_eq!(transparency_form(b"a\r\n.\r\n"), b"a\r\n..\r\n");
        assert_eq!(transparency_form(b"a\rb\r\n"), b"a\r\nb\r\n");
    }

    #[test]
    fn addresses_are_checked() {
        assert!(plausible_address("a@example.com"));
        assert!(!plausible_address("a@localhost"));
        assert!(!plausible_address("a b@example.com"));
        assert!(!plausible_address("<a@example.com>"));
        assert!(!plausible_address("example.com"));
    }

    #[test]
    fn a_transmission_is_read_and_its_refusals_say_why() {
        let body = br#"{"recipients":[{"address":"a@example.com"},{"address":{"email":" b@example.org "}},{"address":"nope"},7],
            "content":{"email_rfc822":"Subject: x\n\n.dot\n"},"return_path":"bounce@example.com","campaign_id":"c1"}"#;
        let t = parse_transmission(body).unwrap();
        assert_eq!(t.recipients, ["a@example.com", "b@example.org"]);
        assert_eq!(
            t.rejected,
            [("nope".to_string(), "not an address".to_string()), (String::new(), "not an address".to_string())]
        );
        assert_eq!(t.data, b"Subject: x\r\n\r\n..dot\r\n");
        assert_eq!((t.return_path.as_str(), t.job_id.as_str()), ("bounce@example.com", "c1"));
        assert_eq!(parse_transmission(b"{").unwrap_err().0, 400);
        assert_eq!(parse_transmission(br#"{"recipients":[]}"#).unwrap_err().0, 422);
        assert_eq!(parse_transmission(br#"{"content":{"email_rfc822":"x"}}"#).unwrap_err().0, 422);
        let bad_path = br#"{"content":{"email_rfc822":"x"},"recipients":[],"return_path":"x y"}"#;
        assert_eq!(parse_transmission(bad_path).unwrap_err().0, 422);
    }
}
