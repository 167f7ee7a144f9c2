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

/// An injection request's body, read: the messages in transparency form (one for every
/// recipient when the content has substitutions, else one for all), the return path, the
/// job, and the recipients that are no address, refused here with why.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmission {
    pub return_path: String,
    pub job_id: String,
    pub messages: Vec<Rendered>,
    /// `(address, reason)`.
    pub rejected: Vec<(String, String)>,
}

/// One message to inject and who it goes to.
#[derive(Debug, PartialEq, Eq)]
pub struct Rendered {
    pub data: Vec<u8>,
    pub recipients: Vec<String>,
}

impl Transmission {
    /// Every accepted recipient, over all messages.
    pub fn recipients(&self) -> impl Iterator<Item = &String> {
        self.messages.iter().flat_map(|m| m.recipients.iter())
    }
}

/// The most bytes the messages of one request may add up to once each recipient's
/// substitutions are made.
pub const INJECT_RENDERED_BYTES_MAX: usize = 256 << 20;

/// Reads `POST /api/v1/transmissions`'s body (SparkPost's shape); an error is the HTTP
/// status and why. The content is the whole message (`content.email_rfc822`) or its parts
/// (`content.from`, `subject`, `text`, `html`, `reply_to`, `headers`); `{{name}}` and
/// `{{{name}}}` in it take each recipient's `substitution_data`, then the request's (dotted
/// names reach into objects; HTML-escaped with two braces inside `html`, as SparkPost does).
/// `now_unix_ms` dates a message built from parts.
pub fn parse_transmission(body: &[u8], now_unix_ms: u64) -> Result<Transmission, (u16, String)> {
    let body: Value = serde_json::from_slice(body).map_err(|e| (400, format!("the body is not JSON: {e}")))?;
    let content = Content::read(&body)?;
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
    let empty = serde_json::Map::new();
    let global = body.get("substitution_data").and_then(Value::as_object).unwrap_or(&empty);
    let mut t = Transmission {
        return_path,
        job_id: job_id.chars().take(CAMPAIGN_ID_CHARS_MAX).collect(),
        messages: Vec::new(),
        rejected: Vec::new(),
    };
    let mut accepted = Vec::new();
    for r in recipients {
        let (address, header_to) = match r.get("address") {
            Some(Value::String(s)) => (s.as_str(), None),
            Some(Value::Object(o)) => (
                o.get("email").and_then(Value::as_str).unwrap_or(""),
                o.get("header_to")
                    .and_then(Value::as_str)
                    .or_else(|| o.get("name").and_then(Value::as_str).map(|_| "")),
            ),
            _ => ("", None),
        };
        let address = address.trim().to_string();
        if !plausible_address(&address) {
            t.rejected.push((address, "not an address".into()));
            continue;
        }
        let name = r.pointer("/address/name").and_then(Value::as_str).unwrap_or("").to_string();
        let own = r.get("substitution_data").and_then(Value::as_object).unwrap_or(&empty);
        accepted.push((address, header_to.filter(|h| !h.is_empty()).map(str::to_string), name, own));
    }
    if content.personal() {
        let mut total = 0usize;
        for (address, header_to, name, own) in accepted {
            let to = To { address: &address, header_to: header_to.as_deref(), name: &name };
            let data = content.render(&[own, global], Some(&to), now_unix_ms).map_err(|e| (422, e))?;
            total += data.len();
            if total > INJECT_RENDERED_BYTES_MAX {
                return Err((413, format!("the messages made for each recipient exceed {INJECT_RENDERED_BYTES_MAX} bytes: send fewer recipients per request")));
            }
            t.messages.push(Rendered { data, recipients: vec![address] });
        }
    } else if !accepted.is_empty() {
        let data = content.render(&[global], None, now_unix_ms).map_err(|e| (422, e))?;
        t.messages.push(Rendered { data, recipients: accepted.into_iter().map(|a| a.0).collect() });
    }
    Ok(t)
}

