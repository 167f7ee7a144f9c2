//! PowerMTA's HTTP Transmissions API on listeners of its own (`<transmissions-api-listener
//! ADDR>`): HTTPS only, `POST /api/v1/transmissions` only, each request keyed by one of
//! `<transmissions-api>`'s `api-key`s in its `Authorization` header (PowerMTA's form, the key
//! alone; `Bearer KEY` too), the messages shaped by `<source {transmissions-api}>`. The
//! request is answered as on the management port (`inject::transmissions`): once every
//! message is fsynced.

use super::{error, inject, Api, Request};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::serve::ListenerExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls::ServerConfig;

/// A TLS handshake must be over in this time (a client that stalls it holds nothing else up:
/// handshakes run on their own tasks).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the HTTP server.
const READY_MAX: usize = 64;

/// What a listener serves: the API and the keys it takes.
struct Keyed {
    api: Arc<Api>,
    keys: Arc<Vec<String>>,
}

/// Serves the Transmissions API on `listener` until the process ends.
pub async fn serve(api: Arc<Api>, listener: tokio::net::TcpListener, tls: Arc<ServerConfig>, keys: Arc<Vec<String>>) {
    let addr = listener.local_addr().ok();
    let state = Arc::new(Keyed { api, keys });
    let router = axum::Router::new()
        .route("/api/v1/transmissions", axum::routing::post(submit))
        .fallback(|| async { error(404, "the Transmissions API serves POST /api/v1/transmissions") })
        .layer(DefaultBodyLimit::max(super::BODY_BYTES_MAX))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, super::REQUEST_TIMEOUT))
        .layer(tower::limit::ConcurrencyLimitLayer::new(super::REQUESTS_MAX))
        .with_state(state);
    let listener = TlsListener::start(listener, tls).tap_io(|_| {});
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, service).await {
        tracing::error!(?addr, error = %e, "the Transmissions API listener stopped");
    }
}

async fn submit(
    State(k): State<Arc<Keyed>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> super::Response {
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").trim();
    let given = given.strip_prefix("Bearer ").unwrap_or(given).trim();
    let known = k.keys.iter().any(|key| sluice_engine::smtp::auth::ct_eq(key.as_bytes(), given.as_bytes()));
    if !known {
        return error(401, "an api-key of <transmissions-api> is required in the Authorization header");
    }
    let req = Request {
        path: "/api/v1/transmissions".into(),
        query: Default::default(),
        api_key: None,
        body,
        peer: peer.ip(),
    };
    inject::transmissions(&k.api, req, Some("{transmissions-api}")).await
}

/// TCP connections made TLS: each handshake on a task of its own, the finished ones handed to
/// the HTTP server in order of completion.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn start(tcp: tokio::net::TcpListener, tls: Arc<ServerConfig>) -> TlsListener {
        let local = tcp.local_addr().expect("a bound listener has an address");
        let (tx, ready) = tokio::sync::mpsc::channel(READY_MAX);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, say: wait a little rather than spin.
                        tracing::warn!(error = %e, "Transmissions API: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "Transmissions API: TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "Transmissions API: TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            None => std::future::pending().await, // the accept task ended: nothing more comes
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
