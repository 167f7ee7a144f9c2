//! Spool takeover (`spool-takeover DIR` in `<cluster>`): a host that dies has its queue
//! delivered by a live peer.
//!
//! Every node's spool is `DIR/<node-name>` on storage the peers can reach. In Redis each
//! spool has a holder and an epoch (`sluice:spool:<node>`), and each live host a lease
//! (`sluice:alive:<node>`, lasting `takeover-after`) that it renews several times within
//! that time, but only while it still holds its spool at the epoch it claimed it with.
//!
//! - At start, before its spool is recovered, a host claims its spool: the epoch goes up
//!   (a copy of this host still running somewhere is fenced by it). While a peer holds the
//!   spool (it adopted it), the host waits for the peer to release it, then recovers what is
//!   left: nothing that was moved.
//! - A spool whose holder's lease is gone is adopted by exactly one live peer (a Lua script
//!   compares and sets the holder, epoch up). The adopter moves the spool's undelivered
//!   messages into its own spool, as `deliver-only` does (`crate::drain`), marking each batch
//!   final in the old spool once it is durable here, then deletes the old spool's files and
//!   releases it. A spool held by an adopter that dies in turn is adopted again the same way.
//! - The fence: the shards deliver and write only while `sluice_netio::FENCE` holds, that is
//!   for half of `takeover-after` after the last renewal was asked for. A host cut off from
//!   Redis (or paused) stops before any peer can adopt its spool; one that hears it was
//!   fenced (its spool adopted, or claimed by a newer copy of itself) exits at once.
//!
//! What may be sent twice: deliveries in flight when the host died or was cut off (the
//! receiver had the message, the outcome was not yet journaled), and, if an adopter dies
//! while moving, the batch it was moving.

use crate::redis_link::RedisLink;
use redis::aio::ConnectionManager;
use sluice_config::Cluster;
use sluice_netio::{Fence, Responder, FENCE};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// The set of nodes that have a spool under takeover.
const SPOOLS_KEY: &str = "sluice:spools";

/// KEYS: the node's spool, its lease; ARGV: node, lease (ms). The spool is claimed unless a
/// peer holds it: {1, epoch}, or {0, holder}.
const CLAIM_LUA: &str = r"
local h = redis.call('HGET', KEYS[1], 'holder')
if h and h ~= ARGV[1] then return {0, h} end
local e = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'holder', ARGV[1])
redis.call('SET', KEYS[2], e, 'PX', ARGV[2])
redis.call('SADD', 'sluice:spools', ARGV[1])
return {1, tostring(e)}
";

/// KEYS: the node's spool, its lease; ARGV: node, epoch, lease (ms). 1: renewed; 0: the
/// spool is no longer this process's. A spool Redis has no record of at all (a Redis that
/// restarted empty) is recorded again as this process's: no peer can have adopted it, since
/// adopting needs the record. (One released by an adopter keeps its epoch, so it is not.)
const RENEW_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'epoch', ARGV[2])
  redis.call('SADD', 'sluice:spools', ARGV[1])
end
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// KEYS: a spool; ARGV: this node. Adopts the spool if its holder's lease is gone: the new
/// epoch; -1 if this node holds it already; 0 otherwise.
const ADOPT_LUA: &str = r"
local h = redis.call('HGET', KEYS[1], 'holder')
if not h then return 0 end
if h == ARGV[1] then return -1 end
if redis.call('EXISTS', 'sluice:alive:' .. h) == 1 then return 0 end
local e = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'holder', ARGV[1])
return e
";

/// KEYS: a spool; ARGV: this node. Lets the spool go (its owner may claim it again).
const RELEASE_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then redis.call('HDEL', KEYS[1], 'holder') return 1 end
return 0
";

/// The scripts, each built (and hashed) once.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM_LUA));
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RENEW_LUA));
static ADOPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ADOPT_LUA));
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE_LUA));

fn spool_key(node: &str) -> String {
    format!("sluice:spool:{node}")
}

fn alive_key(node: &str) -> String {
    format!("sluice:alive:{node}")
}

/// What `/status` and `/metrics` show of the takeover.
#[derive(Default)]
pub struct Status {
    /// The epoch this host claimed its spool with.
    pub epoch: AtomicU64,
    /// Whether the lease is held now (the shards deliver).
    pub lease_held: AtomicBool,
    /// Spools of other nodes adopted since start, and their messages moved here.
    pub adoptions: AtomicU64,
    pub adopted_messages: AtomicU64,
    /// Spools being moved now.
    pub adopting: Mutex<Vec<String>>,
}

/// The takeover's thread, started before the spool is recovered.
pub struct Takeover {
    pub status: Arc<Status>,
    attach: std::sync::mpsc::Sender<Responder>,
}