/// Who a personal message is for: its `To:` when the content is made from parts.
struct To<'a> {
    address: &'a str,
    header_to: Option<&'a str>,
    name: &'a str,
}

/// A transmission's content: the whole message, or its parts.
enum Content {
    Rfc822(String),
    Parts {
        from: String,
        subject: String,
        text: Option<String>,
        html: Option<String>,
        reply_to: Option<String>,
        headers: Vec<(String, String)>,
    },
}

impl Content {
    fn read(body: &Value) -> Result<Content, (u16, String)> {
        let Some(c) = body.get("content").and_then(Value::as_object) else {
            return Err((
                422,
                "content is required: {\"email_rfc822\": ...} or {\"from\", \"subject\", \"text\"/\"html\"}".into(),
            ));
        };
        if let Some(raw) = c.get("email_rfc822").and_then(Value::as_str) {
            return Ok(Content::Rfc822(raw.to_string()));
        }
        if c.contains_key("template_id") {
            return Err((
                422,
                "stored templates (content.template_id) are not supported: send the content itself".into(),
            ));
        }
        let from = match c.get("from") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => {
                let email = o.get("email").and_then(Value::as_str).unwrap_or("");
                match o.get("name").and_then(Value::as_str) {
                    Some(n) if !n.is_empty() => format!("{} <{email}>", phrase(n)),
                    _ => email.to_string(),
                }
            }
            _ => return Err((422, "content.from is required (or content.email_rfc822)".into())),
        };
        let text = c.get("text").and_then(Value::as_str).map(str::to_string);
        let html = c.get("html").and_then(Value::as_str).map(str::to_string);
        if text.is_none() && html.is_none() {
            return Err((422, "content.text or content.html is required (or content.email_rfc822)".into()));
        }
        let headers = c
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| h.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        Ok(Content::Parts {
            from,
            subject: c.get("subject").and_then(Value::as_str).unwrap_or("").to_string(),
            text,
            html,
            reply_to: c.get("reply_to").and_then(Value::as_str).map(str::to_string),
            headers,
        })
    }

    /// Whether each recipient needs a message of its own: substitutions, or a `To:` made
    /// for each from parts.
    fn personal(&self) -> bool {
        match self {
            Content::Rfc822(raw) => raw.contains("{{"),
            Content::Parts { .. } => true,
        }
    }

    /// The message in transparency form, substitutions made from `vars` (first wins).
    fn render(
        &self,
        vars: &[&serde_json::Map<String, Value>],
        to: Option<&To>,
        now_unix_ms: u64,
    ) -> Result<Vec<u8>, String> {
        let text = match self {
            Content::Rfc822(raw) => substitute(raw, vars, false)?,
            Content::Parts { from, subject, text, html, reply_to, headers } => {
                let mut m = String::new();
                m.push_str(&format!("From: {}\r\n", substitute(from, vars, false)?));
                if let Some(to) = to {
                    let shown = match (to.header_to, to.name) {
                        (Some(h), _) => h.to_string(),
                        (None, "") => to.address.to_string(),
                        (None, n) => format!("{} <{}>", phrase(n), to.address),
                    };
                    m.push_str(&format!("To: {shown}\r\n"));
                }
                if let Some(r) = reply_to {
                    m.push_str(&format!("Reply-To: {}\r\n", substitute(r, vars, false)?));
                }
                m.push_str(&format!("Subject: {}\r\n", encoded_word(&substitute(subject, vars, false)?)));
                m.push_str(&format!("Date: {}\r\n", crate::time::rfc5322_date(now_unix_ms)));
                for (k, v) in headers {
                    let v = substitute(v, vars, false)?;
                    if k.bytes().all(|b| b.is_ascii_graphic() && b != b':') && !v.contains(['\r', '\n']) {
                        m.push_str(&format!("{k}: {v}\r\n"));
                    }
                }
                m.push_str("MIME-Version: 1.0\r\n");
                let text = text.as_deref().map(|t| substitute(t, vars, false)).transpose()?;
                let html = html.as_deref().map(|h| substitute(h, vars, true)).transpose()?;
                match (text, html) {
                    (Some(t), Some(h)) => {
                        let boundary = format!("=_sluice_{now_unix_ms:x}");
                        m.push_str(&format!("Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n"));
                        for (kind, part) in [("plain", t), ("html", h)] {
                            m.push_str(&format!("--{boundary}\r\n"));
                            m.push_str(&part_of(kind, &part));
                        }
                        m.push_str(&format!("--{boundary}--\r\n"));
                    }
                    (Some(t), None) => m.push_str(&part_of("plain", &t)),
                    (None, Some(h)) => m.push_str(&part_of("html", &h)),
                    (None, None) => unreachable!("checked when read"),
                }
                m
            }
        };
        Ok(transparency_form(text.as_bytes()))
    }
}

