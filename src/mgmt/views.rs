//! The JSON pages of the management API, built from the shards' snapshots, the totals and
//! what the accounting records told the observer; and the operator's commands.

use super::{error, fail, json_response, Api, Fail, Request, Response};
use serde_json::{json, Value};
use sluice_netio::admin::{AdminCmd, AdminReply, JobInfo, QueueInfo, Selector, Snapshot};
use std::collections::HashMap;

fn snapshot(api: &Api) -> Result<Snapshot, Fail> {
    let replies = api.responder.admin(AdminCmd::Snapshot).map_err(|e| fail(503, e))?;
    let mut all = Snapshot::default();
    for r in replies {
        if let AdminReply::Snapshot(s) = r {
            all.queues.extend(s.queues);
            all.conns_out += s.conns_out;
            for j in s.jobs {
                match all.jobs.iter_mut().find(|x| x.id == j.id) {
                    Some(x) => {
                        x.rcpts += j.rcpts;
                        x.bytes += j.bytes;
                        x.paused |= j.paused;
                    }
                    None => all.jobs.push(j),
                }
            }
        }
    }
    Ok(all)
}

fn act_on_shards(api: &Api, cmd: AdminCmd) -> Result<u64, Fail> {
    let replies = api.responder.admin(cmd).map_err(|e| fail(503, e))?;
    Ok(replies.iter().map(|r| if let AdminReply::Affected(n) = r { *n } else { 0 }).sum())
}

fn selector(req: &Request) -> Result<Selector, Fail> {
    let q = req.param("queue").ok_or_else(|| fail(400, "say which queue: ?queue=DOMAIN/VMTA (either may be *)"))?;
    Selector::parse(q).map_err(|e| fail(400, e))
}

fn queue_json(q: &QueueInfo, now: u64) -> Value {
    json!({
        "queue": format!("{}/{}", q.domain, q.vmta),
        "domain": q.domain,
        "vmta": q.vmta,
        "rcpts": q.rcpts,
        "messages": q.jobs,
        "bytes": q.bytes,
        "oldestAgeS": if q.oldest_unix_ms == 0 { 0 } else { now.saturating_sub(q.oldest_unix_ms) / 1000 },
        "connections": q.connections,
        "mode": q.mode,
        "nextRetryInS": if q.next_retry_unix_ms == 0 { Value::Null } else { json!(q.next_retry_unix_ms.saturating_sub(now) / 1000) },
        "lastError": q.last_error,
        "dns": q.dns,
        "shard": q.shard,
    })
}

fn job_json(j: &JobInfo) -> Value {
    json!({ "jobId": j.id, "rcpts": j.rcpts, "bytes": j.bytes, "state": if j.paused { "paused" } else { "active" } })
}

fn traffic(t: sluice_netio::admin::Totals) -> Value {
    json!({
        "in": { "msg": t.msgs_in, "rcpt": t.rcpts_in, "kb": t.bytes_in / 1024 },
        "out": { "msg": t.msgs_out, "rcpt": t.rcpts_out, "kb": t.bytes_out / 1024 },
        "bounced": { "rcpt": t.rcpts_bounced },
        "deferred": { "rcpt": t.rcpts_deferred },
        "connectionPanics": t.connection_panics,
    })
}

/// Bytes and files under the spool directory.
fn spool_use(dir: &std::path::Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    bytes += m.len();
                    files += 1;
                }
                Err(_) => {}
            }
        }
    }
    (bytes, files)
}

/// `startup-delivery-delay` and `startup-ramp`: where the daemon is in its start.
fn startup_json(config: &sluice_config::Config, elapsed_ms: u64, recovered: usize) -> Value {
    match config.startup(elapsed_ms) {
        sluice_config::Startup::Delaying { left_ms } => {
            json!({ "state": "delaying", "deliveryStartsInS": left_ms.div_ceil(1000), "recoveredMessages": recovered })
        }
        sluice_config::Startup::Ramping { share } => {
            json!({ "state": "ramping", "limitsPercent": (share * 100.0).round() as u64, "recoveredMessages": recovered })
        }
        sluice_config::Startup::Running => json!({ "state": "running", "recoveredMessages": recovered }),
    }
}