impl Takeover {
    /// Gives the running relay to the takeover: peers' spools are adopted from now on.
    pub fn attach(&self, responder: Responder) {
        let _ = self.attach.send(responder);
    }
}

/// Why the claim at start did not finish.
pub enum ClaimError {
    /// A stop signal while waiting.
    Stopped,
    Bad(String),
}

/// Claims this host's spool (waiting while a peer holds it or Redis does not answer), then
/// keeps the lease on a thread of its own. None without `spool-takeover`.
pub fn start(cluster: &Cluster) -> Result<Option<Takeover>, ClaimError> {
    let Some(root) = cluster.spool_takeover.clone() else { return Ok(None) };
    let client = redis::Client::open(cluster.redis_url.as_str()).map_err(|e| ClaimError::Bad(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClaimError::Bad(e.to_string()))?;
    let node = cluster.node_name.clone();
    let after = cluster.takeover_after;
    let status = Arc::new(Status::default());
    let (conn, epoch) = rt.block_on(claim(&client, &node, after))?;
    status.epoch.store(epoch, Ordering::Relaxed);
    status.lease_held.store(true, Ordering::Relaxed);
    tracing::info!(node = %node, epoch, spool = %root.join(&node).display(), "spool-takeover: this host's spool claimed");
    let (attach, attached) = std::sync::mpsc::channel();
    let keeper = Keeper {
        link: RedisLink::with(client, conn),
        node,
        root,
        after,
        epoch,
        status: status.clone(),
        responder: None,
        adopting: HashSet::new(),
    };
    std::thread::Builder::new()
        .name("takeover".into())
        .spawn(move || rt.block_on(keeper.run(attached)))
        .map_err(|e| ClaimError::Bad(e.to_string()))?;
    Ok(Some(Takeover { status, attach }))
}

/// How often the lease is renewed, and for how long the shards may act on one renewal.
fn renew_every(after: Duration) -> Duration {
    (after / 6).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

fn fence_valid(after: Duration) -> Duration {
    after / 2
}

/// Blocks (up to `d`) for a stop signal; true if one came. Signals are blocked in every
/// thread and `main` waits for them with `sigwait`: this takes them meanwhile.
fn stop_signal_within(d: Duration) -> bool {
    // SAFETY: sigset manipulation and sigtimedwait on this thread's blocked signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let ts = libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long };
        libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) > 0
    }
}

async fn claim(client: &redis::Client, node: &str, after: Duration) -> Result<(ConnectionManager, u64), ClaimError> {
    let mut said = String::new();
    let mut say = |what: String| {
        if what != said {
            tracing::warn!("spool-takeover: {what}");
            said = what;
        }
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(2), ConnectionManager::new(client.clone())).await {
            Ok(Ok(mut conn)) => {
                let asked = Fence::now_ns();
                let mut inv = CLAIM.prepare_invoke();
                inv.key(spool_key(node)).key(alive_key(node)).arg(node).arg(after.as_millis() as u64);
                let got: Result<(u8, String), _> = inv.invoke_async(&mut conn).await;
                match got {
                    Ok((1, epoch)) => {
                        FENCE.hold_from(asked, fence_valid(after));
                        return Ok((conn, epoch.parse().unwrap_or(0)));
                    }
                    Ok((_, holder)) => say(format!(
                        "this host's spool was taken over by {holder}: waiting for it to be released \
                         (its mail is delivered there; none of it is sent from here again)"
                    )),
                    Err(e) => say(format!("cannot claim this host's spool ({e}); trying again")),
                }
            }
            _ => say("Redis does not answer: this host's spool cannot be claimed yet, and no mail moves \
                      until it can (a peer may hold it)"
                .into()),
        }
        if stop_signal_within(Duration::from_secs(1)) {
            return Err(ClaimError::Stopped);
        }
    }
}

/// Keeps the lease, and adopts spools whose holders are gone.
struct Keeper {
    /// Made again after a failed call (a Redis that restarted, say).
    link: RedisLink,
    node: String,
    root: PathBuf,
    after: Duration,
    epoch: u64,
    status: Arc<Status>,
    responder: Option<Responder>,
    /// Spools being moved by a drain thread now.
    adopting: HashSet<String>,
}

