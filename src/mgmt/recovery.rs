//! The management port while the spool is recovered, before the shards and the API start:
//! `/status` says how far recovery has got, everything else is 503. A handful of requests on
//! one thread; the listener then goes to the API.

use serde_json::json;
use sluice_config::Access;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
            let p = &sluice_netio::spool_files::RECOVERY;
            let (status, body) = if !allowed {
                (403, json!({ "error": format!("{} has no access (http-access)", peer.ip()) }))
            } else if path.starts_with("/status") {
                let startup = json!({
                    "state": "recovering",
                    "filesDone": p.files_done.load(Ordering::Relaxed),
                    "filesTotal": p.files_total.load(Ordering::Relaxed),
                    "mibDone": p.bytes_done.load(Ordering::Relaxed) >> 20,
                });
                (200, json!({ "version": env!("CARGO_PKG_VERSION"), "startup": startup }))
            } else {
                (503, json!({ "error": "the spool is being recovered; only /status answers until it is done" }))
            };
            let body = serde_json::to_vec_pretty(&body).expect("JSON values serialize");
            let head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                if status == 200 { "OK" } else { "Unavailable" },
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).and_then(|_| sock.write_all(&body));
        }
        listener
    })
}