/// `/status`, from a snapshot of the shards' queues.
fn status_json(api: &Api, snap: &Snapshot) -> Value {
    let now = crate::clock::unix_ms();
    let totals = api.responder.totals();
    let (last_min, last_hr) = {
        let h = api.history.lock().expect("not poisoned");
        (h.over(60, totals), h.over(3600, totals))
    };
    let config = api.responder.config();
    let (spool_bytes, spool_files) = spool_use(&config.spool_dir);
    let mut lists: Vec<Value> = api
        .responder
        .lists()
        .iter()
        .map(|(name, l)| json!({ "name": name, "refused": l.hits(), "hashed": l.hashed.iter().map(|h| h.len()).sum::<usize>(), "addresses": l.addresses.len() }))
        .collect();
    lists.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "hostName": config.host_name,
        "uptimeS": now.saturating_sub(api.responder.started_unix_ms()) / 1000,
        "startup": startup_json(&config, now.saturating_sub(api.responder.started_unix_ms()), api.recovered_messages),
        "shards": api.responder.shards(),
        "trafficClasses": classes_json(api.responder.shard_sets()),
        "traffic": { "total": traffic(totals), "lastHr": traffic(last_hr), "lastMin": traffic(last_min) },
        "conn": { "smtpIn": api.responder.inbound_connections(), "smtpOut": snap.conns_out },
        "queue": {
            "rcpt": snap.queues.iter().map(|q| q.rcpts).sum::<u64>(),
            "kb": snap.queues.iter().map(|q| q.bytes).sum::<u64>() / 1024,
            "queues": snap.queues.len(),
            "paused": snap.queues.iter().filter(|q| q.mode == "paused").count(),
        },
        "spool": { "dir": config.spool_dir.display().to_string(), "files": spool_files, "kb": spool_bytes / 1024 },
        "suppressionLists": lists,
        "cluster": cluster_json(api),
    })
}

/// Which shards run what: each `<traffic-class>`'s, and the rest (`general`).
fn classes_json(sets: &sluice_config::ShardSets) -> Value {
    let shards = |r: &std::ops::Range<u32>| r.clone().collect::<Vec<u32>>();
    json!({
        "general": shards(&sets.general),
        "classes": sets.classes.iter().map(|(name, r)| json!({ "name": name, "shards": shards(r) })).collect::<Vec<_>>(),
    })
}

/// The fleet as this host sees it (null when not one of a fleet).
fn cluster_json(api: &Api) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(fleet) = &api.cluster else { return Value::Null };
    let st = &fleet.status;
    let cells = api.responder.source_limits().cluster.as_ref().map(|c| c.all()).unwrap_or_default();
    let mut limits: Vec<Value> = cells
        .iter()
        .map(|(domain, c)| {
            json!({
                "domain": domain,
                "rate": c.rate.map(|r| format!("{}/{}s", r.count, r.period.as_secs_f64())),
                "maxSmtpOut": c.cap,
                "tokens": c.tokens.load(Relaxed).max(0),
                "slots": c.slots.load(Relaxed),
                "connections": c.conns.load(Relaxed),
            })
        })
        .collect();
    limits.sort_by(|a, b| a["domain"].as_str().cmp(&b["domain"].as_str()));
    json!({
        "node": st.node,
        "connected": st.connected.load(Relaxed),
        "tokensGranted": st.tokens_granted.load(Relaxed),
        "slotsHeld": st.slots_held.load(Relaxed),
        "redisLost": st.lost_connection.load(Relaxed),
        "limits": limits,
        "spoolTakeover": st.takeover.as_ref().map(|t| json!({
            "epoch": t.epoch.load(Relaxed),
            "leaseHeld": t.lease_held.load(Relaxed),
            "adoptions": t.adoptions.load(Relaxed),
            "adoptedMessages": t.adopted_messages.load(Relaxed),
            "adopting": *t.adopting.lock().expect("no panics under the lock"),
        })),
    })
}