/// A text part: its header, a blank line, the text (8-bit as it is, or quoted-printable
/// by the relay when a receiver lacks 8BITMIME).
fn part_of(kind: &str, body: &str) -> String {
    let encoding = if body.is_ascii() { "7bit" } else { "8bit" };
    format!("Content-Type: text/{kind}; charset=utf-8\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n{body}\r\n")
}

/// A display name as RFC 5322 allows it: quoted when it has specials.
fn phrase(name: &str) -> String {
    let name = name.replace(['\r', '\n'], " ");
    if !name.is_ascii() {
        return encoded_word(&name);
    }
    if name.chars().all(|c| c.is_ascii_alphanumeric() || " !#$%&'*+-/=?^_`{|}~".contains(c)) {
        name
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// RFC 2047: non-ASCII header text as `=?UTF-8?B?...?=`.
fn encoded_word(text: &str) -> String {
    let text = text.replace(['\r', '\n'], " ");
    if text.is_ascii() {
        return text;
    }
    use base64::Engine;
    format!("=?UTF-8?B?{}?=", base64::engine::general_purpose::STANDARD.encode(text.as_bytes()))
}

/// SparkPost's substitutions: `{{name}}` (HTML-escaped when `html`), `{{{name}}}` (as it
/// is), `a.b` reaching into objects; a name no data has is empty. Statements (`{{if}}`,
/// `{{each}}`) are refused rather than sent as they are.
pub fn substitute(template: &str, vars: &[&serde_json::Map<String, Value>], html: bool) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let (raw, open, close) = if after.starts_with("{{{") { (true, 3, "}}}") } else { (false, 2, "}}") };
        let Some(len) = after[open..].find(close) else {
            return Err(format!("`{}` is not closed", after.chars().take(20).collect::<String>()));
        };
        let name = after[open..open + len].trim();
        let first = name.split_whitespace().next().unwrap_or("");
        if matches!(first, "if" | "elseif" | "else" | "end" | "each" | "render_dynamic_content")
            || name.starts_with('!')
        {
            return Err(format!("`{{{{{name}}}}}`: template statements are not supported, only substitutions"));
        }
        let value = lookup(vars, name);
        match (html && !raw, value) {
            (true, v) => out.push_str(&html_escape(&v)),
            (false, v) => out.push_str(&v),
        }
        rest = &after[open + len + close.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup(vars: &[&serde_json::Map<String, Value>], name: &str) -> String {
    let mut path = name.split('.');
    let first = path.next().unwrap_or("");
    let Some(mut v) = vars.iter().find_map(|m| m.get(first)) else { return String::new() };
    for key in path {
        match v.get(key) {
            Some(inner) => v = inner,
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
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
        let t = parse_transmission(body, 0).unwrap();
        assert_eq!(t.recipients().collect::<Vec<_>>(), ["a@example.com", "b@example.org"]);
        assert_eq!(t.messages.len(), 1, "no substitutions: one message for all");
        assert_eq!(
            t.rejected,
            [("nope".to_string(), "not an address".to_string()), (String::new(), "not an address".to_string())]
        );
        assert_eq!(t.messages[0].data, b"Subject: x\r\n\r\n..dot\r\n");
        assert_eq!((t.return_path.as_str(), t.job_id.as_str()), ("bounce@example.com", "c1"));
        assert_eq!(parse_transmission(b"{", 0).unwrap_err().0, 400);
        assert_eq!(parse_transmission(br#"{"recipients":[]}"#, 0).unwrap_err().0, 422);
        assert_eq!(parse_transmission(br#"{"content":{"email_rfc822":"x"}}"#, 0).unwrap_err().0, 422);
        let bad_path = br#"{"content":{"email_rfc822":"x"},"recipients":[],"return_path":"x y"}"#;
        assert_eq!(parse_transmission(bad_path, 0).unwrap_err().0, 422);
    }

    /// SparkPost's substitution data: each recipient's over the request's, dotted names,
    /// HTML escaping with two braces, none with three; a message for each recipient.
    #[test]
    fn substitutions_make_a_message_for_each_recipient() {
        let body = br#"{"recipients":[
              {"address":{"email":"ann@example.com","name":"Ann Lee"},"substitution_data":{"first":"Ann","plan":{"name":"Gold"}}},
              {"address":"bob@example.com","substitution_data":{"first":"Bob & Co","link":"<a href=\"x\">x</a>"}}],
            "substitution_data":{"first":"friend","shop":"Shop"},
            "content":{"from":{"email":"news@shop.example","name":"The Shop"},"subject":"Hi {{first}}, {{ plan.name }}",
                       "text":"Dear {{first}} of {{shop}}.\n.dot line", "html":"<p>{{first}}</p>{{{link}}}"}}"#;
        let t = parse_transmission(body, 1_700_000_000_000).unwrap();
        assert_eq!(t.messages.len(), 2);
        let ann = String::from_utf8(t.messages[0].data.clone()).unwrap();
        assert_eq!(t.messages[0].recipients, ["ann@example.com"]);
        assert!(ann.starts_with("From: The Shop <news@shop.example>\r\nTo: Ann Lee <ann@example.com>\r\nSubject: Hi Ann, Gold\r\nDate: "), "{ann}");
        assert!(ann.contains("Dear Ann of Shop.\r\n..dot line\r\n"), "text substituted, dot stuffed: {ann}");
        assert!(ann.contains("<p>Ann</p>\r\n"), "{ann}");
        let bob = String::from_utf8(t.messages[1].data.clone()).unwrap();
        assert!(bob.contains("To: bob@example.com\r\n") && bob.contains("Subject: Hi Bob & Co, \r\n"), "{bob}");
        assert!(bob.contains("<p>Bob &amp; Co</p><a href=\"x\">x</a>"), "escaped with two braces, not three: {bob}");
        // The whole message with substitutions: personal too.
        let body = br#"{"recipients":[{"address":"a@example.com","substitution_data":{"n":"1"}},{"address":"b@example.com","substitution_data":{"n":2}}],
            "content":{"email_rfc822":"Subject: no. {{n}}\n\nbody {{missing}}\n"}}"#;
        let t = parse_transmission(body, 0).unwrap();
        let bodies: Vec<&[u8]> = t.messages.iter().map(|m| m.data.as_slice()).collect();
        assert_eq!(bodies, [&b"Subject: no. 1\r\n\r\nbody \r\n"[..], b"Subject: no. 2\r\n\r\nbody \r\n"]);
        // Statements and stored templates are refused, not sent as they are.
        let body = br#"{"recipients":[{"address":"a@example.com"}],"content":{"email_rfc822":"{{if x}}y{{end}}"}}"#;
        assert_eq!(parse_transmission(body, 0).unwrap_err().0, 422);
        let body = br#"{"recipients":[{"address":"a@example.com"}],"content":{"template_id":"t1"}}"#;
        assert!(parse_transmission(body, 0).unwrap_err().1.contains("template_id"));
    }
}
