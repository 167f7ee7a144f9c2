//! HTTP injection, a SparkPost-compatible subset: `POST /api/v1/transmissions` with one
//! message and many recipients, answered once the message is on disk (fsynced), as SMTP's
//! 250.

use super::{error, json_response, Api, Request, Response};
use serde_json::{json, Value};
use sluice_netio::admin::Injection;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Recipients in one injection request.
const INJECT_RCPTS_MAX: usize = 100_000;

/// A recipient address good enough to queue: one `@`, no spaces or angle brackets.
fn plausible_address(a: &str) -> bool {
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

/// `POST /api/v1/transmissions`, a SparkPost-compatible subset: one message, many recipients,
/// answered after the message is on disk (fsynced), as SMTP's 250.
pub(super) async fn transmissions(api: &Arc<Api>, req: Request) -> Response {
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => return error(400, format!("the body is not JSON: {e}")),
    };
    let Some(content) = body.pointer("/content/email_rfc822").and_then(Value::as_str) else {
        return error(422, "content.email_rfc822 is required (the whole message, headers and body)");
    };
    let Some(recipients) = body.get("recipients").and_then(Value::as_array) else {
        return error(422, "recipients is required: [{\"address\": \"a@example.com\"}, ...]");
    };
    if recipients.len() > INJECT_RCPTS_MAX {
        return error(413, format!("at most {INJECT_RCPTS_MAX} recipients per request"));
    }
    let return_path = body.get("return_path").and_then(Value::as_str).unwrap_or("").to_string();
    if !return_path.is_empty() && !plausible_address(&return_path) {
        return error(422, format!("return_path `{return_path}` is not an address"));
    }
    let job_id: String = body.get("campaign_id").and_then(Value::as_str).unwrap_or("").chars().take(256).collect();
    let config = api.responder.config();
    let policy = config.source_policy(req.peer);
    let lists = api.responder.lists();
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for r in recipients {
        let address = match r.get("address") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => o.get("email").and_then(Value::as_str).unwrap_or("").to_string(),
            _ => String::new(),
        };
        let address = address.trim().to_string();
        if !plausible_address(&address) {
            rejected.push(json!({ "address": address, "reason": "not an address" }));
            continue;
        }
        let lower = address.to_ascii_lowercase();
        if let Some(list) =
            policy.suppression_lists.iter().find(|n| lists.get(*n).is_some_and(|l| l.suppresses(&lower)))
        {
            rejected.push(json!({ "address": address, "reason": format!("suppressed by list {list}") }));
            continue;
        }
        accepted.push(address);
    }
    if accepted.is_empty() {
        return json_response(
            422,
            json!({ "results": { "total_accepted_recipients": 0, "total_rejected_recipients": rejected.len() }, "rejected": rejected }),
        );
    }
    if config.spool_deliver_only {
        return error(503, "not accepting new mail: the spool is deliver-only");
    }
    let n = accepted.len();
    let (done, wait) = crossbeam_channel::bounded(1);
    let injection = Injection {
        mail_from: return_path,
        recipients: accepted,
        data: transparency_form(content.as_bytes()),
        job_id,
        client_ip: req.peer,
        src_mta: format!("http ({})", req.peer),
        done,
        moved: None,
    };
    let seq = api.injected.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = api.responder.inject(seq, injection) {
        return error(503, e);
    }
    // The shard answers once the message is fsynced.
    let answer = tokio::task::spawn_blocking(move || wait.recv_timeout(Duration::from_secs(60))).await;
    match answer {
        Ok(Ok(Ok(id))) => json_response(
            200,
            json!({ "results": { "total_accepted_recipients": n, "total_rejected_recipients": rejected.len(), "id": id }, "rejected": rejected }),
        ),
        Ok(Ok(Err(why))) => error(503, why),
        _ => error(503, "the spool did not answer in time; the message may not be stored, send it again"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