/// A page built from the shards' answers (an error page when they do not answer).
fn page(build: impl FnOnce() -> Result<Response, Fail>) -> Response {
    build().unwrap_or_else(Response::from)
}

pub(super) fn status(api: &Api) -> Response {
    page(|| Ok(json_response(200, status_json(api, &snapshot(api)?))))
}

/// `/queues` (`?sort=age|name`, `?limit=N`) and `/topqueues` (the 20 largest).
pub(super) fn queues(api: &Api, req: &Request) -> Response {
    page(|| {
        let now = crate::clock::unix_ms();
        let mut qs = snapshot(api)?.queues;
        match req.param("sort") {
            Some("age") => qs.sort_by_key(|q| if q.oldest_unix_ms == 0 { u64::MAX } else { q.oldest_unix_ms }),
            Some("name") => qs.sort_by(|a, b| (&a.domain, &a.vmta).cmp(&(&b.domain, &b.vmta))),
            _ => qs.sort_by(|a, b| b.rcpts.cmp(&a.rcpts).then(a.domain.cmp(&b.domain))),
        }
        let top = req.path == "/topqueues";
        let limit = req.param("limit").and_then(|l| l.parse().ok()).unwrap_or(if top { 20 } else { usize::MAX });
        let list: Vec<Value> = qs.iter().take(limit).map(|q| queue_json(q, now)).collect();
        Ok(json_response(200, json!({ "queues": list })))
    })
}

pub(super) fn queue_detail(api: &Api, req: &Request) -> Response {
    page(|| {
        let now = crate::clock::unix_ms();
        let sel = selector(req)?;
        let qs: Vec<Value> = snapshot(api)?
            .queues
            .iter()
            .filter(|q| sel.matches(&q.domain, &q.vmta))
            .map(|q| queue_json(q, now))
            .collect();
        if qs.is_empty() {
            return Err(fail(404, format!("no queue {sel} holds mail now")));
        }
        Ok(json_response(200, json!({ "queues": qs })))
    })
}

pub(super) fn domains(api: &Api, req: &Request) -> Response {
    page(|| {
        let snap = snapshot(api)?;
        let observer = api.observer.lock().expect("not poisoned");
        let mut by: HashMap<String, (u64, u64, u32)> = HashMap::new();
        for q in &snap.queues {
            let e = by.entry(q.domain.clone()).or_default();
            e.0 += q.rcpts;
            e.1 += q.bytes;
            e.2 += q.connections;
        }
        for d in observer.by_domain.keys() {
            by.entry(d.clone()).or_default();
        }
        let mut list: Vec<(String, (u64, u64, u32))> = by.into_iter().collect();
        list.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        let list: Vec<Value> = list
            .iter()
            .take(req.param("limit").and_then(|l| l.parse().ok()).unwrap_or(1000))
            .map(|(d, (rcpts, bytes, conns))| {
                let o = observer.by_domain.get(d).copied().unwrap_or_default();
                json!({ "domain": d, "rcpts": rcpts, "kb": bytes / 1024, "connections": conns, "delivered": o.delivered, "bounced": o.bounced, "deferred": o.deferred })
            })
            .collect();
        Ok(json_response(200, json!({ "domains": list })))
    })
}

