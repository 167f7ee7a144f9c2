//! The management API (`http-mgmt-port`) on the control-plane thread: JSON status pages,
//! Prometheus metrics, queue and job control, reload, HTTP injection, and the web monitor
//! under `/ui`. Only these routes exist: no path is ever mapped to a file.
//!
//! Access: `http-access CIDR LEVEL` gives each client address a level (monitor < operator <
//! admin); a request bearing the configured `http-api-key` in `X-API-Key` is admin (a
//! wrong key is refused outright). HTTP/1.1, one request per connection.

pub mod stats;

use crate::reload::Reloader;
use serde_json::{json, Value};
use sluice_config::Access;
use sluice_netio::admin::{AdminCmd, AdminReply, Injection, JobInfo, QueueInfo, Selector, Snapshot};
use sluice_netio::Responder;
use stats::{History, Observer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The request head (request line and headers) may not exceed this.
const HEAD_BYTES_MAX: usize = 16 * 1024;
/// A request body (an injected message with its recipients) may not exceed this.
const BODY_BYTES_MAX: usize = 64 << 20;
/// A client must send its whole request within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Recipients in one injection request.
const INJECT_RCPTS_MAX: usize = 100_000;
/// Connections served at once; more wait in the kernel's backlog.
const CONNECTIONS_MAX: usize = 256;

const UI_HTML: &str = include_str!("ui.html");

/// What the API reads and steers.
pub struct Api {
    pub responder: Responder,
    pub reloader: Arc<Reloader>,
    pub observer: Arc<Mutex<Observer>>,
    pub history: Arc<Mutex<History>>,
    pub resolver: Arc<hickory_resolver::TokioAsyncResolver>,
    pub recovered_messages: usize,
    injected: AtomicU64,
}

impl Api {
    pub fn new(
        responder: Responder,
        reloader: Arc<Reloader>,
        observer: Arc<Mutex<Observer>>,
        resolver: Arc<hickory_resolver::TokioAsyncResolver>,
        recovered_messages: usize,
    ) -> Api {
        Api {
            responder,
            reloader,
            observer,
            history: Arc::new(Mutex::new(History::default())),
            resolver,
            recovered_messages,
            injected: AtomicU64::new(0),
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    api_key: Option<String>,
    body: Vec<u8>,
    peer: IpAddr,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

pub struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    /// The status line and headers (one request per connection).
    fn head(&self) -> String {
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        )
    }
}

fn json_response(status: u16, v: Value) -> Response {
    let mut body = serde_json::to_vec_pretty(&v).expect("JSON values serialize");
    body.push(b'\n');
    Response { status, content_type: "application/json", body }
}

fn error(status: u16, message: impl Into<String>) -> Response {
    json_response(status, json!({ "error": message.into() }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Compares secrets in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not secret; the bytes are all compared whatever differs.
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// `%XX` and `+` decoding of a query component.
fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

/// Serves the API until the process ends.
pub async fn serve(api: Arc<Api>, listener: tokio::net::TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "management API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let api = api.clone();
        tokio::spawn(async move {
            let _permit = permit;
            connection(api, sock, peer).await;
        });
    }
}

async fn connection(api: Arc<Api>, mut sock: tokio::net::TcpStream, peer: SocketAddr) {
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut sock, peer.ip())).await {
        Ok(Ok(req)) => {
            let (method, path) = (req.method.clone(), req.path.clone());
            let resp = route(&api, req).await;
            tracing::debug!(%peer, %method, %path, status = resp.status, "management API request");
            resp
        }
        Ok(Err(resp)) => resp,
        Err(_) => error(408, "the request did not arrive in time"),
    };
    let _ = sock.write_all(response.head().as_bytes()).await;
    let _ = sock.write_all(&response.body).await;
    let _ = sock.shutdown().await;
}

async fn read_request(sock: &mut tokio::net::TcpStream, peer: IpAddr) -> Result<Request, Response> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let (head_len, method, target, length, api_key) = loop {
        let n = sock.read(&mut chunk).await.map_err(|_| error(400, "read failed"))?;
        if n == 0 {
            return Err(error(400, "the connection closed before a whole request"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let mut length = 0usize;
                let mut api_key = None;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or_else(|| error(400, "bad Content-Length"))?;
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(error(411, "send the body with a Content-Length"));
                    } else if h.name.eq_ignore_ascii_case("x-api-key") {
                        api_key = Some(String::from_utf8_lossy(h.value).trim().to_string());
                    }
                }
                let method = req.method.unwrap_or("").to_string();
                let target = req.path.unwrap_or("/").to_string();
                break (head_len, method, target, length, api_key);
            }
            Ok(httparse::Status::Partial) if buf.len() < HEAD_BYTES_MAX => continue,
            Ok(httparse::Status::Partial) => return Err(error(431, "the request head is too large")),
            Err(e) => return Err(error(400, format!("malformed request: {e}"))),
        }
    };
    if length > BODY_BYTES_MAX {
        return Err(error(413, format!("the body may not exceed {} MiB", BODY_BYTES_MAX >> 20)));
    }
    let mut body = buf.split_off(head_len);
    while body.len() < length {
        let n = sock.read(&mut chunk).await.map_err(|_| error(400, "read failed"))?;
        if n == 0 {
            return Err(error(400, "the connection closed before the whole body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    Ok(Request { method, path: path.to_string(), query: parse_query(query), api_key, body, peer })
}

/// What a client may do: its address's level, or admin with the right API key.
fn access(api: &Api, req: &Request) -> Result<Access, Response> {
    let config = api.responder.config();
    let Some(mgmt) = &config.mgmt else { return Err(error(403, "the management API is off")) };
    let by_address = mgmt.access_of(req.peer);
    if by_address == Access::None {
        return Err(error(403, format!("{} has no access (http-access)", req.peer)));
    }
    match (&req.api_key, &mgmt.api_key) {
        (None, _) => Ok(by_address),
        (Some(given), Some(key)) if constant_time_eq(given.as_bytes(), key.as_bytes()) => Ok(Access::Admin),
        (Some(_), _) => Err(error(401, "wrong API key")),
    }
}

async fn route(api: &Arc<Api>, req: Request) -> Response {
    let level = match access(api, &req) {
        Ok(l) => l,
        Err(resp) => return resp,
    };
    let (needs, post) = match req.path.as_str() {
        "/" | "/ui" | "/status" | "/queues" | "/topqueues" | "/queueDetail" | "/domains" | "/vmtas" | "/jobs"
        | "/settings" | "/metrics" | "/resolve" | "/ui/data" => (Access::Monitor, false),
        "/pause" | "/resume" | "/schedule" | "/setMode" | "/pauseJob" | "/resumeJob" => (Access::Operator, true),
        "/delete" | "/reload" | "/rotateAcct" => (Access::Admin, true),
        "/api/v1/transmissions" => (Access::Admin, true),
        _ => return error(404, "no such page; see /ui, /status, /queues, /metrics"),
    };
    if post != (req.method == "POST") {
        return error(405, if post { "use POST" } else { "use GET" });
    }
    if level < needs {
        return error(403, format!("this needs {} access; {} has {}", needs.name(), req.peer, level.name()));
    }
    if req.path == "/api/v1/transmissions" && req.api_key.is_none() {
        return error(401, "injection needs the API key (X-API-Key; set http-api-key)");
    }
    let api2 = api.clone();
    match req.path.as_str() {
        "/" => Response { status: 302, content_type: "text/plain", body: b"see /ui\n".to_vec() },
        "/ui" => Response { status: 200, content_type: "text/html; charset=utf-8", body: UI_HTML.as_bytes().to_vec() },
        "/resolve" => resolve(api, &req).await,
        "/reload" => {
            blocking(move || match api2.reloader.reload() {
                Ok(warnings) => json_response(200, json!({ "reloaded": true, "warnings": warnings })),
                Err(e) => error(422, format!("the new configuration is refused; the old one stays: {e}")),
            })
            .await
        }
        "/rotateAcct" => {
            blocking(move || {
                api2.reloader.rotate_acct();
                json_response(200, json!({ "rotated": true }))
            })
            .await
        }
        "/api/v1/transmissions" => inject(api, req).await,
        _ => blocking(move || read_or_act(&api2, &req)).await,
    }
}

/// Runs work that waits on the shards off the async thread.
async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|_| error(500, "internal error"))
}

fn snapshot(api: &Api) -> Result<Snapshot, Response> {
    let replies = api.responder.admin(AdminCmd::Snapshot).map_err(|e| error(503, e))?;
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

fn act(api: &Api, cmd: AdminCmd) -> Result<u64, Response> {
    let replies = api.responder.admin(cmd).map_err(|e| error(503, e))?;
    Ok(replies.iter().map(|r| if let AdminReply::Affected(n) = r { *n } else { 0 }).sum())
}

fn selector(req: &Request) -> Result<Selector, Response> {
    let q = req.param("queue").ok_or_else(|| error(400, "say which queue: ?queue=DOMAIN/VMTA (either may be *)"))?;
    Selector::parse(q).map_err(|e| error(400, e))
}

fn job_id(req: &Request) -> Result<String, Response> {
    req.param("jobId").map(str::to_string).ok_or_else(|| error(400, "say which job: ?jobId=ID"))
}

/// Wall-clock Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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
    let now = now_ms();
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
    })
}

