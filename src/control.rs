//! The control plane: one thread with a small tokio runtime for work that is not hot —
//! DNS (hickory), the accounting writer, signals. Shards reach it through a bounded
//! crossbeam channel and are answered through their mailboxes.

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::error::ResolveErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioAsyncResolver;
use sluice_config::{Config, HostPort, RecordType};
use sluice_engine::acct::{self, Kind, Record};
use sluice_engine::smtp::reply::Reply;
use sluice_netio::{ControlRequest, Hop, Resolution, Responder};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a resolution is cached by the asking shard when DNS gives no better TTL.
const RESOLVE_TTL_DEFAULT_MS: u64 = 300_000;

pub fn resolver(config: &Config) -> std::io::Result<TokioAsyncResolver> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    opts.ndots = 0;
    match config.dns_server {
        Some(addr) => {
            let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            Ok(TokioAsyncResolver::tokio(ResolverConfig::from_parts(None, vec![], group), opts))
        }
        None => {
            let (conf, mut sys_opts) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| std::io::Error::other(format!("cannot read the system resolver configuration: {e}")))?;
            sys_opts.timeout = opts.timeout;
            sys_opts.attempts = opts.attempts;
            Ok(TokioAsyncResolver::tokio(conf, sys_opts))
        }
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

async fn addresses(resolver: &TokioAsyncResolver, host: &str, port: u16) -> Vec<Hop> {
    if let Ok(ip) = host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        return vec![Hop { host: host.to_string(), addr: SocketAddr::new(ip, port) }];
    }
    match resolver.lookup_ip(fqdn(host)).await {
        Ok(ips) => ips
            .iter()
            .map(|ip| Hop { host: host.trim_end_matches('.').to_string(), addr: SocketAddr::new(ip, port) })
            .collect(),
        Err(e) => {
            tracing::debug!(host, error = %e, "address lookup failed");
            Vec::new()
        }
    }
}

/// A domain's MX records as (preference, lower-case host), sorted: what MX rollup compares.
pub type MxSet = Vec<(u16, String)>;

/// MX rollup: domains whose MX sets (and settings) are equal share the queue of the first
/// of them to resolve, its leader. A leader whose own MX set changes leaves its group.
#[derive(Default)]
pub struct Rollups {
    leaders: HashMap<(MxSet, String), String>,
    led: HashMap<String, (MxSet, String)>,
}

impl Rollups {
    /// The domain whose queue `domain`'s mail joins, given its MX set and settings
    /// fingerprint: itself when it leads (or starts) the group.
    pub fn leader(&mut self, domain: &str, key: (MxSet, String)) -> String {
        if self.led.get(domain).is_some_and(|k| *k != key) {
            let old = self.led.remove(domain).expect("checked");
            self.leaders.remove(&old);
        }
        let leader = self.leaders.entry(key.clone()).or_insert_with(|| domain.to_string()).clone();
        if leader == domain {
            self.led.insert(leader.clone(), key);
        }
        leader
    }
}

