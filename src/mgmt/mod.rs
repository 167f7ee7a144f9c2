//! The management API (`http-mgmt-port`) on the control plane's tokio runtime, served by
//! axum (hyper): JSON status pages, Prometheus metrics, queue and job control, reload, HTTP
//! injection, and the web monitor under `/ui`. One table (`ROUTES`) names every route with
//! its method and the access it needs; nothing else is served (no path is ever mapped to a
//! file).
//!
//! Access: `http-access CIDR LEVEL` gives each client address a level (monitor < operator <
//! admin); a request bearing the configured `http-api-key` in `X-API-Key` is admin (a
//! wrong key is refused outright).

mod inject;
mod metrics;
mod recovery;
pub mod stats;
pub mod transmissions;
pub(crate) mod views;

use crate::reload::Reloader;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::{json, Value};
use sluice_config::Access;
use sluice_netio::Responder;
use stats::{History, Observer};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use recovery::serve_recovery;

/// A request body (an injected message with its recipients) may not exceed this.
const BODY_BYTES_MAX: usize = 64 << 20;
/// A request must be answered within this (a client trickling its body is cut off).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests served at once; more wait.
const REQUESTS_MAX: usize = 256;

const UI_HTML: &str = include_str!("ui.html");

pub type Response = axum::response::Response;

/// What the API reads and steers.
pub struct Api {
    pub responder: Responder,
    pub reloader: Arc<Reloader>,
    pub observer: Arc<Mutex<Observer>>,
    pub history: Arc<Mutex<History>>,
    pub resolver: Arc<hickory_resolver::TokioAsyncResolver>,
    pub recovered_messages: usize,
    injected: AtomicU64,
    /// The fleet (`<cluster>`), when this host is one of one.
    pub cluster: Option<crate::cluster::Handle>,
}

impl Api {
    pub fn new(
        responder: Responder,
        reloader: Arc<Reloader>,
        observer: Arc<Mutex<Observer>>,
        resolver: Arc<hickory_resolver::TokioAsyncResolver>,
        recovered_messages: usize,
        cluster: Option<crate::cluster::Handle>,
    ) -> Api {
        Api {
            responder,
            reloader,
            observer,
            history: Arc::new(Mutex::new(History::default())),
            resolver,
            recovered_messages,
            injected: AtomicU64::new(0),
            cluster,
        }
    }
}