fn read_or_act(api: &Api, req: &Request) -> Response {
    let result = (|| -> Result<Response, Response> {
        let now = now_ms();
        Ok(match req.path.as_str() {
            "/status" => json_response(200, status_json(api, &snapshot(api)?)),
            "/queues" | "/topqueues" => {
                let mut qs = snapshot(api)?.queues;
                match req.param("sort") {
                    Some("age") => qs.sort_by_key(|q| if q.oldest_unix_ms == 0 { u64::MAX } else { q.oldest_unix_ms }),
                    Some("name") => qs.sort_by(|a, b| (&a.domain, &a.vmta).cmp(&(&b.domain, &b.vmta))),
                    _ => qs.sort_by(|a, b| b.rcpts.cmp(&a.rcpts).then(a.domain.cmp(&b.domain))),
                }
                let limit = req.param("limit").and_then(|l| l.parse().ok()).unwrap_or(if req.path == "/topqueues" {
                    20
                } else {
                    usize::MAX
                });
                let list: Vec<Value> = qs.iter().take(limit).map(|q| queue_json(q, now)).collect();
                json_response(200, json!({ "queues": list }))
            }
            "/queueDetail" => {
                let sel = selector(req)?;
                let qs: Vec<Value> = snapshot(api)?
                    .queues
                    .iter()
                    .filter(|q| sel.matches(&q.domain, &q.vmta))
                    .map(|q| queue_json(q, now))
                    .collect();
                if qs.is_empty() {
                    return Err(error(404, format!("no queue {sel} holds mail now")));
                }
                json_response(200, json!({ "queues": qs }))
            }
            "/domains" => {
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
                json_response(200, json!({ "domains": list }))
            }
            "/vmtas" => {
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
                json_response(200, json!({ "vmtas": list }))
            }
            "/jobs" => {
                let mut jobs = snapshot(api)?.jobs;
                jobs.sort_by(|a, b| a.id.cmp(&b.id));
                json_response(200, json!({ "jobs": jobs.iter().map(job_json).collect::<Vec<_>>() }))
            }
            "/settings" => {
                let sel = selector(req)?;
                let config = api.responder.config();
                let vmta = if sel.vmta == "*" { "default" } else { sel.vmta.as_str() };
                let s = config.queue_settings(&sel.domain, vmta);
                json_response(200, json!({ "queue": format!("{}/{vmta}", sel.domain), "settings": format!("{s:#?}") }))
            }
            "/metrics" => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: metrics_text(api)?.into_bytes(),
            },
            "/ui/data" => json_response(200, ui_data(api)?),
            "/pause" => json_response(200, json!({ "paused": act(api, AdminCmd::Pause(selector(req)?))? })),
            "/resume" => json_response(200, json!({ "resumed": act(api, AdminCmd::Resume(selector(req)?))? })),
            "/schedule" => json_response(200, json!({ "scheduled": act(api, AdminCmd::Schedule(selector(req)?))? })),
            "/setMode" => {
                let backoff = match req.param("mode") {
                    Some("backoff") => true,
                    Some("normal") => false,
                    _ => return Err(error(400, "say ?mode=backoff or ?mode=normal")),
                };
                json_response(200, json!({ "changed": act(api, AdminCmd::SetMode(selector(req)?, backoff))? }))
            }
            "/pauseJob" => json_response(200, json!({ "held": act(api, AdminCmd::PauseJob(job_id(req)?))? })),
            "/resumeJob" => json_response(200, json!({ "released": act(api, AdminCmd::ResumeJob(job_id(req)?))? })),
            "/delete" => {
                let cmd = match (req.param("queue"), req.param("jobId")) {
                    (Some(_), None) => AdminCmd::Delete(selector(req)?),
                    (None, Some(id)) => AdminCmd::DeleteJob(id.to_string()),
                    _ => return Err(error(400, "say ?queue=DOMAIN/VMTA or ?jobId=ID")),
                };
                json_response(200, json!({ "deleted": act(api, cmd)? }))
            }
            _ => error(404, "no such page"),
        })
    })();
    result.unwrap_or_else(|e| e)
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn metrics_text(api: &Api) -> Result<String, Response> {
    use std::fmt::Write;
    let snap = snapshot(api)?;
    let t = api.responder.totals();
    let o = api.observer.lock().expect("not poisoned");
    let mut m = String::new();
    let family = |m: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(&mut m, "sluice_messages_received_total", "counter", "Messages accepted and on disk.");
    let _ = writeln!(m, "sluice_messages_received_total {}", t.msgs_in);
    family(&mut m, "sluice_recipients_received_total", "counter", "Recipients accepted.");
    let _ = writeln!(m, "sluice_recipients_received_total {}", t.rcpts_in);
    family(&mut m, "sluice_messages_delivered_total", "counter", "Recipients delivered, by VMTA.");
    for (v, c) in &o.by_vmta {
        let _ = writeln!(m, "sluice_messages_delivered_total{{vmta=\"{}\"}} {}", escape_label(v), c.delivered);
    }
    family(&mut m, "sluice_messages_bounced_total", "counter", "Recipients bounced, by bounce category.");
    for (cat, n) in &o.bounced_by_category {
        let _ = writeln!(m, "sluice_messages_bounced_total{{category=\"{}\"}} {n}", escape_label(cat));
    }
    family(&mut m, "sluice_messages_deferred_total", "counter", "Delivery attempts deferred, by VMTA.");
    for (v, c) in &o.by_vmta {
        let _ = writeln!(m, "sluice_messages_deferred_total{{vmta=\"{}\"}} {}", escape_label(v), c.deferred);
    }
    family(
        &mut m,
        "sluice_domain_recipients_total",
        "counter",
        "Outcomes for the busiest destination domains (the rest: other).",
    );
    let (top, rest) = o.top_domains(stats::TOP_DOMAINS);
    for (d, c) in top.iter().map(|(d, c)| (d.as_str(), *c)).chain(std::iter::once(("other", rest))) {
        for (outcome, n) in [("delivered", c.delivered), ("bounced", c.bounced), ("deferred", c.deferred)] {
            let _ = writeln!(
                m,
                "sluice_domain_recipients_total{{domain=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape_label(d)
            );
        }
    }
    family(&mut m, "sluice_feedback_reports_total", "counter", "Feedback-loop reports (f records), by feedback type.");
    for (k, n) in &o.feedback {
        let _ = writeln!(m, "sluice_feedback_reports_total{{type=\"{}\"}} {n}", escape_label(k));
    }
    family(&mut m, "sluice_suppressed_total", "counter", "Recipients refused by a suppression list.");
    for (name, l) in api.responder.lists() {
        let _ = writeln!(m, "sluice_suppressed_total{{list=\"{}\"}} {}", escape_label(&name), l.hits());
    }
    family(&mut m, "sluice_delivery_latency_seconds", "histogram", "From reception to delivery.");
    let mut cumulative = 0;
    for (i, le) in stats::LATENCY_BUCKETS_S.iter().enumerate() {
        cumulative += o.latency_buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(m, "sluice_delivery_latency_seconds_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(m, "sluice_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {}", o.latency_count);
    let _ = writeln!(m, "sluice_delivery_latency_seconds_sum {}", o.latency_sum_s);
    let _ = writeln!(m, "sluice_delivery_latency_seconds_count {}", o.latency_count);
    family(&mut m, "sluice_queue_recipients", "gauge", "Recipients queued, by VMTA.");
    let mut by_vmta: std::collections::BTreeMap<&str, (u64, u64, u32)> = Default::default();
    for q in &snap.queues {
        let e = by_vmta.entry(q.vmta.as_str()).or_default();
        e.0 += q.rcpts;
        e.1 += q.bytes;
        e.2 += q.connections;
    }
    for (v, (r, _, _)) in &by_vmta {
        let _ = writeln!(m, "sluice_queue_recipients{{vmta=\"{}\"}} {r}", escape_label(v));
    }
    family(&mut m, "sluice_queue_bytes", "gauge", "Bytes queued (per recipient), by VMTA.");
    for (v, (_, b, _)) in &by_vmta {
        let _ = writeln!(m, "sluice_queue_bytes{{vmta=\"{}\"}} {b}", escape_label(v));
    }
    family(&mut m, "sluice_queues", "gauge", "Queues holding mail.");
    let _ = writeln!(m, "sluice_queues {}", snap.queues.len());
    family(&mut m, "sluice_connections", "gauge", "Open SMTP connections.");
    let _ = writeln!(m, "sluice_connections{{direction=\"in\"}} {}", api.responder.inbound_connections());
    let _ = writeln!(m, "sluice_connections{{direction=\"out\"}} {}", snap.conns_out);
    family(&mut m, "sluice_uptime_seconds", "gauge", "Seconds since start.");
    let _ = writeln!(m, "sluice_uptime_seconds {}", now_ms().saturating_sub(api.responder.started_unix_ms()) / 1000);
    Ok(m)
}

/// Everything the dashboard draws, in one request.
fn ui_data(api: &Api) -> Result<Value, Response> {
    let now = now_ms();
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

async fn resolve(api: &Api, req: &Request) -> Response {
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
        sluice_netio::Resolution::Permanent(r) => json!({ "permanentFailure": r.line() }),
        sluice_netio::Resolution::Temporary(r) => json!({ "temporaryFailure": r.line() }),
    };
    json_response(
        200,
        json!({ "domain": domain, "hops": hops, "ttlS": ttl_ms / 1000, "mx": mx.map(|m| m.iter().map(|(p, h)| json!([p, h])).collect::<Vec<_>>()) }),
    )
}

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
async fn inject(api: &Arc<Api>, req: Request) -> Response {
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

/// While the spool is recovered (before the shards and the API start), the management port
/// answers `/status` with the recovery's progress and everything else with 503. Runs on its
/// own thread until `done` is set; the listener then goes to the API.
pub fn serve_recovery(
    listener: std::net::TcpListener,
    config: Arc<sluice_config::Config>,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<std::net::TcpListener> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let _ = listener.set_nonblocking(true);
        while !done.load(Ordering::SeqCst) {
            let Ok((mut sock, peer)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = sock.set_nonblocking(false);
            let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let n = sock.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let allowed = config.mgmt.as_ref().is_some_and(|m| m.access_of(peer.ip()) >= Access::Monitor);
            let p = &sluice_netio::store::RECOVERY;
            let response = if !allowed {
                error(403, format!("{} has no access (http-access)", peer.ip()))
            } else if path.starts_with("/status") {
                json_response(
                    200,
                    json!({ "version": env!("CARGO_PKG_VERSION"), "startup": {
                        "state": "recovering",
                        "filesDone": p.files_done.load(Ordering::Relaxed),
                        "filesTotal": p.files_total.load(Ordering::Relaxed),
                        "mibDone": p.bytes_done.load(Ordering::Relaxed) >> 20,
                    }}),
                )
            } else {
                error(503, "the spool is being recovered; only /status answers until it is done")
            };
            let _ = sock.write_all(response.head().as_bytes()).and_then(|_| sock.write_all(&response.body));
        }
        listener
    })
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
    fn secrets_compare_equal_only_when_equal() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abcdef", b"abcde"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(!constant_time_eq(b"a", b""));
    }

    #[test]
    fn queries_are_decoded() {
        let q = parse_query("queue=gmail.com%2Fpool1&mode=backoff&x=a+b&bad=%zz");
        assert_eq!(q["queue"], "gmail.com/pool1");
        assert_eq!(q["mode"], "backoff");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
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
