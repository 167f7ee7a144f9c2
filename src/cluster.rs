//! A fleet of sluice hosts (`<cluster>`) on Redis, run by the control plane and never on the
//! per-message path:
//!
//! - fleet-wide rates (`cluster-max-msg-rate`): every 100 ms the control plane asks Redis for
//!   a small lease of message tokens per destination (a GCRA in a Lua script, Redis's clock)
//!   and puts it in that destination's cell, from which the shards take with an atomic; an
//!   unused lease is dropped at the next turn, so the fleet goes over a limit by at most one
//!   lease per host;
//! - fleet-wide connection caps (`cluster-max-smtp-out`): each host holds a count of slots in
//!   a Redis hash, renewed every half second and expiring after `LEASE_MS`, so a host that
//!   dies frees its slots within that time;
//! - shared suppression (`redis-set KEY` in an `<address-list>`): the set is read whole when
//!   Redis (re)connects and every `FULL_SYNC`, and sluice's own additions (complaints,
//!   `auto-suppress-list`) are added to the set and published, arriving at once. Additions by
//!   anyone else (an application's unsubscribe handler's plain `SADD`) are followed too: the
//!   set is read again when Redis says it changed (keyspace notifications, which sluice turns
//!   on where the server lets it) and, where it does not, when the set's size has changed
//!   (`SCARD`, asked every `SIZE_POLL`): either way within a second;
//! - job and queue control: pause, resume and delete made on any host are published to all,
//!   and pauses are kept in Redis for hosts that start later.
//!
//! With Redis unreachable each host takes 1/`expected-nodes` of each fleet limit on its own,
//! keeps delivering, says so once in the log and on `/status` and `/metrics`, and rejoins when
//! Redis answers again.

use redis::aio::ConnectionManager;
use sluice_config::Config;
use sluice_engine::sched::limits::ClusterCell;
use sluice_netio::Responder;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::mpsc;

use crate::redis_link::RedisLink;

/// The lease scripts, each built (and hashed) once.
static RATE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RATE_LUA));
static SLOTS: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SLOTS_LUA));

/// How often leases are renewed.
const TURN: Duration = Duration::from_millis(100);
/// Connection slots are renewed every this many turns and expire after `LEASE_MS`.
const SLOT_TURNS: u64 = 5;
const LEASE_MS: u64 = 5_000;
/// A Redis call that takes longer counts as Redis being away.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// The whole of each shared suppression set is read again this often.
const FULL_SYNC: Duration = Duration::from_secs(30);
/// Each shared set's size is asked this often (in turns): a changed size has it read again.
const SIZE_POLL_TURNS: u64 = 5;
/// The keyspace events sluice needs: keyspace channel (`K`), set commands (`s`).
const KEYSPACE_EVENTS: &str = "Ks";

const CONTROL_CHANNEL: &str = "sluice:control";
const SUPPRESS_CHANNEL: &str = "sluice:suppress";
/// Pauses in force across the fleet, for hosts that start later.
const HELD_KEY: &str = "sluice:held";

/// Fleet GCRA: KEYS[1] the destination's theoretical arrival time (µs, Redis's clock);
/// ARGV: emission interval (µs), burst window (µs), tokens wanted. Returns tokens granted.
const RATE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local n = math.floor((now + tonumber(ARGV[2]) - tat) / interval)
if n > tonumber(ARGV[3]) then n = tonumber(ARGV[3]) end
if n < 0 then n = 0 end
tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 60000)
return n
";

/// Fleet connection slots: KEYS[1] a hash node -> `count:expiry_ms`; ARGV: node, wanted,
/// cap, lease (ms). Expired holders are dropped; returns the slots granted to this node.
const SLOTS_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local c, exp = string.match(all[i + 1], '(%d+):(%d+)')
    if tonumber(exp) > now then others = others + tonumber(c) else redis.call('HDEL', KEYS[1], all[i]) end
  end