pub(super) fn vmtas(api: &Api) -> Response {
    page(|| {
        let snap = snapshot(api)?;
        let config = api.responder.config();
        let observer = api.observer.lock().expect("not poisoned");
        let mut names: Vec<String> = config.vmtas.keys().cloned().collect();
        names.extend(config.pools.keys().cloned());
        names.extend(snap.queues.iter().map(|q| q.vmta.clone()));
        names.extend(observer.by_vmta.keys().cloned());
        names.sort();
        names.dedup();
        let list: Vec<Value> = names
            .iter()
            .map(|v| {
                let qs = snap.queues.iter().filter(|q| q.vmta == *v);
                let o = observer.by_vmta.get(v).copied().unwrap_or_default();
                json!({
                    "vmta": v,
                    "pool": config.pools.contains_key(v),
                    "rcpts": qs.clone().map(|q| q.rcpts).sum::<u64>(),
                    "connections": qs.clone().map(|q| q.connections).sum::<u32>(),
                    "queues": qs.count(),
                    "delivered": o.delivered, "bounced": o.bounced, "deferred": o.deferred,
                })
            })
            .collect();
        Ok(json_response(200, json!({ "vmtas": list })))
    })
}

pub(super) fn jobs(api: &Api) -> Response {
    page(|| {
        let mut jobs = snapshot(api)?.jobs;
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(json_response(200, json!({ "jobs": jobs.iter().map(job_json).collect::<Vec<_>>() })))
    })
}

pub(super) fn settings(api: &Api, req: &Request) -> Response {
    page(|| {
        let sel = selector(req)?;
        let config = api.responder.config();
        let vmta = if sel.vmta == "*" { "default" } else { sel.vmta.as_str() };
        let s = config.queue_settings(&sel.domain, vmta);
        Ok(json_response(200, json!({ "queue": format!("{}/{vmta}", sel.domain), "settings": format!("{s:#?}") })))
    })
}

/// The operator's commands (`/pause`, `/resume`, `/schedule`, `/setMode`, `/pauseJob`,
/// `/resumeJob`, `/delete`), each sent to every shard.
pub(super) fn act(api: &Api, req: &Request) -> Response {
    page(|| {
        let (key, cmd) = command(&req.path, &|name| req.param(name).map(str::to_string))?;
        let mut answer = serde_json::Map::new();
        answer.insert(key.to_string(), json!(act_on_shards(api, cmd)?));
        // One of a fleet: the other hosts do the same (`src/cluster.rs`).
        if let Some(fleet) = &api.cluster {
            fleet.publish(&req.path, &query_text(req));
        }
        Ok(json_response(200, Value::Object(answer)))
    })
}

/// The parameters an operator command reads, as `k=v&k=v` (for the fleet's channel).
fn query_text(req: &Request) -> String {
    let esc = |v: &str| v.replace('%', "%25").replace('&', "%26").replace('=', "%3D");
    ["queue", "jobId", "mode"]
        .iter()
        .filter_map(|k| req.param(k).map(|v| format!("{k}={}", esc(v))))
        .collect::<Vec<_>>()
        .join("&")
}

/// An operator command another host of the fleet published: run here too.
pub fn apply_remote(responder: &sluice_netio::Responder, path: &str, query: &str) {
    let params: std::collections::HashMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%26", "&").replace("%25", "%")))
        .collect();
    match command(path, &|name| params.get(name).cloned()) {
        Ok((_, cmd)) => {
            if let Err(e) = responder.admin(cmd) {
                tracing::warn!(%path, %query, error = %e, "cluster: command from the fleet not applied");
            }
        }
        Err(Fail(_, why)) => tracing::warn!(%path, %query, %why, "cluster: unknown command from the fleet"),
    }
}

