//! The control plane: one thread with a small tokio runtime for the work that is not hot —
//! DNS (`dns`), authentication checks (`authcheck`), the accounting writer (`acct`), the
//! management API (`mgmt`) — fed by the shards through a bounded channel and answering
//! through their mailboxes.

use crate::acct::{AcctCmd, AcctWriter};
use crate::dns::{resolve, resolver};
use crate::reload::Reloader;
use sluice_config::Config;
use sluice_engine::route::rollup::Rollups;
use sluice_netio::{ControlRequest, Responder};
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the control plane runs with.
pub struct Plane {
    pub config: Arc<Config>,
    pub requests: crossbeam_channel::Receiver<ControlRequest>,
    pub responder: Responder,
    pub acct: AcctWriter,
    pub acct_cmds: crossbeam_channel::Receiver<AcctCmd>,
    pub arc_key: Option<sluice_engine::dkim::ArcKey>,
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    pub reloader: Arc<Reloader>,
    /// The management API's listener, bound at start (`http-mgmt-port`).
    pub mgmt: Option<std::net::TcpListener>,
    /// The Transmissions API's listeners (`<transmissions-api-listener>`), bound at start,
    /// with their TLS.
    pub transmissions: Vec<(std::net::TcpListener, Arc<tokio_rustls::rustls::ServerConfig>)>,
    pub recovered_messages: usize,
    /// `spool-takeover`'s state, for `/status` and `/metrics`.
    pub takeover: Option<Arc<crate::takeover::Status>>,
}

/// Hands an answer to a shard from a blocking thread: a full mailbox makes `Responder` wait
/// (up to a second), and the runtime's one thread must keep serving DNS and the API.
fn off_runtime(send: impl FnOnce() + Send + 'static) {
    drop(tokio::task::spawn_blocking(send));
}

/// How often the accounting files are flushed and turned over, however busy the channel.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(100);
/// Accounting rows are made durable (one fdatasync, then confirmed to the shards) at most this
/// often: under load a sync per burst of rows cost a system call and a wake-up every few
/// messages (issue 24), and only the journaling of outcomes waits for it, never a 250. Until
/// then the reader sleeps rather than waits on the channel (whose waits spin and yield first),
/// so a request arriving meanwhile waits at most this long.
const ACCT_SYNC_GAP: Duration = Duration::from_millis(5);