/// Next hops for a domain: static `smtp-hosts`, else MX (RFC 5321 §5.1) with the implicit
/// MX fallback to A/AAAA, and RFC 7505 null MX as a permanent failure. Also the MX set when
/// the hops came from MX records.
pub async fn resolve(
    resolver: &TokioAsyncResolver,
    domain: &str,
    static_hosts: Option<Vec<Vec<HostPort>>>,
) -> (Resolution, u64, Option<MxSet>) {
    if let Some(levels) = static_hosts {
        let mut out = Vec::new();
        for level in levels {
            let mut hops = Vec::new();
            for h in level {
                hops.extend(addresses(resolver, &h.host, h.port).await);
            }
            out.push(hops);
        }
        return (Resolution::Hops(out), RESOLVE_TTL_DEFAULT_MS, None);
    }
    match resolver.mx_lookup(fqdn(domain)).await {
        Ok(mx) => {
            let ttl_ms =
                mx.as_lookup().valid_until().saturating_duration_since(std::time::Instant::now()).as_millis() as u64;
            let mut records: Vec<(u16, String)> = mx.iter().map(|r| (r.preference(), r.exchange().to_utf8())).collect();
            if records.len() == 1 && (records[0].1 == "." || records[0].1.is_empty()) {
                let reply = Reply::new(556, format!("5.1.10 {domain} does not accept mail (null MX, RFC 7505)"));
                return (Resolution::Permanent(reply), ttl_ms.max(1_000), None);
            }
            for r in &mut records {
                r.1 = r.1.trim_end_matches('.').to_ascii_lowercase();
            }
            records.sort();
            let mx_set = records.clone();
            let mut levels: Vec<Vec<Hop>> = Vec::new();
            let mut last_pref = None;
            for (pref, host) in records {
                if host == "." {
                    continue;
                }
                let hops = addresses(resolver, &host, 25).await;
                if last_pref != Some(pref) {
                    levels.push(Vec::new());
                    last_pref = Some(pref);
                }
                levels.last_mut().expect("pushed").extend(hops);
            }
            (Resolution::Hops(levels), ttl_ms.clamp(1_000, 86_400_000), Some(mx_set))
        }
        Err(e) => match e.kind() {
            ResolveErrorKind::NoRecordsFound { response_code, .. } if *response_code == ResponseCode::NXDomain => {
                let reply = Reply::new(550, format!("5.1.2 {domain}: no such domain"));
                (Resolution::Permanent(reply), 60_000, None)
            }
            ResolveErrorKind::NoRecordsFound { .. } => {
                // No MX: the domain itself is the implicit MX (RFC 5321 §5.1).
                let hops = addresses(resolver, domain, 25).await;
                if hops.is_empty() {
                    let reply = Reply::new(550, format!("5.1.2 {domain}: no MX and no address"));
                    return (Resolution::Permanent(reply), 60_000, None);
                }
                (Resolution::Hops(vec![hops]), RESOLVE_TTL_DEFAULT_MS, None)
            }
            _ => {
                let reply = Reply::new(451, format!("4.4.3 DNS lookup for {domain} failed: {e}"));
                (Resolution::Temporary(reply), 30_000, None)
            }
        },
    }
}

/// Appends accounting records to every `<acct-file>`, each with its header line once, its
/// chosen columns (`record-fields`), its privacy policy, and rotation by size.
pub struct AcctWriter {
    files: Vec<AcctOut>,
}

struct AcctOut {
    conf: sluice_config::AcctFile,
    columns: Vec<usize>,
    /// The names behind `header_NAME` columns.
    headers: Vec<String>,
    w: BufWriter<File>,
    /// Bytes in the current file.
    size: u64,
}

fn open_acct(path: &std::path::Path, columns: &[usize], headers: &[String]) -> std::io::Result<(BufWriter<File>, u64)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("accounting file {}: {e}", path.display())))?;
    let mut size = file.metadata()?.len();
    let mut w = BufWriter::with_capacity(256 * 1024, file);
    if size == 0 {
        let header = acct::header_line_of(columns, headers);
        w.write_all(header.as_bytes())?;
        size = header.len() as u64;
    }
    Ok((w, size))
}

impl AcctWriter {
    pub fn open(config: &Config) -> std::io::Result<AcctWriter> {
        let mut files = Vec::new();
        for a in &config.acct_files {
            let mut columns: Vec<usize> = match &a.fields {
                None => (0..acct::COLUMNS.len()).collect(),
                Some(f) if f.iter().any(|f| f == "*") => (0..acct::COLUMNS.len()).collect(),
                Some(f) => std::iter::once(0)
                    .chain((1..acct::COLUMNS.len()).filter(|&c| f.iter().any(|n| n == acct::COLUMNS[c])))
                    .collect(),
            };
            // `header_NAME` columns come last, in the order named; past `COLUMNS` they index
            // the configuration's `acct_headers`, which every record carries.
            for f in a.fields.iter().flatten() {
                if let Some(name) = f.strip_prefix("header_") {
                    let i = config.acct_headers.iter().position(|h| h.eq_ignore_ascii_case(name)).expect("collected");
                    columns.push(acct::COLUMNS.len() + i);
                }
            }
            let (w, size) = open_acct(&a.path, &columns, &config.acct_headers)?;
            files.push(AcctOut { conf: a.clone(), columns, headers: config.acct_headers.clone(), w, size });
        }
        Ok(AcctWriter { files })
    }