impl Keeper {
    async fn run(mut self, attached: std::sync::mpsc::Receiver<Responder>) {
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<(String, Result<usize, String>)>();
        let mut tick = tokio::time::interval(renew_every(self.after));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut turn = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    turn += 1;
                    self.renew().await;
                    if self.responder.is_none() {
                        self.responder = attached.try_recv().ok();
                    }
                    // Peers' spools are looked at about once a second.
                    let every = (Duration::from_secs(1).as_millis() / renew_every(self.after).as_millis()).max(1) as u64;
                    if self.responder.is_some() && FENCE.holds() && turn % every == 0 {
                        self.adopt_orphans(&done_tx).await;
                    }
                }
                Some((node, result)) = done.recv() => self.moved(node, result).await,
            }
        }
    }

    /// A script's answer within `within`, the connection made first if the last call failed;
    /// None if Redis does not answer now.
    async fn invoke<T: redis::FromRedisValue>(
        &mut self,
        within: Duration,
        inv: redis::ScriptInvocation<'static>,
    ) -> Option<T> {
        if !self.link.connect(Duration::from_secs(1)).await {
            return None;
        }
        self.link.run(within, |mut c| async move { inv.invoke_async(&mut c).await }).await
    }

    async fn renew(&mut self) {
        let asked = Fence::now_ns();
        let mut inv = RENEW.prepare_invoke();
        inv.key(spool_key(&self.node))
            .key(alive_key(&self.node))
            .arg(&self.node)
            .arg(self.epoch)
            .arg(self.after.as_millis() as u64);
        let timeout = renew_every(self.after).max(Duration::from_millis(200));
        let renewed = self.invoke::<u8>(timeout, inv).await;
        match renewed {
            Some(1) => {
                FENCE.hold_from(asked, fence_valid(self.after));
                if !self.status.lease_held.swap(true, Ordering::Relaxed) {
                    tracing::info!(node = %self.node, "spool-takeover: lease renewed; delivering again");
                }
            }
            Some(_) => {
                FENCE.close();
                tracing::error!(
                    node = %self.node,
                    epoch = self.epoch,
                    "spool-takeover: this host's spool was taken over (a peer adopted it, or a newer copy of \
                     this host claimed it): stopping now. Restart to take it back once it is released"
                );
                std::process::exit(75);
            }
            None => {
                if !FENCE.holds() && self.status.lease_held.swap(false, Ordering::Relaxed) {
                    tracing::error!(
                        node = %self.node,
                        "spool-takeover: the lease could not be renewed in time: no delivery and no new mail \
                         until Redis answers (a peer may adopt this spool)"
                    );
                }
            }
        }
    }

    /// Adopts every spool whose holder's lease is gone, and resumes moving those this host
    /// holds (adopted before a restart of its own).
    async fn adopt_orphans(&mut self, done: &tokio::sync::mpsc::UnboundedSender<(String, Result<usize, String>)>) {
        if !self.link.connect(Duration::from_secs(1)).await {
            return;
        }
        let members = |mut c: ConnectionManager| async move {
            redis::cmd("SMEMBERS").arg(SPOOLS_KEY).query_async::<Vec<String>>(&mut c).await
        };
        let Some(nodes) = self.link.run(Duration::from_secs(1), members).await else { return };
        for other in nodes {
            if other == self.node || self.adopting.contains(&other) {
                continue;
            }
            let mut inv = ADOPT.prepare_invoke();
            inv.key(spool_key(&other)).arg(&self.node);
            let Some(epoch) = self.invoke::<i64>(Duration::from_secs(1), inv).await else { return };
            if epoch == 0 {
                continue;
            }
            if epoch > 0 {
                self.status.adoptions.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %other, epoch, by = %self.node, "spool-takeover: adopted the spool of a node whose lease lapsed");
            } else {
                tracing::info!(node = %other, "spool-takeover: moving on with a spool this host holds");
            }
            self.adopting.insert(other.clone());
            self.status.adopting.lock().expect("no panics under the lock").push(other.clone());
            let dir = self.root.join(&other);
            let responder = self.responder.clone().expect("attached");
            let done = done.clone();
            std::thread::Builder::new()
                .name("adopt".into())
                .spawn(move || {
                    let result = crate::drain::drain(&dir, &responder);
                    let _ = done.send((other, result));
                })
                .expect("spawn the adoption thread");
        }
    }

    /// A spool's moving ended: released when it worked; looked at again later when not.
    async fn moved(&mut self, node: String, result: Result<usize, String>) {
        self.adopting.remove(&node);
        self.status.adopting.lock().expect("no panics under the lock").retain(|n| *n != node);
        match result {
            Ok(n) => {
                self.status.adopted_messages.fetch_add(n as u64, Ordering::Relaxed);
                let mut inv = RELEASE.prepare_invoke();
                inv.key(spool_key(&node)).arg(&self.node);
                let released = self.invoke::<u8>(Duration::from_secs(2), inv).await;
                tracing::warn!(
                    node = %node,
                    messages = n,
                    released = released == Some(1),
                    "spool-takeover: adopted spool moved here and released"
                );
            }
            // Still held here: the next look at the peers' spools starts it again.
            Err(e) => {
                tracing::error!(node = %node, error = %e, "spool-takeover: adopted spool not moved yet; trying again")
            }
        }
    }
}