end
local grant = math.min(tonumber(ARGV[2]), math.max(0, tonumber(ARGV[3]) - others))
redis.call('HSET', KEYS[1], ARGV[1], grant .. ':' .. (now + tonumber(ARGV[4])))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)
return grant
";

/// What `/status` and `/metrics` show of the fleet.
#[derive(Default)]
pub struct Status {
    pub node: String,
    pub connected: AtomicBool,
    /// Message tokens granted by Redis (or the local share) since start.
    pub tokens_granted: AtomicU64,
    /// Connection slots held now, over every destination.
    pub slots_held: AtomicU64,
    pub lost_connection: AtomicU64,
    /// `spool-takeover`'s state, when configured.
    pub takeover: Option<Arc<crate::takeover::Status>>,
}

/// What the management API (and the fleet's own listener) asks of the fleet task.
pub enum Ask {
    /// An operator command to run on every other host (`path`, query string).
    Control { path: String, query: String },
    /// Redis says shared set `key` changed (a keyspace notification): read it again.
    SetChanged(String),
}

/// The control plane's link to the fleet, for the management API.
#[derive(Clone)]
pub struct Handle {
    pub status: Arc<Status>,
    tx: mpsc::UnboundedSender<Ask>,
}

impl Handle {
    /// Publishes an operator command (`/pauseJob`, `jobId=X`) to the other hosts.
    pub fn publish(&self, path: &str, query: &str) {
        let _ = self.tx.send(Ask::Control { path: path.to_string(), query: query.to_string() });
    }
}

/// Applies an operator command that came from another host (or from the held set).
pub type Apply = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Starts the fleet task on the control plane's runtime.
pub fn start(
    config: &Config,
    responder: Responder,
    apply: Apply,
    takeover: Option<Arc<crate::takeover::Status>>,
) -> Option<Handle> {
    let cluster = config.cluster.clone()?;
    let status = Arc::new(Status { node: cluster.node_name.clone(), takeover, ..Default::default() });
    let (tx, rx) = mpsc::unbounded_channel();
    let client = match redis::Client::open(cluster.redis_url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(url = %cluster.redis_url, error = %e, "cluster: bad redis-server; running alone");
            return None;
        }
    };
    let lists = shared_lists(config);
    let changed = tx.clone();
    let fleet = Fleet {
        link: RedisLink::new(client),
        node: cluster.node_name.clone(),
        expected: cluster.expected_nodes.max(1),
        responder,
        status: status.clone(),
        lists,
        local_carry: HashMap::new(),
        apply,
        changed,
        sizes: HashMap::new(),
        filled: HashMap::new(),
        dirty: std::collections::BTreeSet::new(),
    };
    tokio::spawn(fleet.run(rx));
    Some(Handle { status, tx })
}

/// `<address-list>`s backed by a Redis set: (list name, set key).
fn shared_lists(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, list) in &config.address_lists {
        for (entry, _) in &list.entries {
            if let sluice_config::ListEntry::RedisSet(key) = entry {
                out.push((name.clone(), key.clone()));
            }
        }
    }
    out
}

struct Fleet {
    link: RedisLink,
    node: String,
    expected: u32,
    responder: Responder,
    status: Arc<Status>,
    lists: Vec<(String, String)>,
    /// Fractions of a token owed to a destination while running on the local share.
    local_carry: HashMap<String, f64>,
    apply: Apply,
    /// Where the listener says a shared set changed.
    changed: mpsc::UnboundedSender<Ask>,
    /// Each shared set's size when it was last read.
    sizes: HashMap<String, u64>,
    /// The lists last filled from each set (a reload makes new, empty ones).
    filled: HashMap<String, usize>,
    /// Shared sets to read again on the next turn.
    dirty: std::collections::BTreeSet<String>,
}