/// A request as the handlers see it.
pub struct Request {
    path: String,
    query: HashMap<String, String>,
    api_key: Option<String>,
    body: Bytes,
    peer: IpAddr,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

type Reply = Pin<Box<dyn Future<Output = Response> + Send>>;
type Handler = fn(Arc<Api>, Request) -> Reply;

/// One route: its path, method, the access it needs, and what answers it.
struct Route {
    path: &'static str,
    post: bool,
    needs: Access,
    handler: Handler,
}

const fn get(path: &'static str, handler: Handler) -> Route {
    Route { path, post: false, needs: Access::Monitor, handler }
}

const fn post(path: &'static str, needs: Access, handler: Handler) -> Route {
    Route { path, post: true, needs, handler }
}

/// Every route of the API. The CLI (`src/cli.rs`) and the web monitor use these.
const ROUTES: &[Route] = &[
    get("/", |_, _| Box::pin(async { redirect_to_ui() })),
    get("/ui", |_, _| Box::pin(async { page(UI_HTML) })),
    get("/ui/data", |api, _| blocking(move || views::ui_data(&api))),
    get("/status", |api, _| blocking(move || views::status(&api))),
    get("/queues", |api, req| blocking(move || views::queues(&api, &req))),
    get("/topqueues", |api, req| blocking(move || views::queues(&api, &req))),
    get("/queueDetail", |api, req| blocking(move || views::queue_detail(&api, &req))),
    get("/domains", |api, req| blocking(move || views::domains(&api, &req))),
    get("/vmtas", |api, _| blocking(move || views::vmtas(&api))),
    get("/jobs", |api, _| blocking(move || views::jobs(&api))),
    get("/settings", |api, req| blocking(move || views::settings(&api, &req))),
    get("/metrics", |api, _| blocking(move || metrics::exposition(&api))),
    get("/resolve", |api, req| Box::pin(async move { views::resolve(&api, &req).await })),
    post("/pause", Access::Operator, |api, req| blocking(move || views::act(&api, &req))),
    post("/resume", Access::Operator, |api, req| blocking(move || views::act(&api, &req))),
    post("/schedule", Access::Operator, |api, req| blocking(move || views::act(&api, &req))),
    post("/setMode", Access::Operator, |api, req| blocking(move || views::act(&api, &req))),
    post("/pauseJob", Access::Operator, |api, req| blocking(move || views::act(&api, &req))),
    post("/resumeJob", Access::Operator, |api, req| blocking(move || views::act(&api, &req))),
    post("/delete", Access::Admin, |api, req| blocking(move || views::act(&api, &req))),
    post("/reload", Access::Admin, |api, _| {
        blocking(move || match api.reloader.reload() {
            Ok(warnings) => json_response(200, json!({ "reloaded": true, "warnings": warnings })),
            Err(e) => error(422, format!("the new configuration is refused; the old one stays: {e}")),
        })
    }),
    post("/rotateAcct", Access::Admin, |api, _| {
        blocking(move || {
            api.reloader.rotate_acct();
            json_response(200, json!({ "rotated": true }))
        })
    }),
    post("/api/v1/transmissions", Access::Admin, |api, req| {
        Box::pin(async move { inject::transmissions(&api, req, None).await })
    }),
];

/// The API's router: every route of `ROUTES`, and a JSON 404 for anything else.
pub fn router(api: Arc<Api>) -> axum::Router {
    let mut router = axum::Router::new();
    for (i, route) in ROUTES.iter().enumerate() {
        router = router.route(
            route.path,
            axum::routing::any(move |state, conn, method, headers, uri, body| {
                serve_route(i, state, conn, method, headers, uri, body)
            }),
        );
    }
    router
        .fallback(|| async { error(404, "no such page; see /ui, /status, /queues, /metrics") })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(tower::limit::ConcurrencyLimitLayer::new(REQUESTS_MAX))
        .with_state(api)
}

/// Serves the API until the process ends.
pub async fn serve(api: Arc<Api>, listener: tokio::net::TcpListener) {
    let service = router(api).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, service).await {
        tracing::error!(error = %e, "the management API stopped");
    }
}

/// Serves one request (`answer`), isolated.
async fn serve_route(
    i: usize,
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    // A panic while this request is handled answers it 500; the API and the process go on.
    let peer_ip = peer.ip();
    Isolated { inner: Box::pin(answer(i, api, peer, method, headers, uri, body)), peer: peer_ip }.await
}

/// A request's future polled inside `guard::isolated`: a panic ends this request only (500,
/// logged with the client), never the control plane's thread or the process.
struct Isolated<F: ?Sized> {
    inner: Pin<Box<F>>,
    peer: IpAddr,
}

impl<F: Future<Output = Response> + ?Sized> Future for Isolated<F> {
    type Output = Response;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Response> {
        let this = &mut *self;
        match sluice_netio::guard::isolated(|| this.inner.as_mut().poll(cx)) {
            Ok(poll) => poll,
            Err(why) => std::task::Poll::Ready(request_panicked(this.peer, &why)),
        }
    }
}

fn request_panicked(peer: IpAddr, why: &str) -> Response {
    tracing::error!(%peer, panic = %why, "handling a management API request panicked: answered 500, the API goes on");
    error(500, "internal error")
}