/// Runs the control plane until `stop` closes. Resolutions run as tokio tasks; accounting
/// records are written as they come and flushed every `HOUSEKEEPING_EVERY`.
pub fn run(plane: Plane) -> std::io::Result<()> {
    let Plane {
        config,
        requests,
        responder,
        mut acct,
        acct_cmds,
        arc_key,
        stop,
        reloader,
        mgmt,
        transmissions,
        recovered_messages,
        takeover,
    } = plane;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let resolver = Arc::new(resolver(&config)?);
    let observer = Arc::new(Mutex::new(crate::mgmt::stats::Observer::default()));
    let cluster = {
        let _in_runtime = rt.enter();
        let r = responder.clone();
        let apply: crate::cluster::Apply =
            Arc::new(move |path, query| crate::mgmt::views::apply_remote(&r, path, query));
        crate::cluster::start(&config, responder.clone(), apply, takeover)
    };
    let redis = config.cluster.as_ref().and_then(|c| redis::Client::open(c.redis_url.as_str()).ok());
    let api = Arc::new(crate::mgmt::Api::new(
        responder.clone(),
        reloader,
        observer.clone(),
        resolver.clone(),
        recovered_messages,
        cluster,
    ));
    if let Some(listener) = mgmt {
        let _in_runtime = rt.enter();
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        rt.spawn(crate::mgmt::serve(api.clone(), listener));
    }
    let keys = Arc::new(config.transmissions_api.keys.clone());
    for (listener, tls) in transmissions {
        let _in_runtime = rt.enter();
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        rt.spawn(crate::mgmt::transmissions::serve(api.clone(), listener, tls, keys.clone()));
    }
    {
        // Totals sampled once a second: the last minute and hour in status and charts.
        let api = api.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let totals = api.responder.totals();
                api.history.lock().expect("not poisoned").sample(crate::clock::unix_ms(), totals);
            }
        });
    }
    let checker = {
        let _in_runtime = rt.enter();
        Arc::new(crate::authcheck::Checker::new(&config, arc_key)?)
    };
    let rollups = Arc::new(Mutex::new(Rollups::default()));
    let rollup_hops: Arc<crate::dns::RollupHops> = Arc::default();
    let handle = rt.handle().clone();
    // The channel is read on a blocking thread so the runtime stays free for DNS.
    let reader = std::thread::Builder::new().name("control-reader".into()).spawn(move || {
        // Flushing, `move-interval` rotation, `delete-after` and pipe restarts run on this
        // clock, busy or not (they once ran only after 100 ms without a request: never, under
        // steady traffic).
        let mut housekept = std::time::Instant::now();
        // Per shard, the last accounting batch written and not yet made durable; made durable
        // (fsynced) and confirmed when the channel runs dry, at most every `ACCT_SYNC_GAP`: a
        // group commit, whose size grows with the load.
        let mut unsynced: Vec<u64> = vec![0; responder.shards() as usize];
        let mut synced_at = std::time::Instant::now();
        // `synced_at`: when it last ran (the gap counts from there).
        let confirm = |acct: &mut AcctWriter, unsynced: &mut Vec<u64>, synced_at: &mut std::time::Instant| {
            if unsynced.iter().any(|b| *b > 0) {
                acct.sync();
                for (shard, batch) in unsynced.iter_mut().enumerate() {
                    if *batch > 0 {
                        responder.acct_durable(shard as u32, std::mem::take(batch));
                    }
                }
            }
            *synced_at = std::time::Instant::now();
        };
        loop {
            if housekept.elapsed() >= HOUSEKEEPING_EVERY {
                confirm(&mut acct, &mut unsynced, &mut synced_at);
                acct.flush();
                housekept = std::time::Instant::now();
            }
            while let Ok(cmd) = acct_cmds.try_recv() {
                match cmd {
                    AcctCmd::Rotate => acct.rotate_all(),
                    AcctCmd::Reopen(config) => {
                        acct.flush();
                        match AcctWriter::open(&config) {
                            Ok(new) => acct = new,
                            Err(e) => tracing::error!(error = %e, "reload: accounting files kept as they were"),
                        }
                    }
                }
            }
            // Rows waiting to be made durable and nothing else to do: the rest of the gap asleep,
            // then they are synced (with whatever came meanwhile).
            if requests.is_empty() && unsynced.iter().any(|b| *b > 0) {
                std::thread::sleep(ACCT_SYNC_GAP.saturating_sub(synced_at.elapsed()));
                if requests.is_empty() {
                    confirm(&mut acct, &mut unsynced, &mut synced_at);
                }
            }
            match requests.recv_timeout(HOUSEKEEPING_EVERY) {
                Ok(ControlRequest::Acct { shard, batch, records }) => {
                    observer.lock().expect("not poisoned").observe(&records);
                    acct.write(&records);
                    if let Some(b) = unsynced.get_mut(shard as usize) {
                        *b = (*b).max(batch);
                    }
                    if requests.is_empty() && synced_at.elapsed() >= ACCT_SYNC_GAP {
                        confirm(&mut acct, &mut unsynced, &mut synced_at);
                    }
                }
                Ok(ControlRequest::SuppressAdd { path, list, address, waiting }) => {
                    // One line, fsynced: the complainer stays suppressed across restarts.
                    let added = path.as_ref().map(|path| {
                        let added = OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| {
                            f.write_all(format!("{address}\n").as_bytes())?;
                            f.sync_data()
                        });
                        match &added {
                            Ok(()) => tracing::info!(%address, file = %path.display(), "complainer suppressed"),
                            Err(e) => tracing::error!(%address, file = %path.display(), error = %e, "cannot add to the suppression file"),
                        }
                        added.is_ok()
                    });
                    // A shared list: into the fleet's set (the report's reply waits for it when
                    // there is no file to keep the complainer).
                    let shared = redis.clone().zip(crate::cluster::set_of(&config, &list));
                    match (shared, added) {
                        (Some((client, key)), added) => {
                            let responder = responder.clone();
                            handle.spawn(async move {
                                let ok = crate::cluster::add_suppressed(&client, &key, &address).await;
                                match &ok {
                                    Ok(()) => tracing::info!(%address, %key, "complainer suppressed across the fleet"),
                                    Err(e) => tracing::error!(%address, %key, error = %e, "cannot add to the fleet's suppression set"),
                                }
                                if let Some((shard, slot, gen)) = waiting {
                                    let ok = added.unwrap_or(ok.is_ok());
                                    off_runtime(move || responder.report_stored(shard, slot, gen, ok));
                                }
                            });
                        }
                        (None, added) => {
                            if let Some((shard, slot, gen)) = waiting {
                                responder.report_stored(shard, slot, gen, added.unwrap_or(false));
                            }
                        }
                    }
                }
                Ok(ControlRequest::Verify(req)) => {
                    let (checker, responder) = (checker.clone(), responder.clone());
                    handle.spawn(async move {
                        let (headers, summary) = checker.check(&req).await;
                        tracing::debug!(%summary, "inbound authentication checked");
                        let req = *req;
                        off_runtime(move || responder.verified(req.shard, req.slot, req.gen, req.data, headers, summary));
                    });
                }
                Ok(ControlRequest::Resolve { shard, domain, static_hosts }) => {
                    let resolver = resolver.clone();
                    let responder = responder.clone();
                    let (config, rollups, learnt) = (config.clone(), rollups.clone(), rollup_hops.clone());
                    handle.spawn(async move {
                        if domain.ends_with(".rollup") && static_hosts.is_none() {
                            let (resolution, ttl_ms) = crate::dns::resolve_rollup(&resolver, &config, &domain, &learnt).await;
                            return off_runtime(move || responder.resolved(shard, domain, resolution, ttl_ms, None));
                        }
                        let (resolution, ttl_ms, mx) = resolve(&resolver, &domain, static_hosts).await;
                        // `<mx-rollup-list>` first, then rollup of equal MX sets (a lock on the
                        // control plane only, once per resolution).
                        let listed = mx.as_ref().and_then(|m| crate::dns::listed_rollup(&config, &domain, m, &resolution, &learnt));
                        let rollup = listed.or_else(|| {
                            mx.zip(config.rollup_fingerprint(&domain))
                                .map(|key| rollups.lock().expect("not poisoned").leader(&domain, key))
                                .filter(|leader| *leader != domain)
                        });
                        tracing::debug!(%domain, ?resolution, ?rollup, "resolved");
                        off_runtime(move || responder.resolved(shard, domain, resolution, ttl_ms, rollup));
                    });
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    confirm(&mut acct, &mut unsynced, &mut synced_at);
                    acct.flush();
                    housekept = std::time::Instant::now();
                    // Shards have all stopped: take what they sent last, then end.
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        while let Ok(req) = requests.try_recv() {
                            if let ControlRequest::Acct { records, .. } = req {
                                acct.write(&records);
                            }
                        }
                        break;
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        acct.flush();
    })?;
    rt.block_on(async {
        // Resolutions run here until the reader ends (every shard has stopped).
        while !reader.is_finished() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    Ok(())
}