/// The shard command for an operator request (path and its parameters).
fn command(path: &str, param: &dyn Fn(&str) -> Option<String>) -> Result<(&'static str, AdminCmd), Fail> {
    let selector = || {
        let q = param("queue").ok_or_else(|| fail(400, "say which queue: ?queue=DOMAIN/VMTA (either may be *)"))?;
        Selector::parse(&q).map_err(|e| fail(400, e))
    };
    let job_id = || param("jobId").ok_or_else(|| fail(400, "say which job: ?jobId=ID"));
    Ok(match path {
        "/pause" => ("paused", AdminCmd::Pause(selector()?)),
        "/resume" => ("resumed", AdminCmd::Resume(selector()?)),
        "/schedule" => ("scheduled", AdminCmd::Schedule(selector()?)),
        "/setMode" => {
            let backoff = match param("mode").as_deref() {
                Some("backoff") => true,
                Some("normal") => false,
                _ => return Err(fail(400, "say ?mode=backoff or ?mode=normal")),
            };
            ("changed", AdminCmd::SetMode(selector()?, backoff))
        }
        "/pauseJob" => ("held", AdminCmd::PauseJob(job_id()?)),
        "/resumeJob" => ("released", AdminCmd::ResumeJob(job_id()?)),
        "/delete" => match (param("queue"), param("jobId")) {
            (Some(_), None) => ("deleted", AdminCmd::Delete(selector()?)),
            (None, Some(id)) => ("deleted", AdminCmd::DeleteJob(id)),
            _ => return Err(fail(400, "say ?queue=DOMAIN/VMTA or ?jobId=ID")),
        },
        _ => return Err(fail(404, "no such command")),
    })
}

pub(super) fn ui_data(api: &Api) -> Response {
    page(|| Ok(json_response(200, ui_value(api)?)))
}

/// Everything the dashboard draws, in one request.
fn ui_value(api: &Api) -> Result<Value, Fail> {
    let now = crate::clock::unix_ms();
    let snap = snapshot(api)?;
    let status = status_json(api, &snap);
    let (minute, hour) = {
        let h = api.history.lock().expect("not poisoned");
        (h.series(1, 60), h.series(60, 60))
    };
    let o = api.observer.lock().expect("not poisoned");
    let (top, _) = o.top_domains(10);
    let mut queues = snap.queues.clone();
    queues.sort_by_key(|q| std::cmp::Reverse(q.rcpts));
    Ok(json!({
        "status": status,
        "lastMinute": minute.iter().map(|(t, i, d)| json!([t, i, d])).collect::<Vec<_>>(),
        "lastHour": hour.iter().map(|(t, i, d)| json!([t, i, d])).collect::<Vec<_>>(),
        "queues": queues.iter().take(200).map(|q| queue_json(q, now)).collect::<Vec<_>>(),
        "topDomains": top.iter().map(|(d, c)| json!({ "domain": d, "delivered": c.delivered, "bounced": c.bounced, "deferred": c.deferred })).collect::<Vec<_>>(),
        "recentErrors": o.recent_errors.iter().rev().map(|e| json!({ "timeMs": e.time_ms, "type": e.kind, "queue": e.queue, "domain": e.rcpt_domain, "diag": e.diag })).collect::<Vec<_>>(),
    }))
}

pub(super) async fn resolve(api: &Api, req: &Request) -> Response {
    let Some(domain) = req.param("domain") else { return error(400, "say ?domain=DOMAIN") };
    let config = api.responder.config();
    let domain = domain.to_ascii_lowercase();
    let static_hosts = config.domain_settings(&domain).smtp_hosts.clone();
    let (resolution, ttl_ms, mx) = crate::dns::resolve(&api.resolver, &domain, static_hosts).await;
    let hops = match resolution {
        sluice_netio::Resolution::Hops(levels) => json!(levels
            .iter()
            .map(|l| l.iter().map(|h| json!({ "host": h.host, "address": h.addr.to_string() })).collect::<Vec<_>>())
            .collect::<Vec<_>>()),
        sluice_netio::Resolution::NoMx(own) => json!([own
            .iter()
            .map(|h| json!({ "host": h.host, "address": h.addr.to_string(), "implicitMx": true }))
            .collect::<Vec<_>>()]),
        sluice_netio::Resolution::Permanent(r) => json!({ "permanentFailure": r.line() }),
        sluice_netio::Resolution::Temporary(r) => json!({ "temporaryFailure": r.line() }),
    };
    json_response(
        200,
        json!({ "domain": domain, "hops": hops, "ttlS": ttl_ms / 1000, "mx": mx.map(|m| m.iter().map(|(p, h)| json!([p, h])).collect::<Vec<_>>()) }),
    )
}