/// Checks the method and the client's access, then answers with the route's handler.
async fn answer(
    i: usize,
    api: Arc<Api>,
    peer: SocketAddr,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let route = &ROUTES[i];
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string());
    let req = Request {
        path: uri.path().to_string(),
        query: uri.query().map(sluice_engine::http::parse_query).unwrap_or_default(),
        api_key,
        body,
        peer: peer.ip(),
    };
    let level = match access(&api, &req) {
        Ok(l) => l,
        Err(f) => return f.into(),
    };
    if route.post != (method == Method::POST) {
        return error(405, if route.post { "use POST" } else { "use GET" });
    }
    if level < route.needs {
        return error(403, format!("this needs {} access; {} has {}", route.needs.name(), req.peer, level.name()));
    }
    if route.path == "/api/v1/transmissions" && req.api_key.is_none() {
        return error(401, "injection needs the API key (X-API-Key; set http-api-key)");
    }
    let (path, peer) = (req.path.clone(), req.peer);
    let resp = (route.handler)(api, req).await;
    tracing::debug!(%peer, %method, %path, status = resp.status().as_u16(), "management API request");
    resp
}

/// What a client may do: its address's level, or admin with the right API key.
fn access(api: &Api, req: &Request) -> Result<Access, Fail> {
    let config = api.responder.config();
    let Some(mgmt) = &config.mgmt else { return Err(fail(403, "the management API is off")) };
    let by_address = mgmt.access_of(req.peer);
    if by_address == Access::None {
        return Err(fail(403, format!("{} has no access (http-access)", req.peer)));
    }
    match (&req.api_key, &mgmt.api_key) {
        (None, _) => Ok(by_address),
        (Some(given), Some(key)) if constant_time_eq(given.as_bytes(), key.as_bytes()) => Ok(Access::Admin),
        (Some(_), _) => Err(fail(401, "wrong API key")),
    }
}

/// Runs work that waits on the shards off the async thread (a panic there answers 500).
fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Reply {
    Box::pin(async move {
        match tokio::task::spawn_blocking(move || sluice_netio::guard::isolated(f)).await {
            Ok(Ok(response)) => response,
            // Carried on to the request's `Isolated`, which knows the client.
            Ok(Err(why)) => std::panic::resume_unwind(Box::new(why)),
            Err(_) => error(500, "internal error"),
        }
    })
}

fn with_type(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut r = Response::new(axum::body::Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

pub fn json_response(status: u16, v: Value) -> Response {
    let mut body = serde_json::to_vec_pretty(&v).expect("JSON values serialize");
    body.push(b'\n');
    with_type(status, "application/json", body)
}

pub fn error(status: u16, message: impl Into<String>) -> Response {
    json_response(status, json!({ "error": message.into() }))
}

/// A page that could not be made: its status and why (becomes an `error` response).
pub struct Fail(pub u16, pub String);

pub fn fail(status: u16, message: impl Into<String>) -> Fail {
    Fail(status, message.into())
}

impl From<Fail> for Response {
    fn from(f: Fail) -> Response {
        error(f.0, f.1)
    }
}

fn page(html: &'static str) -> Response {
    with_type(200, "text/html; charset=utf-8", html.as_bytes().to_vec())
}

fn redirect_to_ui() -> Response {
    let mut r = with_type(302, "text/plain", b"see /ui\n".to_vec());
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/ui"));
    r
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abcdef", b"abcde"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(!constant_time_eq(b"a", b""));
    }

    #[test]
    fn a_request_that_panics_is_answered_500_and_the_runtime_goes_on() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let peer = IpAddr::from([127, 0, 0, 9]);
        let panics = Isolated { inner: Box::pin(async { panic!("handler bug") }), peer };
        assert_eq!(rt.block_on(panics).status(), 500);
        let from_blocking = Isolated { inner: blocking(|| panic!("blocking bug")), peer };
        assert_eq!(rt.block_on(from_blocking).status(), 500);
        let fine = Isolated { inner: Box::pin(async { error(404, "x") }), peer };
        assert_eq!(rt.block_on(fine).status(), 404);
    }

    #[test]
    fn every_route_is_once_in_the_table() {
        let mut paths: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ROUTES.len());
    }
}
