//! Rate and connection limits a scheduler grants from: per queue (`max-msg-rate`,
//! `max-connect-rate`: cells that outlive the queue, so a queue that empties and refills gets
//! no fresh burst) and per source IP (`source-ip-max-*`: cells every shard shares, lock-free,
//! built once at start-up). `queue-priority` orders queues competing for a source IP's
//! `source-ip-max-smtp-out` places.

use crate::shape::gcra::{GcraCell, Limit};
use sluice_config::{Config, Rate};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Throttled work is re-tried on the shard's tick; a limit may grant what one tick's worth of
/// its rate allows at once, so rates above one per tick are reachable. Slower rates (below
/// 40/s) keep a burst of one, as PowerMTA's rates have no burst.
pub const RATE_BURST_WINDOW_MS: u64 = 50;
/// How long a `source-ip-max-smtp-out` claim holds without renewal: two ticks.
pub const SMTP_OUT_CLAIM_MS: u64 = 2 * RATE_BURST_WINDOW_MS;

/// A config rate as a GCRA limit.
pub fn limit_of(rate: Rate) -> Limit {
    if rate.is_zero() {
        return Limit::NEVER;
    }
    let per_ms = rate.count as f64 / rate.period.as_millis().max(1) as f64;
    let burst = ((per_ms * RATE_BURST_WINDOW_MS as f64).floor() as u32).max(1);
    Limit::new(rate.count, rate.period, burst)
}

/// Limits on one source IP, shared by every shard: GCRA cells and a connection count.
#[derive(Default)]
pub struct SourceCells {
    pub msg: Option<(GcraCell, Limit)>,
    pub connect: Option<(GcraCell, Limit)>,
    pub smtp_out: Option<(AtomicU32, u32)>,
    /// `queue-priority` for the `smtp_out` places: the highest priority that found them full
    /// lately, as `(priority + 1) << 56 | until_ms` (monotonic). Lower queues leave freed
    /// places to it until the claim lapses; waiting queues renew it on every tick.
    pub smtp_out_claim: AtomicU64,
}

/// Every source IP's cells, and the host's `total-max-smtp-out` count; a reload does not
/// change them (restart to).
#[derive(Default)]
pub struct SourceLimits {
    pub ips: HashMap<IpAddr, SourceCells>,
    /// Outbound connections open, and the most allowed.
    pub total_smtp_out: Option<(AtomicU32, u32)>,
    /// Fleet-wide limits (`<cluster>`), when this host is one of a fleet.
    pub cluster: Option<ClusterCells>,
    /// Connections open per (source IP, MX name or receiver address) under an
    /// `mx-connection-limit` / `ip-connection-limit` (`Config::hop_limits`), every shard's.
    /// A connection takes its slots as it connects: not on the per-message path.
    pub hop_open: std::sync::Mutex<HashMap<(Option<IpAddr>, String), u32>>,
}

/// Fleet-wide limits (`cluster-max-msg-rate`, `cluster-max-smtp-out`), one cell per
/// destination domain: the message tokens and connection slots this host's control plane
/// leased from Redis (or, with Redis away, its local share). Shards take from them with
/// atomics; only the control plane talks to Redis.
#[derive(Default)]
pub struct ClusterCells {
    cells: std::sync::RwLock<HashMap<String, Arc<ClusterCell>>>,
}

#[derive(Debug)]
pub struct ClusterCell {
    pub rate: Option<Rate>,
    pub cap: Option<u32>,
    /// Messages this host may still start (the current lease).
    pub tokens: AtomicI64,
    /// Starts refused for want of a token, and messages started, since the control plane
    /// last looked (it asks for more when there was demand).
    pub denied: AtomicU64,
    pub started: AtomicU64,
    /// Connections open, and how many this host may hold.
    pub conns: AtomicU32,
    pub slots: AtomicU32,
    pub conn_denied: AtomicU64,
}