impl Fleet {
    async fn run(mut self, mut asks: mpsc::UnboundedReceiver<Ask>) {
        let mut tick = tokio::time::interval(TURN);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut turn: u64 = 0;
        let mut last_sync = std::time::Instant::now();
        self.connect().await;
        let listener = Listener {
            client: self.link.client().clone(),
            node: self.node.clone(),
            responder: self.responder.clone(),
            apply: self.apply.clone(),
            keys: self.set_keys(),
            changed: self.changed.clone(),
        };
        tokio::spawn(listener.run());
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    turn += 1;
                    if !self.link.is_up() && turn % 10 == 0 {
                        self.connect().await;
                    }
                    if self.link.is_up() && last_sync.elapsed() >= FULL_SYNC {
                        last_sync = std::time::Instant::now();
                        self.sync_lists().await;
                    } else if self.link.is_up() {
                        if turn % SIZE_POLL_TURNS == 0 {
                            self.poll_sizes().await;
                        }
                        if !self.dirty.is_empty() {
                            let keys = std::mem::take(&mut self.dirty);
                            self.read_sets(&keys).await;
                        }
                    }
                    self.lease(turn % SLOT_TURNS == 0).await;
                }
                Some(ask) = asks.recv() => self.ask(ask).await,
            }
        }
    }

    /// Connects (or reconnects), then reads the shared sets and the pauses in force.
    async fn connect(&mut self) {
        match self.link.connect(REDIS_TIMEOUT * 2).await {
            true => {
                self.set_connected(true);
                self.keyspace_events().await;
                self.sync_lists().await;
                self.apply_held().await;
            }
            false => self.set_connected(false),
        }
    }

    fn set_connected(&mut self, up: bool) {
        let was = self.status.connected.swap(up, Ordering::SeqCst);
        match (was, up) {
            (false, true) => tracing::info!(node = %self.node, "cluster: Redis connected; fleet limits shared"),
            (true, false) => {
                self.status.lost_connection.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %self.node, share = self.expected, "cluster: Redis unreachable; each fleet limit taken locally at 1/expected-nodes")
            }
            (false, false) if self.status.lost_connection.load(Ordering::Relaxed) == 0 => {
                self.status.lost_connection.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %self.node, "cluster: Redis unreachable at start; running on the local share")
            }
            _ => {}
        }
        if !up {
            self.link.close();
        }
    }

    /// `call` on the connection within `within` (`RedisLink::run`); a lost connection marks
    /// Redis away.
    async fn redis<T, F, Fut>(&mut self, within: Duration, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let answer = self.link.run(within, call).await;
        if !self.link.is_up() {
            self.set_connected(false);
        }
        answer
    }

    /// A script within `REDIS_TIMEOUT`.
    async fn call<T: redis::FromRedisValue>(&mut self, inv: redis::ScriptInvocation<'static>) -> Option<T> {
        self.redis(REDIS_TIMEOUT, |mut c| async move { inv.invoke_async(&mut c).await }).await
    }

    /// One turn: message tokens for every destination with a fleet rate, and (every
    /// `SLOT_TURNS`) connection slots for those with a fleet cap.
    async fn lease(&mut self, slots_turn: bool) {
        let Some(cells) = self.responder.source_limits().cluster.as_ref().map(|c| c.all()) else { return };
        let mut held = 0u64;
        for (domain, cell) in cells {
            if let Some(rate) = cell.rate {
                self.lease_tokens(&domain, &cell, rate).await;
            }
            if let (Some(cap), true) = (cell.cap, slots_turn) {
                self.lease_slots(&domain, &cell, cap).await;
            }
            held += cell.slots.load(Ordering::Relaxed) as u64;
        }
        if slots_turn {
            self.status.slots_held.store(held, Ordering::Relaxed);
        }
    }

    async fn lease_tokens(&mut self, domain: &str, cell: &ClusterCell, rate: sluice_config::Rate) {
        let denied = cell.denied.swap(0, Ordering::Relaxed);
        let started = cell.started.swap(0, Ordering::Relaxed);
        let period_us = rate.period.as_micros().max(1) as f64;
        let per_turn = rate.count as f64 * TURN.as_micros() as f64 / period_us;
        if denied == 0 && started == 0 {
            cell.tokens.store(0, Ordering::Release); // no demand: the lease lapses
            return;
        }
        // With demand, a whole turn's worth: what is not used lapses at the next turn, and
        // hosts asking at other moments of the turn get the rest (the GCRA's window is a turn).
        let want = per_turn.ceil().max(1.0) as u64;
        let granted = match self.link.is_up() {
            true => {
                let interval_us = (period_us / rate.count.max(1) as f64).max(1.0);
                let mut inv = RATE.prepare_invoke();
                inv.key(format!("sluice:rate:{domain}")).arg(interval_us as u64).arg(TURN.as_micros() as u64).arg(want);
                self.call::<u64>(inv).await
            }
            false => None,
        };
        let granted = granted.unwrap_or_else(|| {
            // Redis away: this host's share, fractions carried to the next turn.
            let carry = self.local_carry.entry(domain.to_string()).or_default();
            *carry += per_turn / self.expected as f64;
            let whole = carry.floor();
            *carry -= whole;
            whole as u64
        });
        cell.tokens.store(granted as i64, Ordering::Release);
        self.status.tokens_granted.fetch_add(granted, Ordering::Relaxed);
    }

    async fn lease_slots(&mut self, domain: &str, cell: &ClusterCell, cap: u32) {
        let in_use = cell.conns.load(Ordering::Acquire);
        let denied = cell.conn_denied.swap(0, Ordering::Relaxed).min(cap as u64) as u32;
        let want = (in_use + denied).min(cap);
        let granted = match self.link.is_up() {
            true => {
                let mut inv = SLOTS.prepare_invoke();
                inv.key(format!("sluice:conns:{domain}")).arg(&self.node).arg(want).arg(cap).arg(LEASE_MS);
                self.call::<u32>(inv).await
            }
            false => None,
        };
        // Redis away: this host's share of the cap.
        let granted = granted.unwrap_or_else(|| cap.div_ceil(self.expected));
        cell.slots.store(granted, Ordering::Release);
    }

    /// The shared sets' keys (two lists may share one).
    fn set_keys(&self) -> std::collections::BTreeSet<String> {
        self.lists.iter().map(|(_, k)| k.clone()).collect()
    }

    /// Every address of each shared set into its list.
    async fn sync_lists(&mut self) {
        let keys = self.set_keys();
        self.read_sets(&keys).await;
    }

    /// Reads the shared sets `keys` whole into the lists they back (an address already there
    /// stays as it is), noting each one's size.
    async fn read_sets(&mut self, keys: &std::collections::BTreeSet<String>) {
        let lists = self.responder.lists();
        for key in keys {
            let mut smembers = redis::cmd("SMEMBERS");
            smembers.arg(key);
            let read = |mut c: ConnectionManager| async move { smembers.query_async::<Vec<String>>(&mut c).await };
            let Some(members) = self.redis(REDIS_TIMEOUT * 4, read).await else { return };
            for (name, _) in self.lists.iter().filter(|(_, k)| k == key) {
                if let Some(list) = lists.get(name) {
                    for m in &members {
                        list.add(m);
                    }
                    self.filled.insert(name.clone(), Arc::as_ptr(list) as usize);
                }
            }
            self.sizes.insert(key.clone(), members.len() as u64);
            tracing::debug!(key = %key, addresses = members.len(), "cluster: suppression set read");
        }
    }

    /// Asks every shared set's size; one that changed since it was read is read again (what
    /// follows other writers where keyspace notifications are not to be had), and so is one
    /// whose list a reload made anew.
    async fn poll_sizes(&mut self) {
        if self.lists.is_empty() {
            return;
        }
        let lists = self.responder.lists();
        for (name, key) in &self.lists {
            let now = lists.get(name).map(|l| Arc::as_ptr(l) as usize);
            if now != self.filled.get(name).copied() {
                self.dirty.insert(key.clone());
            }
        }
        let keys = self.set_keys();
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.scard(k);
        }
        let read = |mut c: ConnectionManager| async move { pipe.query_async::<Vec<u64>>(&mut c).await };
        if let Some(sizes) = self.redis(REDIS_TIMEOUT, read).await {
            for (k, n) in keys.into_iter().zip(sizes) {
                if self.sizes.get(&k) != Some(&n) {
                    self.dirty.insert(k);
                }
            }
        }
    }

    /// Turns on the keyspace notifications for set commands, keeping whatever else the server
    /// has on; a server that refuses `CONFIG` (a managed Redis) is followed by size instead.
    async fn keyspace_events(&mut self) {
        if self.lists.is_empty() {
            return;
        }
        let mut get = redis::cmd("CONFIG");
        get.arg("GET").arg("notify-keyspace-events");
        let read = |mut c: ConnectionManager| async move { get.query_async::<Vec<String>>(&mut c).await };
        let flags = match self.redis(REDIS_TIMEOUT, read).await {
            Some(v) => v.get(1).cloned().unwrap_or_default(),
            None => String::new(),
        };
        if !self.link.is_up() {
            return;
        }
        let Some(wanted) = keyspace_flags(&flags) else { return };
        let mut set = redis::cmd("CONFIG");
        set.arg("SET").arg("notify-keyspace-events").arg(&wanted);
        match self.redis(REDIS_TIMEOUT, |mut c| async move { set.query_async::<()>(&mut c).await }).await {
            Some(()) => {
                tracing::info!(flags = %wanted, "cluster: Redis keyspace notifications on for the shared suppression sets")
            }
            _ => tracing::info!(
                "cluster: Redis does not let sluice turn on keyspace notifications; other writers' additions to the \
                 shared suppression sets are followed by the sets' sizes (within a second). \
                 `notify-keyspace-events Ks` on the server makes it sooner"
            ),
        }
    }

    /// The pauses other hosts made, kept in Redis, applied here.
    async fn apply_held(&mut self) {
        let read = |mut c: ConnectionManager| async move {
            redis::cmd("HKEYS").arg(HELD_KEY).query_async::<Vec<String>>(&mut c).await
        };
        if let Some(held) = self.redis(REDIS_TIMEOUT * 4, read).await {
            for h in held {
                if let Some((path, query)) = h.split_once('?') {
                    (self.apply)(path, query);
                }
            }
        }
    }

    async fn ask(&mut self, ask: Ask) {
        match ask {
            Ask::SetChanged(key) => drop(self.dirty.insert(key)),
            Ask::Control { path, query } => {
                if !self.link.is_up() {
                    tracing::warn!(%path, %query, "cluster: Redis unreachable; the command stays on this host");
                    return;
                }
                // Pauses are kept for hosts that start later; a resume takes its pause away.
                let held = match path.as_str() {
                    "/pause" | "/pauseJob" => Some((true, path.clone())),
                    "/resume" => Some((false, "/pause".to_string())),
                    "/resumeJob" => Some((false, "/pauseJob".to_string())),
                    _ => None,
                };
                let mut pipe = redis::pipe();
                if let Some((add, held_path)) = held {
                    let field = format!("{held_path}?{query}");
                    match add {
                        true => pipe.hset(HELD_KEY, field, &self.node).ignore(),
                        false => pipe.hdel(HELD_KEY, field).ignore(),
                    };
                }
                pipe.publish(CONTROL_CHANNEL, format!("{}\n{path}\n{query}", self.node)).ignore();
                let sent = self.redis(REDIS_TIMEOUT, |mut c| async move { pipe.query_async::<()>(&mut c).await }).await;
                if sent.is_none() {
                    tracing::warn!(%path, %query, "cluster: command not published to the fleet");
                }
            }
        }
    }
}