    pub fn write(&mut self, records: &[Record]) {
        for f in &mut self.files {
            for r in records {
                let t = match r.kind {
                    Kind::Delivered => RecordType::Delivered,
                    Kind::Bounced => RecordType::Bounced,
                    Kind::Transient => RecordType::Transient,
                    Kind::QueueEvent => RecordType::QueueEvent,
                    Kind::Received => RecordType::Received,
                    Kind::Feedback => RecordType::Feedback,
                    Kind::RemoteBounce => RecordType::RemoteBounce,
                };
                if !f.conf.records.contains(&t) {
                    continue;
                }
                let line = match &f.conf.privacy_key {
                    Some(key) => {
                        let mut private = r.clone();
                        private.orig = acct::private_address(&r.orig, key.as_bytes());
                        private.rcpt = acct::private_address(&r.rcpt, key.as_bytes());
                        private.csv_line_of(&f.columns)
                    }
                    None => r.csv_line_of(&f.columns),
                };
                match f.w.write_all(line.as_bytes()) {
                    Ok(()) => f.size += line.len() as u64,
                    Err(e) => tracing::error!(error = %e, "accounting write failed"),
                }
            }
            if f.conf.max_size.is_some_and(|max| f.size >= max) {
                if let Err(e) = rotate(f) {
                    tracing::error!(error = %e, file = %f.conf.path.display(), "accounting rotation failed");
                }
            }
        }
    }

    pub fn flush(&mut self) {
        for f in &mut self.files {
            if let Err(e) = f.w.flush() {
                tracing::error!(error = %e, "accounting flush failed");
            }
        }
    }

    /// `sluice rotate acct`: every file is rotated now.
    pub fn rotate_all(&mut self) {
        for f in &mut self.files {
            if let Err(e) = rotate(f) {
                tracing::error!(error = %e, file = %f.conf.path.display(), "accounting rotation failed");
            }
        }
    }
}

/// Work for the accounting writer besides records.
pub enum AcctCmd {
    /// A reloaded configuration: its `<acct-file>`s replace the old ones.
    Reopen(Arc<Config>),
    Rotate,
}

/// Puts a new configuration in force (`sluice reload`, SIGHUP, `POST /reload`): it is read
/// and checked whole (keys, certificates, lists) first; a bad one is refused and the old one
/// stays.
pub struct Reloader {
    path: Option<std::path::PathBuf>,
    responder: Responder,
    acct: crossbeam_channel::Sender<AcctCmd>,
    lock: Mutex<()>,
}

impl Reloader {
    pub fn new(
        path: Option<std::path::PathBuf>,
        responder: Responder,
        acct: crossbeam_channel::Sender<AcctCmd>,
    ) -> Reloader {
        Reloader { path, responder, acct, lock: Mutex::new(()) }
    }