impl ClusterCells {
    /// The cell of `domain` (made on first use with its limits).
    pub fn cell(&self, domain: &str, rate: Option<Rate>, cap: Option<u32>) -> Arc<ClusterCell> {
        if let Some(c) = self.cells.read().expect("not poisoned").get(domain) {
            return c.clone();
        }
        let cell = Arc::new(ClusterCell {
            rate,
            cap,
            tokens: AtomicI64::new(0),
            denied: AtomicU64::new(0),
            started: AtomicU64::new(0),
            conns: AtomicU32::new(0),
            slots: AtomicU32::new(0),
            conn_denied: AtomicU64::new(0),
        });
        self.cells.write().expect("not poisoned").entry(domain.to_string()).or_insert(cell).clone()
    }

    /// Every cell, for the control plane.
    pub fn all(&self) -> Vec<(String, Arc<ClusterCell>)> {
        self.cells.read().expect("not poisoned").iter().map(|(d, c)| (d.clone(), c.clone())).collect()
    }
}

impl ClusterCell {
    /// One message start from the lease.
    pub fn take_token(&self) -> bool {
        if self.rate.is_none() {
            return true;
        }
        if self.tokens.fetch_sub(1, Ordering::AcqRel) > 0 {
            self.started.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.tokens.fetch_add(1, Ordering::AcqRel);
        self.denied.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// A token taken but not used (a local limit said no after it).
    pub fn give_back_token(&self) {
        if self.rate.is_some() {
            self.tokens.fetch_add(1, Ordering::AcqRel);
            self.started.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// One connection slot from the lease (true: taken, or no fleet cap).
    pub fn take_slot(&self) -> bool {
        if self.cap.is_none() {
            return true;
        }
        let slots = self.slots.load(Ordering::Acquire);
        if self.conns.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < slots).then_some(n + 1)).is_ok() {
            return true;
        }
        self.conn_denied.fetch_add(1, Ordering::Relaxed);
        false
    }

    pub fn release_slot(&self) {
        if self.cap.is_some() {
            self.conns.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl SourceLimits {
    fn get(&self, ip: &IpAddr) -> Option<&SourceCells> {
        self.ips.get(ip)
    }
}

pub fn source_limits(config: &Config) -> SourceLimits {
    let ips = config
        .source_ip_limits
        .iter()
        .map(|(ip, l)| {
            let cells = SourceCells {
                msg: l.max_msg_rate.map(|r| (GcraCell::new(), limit_of(r))),
                connect: l.max_connect_rate.map(|r| (GcraCell::new(), limit_of(r))),
                smtp_out: l.max_smtp_out.map(|n| (AtomicU32::new(0), n)),
                smtp_out_claim: AtomicU64::new(0),
            };
            (*ip, cells)
        })
        .collect();
    SourceLimits {
        ips,
        total_smtp_out: config.total_max_smtp_out.map(|n| (AtomicU32::new(0), n)),
        cluster: config.cluster.as_ref().map(|_| ClusterCells::default()),
        hop_open: Default::default(),
    }
}

/// Whether every limit in `keys` (`Config::hop_limits`) has room for one more connection
/// from `source_ip`.
pub fn hop_room(limits: &SourceLimits, source_ip: Option<IpAddr>, keys: &[(String, u32)]) -> bool {
    let open = limits.hop_open.lock().expect("not poisoned");
    keys.iter().all(|(k, max)| open.get(&(source_ip, k.clone())).copied().unwrap_or(0) < *max)
}

/// Takes one connection on each limit in `keys`, all or none.
pub fn take_hop(limits: &SourceLimits, source_ip: Option<IpAddr>, keys: &[(String, u32)]) -> bool {
    let mut open = limits.hop_open.lock().expect("not poisoned");
    if !keys.iter().all(|(k, max)| open.get(&(source_ip, k.clone())).copied().unwrap_or(0) < *max) {
        return false;
    }
    for (k, _) in keys {
        *open.entry((source_ip, k.clone())).or_insert(0) += 1;
    }
    true
}

/// Gives back the connections `take_hop` took.
pub fn release_hop(limits: &SourceLimits, source_ip: Option<IpAddr>, keys: &[String]) {
    let mut open = limits.hop_open.lock().expect("not poisoned");
    for k in keys {
        let key = (source_ip, k.clone());
        if let Some(n) = open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

#[derive(Clone, Copy)]
pub enum Grant {
    Message,
    Connect,
}

/// A queue's own cells.
#[derive(Default)]
pub struct QueueCells {
    msg: Option<(GcraCell, Limit)>,
    connect: Option<(GcraCell, Limit)>,
}

impl QueueCells {
    /// One grant at `rate` (None: unlimited). The cell keeps its state when the limit
    /// changes (backoff, adaptive rate): a fresh cell would grant at once.
    pub fn grant(&mut self, grant: Grant, rate: Option<Rate>, now_ns: u64) -> bool {
        let Some(rate) = rate else { return true };
        let slot = match grant {
            Grant::Message => &mut self.msg,
            Grant::Connect => &mut self.connect,
        };
        let (cell, limit) = slot.get_or_insert_with(|| (GcraCell::new(), limit_of(rate)));
        *limit = limit_of(rate);
        cell.try_acquire(now_ns, *limit).is_ok()
    }
}

/// One grant from a source IP's cell (no limit configured: granted).
pub fn source_grant(limits: &SourceLimits, ip: Option<IpAddr>, grant: Grant, now_ns: u64) -> bool {
    let Some(cells) = ip.and_then(|ip| limits.get(&ip)) else { return true };
    let cell = match grant {
        Grant::Message => &cells.msg,
        Grant::Connect => &cells.connect,
    };
    cell.as_ref().is_none_or(|(cell, limit)| cell.try_acquire(now_ns, *limit).is_ok())
}

/// Takes a place for a new outbound connection: one of the host's `total-max-smtp-out`
/// (None when all are taken), then one of its source IP's (`take_ip_smtp_out`).
pub fn take_smtp_out(limits: &SourceLimits, source_ip: Option<IpAddr>, priority: u8, now_ms: u64) -> Option<bool> {
    if let Some((count, max)) = &limits.total_smtp_out {
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < *max).then_some(n + 1)).ok()?;
    }
    let held = take_ip_smtp_out(limits, source_ip, priority, now_ms);
    if held.is_none() {
        if let Some((count, _)) = &limits.total_smtp_out {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
    held
}

/// Takes a `source-ip-max-smtp-out` place for `source_ip` (Some(true)), or there is no such
/// limit (Some(false)), or it is full or claimed by a higher `queue-priority` (None). A queue
/// that finds it full claims the next free place for its priority, across all shards.
fn take_ip_smtp_out(limits: &SourceLimits, source_ip: Option<IpAddr>, priority: u8, now_ms: u64) -> Option<bool> {
    let Some(cells) = source_ip.and_then(|ip| limits.get(&ip)) else { return Some(false) };
    let Some((count, max)) = cells.smtp_out.as_ref() else { return Some(false) };
    let ours = (priority as u64 + 1) << 56;
    let live = |claim: u64| claim & ((1 << 56) - 1) > now_ms;
    let claim = cells.smtp_out_claim.load(Ordering::Acquire);
    if claim >> 56 > ours >> 56 && live(claim) {
        return None; // a higher-priority queue is waiting for this place
    }
    match count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < *max).then_some(n + 1)) {
        Ok(_) => Some(true),
        Err(_) => {
            let mine = ours | (now_ms + SMTP_OUT_CLAIM_MS);
            let _ = cells.smtp_out_claim.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c >> 56 <= ours >> 56 || !live(c)).then_some(mine)
            });
            None
        }
    }
}

/// Gives back the places `take_smtp_out` granted (`held`: a source IP's too).
pub fn release_smtp_out(limits: &SourceLimits, source_ip: Option<IpAddr>, held: bool) {
    if let Some((count, _)) = &limits.total_smtp_out {
        count.fetch_sub(1, Ordering::AcqRel);
    }
    if !held {
        return;
    }
    let count = source_ip.and_then(|ip| limits.get(&ip)).and_then(|c| c.smtp_out.as_ref());
    if let Some((count, _)) = count {
        count.fetch_sub(1, Ordering::AcqRel);
    }
}