/// Adds a complainer to a shared set and tells the fleet; Ok once Redis has it.
pub async fn add_suppressed(client: &redis::Client, key: &str, address: &str) -> redis::RedisResult<()> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut pipe = redis::pipe();
    pipe.sadd(key, address).ignore().publish(SUPPRESS_CHANNEL, format!("{key}\n{address}")).ignore();
    pipe.query_async::<()>(&mut conn).await
}

/// The flags for `notify-keyspace-events` that add what sluice needs to `current`; None when
/// it has them already (`A` stands for every class, `s` among them).
fn keyspace_flags(current: &str) -> Option<String> {
    let has = |c: char| current.contains(c);
    if has('K') && (has('s') || has('A')) {
        return None;
    }
    let mut flags = current.to_string();
    for c in KEYSPACE_EVENTS.chars().filter(|&c| !has(c)) {
        flags.push(c);
    }
    Some(flags)
}

/// The keyspace channel of `key` in database `db`.
fn keyspace_channel(db: i64, key: &str) -> String {
    format!("__keyspace@{db}__:{key}")
}

/// Listens to the fleet's channels (reconnecting when Redis goes): operator commands from
/// other hosts, addresses added to shared suppression sets by sluice hosts, and the sets'
/// keyspace channels (any writer's change).
struct Listener {
    client: redis::Client,
    node: String,
    responder: Responder,
    apply: Apply,
    /// The shared sets' keys.
    keys: std::collections::BTreeSet<String>,
    changed: mpsc::UnboundedSender<Ask>,
}