    /// Returns the new configuration's warnings, or why it was refused.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let _one_at_a_time = self.lock.lock().expect("not poisoned");
        let config = Arc::new(crate::load_config(self.path.as_deref()).map_err(|e| e.to_string())?);
        let settings = crate::load_settings(config.clone()).map_err(|e| e.to_string())?;
        let old = self.responder.config();
        let mut warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
        let restart = [
            (old.listeners != config.listeners || old.immediate_tls != config.immediate_tls, "smtp-listener"),
            (old.spool_dir != config.spool_dir, "spool"),
            (old.shards != config.shards, "shards"),
            (old.source_ip_limits != config.source_ip_limits, "source-ip limits"),
            (old.mgmt.as_ref().map(|m| m.listen) != config.mgmt.as_ref().map(|m| m.listen), "http-mgmt-port"),
        ];
        for (changed, what) in restart {
            if changed {
                warnings.push(format!("{what} changes take effect at the next restart"));
            }
        }
        // Refusal counters go on across the reload.
        let old_lists = self.responder.lists();
        for (name, list) in &settings.lists {
            if let Some(old) = old_lists.get(name) {
                list.hits.fetch_add(old.hits(), std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.responder.reload(settings);
        let _ = self.acct.send(AcctCmd::Reopen(config));
        for w in &warnings {
            tracing::warn!("reload: {w}");
        }
        tracing::info!("configuration reloaded");
        Ok(warnings)
    }

    pub fn rotate_acct(&self) {
        let _ = self.acct.send(AcctCmd::Rotate);
    }
}

/// `max-size`: the file becomes `FILE.YYYYMMDDTHHMMSS.N`, a new one starts with its header;
/// `delete-after`: rotated files older than that go.
fn rotate(f: &mut AcctOut) -> std::io::Result<()> {
    f.w.flush()?;
    let path = &f.conf.path;
    let stamp = sluice_engine::time::iso8601(crate::mgmt::now_ms()).replace(['-', ':', ' '], "").replace("+0000", "");
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let rotated =
        (0..).map(|n| path.with_file_name(format!("{name}.{stamp}.{n}"))).find(|p| !p.exists()).expect("a free name");
    std::fs::rename(path, &rotated)?;
    let (w, size) = open_acct(path, &f.columns, &f.headers)?;
    f.w = w;
    f.size = size;
    tracing::info!(file = %rotated.display(), "accounting file rotated");
    if let (Some(age), Some(dir)) = (f.conf.delete_after, path.parent()) {
        let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
        let prefix = format!("{name}.");
        for entry in std::fs::read_dir(dir)?.flatten() {
            let old = entry.file_name().to_string_lossy().starts_with(&prefix)
                && entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e >= age));
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

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
    pub recovered_messages: usize,
}

/// Runs the control plane until `stop` closes. Resolutions run as tokio tasks; accounting
/// records are written as they come and flushed when the channel goes quiet.
pub fn run(plane: Plane) -> std::io::Result<()> {
    let Plane { config, requests, responder, mut acct, acct_cmds, arc_key, stop, reloader, mgmt, recovered_messages } =
        plane;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let resolver = Arc::new(resolver(&config)?);
    let observer = Arc::new(Mutex::new(crate::mgmt::stats::Observer::default()));
    let api = Arc::new(crate::mgmt::Api::new(
        responder.clone(),
        reloader,
        observer.clone(),
        resolver.clone(),
        recovered_messages,
    ));
    if let Some(listener) = mgmt {
        let _in_runtime = rt.enter();
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        rt.spawn(crate::mgmt::serve(api.clone(), listener));
    }
    {
        // Totals sampled once a second: the last minute and hour in status and charts.
        let api = api.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let totals = api.responder.totals();
                api.history.lock().expect("not poisoned").sample(crate::mgmt::now_ms(), totals);
            }
        });
    }
    let checker = {
        let _in_runtime = rt.enter();
        Arc::new(crate::authcheck::Checker::new(&config, arc_key)?)
    };
    let rollups = Arc::new(Mutex::new(Rollups::default()));
    let handle = rt.handle().clone();
    // The channel is read on a blocking thread so the runtime stays free for DNS.
    let reader = std::thread::Builder::new().name("control-reader".into()).spawn(move || {
        loop {
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
            match requests.recv_timeout(Duration::from_millis(100)) {
                Ok(ControlRequest::Acct(records)) => {
                    observer.lock().expect("not poisoned").observe(&records);
                    acct.write(&records);
                }
                Ok(ControlRequest::SuppressAdd { path, address, waiting }) => {
                    // One line, fsynced: the complainer stays suppressed across restarts.
                    let added = OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| {
                        f.write_all(format!("{address}\n").as_bytes())?;
                        f.sync_data()
                    });
                    let ok = added.is_ok();
                    match added {
                        Ok(()) => tracing::info!(%address, file = %path.display(), "complainer suppressed"),
                        Err(e) => tracing::error!(%address, file = %path.display(), error = %e, "cannot add to the suppression file"),
                    }
                    if let Some((shard, slot, gen)) = waiting {
                        responder.report_stored(shard, slot, gen, ok);
                    }
                }
                Ok(ControlRequest::Verify(req)) => {
                    let (checker, responder) = (checker.clone(), responder.clone());
                    handle.spawn(async move {
                        let (headers, summary) = checker.check(&req).await;
                        tracing::debug!(%summary, "inbound authentication checked");
                        let req = *req;
                        responder.verified(req.shard, req.slot, req.gen, req.data, headers, summary);
                    });
                }
                Ok(ControlRequest::Resolve { shard, domain, static_hosts }) => {
                    let resolver = resolver.clone();
                    let responder = responder.clone();
                    let (config, rollups) = (config.clone(), rollups.clone());
                    handle.spawn(async move {
                        let (resolution, ttl_ms, mx) = resolve(&resolver, &domain, static_hosts).await;
                        // A lock on the control plane only, once per resolution.
                        let rollup = mx
                            .zip(config.rollup_fingerprint(&domain))
                            .map(|key| rollups.lock().expect("not poisoned").leader(&domain, key))
                            .filter(|leader| *leader != domain);
                        tracing::debug!(%domain, ?resolution, ?rollup, "resolved");
                        responder.resolved(shard, domain, resolution, ttl_ms, rollup);
                    });
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    acct.flush();
                    // Shards have all stopped: take what they sent last, then end.
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        while let Ok(req) = requests.try_recv() {
                            if let ControlRequest::Acct(records) = req {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hosts: &[&str], settings: &str) -> (MxSet, String) {
        (hosts.iter().map(|h| (10, h.to_string())).collect(), settings.to_string())
    }

    #[test]
    fn rollup_groups_equal_mx_sets_and_settings_under_the_first() {
        let mut r = Rollups::default();
        assert_eq!(r.leader("a.test", key(&["mx.shared"], "s")), "a.test");
        assert_eq!(r.leader("b.test", key(&["mx.shared"], "s")), "a.test");
        assert_eq!(r.leader("c.test", key(&["mx.shared"], "other settings")), "c.test");
        assert_eq!(r.leader("d.test", key(&["mx.shared", "mx2.shared"], "s")), "d.test");
        assert_eq!(r.leader("a.test", key(&["mx.shared"], "s")), "a.test", "stable");
        // The leader moves away: the group gets a new leader, and the old one leads its own.
        assert_eq!(r.leader("a.test", key(&["mx.elsewhere"], "s")), "a.test");
        assert_eq!(r.leader("b.test", key(&["mx.shared"], "s")), "b.test");
        assert_eq!(r.leader("e.test", key(&["mx.shared"], "s")), "b.test");
    }

    #[test]
    fn rollup_fingerprint_follows_settings_and_the_opt_out() {
        let text = "smtp-listener 127.0.0.1:25\n<virtual-mta v1>\n <domain c.test>\n max-smtp-out 3\n </domain>\n</virtual-mta>\n<domain b.test>\n max-smtp-out 5\n</domain>\n<domain off.test>\n disable-mx-rollup yes\n</domain>\n";
        let c = sluice_config::load("t.conf", text, &mut |_| Err("no".into())).unwrap();
        let f = |d: &str| c.rollup_fingerprint(d);
        assert_eq!(f("a.test"), f("z.test"));
        assert_ne!(f("a.test"), f("b.test"), "a global <domain> block differs");
        assert_ne!(f("a.test"), f("c.test"), "a VMTA's <domain> block differs");
        assert_eq!(f("off.test"), None);
    }
}
