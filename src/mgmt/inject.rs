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
pub(super) async fn transmissions(api: &Arc<Api>, req: Request) -> Response {
    let t = match parse_transmission(&req.body) {
        Ok(t) => t,
        Err((status, why)) => return error(status, why),
    };
    let config = api.responder.config();
    let policy = config.source_policy(req.peer);
    let lists = api.responder.lists();
    let mut rejected: Vec<Value> =
        t.rejected.iter().map(|(address, reason)| json!({ "address": address, "reason": reason })).collect();
    let mut accepted = Vec::new();
    for address in t.recipients {
        let lower = address.to_ascii_lowercase();
        if let Some(list) = policy.suppression_lists.iter().find(|n| lists.get(n).is_some_and(|l| l.suppresses(&lower)))
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
        mail_from: t.return_path,
        recipients: accepted,
        data: t.data,
        job_id: t.job_id,
        client_ip: req.peer,
        source: None,
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