impl Listener {
    async fn run(self) {
        use futures_util::StreamExt;
        let db = self.client.get_connection_info().redis.db;
        let watched: HashMap<String, String> = self.keys.iter().map(|k| (keyspace_channel(db, k), k.clone())).collect();
        let mut channels = vec![CONTROL_CHANNEL.to_string(), SUPPRESS_CHANNEL.to_string()];
        channels.extend(watched.keys().cloned());
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(&channels).await.is_ok() {
                        // Changes made while not listening: read every set again.
                        for k in &self.keys {
                            let _ = self.changed.send(Ask::SetChanged(k.clone()));
                        }
                        let mut messages = pubsub.on_message();
                        while let Some(msg) = messages.next().await {
                            let text: String = msg.get_payload().unwrap_or_default();
                            match msg.get_channel_name() {
                                CONTROL_CHANNEL => self.on_control(&text),
                                SUPPRESS_CHANNEL => {
                                    if let Some((key, address)) = text.split_once('\n') {
                                        suppress_locally(&self.responder, key, address);
                                    }
                                }
                                channel => {
                                    if let Some(key) = watched.get(channel) {
                                        let _ = self.changed.send(Ask::SetChanged(key.clone()));
                                    }
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cluster: pub/sub not connected"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn on_control(&self, text: &str) {
        let mut parts = text.splitn(3, '\n');
        let (Some(from), Some(path), Some(query)) = (parts.next(), parts.next(), parts.next()) else { return };
        if from == self.node {
            return;
        }
        tracing::info!(%from, %path, %query, "cluster: command from another host");
        // Shard commands block (mailboxes, answers): off the runtime's one thread, which
        // serves DNS too.
        let (apply, path, query) = (self.apply.clone(), path.to_string(), query.to_string());
        tokio::task::spawn_blocking(move || apply(&path, &query));
    }
}

/// An address another host added to shared set `key`: into every list backed by it.
fn suppress_locally(responder: &Responder, key: &str, address: &str) {
    let config = responder.config();
    let lists = responder.lists();
    for (name, set) in shared_lists(&config) {
        if set == key {
            if let Some(list) = lists.get(&name) {
                list.add(address);
            }
        }
    }
}

/// The Redis set key behind an `<address-list>`, if it is shared.
pub fn set_of(config: &Config, list: &str) -> Option<String> {
    shared_lists(config).into_iter().find(|(n, _)| n == list).map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_flags_add_only_what_is_missing() {
        assert_eq!(keyspace_flags("").as_deref(), Some("Ks"));
        assert_eq!(keyspace_flags("Ex").as_deref(), Some("ExKs"));
        assert_eq!(keyspace_flags("Kx").as_deref(), Some("Kxs"));
        assert_eq!(keyspace_flags("KA"), None);
        assert_eq!(keyspace_flags("Ks"), None);
        assert_eq!(keyspace_flags("AKE"), None);
        assert_eq!(keyspace_channel(0, "suppress:global"), "__keyspace@0__:suppress:global");
    }
}
