//! HTTP injection, a SparkPost-compatible subset: `POST /api/v1/transmissions` with one
//! message and many recipients, answered once the message is on disk (fsynced), as SMTP's
//! 250.

use super::{error, json_response, Api, Request, Response};
use serde_json::{json, Value};
use sluice_engine::http::parse_transmission;
use sluice_netio::admin::Injection;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// `POST /api/v1/transmissions`, a SparkPost-compatible subset: one message, many recipients,
/// answered after the message is on disk (fsynced), as SMTP's 250.
/// `source`: a named `<source>` over the client address's (`{transmissions-api}` on the
/// Transmissions API's own listeners).
pub(super) async fn transmissions(api: &Arc<Api>, req: Request, source: Option<&'static str>) -> Response {
    let now_unix_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let t = match parse_transmission(&req.body, now_unix_ms) {
        Ok(t) => t,
        Err((status, why)) => return error(status, why),
    };
    let config = api.responder.config();
    let policy = config.policy_for(req.peer, source.as_slice());
    let lists = api.responder.lists();
    let mut rejected: Vec<Value> =
        t.rejected.iter().map(|(address, reason)| json!({ "address": address, "reason": reason })).collect();
    // Suppressed recipients are refused; a message left with none is not injected.
    let mut messages = Vec::new();
    for mut m in t.messages {
        m.recipients.retain(|address| {
            let lower = address.to_ascii_lowercase();
            let list = policy.suppression_lists.iter().find(|n| lists.get(n).is_some_and(|l| l.suppresses(&lower)));
            if let Some(list) = list {
                rejected.push(json!({ "address": address, "reason": format!("suppressed by list {list}") }));
            }
            list.is_none()
        });
        if !m.recipients.is_empty() {
            messages.push(m);
        }
    }
    if messages.is_empty() {
        return json_response(
            422,
            json!({ "results": { "total_accepted_recipients": 0, "total_rejected_recipients": rejected.len() }, "rejected": rejected }),
        );
    }
    if config.spool_deliver_only {
        return error(503, "not accepting new mail: the spool is deliver-only");
    }
    // Each message (one per recipient when it has substitutions) is handed to a shard; the
    // answer waits until every one is fsynced, as SMTP's 250 does.
    let n: usize = messages.iter().map(|m| m.recipients.len()).sum();
    let mut waits = Vec::with_capacity(messages.len());
    for m in messages {
        let (done, wait) = crossbeam_channel::bounded(1);
        let injection = Injection {
            mail_from: t.return_path.clone(),
            recipients: m.recipients,
            data: m.data,
            job_id: t.job_id.clone(),
            client_ip: req.peer,
            source,
            vmta: None,
            envid: None,
            src_mta: format!("http ({})", req.peer),
            done,
            moved: None,
        };
        let seq = api.injected.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = api.responder.inject(seq, injection) {
            let stored = waits.len();
            return error(503, format!("{e} ({stored} of the request's messages were stored; send the others again)"));
        }
        waits.push(wait);
    }
    let answer = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut ids = Vec::with_capacity(waits.len());
        for wait in waits {
            match wait.recv_deadline(deadline) {
                Ok(Ok(id)) => ids.push(id),
                Ok(Err(why)) => return Err(why),
                Err(_) => {
                    return Err("the spool did not answer in time; the message may not be stored, send it again".into())
                }
            }
        }
        Ok(ids)
    })
    .await;
    match answer {
        Ok(Ok(ids)) => json_response(
            200,
            json!({ "results": { "total_accepted_recipients": n, "total_rejected_recipients": rejected.len(), "id": ids[0], "ids": ids }, "rejected": rejected }),
        ),
        Ok(Err(why)) => error(503, why),
        Err(_) => error(503, "the spool did not answer in time; the message may not be stored, send it again"),
    }
}
