//! The delivery scheduler, sans-IO: one shard's queues (`domain/vmta`, indexed by a small
//! `QueueId`), their next hops, rate cells, avoided hosts and source IPs, pool rotation,
//! pauses, held and cancelled jobs, the start-up delay and ramp, adaptive rate, and operator
//! commands. Time comes in (`Now`); decisions go out as `Intent`s the caller carries out:
//! resolve a domain, open a connection, start a transaction on one, hand a job to another
//! shard, write an accounting record, journal a final outcome, make a DSN.
//!
//! The shard's IO room drives it with io_uring sockets; the relay simulation and the
//! simulated-time tests drive the very same code with a simulated network and clock.

pub mod admin;
pub mod backlog;
mod conns;
pub mod limits;
pub mod loglimit;
pub mod stats;

use crate::acct::{Kind as RecordKind, Record};
use crate::bounce::dsn;
use crate::queue::{AttemptInfo, Fate, Job, Queue, QueueAction, Recipient};
use crate::route::{self, Hop, Resolution};
use crate::smtp::headers::header_value;
use crate::smtp::reply::Reply;
use crate::time::Now;
use admin::Selector;
use backlog::{Backlog, BacklogFactory};
use limits::{Grant, QueueCells, SourceLimits};
use loglimit::LogLimit;
use sluice_config::{Config, DeliveryType, HostPort, Startup};
use stats::ShardStats;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use conns::{ConnPlan, ConnState};

/// A connection, as the caller names it to the scheduler (assigned by the scheduler).
pub type ConnId = u64;
/// A queue's index while it exists.
pub type QueueId = usize;

/// Jobs a queue holds in memory, ready and waiting; more arrivals wait in its backlog and
/// enter as the window drains below half. A million-message backlog for one unreachable
/// domain costs a constant amount of memory.
pub const QUEUE_WINDOW: usize = 10_000;
/// Backlogged jobs brought into a window per pump (the tick pumps again while below half).
pub const UNPARK_BATCH: usize = 1_000;
/// How long a failed resolution is remembered before asking again.
pub const RESOLVE_FAILURE_TTL_MS: u64 = 60_000;
/// How long a queue waits for a resolution it asked for before asking again (the control
/// plane's lookups end well before: a few seconds per name, `src/dns.rs`).
pub const RESOLVE_ANSWER_WAIT_MS: u64 = 60_000;
/// Backoff after a connection fails before its session is ready: doubles from the first to
/// the last value while failures continue.
pub const CONNECT_BACKOFF_FIRST_MS: u64 = 100;
pub const CONNECT_BACKOFF_MAX_MS: u64 = 30_000;
/// After `delete --jobId`, recipients of the job that come back from a transaction in
/// flight are deleted for this long (a transaction ends within its timeouts: with
/// PowerMTA's defaults, 2 minutes to connect, 5 for the greeting and each reply, 10 for the
/// end of data).
pub const CANCELLED_JOB_HOLD_MS: u64 = 3_600_000;
/// A job id longer than this is cut (it rides in every accounting record).
pub const JOB_ID_CHARS_MAX: usize = 256;

/// What the scheduler needs to know of a queued message (the caller's handle on its bytes).
pub trait Message: Clone {
    /// The message in transparency form.
    fn data(&self) -> &[u8];
    /// The envelope sender (empty: the null sender).
    fn sender(&self) -> &str;
    /// The client that injected it (its `<source>` says whether to make DSNs).
    fn client_ip(&self) -> IpAddr;
    /// How it came in, for accounting records and DSNs (nothing known by default).
    fn origin(&self) -> Origin<'_> {
        Origin::default()
    }
    /// A recipient's DSN parameters: `NOTIFY` bits (`notify::*`) and `ORCPT`, as given.
    fn rcpt_dsn(&self, _index: u32) -> (u8, &str) {
        (0, "")
    }
    /// What an accounting row says of the message and one recipient (`stamp`): the four
    /// above together, for a handle that reads them at once.
    fn stamped(&self, index: u32) -> Stamped<'_> {
        Stamped {
            origin: self.origin(),
            sender: self.sender(),
            client_ip: self.client_ip(),
            orcpt: self.rcpt_dsn(index).1,
        }
    }
}

/// A message's origin, sender and client, and one recipient's `ORCPT` (`Message::stamped`).
pub struct Stamped<'a> {
    pub origin: Origin<'a>,
    pub sender: &'a str,
    pub client_ip: IpAddr,
    pub orcpt: &'a str,
}

/// `NOTIFY` bits (RFC 3461 §4.1), as the spool keeps them; none set: not given.
pub mod notify {
    pub const NEVER: u8 = 1;
    pub const SUCCESS: u8 = 2;
    pub const FAILURE: u8 = 4;
    pub const DELAY: u8 = 8;
}

/// What the spool keeps of a message's injection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The client's EHLO name.
    pub helo: &'a str,
    /// The SMTP AUTH user, if any.
    pub auth_user: &'a str,
    /// Injected over HTTP.
    pub api: bool,
    /// The DSN `ENVID`.
    pub envid: &'a str,
    /// `RET=HDRS`: a DSN returns the headers only.
    pub ret_hdrs: bool,
    /// Every `sluice_spool::codec::flags` bit (RET, BODY, SMTPUTF8 ...).
    pub flags: u8,
}

/// What the caller must do.
#[derive(Debug)]
pub enum Intent<M> {
    /// Resolve next hops; answer `on_resolved`.
    Resolve { domain: String, static_hosts: Option<Vec<Vec<HostPort>>> },
    /// Open a connection (try `plan.hops` in order); report `conn_ready`, `conn_failed`.
    Connect { conn: ConnId, plan: Box<ConnPlan> },
    /// Send `job` on the ready connection `conn`; report `txn_done`. If the connection is
    /// gone meanwhile, give the job back with `job_back`.
    Start { conn: ConnId, queue: QueueId, job: Job<M> },
    /// Nothing to send now: the connection waits; report `conn_idle_timeout` if it waits
    /// too long.
    Idle { conn: ConnId },
    /// Say QUIT and close; report `conn_closed`.
    Quit { conn: ConnId },
    /// Hand the job to the shard that owns its queue.
    Dispatch { shard: u32, domain: String, vmta: String, job: Job<M> },
    /// An accounting record.
    Record(Box<Record>),
    /// A recipient's final outcome, to journal.
    Outcome { msg: M, rcpt: u32 },
    /// Make an RFC 3464 DSN for these failed recipients of `msg` and spool it; journal their
    /// outcomes once it is durable.
    Dsn { msg: M, failed: Vec<(u32, dsn::Failed)> },
}

enum HopState {
    Unknown,
    /// Asked since `since_ms`; an answer lost on the way (a full mailbox, a busy control
    /// plane) is asked for again after `RESOLVE_ANSWER_WAIT_MS`.
    Resolving {
        since_ms: u64,
    },
    Ready {
        levels: Vec<Vec<Hop>>,
        expires_ms: u64,
    },
    /// MX rollup: this domain's mail joins the queue of domain `into` (same MX hosts, same
    /// settings), which delivers it.
    RolledUp {
        into: String,
        expires_ms: u64,
    },
    Failed {
        resolution: Resolution,
        expires_ms: u64,
    },
}

struct QueueState<M> {
    q: Queue<M>,
    hops: HopState,
    idle: Vec<ConnId>,
    rotation: usize,
    /// Connections that failed before their session was ready, in a row; no new connection
    /// is opened before `connect_backoff_until_ms` (a receiver answering 421 is not hammered).
    connect_failures: u32,
    connect_backoff_until_ms: u64,
    /// `bounce-upon-no-mx INTERVAL` and the domain has no MX: ready mail queued at least
    /// this long bounces instead of going to the implicit MX.
    no_mx_bounce_ms: Option<u64>,
    /// The destination's fleet-wide cell (`cluster-max-msg-rate`, `cluster-max-smtp-out`).
    cluster: Option<Arc<limits::ClusterCell>>,
    /// Jobs past the in-memory window, in arrival order.
    backlog: Box<dyn Backlog<M>>,
}

/// What a queue's pattern list told it to stop using (`skip-mx`, `disable-source-ip`), each
/// until a monotonic time. Kept apart from the queue state, which comes and goes as the queue
/// empties: a disabled source IP stays disabled for its whole time.
#[derive(Default)]
struct Avoided {
    hops: Vec<(SocketAddr, u64)>,
    vmtas: Vec<(String, u64)>,
}

pub struct Scheduler<M> {
    shard: u32,
    config: Arc<Config>,
    /// Which shard owns a queue, as the configuration at start said (traffic classes and
    /// VMTAs' classes change at a restart only: a queue never lives on two shards).
    owners: (Arc<Config>, sluice_config::ShardSets),
    limits: Arc<SourceLimits>,
    stats: Arc<ShardStats>,
    queues: Vec<Option<QueueState<M>>>,
    free_ids: Vec<QueueId>,
    index: HashMap<(String, String), QueueId>,
    conns: HashMap<ConnId, ConnState>,
    next_conn: ConnId,
    dirty: Vec<QueueId>,
    /// Per queue name, its rate cells (they outlive the queue state).
    cells: HashMap<String, QueueCells>,
    /// Per pool, which member the next connection uses.
    pool_rotation: HashMap<String, usize>,
    /// Per queue name, the next hops and VMTAs its pattern list set aside.
    avoided: HashMap<String, Avoided>,
    /// Set while a queue-wide pattern action runs (its own replies must not re-trigger it).
    applying_queue_action: bool,
    paused_queues: Vec<Selector>,
    paused_jobs: HashSet<String>,
    /// Jobs of paused jobs, held back whole: (domain, vmta, job).
    held: Vec<(String, String, Job<M>)>,
    /// Deleted jobs, until when their recipients out on connections may still come back.
    cancelled_jobs: HashMap<String, u64>,
    make_backlog: BacklogFactory<M>,
    started_ms: u64,
    stopping: bool,
    log_limit: LogLimit,
    intents: VecDeque<Intent<M>>,
}

impl<M: Message> Scheduler<M> {
    pub fn new(
        shard: u32,
        shards: u32,
        config: Arc<Config>,
        limits: Arc<SourceLimits>,
        stats: Arc<ShardStats>,
        make_backlog: BacklogFactory<M>,
        now: Now,
    ) -> Self {
        let sets = config
            .shard_sets(shards)
            .unwrap_or_else(|_| sluice_config::ShardSets { general: 0..shards, classes: Vec::new() });
        Scheduler {
            shard,
            owners: (config.clone(), sets),
            config,
            limits,
            stats,
            queues: Vec::new(),
            free_ids: Vec::new(),
            index: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            dirty: Vec::new(),
            cells: HashMap::new(),
            pool_rotation: HashMap::new(),
            avoided: HashMap::new(),
            applying_queue_action: false,
            paused_queues: Vec::new(),
            paused_jobs: HashSet::new(),
            held: Vec::new(),
            cancelled_jobs: HashMap::new(),
            make_backlog,
            started_ms: now.ms(),
            stopping: false,
            log_limit: LogLimit::new(now.ms()),
            intents: VecDeque::new(),
        }
    }

    pub fn poll_intent(&mut self) -> Option<Intent<M>> {
        self.intents.pop_front()
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    fn st(&self, id: QueueId) -> &QueueState<M> {
        self.queues[id].as_ref().expect("a live queue")
    }

    fn st_mut(&mut self, id: QueueId) -> &mut QueueState<M> {
        self.queues[id].as_mut().expect("a live queue")
    }

    fn record(&mut self, r: Record) {
        self.intents.push_back(Intent::Record(Box::new(r)));
    }

    /// The queue `domain/vmta`, created on first use.
    fn queue_for(&mut self, domain: &str, vmta: &str) -> QueueId {
        if let Some(&id) = self.index.get(&(domain.to_string(), vmta.to_string())) {
            return id;
        }
        let settings = self.config.queue_settings(domain, vmta);
        let patterns = settings.pattern_list.as_ref().and_then(|n| self.config.pattern_lists.get(n).cloned());
        let fleet = (settings.cluster_max_msg_rate, settings.cluster_max_smtp_out);
        let cluster = match (&self.limits.cluster, fleet) {
            (Some(cells), (rate, cap)) if rate.is_some() || cap.is_some() => Some(cells.cell(domain, rate, cap)),
            _ => None,
        };
        let mut q = Queue::new(domain, vmta, settings)
            .with_bounce_patterns(self.config.bounce_patterns.clone())
            .with_patterns(patterns);
        if self.paused_queues.iter().any(|s| s.matches(domain, vmta)) {
            q.set_paused(true);
            q.take_events(); // paused from birth: no mode change to report
        }
        let st = QueueState {
            q,
            hops: HopState::Unknown,
            idle: Vec::new(),
            rotation: 0,
            connect_failures: 0,
            connect_backoff_until_ms: 0,
            no_mx_bounce_ms: None,
            cluster,
            backlog: (self.make_backlog)(),
        };
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.queues[id] = Some(st);
                id
            }
            None => {
                self.queues.push(Some(st));
                self.queues.len() - 1
            }
        };
        self.index.insert((domain.to_string(), vmta.to_string()), id);
        id
    }

    /// A stored message's job for `domain` (its recipients' domain): queued here, or handed
    /// to the shard that owns the domain's queue (`queue-to` applied).
    /// `class`: the traffic class the message named (`x-traffic-class`); else a message
    /// dispatched on a class's shard stays in that class (its source's).
    pub fn dispatch(&mut self, domain: &str, vmta: String, job: Job<M>, class: Option<&str>) {
        let domain = route::queue_domain(&self.config, domain);
        let (config, sets) = (&self.owners.0, &self.owners.1);
        let owner = route::queue_owner(config, sets, &domain, &vmta, class.or(sets.class_of(self.shard)));
        if owner == self.shard {
            return self.enqueue(&domain, &vmta, job);
        }
        self.intents.push_back(Intent::Dispatch { shard: owner, domain, vmta, job });
    }

    /// A job for one of this shard's queues. A paused job's new mail is held with the rest
    /// of it. (A deleted job's mail that arrives later is new mail: only recipients out on a
    /// connection at the time of the delete are deleted when they come back, in `settle`.)
    pub fn enqueue(&mut self, domain: &str, vmta: &str, job: Job<M>) {
        self.enqueue_in(domain, vmta, job, false);
    }

    /// `rerouted`: the queue is a reroute's end (its chain already followed).
    fn enqueue_in(&mut self, domain: &str, vmta: &str, job: Job<M>, rerouted: bool) {
        if !job.job_id.is_empty() && self.paused_jobs.contains(&job.job_id) {
            return self.held.push((domain.to_string(), vmta.to_string(), job));
        }
        let id = self.queue_for(domain, vmta);
        if let Some(to) = self.reroute_target(id).filter(|_| !rerouted) {
            let domain = self.st(id).q.domain.clone();
            return self.enqueue_in(&domain, &to, job, true);
        }
        let st = self.st_mut(id);
        if st.q.jobs() >= QUEUE_WINDOW || !st.backlog.is_empty() {
            st.backlog.push_back(job);
        } else {
            st.q.push(job);
        }
        self.dirty.push(id);
    }

    /// Where a queue's mail goes instead (`reroute-to-virtual-mta`, and while it backs off
    /// `backoff-reroute-to-virtual-mta`), following the chain to its end; a loop leaves the
    /// mail where the loop closes (an error in the log), as PowerMTA does.
    fn reroute_target(&self, id: QueueId) -> Option<String> {
        let st = self.st(id);
        let domain = st.q.domain.clone();
        let next = |q: &Queue<M>| {
            let s = &q.settings;
            let backoff = matches!(q.mode(), crate::queue::Mode::Backoff { .. });
            s.reroute_to.clone().or(if backoff { s.backoff_reroute_to.clone() } else { None })
        };
        let mut seen = vec![st.q.vmta.clone()];
        let mut to = next(&st.q).filter(|t| *t != st.q.vmta)?;
        loop {
            let settings = self.config.queue_settings(&domain, &to);
            // The next queue's own reroute (its backoff state is not known until it exists).
            let further = settings.reroute_to.filter(|t| *t != to);
            seen.push(to.clone());
            match further {
                Some(f) if seen.contains(&f) => {
                    tracing::error!(shard = self.shard, %domain, vmta = %to, "reroute-to-virtual-mta loop: mail stays here");
                    return Some(to);
                }
                Some(f) => to = f,
                None => return Some(to),
            }
        }
    }

    /// Work found in the spool at start: a queue's recovered jobs, as a backlog.
    pub fn adopt(&mut self, domain: &str, vmta: &str, mut jobs: Box<dyn Backlog<M>>) {
        let id = self.queue_for(domain, vmta);
        let st = self.st_mut(id);
        while st.q.jobs() < QUEUE_WINDOW && st.backlog.is_empty() {
            let Some(job) = jobs.pop_front() else { break };
            st.q.push(job);
        }
        if st.backlog.is_empty() {
            st.backlog = jobs;
        } else {
            // Two recovered groups landed in one queue: the second joins behind.
            while let Some(job) = jobs.pop_front() {
                st.backlog.push_back(job);
            }
        }
        self.dirty.push(id);
    }

    /// Moves backlogged jobs into the queue's window while it is below half full (a paused
    /// job's go to the held list instead), at most `UNPARK_BATCH` a turn.
    fn unpark(&mut self, id: QueueId) {
        let st = self.queues[id].as_mut().expect("a live queue");
        if st.backlog.is_empty() || st.q.jobs() >= QUEUE_WINDOW / 2 {
            return;
        }
        let room = (QUEUE_WINDOW - st.q.jobs()).min(UNPARK_BATCH);
        for _ in 0..room {
            let Some(job) = st.backlog.pop_front() else { break };
            if !job.job_id.is_empty() && self.paused_jobs.contains(&job.job_id) {
                self.held.push((st.q.domain.clone(), st.q.vmta.clone(), job));
            } else {
                st.q.push(job);
            }
        }
    }

    /// Pumps every queue that changed, higher `queue-priority` first (they get the shared
    /// source IPs' places first).
    pub fn pump(&mut self, now: Now) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        dirty.retain(|id| self.queues.get(*id).is_some_and(Option::is_some));
        dirty.sort_by_key(|id| std::cmp::Reverse(self.st(*id).q.settings.queue_priority));
        for id in dirty {
            self.pump_queue(id, now);
        }
    }

    fn pump_queue(&mut self, id: QueueId, now: Now) {
        if self.stopping || self.queues[id].is_none() {
            return;
        }
        let startup = self.config.startup(now.ms().saturating_sub(self.started_ms));
        self.unpark(id);
        let st = self.st_mut(id);
        match startup {
            // `startup-delivery-delay`: mail waits; the tick pumps again.
            Startup::Delaying { .. } => return,
            Startup::Ramping { share } => st.q.set_ramp(share),
            Startup::Running => st.q.set_ramp(1.0),
        }
        st.q.promote_due(now.ms());
        self.start_on_idle(id, now);
        let st = self.st_mut(id);
        if !st.q.wants_connection() {
            return;
        }
        let expired = match &st.hops {
            HopState::Ready { expires_ms, .. }
            | HopState::RolledUp { expires_ms, .. }
            | HopState::Failed { expires_ms, .. } => now.ms() >= *expires_ms,
            _ => false,
        };
        if expired {
            st.hops = HopState::Unknown;
        }
        self.advance_hops(id, now);
    }

    /// Ready work goes to idle connections, each with a grant from the rates.
    fn start_on_idle(&mut self, id: QueueId, now: Now) {
        loop {
            let st = self.st_mut(id);
            if !st.q.has_work() {
                return;
            }
            let Some(conn) = st.idle.pop() else { return };
            let source_ip = self.conns[&conn].source_ip;
            if !self.rate_grant(id, source_ip, Grant::Message, now) {
                self.st_mut(id).idle.push(conn);
                return; // rate-limited: the tick pumps again
            }
            let job = self.st_mut(id).q.take().expect("ready work");
            self.start(conn, id, job, now);
        }
    }

    fn start(&mut self, conn: ConnId, queue: QueueId, mut job: Job<M>, now: Now) {
        self.claim(conn, &mut job, now);
        self.intents.push_back(Intent::Start { conn, queue, job });
    }

    /// A job taken for a connection: its first attempt's time, the connection's count.
    fn claim(&mut self, conn: ConnId, job: &mut Job<M>, now: Now) {
        if job.first_attempt_unix_ms == 0 {
            job.first_attempt_unix_ms = now.unix_ms;
        }
        let c = self.conns.get_mut(&conn).expect("a live connection");
        c.idle = false;
        c.messages_sent += 1;
    }

    fn advance_hops(&mut self, id: QueueId, now: Now) {
        match self.st(id).q.settings.delivery_type {
            DeliveryType::Smtp => {}
            DeliveryType::Discard => return self.discard_ready(id, now),
            DeliveryType::Held => return, // `type pipe|file|http-delivery`: not implemented
        }
        let st = self.st_mut(id);
        match &st.hops {
            HopState::Unknown => {
                let static_hosts = st.q.settings.smtp_hosts.clone();
                if let Some(levels) = static_hosts.as_deref().and_then(route::literal_hops) {
                    st.hops = HopState::Ready { levels, expires_ms: u64::MAX };
                    return self.advance_hops(id, now);
                }
                st.hops = HopState::Resolving { since_ms: now.ms() };
                let domain = st.q.domain.clone();
                self.intents.push_back(Intent::Resolve { domain, static_hosts });
            }
            HopState::Resolving { since_ms } if now.ms() >= since_ms.saturating_add(RESOLVE_ANSWER_WAIT_MS) => {
                tracing::warn!(domain = %st.q.domain, "no DNS answer came back: asking again");
                st.hops = HopState::Unknown;
                self.advance_hops(id, now);
            }
            HopState::Resolving { .. } => {}
            HopState::Ready { .. } if now.ms() < st.connect_backoff_until_ms => {}
            HopState::Ready { levels, .. } => {
                let levels = levels.clone();
                if let Some(age_ms) = st.no_mx_bounce_ms {
                    self.bounce_without_mx(id, age_ms, now);
                }
                while self.st(id).q.wants_connection() {
                    if !self.open_connection(id, &levels, now) {
                        break; // a limit says not now; the tick pumps again
                    }
                }
            }
            HopState::RolledUp { into, .. } => {
                let (into, vmta) = (into.clone(), st.q.vmta.clone());
                for job in st.q.take_ready() {
                    self.dispatch(&into, vmta.clone(), job, None);
                }
            }
            HopState::Failed { resolution, .. } => {
                let reply = match resolution {
                    Resolution::Permanent(r) | Resolution::Temporary(r) => r.clone(),
                    Resolution::Hops(_) | Resolution::NoMx(_) => unreachable!("hops are Ready"),
                };
                // A lookup that failed: the mail retries after `retry-after-dns-error`.
                let dns_retry = st.q.settings.retry_after_dns_error;
                st.q.retry_once(Some(dns_retry));
                self.fail_ready(id, &reply, &AttemptInfo::default(), now);
                if let Some(st) = self.queues[id].as_mut() {
                    st.q.retry_once(None);
                }
            }
        }
    }

    /// `type discard`: the ready mail is recorded as delivered (or, `discard-as-bounce`,
    /// bounced) and never sent.
    fn discard_ready(&mut self, id: QueueId, now: Now) {
        let reply = match self.st(id).q.settings.discard_as_bounce {
            false => Reply::new(250, "2.0.0 discarded (type discard)"),
            true => Reply::new(550, "5.0.0 discarded (type discard, discard-as-bounce)"),
        };
        // Nothing is relayed anywhere: no "relayed" DSN for NOTIFY=SUCCESS either.
        let info = AttemptInfo { mx_host: "discard".into(), dsn_offered: true, ..Default::default() };
        while let Some(job) = self.st_mut(id).q.take() {
            let replies = vec![reply.clone(); job.rcpts.len()];
            self.settle(id, job, &replies, &info, now);
        }
    }

    /// `bounce-upon-no-mx INTERVAL`: ready mail queued at least `age_ms` for a domain
    /// without MX records bounces.
    fn bounce_without_mx(&mut self, id: QueueId, age_ms: u64, now: Now) {
        let st = self.st_mut(id);
        let (old, young): (Vec<_>, Vec<_>) =
            st.q.take_ready().into_iter().partition(|j| now.unix_ms.saturating_sub(j.queued_unix_ms) >= age_ms);
        for job in young {
            st.q.push(job);
        }
        let reply = Reply::new(
            550,
            format!("5.1.2 {}: no MX record, and queued over {}s (bounce-upon-no-mx)", st.q.domain, age_ms / 1000),
        );
        for job in old {
            let replies = vec![reply.clone(); job.rcpts.len()];
            self.settle(id, job, &replies, &AttemptInfo::default(), now);
        }
    }

    /// One grant from the queue's cell, then the source IP's (messages or connections).
    fn rate_grant(&mut self, id: QueueId, source_ip: Option<IpAddr>, grant: Grant, now: Now) -> bool {
        // The fleet's token first (a lock-free atomic): it is the scarcer.
        let fleet = match grant {
            Grant::Message => self.st(id).cluster.clone(),
            Grant::Connect => None,
        };
        if fleet.as_ref().is_some_and(|c| !c.take_token()) {
            return false;
        }
        let granted = self.local_grant(id, source_ip, grant, now);
        if !granted {
            if let Some(c) = fleet {
                c.give_back_token();
            }
        }
        granted
    }

    /// One grant from the queue's own cell, then the source IP's.
    fn local_grant(&mut self, id: QueueId, source_ip: Option<IpAddr>, grant: Grant, now: Now) -> bool {
        let st = self.queues[id].as_ref().expect("a live queue");
        let rate = match grant {
            Grant::Message => st.q.msg_rate(), // backoff-max-msg-rate while backing off
            Grant::Connect => st.q.connect_rate(),
        };
        if rate.is_some() {
            // Looked up by &str first: no allocation per grant on the hot path.
            if !self.cells.contains_key(&st.q.name) {
                self.cells.insert(st.q.name.clone(), QueueCells::default());
            }
            let cells = self.cells.get_mut(&st.q.name).expect("inserted above");
            if !cells.grant(grant, rate, now.ns) {
                return false;
            }
        }
        limits::source_grant(&self.limits, source_ip, grant, now.ns)
    }

    /// Every ready job of the queue gets `reply`: a bounce for 5xx, a deferral for 4xx.
    fn fail_ready(&mut self, id: QueueId, reply: &Reply, info: &AttemptInfo, now: Now) {
        while let Some(job) = self.queues[id].as_mut().and_then(|st| st.q.take()) {
            let replies = vec![reply.clone(); job.rcpts.len()];
            self.settle(id, job, &replies, info, now);
        }
        // Not a reply from a host on a connection: nothing to skip or disable.
        if let Some(st) = self.queues[id].as_mut() {
            st.q.take_avoid();
        }
    }

    /// A resolution applies to every queue of that domain (one per VMTA). With `rollup`,
    /// the domain's mail joins that domain's queue instead.
    pub fn on_resolved(&mut self, domain: &str, resolution: Resolution, ttl_ms: u64, rollup: Option<String>, now: Now) {
        let now_ms = now.ms();
        let hops = |resolution: &Resolution| match resolution {
            Resolution::Hops(_) if rollup.is_some() => {
                HopState::RolledUp { into: rollup.clone().expect("checked"), expires_ms: now_ms + ttl_ms.max(1_000) }
            }
            Resolution::Hops(levels) if levels.iter().any(|l| !l.is_empty()) => {
                HopState::Ready { levels: levels.clone(), expires_ms: now_ms + ttl_ms.max(1_000) }
            }
            Resolution::Hops(_) => HopState::Failed {
                resolution: Resolution::Temporary(Reply::new(451, "4.4.4 no address found for the next hop")),
                expires_ms: now_ms + RESOLVE_FAILURE_TTL_MS,
            },
            other => HopState::Failed {
                resolution: other.clone(),
                expires_ms: now_ms + RESOLVE_FAILURE_TTL_MS.min(ttl_ms.max(1_000)),
            },
        };
        for (id, st) in self.queues.iter_mut().enumerate() {
            let Some(st) = st.as_mut().filter(|st| st.q.domain == domain) else { continue };
            // No MX: the implicit MX, unless `bounce-upon-no-mx` bounces (at once, or mail
            // queued long enough).
            (st.hops, st.no_mx_bounce_ms) = match (&resolution, st.q.settings.bounce_upon_no_mx) {
                (Resolution::NoMx(_), Some(after)) if after.is_zero() => {
                    let reply = Reply::new(550, format!("5.1.2 {domain}: no MX record (bounce-upon-no-mx)"));
                    let expires_ms = now_ms + ttl_ms.max(1_000);
                    (HopState::Failed { resolution: Resolution::Permanent(reply), expires_ms }, None)
                }
                (Resolution::NoMx(own), after) => {
                    (hops(&Resolution::Hops(vec![own.clone()])), after.map(|d| d.as_millis() as u64))
                }
                (other, _) => (hops(other), None),
            };
            self.dirty.push(id);
        }
    }

    /// A resolution could not be asked for now (the control plane is busy): the queues of
    /// the domain ask again on a later pump.
    pub fn resolve_later(&mut self, domain: &str) {
        for st in self.queues.iter_mut().flatten().filter(|st| st.q.domain == domain) {
            if matches!(st.hops, HopState::Resolving { .. }) {
                st.hops = HopState::Unknown;
            }
        }
    }

    /// Records outcomes: accounting for all, a journal entry (or a DSN first) for final ones.
    fn settle(&mut self, id: QueueId, job: Job<M>, replies: &[Reply], info: &AttemptInfo, now: Now) {
        let msg = job.msg.clone();
        let (job_id, size) = (job.job_id.clone(), job.size);
        let st = self.queues[id].as_mut().expect("a settled job's queue exists");
        let outcomes = st.q.settle(job, replies, info, now);
        let count = |kind: RecordKind| outcomes.iter().filter(|(_, _, r)| r.kind == kind).count() as u64;
        let delivered = count(RecordKind::Delivered);
        if delivered > 0 {
            ShardStats::add(&self.stats.msgs_out, 1);
            ShardStats::add(&self.stats.rcpts_out, delivered);
            ShardStats::add(&self.stats.bytes_out, size);
        }
        ShardStats::add(&self.stats.rcpts_bounced, count(RecordKind::Bounced));
        ShardStats::add(&self.stats.rcpts_deferred, count(RecordKind::Transient));
        let action = st.q.take_queue_action();
        let name = st.q.name.clone();
        self.queue_events(id, now);
        self.log_attempt(&name, info, &outcomes, now);
        let headers = self.acct_header_values(msg.data());
        let mut dsn_wanted = None;
        let mut failed = Vec::new();
        for (rcpt, fate, mut record) in outcomes {
            record.headers.clone_from(&headers);
            stamp(&mut record, &msg, rcpt.index);
            let mut outcome = None;
            if fate == Fate::Final {
                let (notify, orcpt) = msg.rcpt_dsn(rcpt.index);
                if notify_of(record.kind, notify, info.dsn_offered)
                    && *dsn_wanted.get_or_insert_with(|| self.wants_dsn(&msg))
                {
                    // Journaled once the DSN reporting it is durable.
                    failed.push((rcpt.index, dsn_failed(&record, info, orcpt)));
                } else {
                    outcome = Some(Intent::Outcome { msg: msg.clone(), rcpt: rcpt.index });
                }
            }
            // The row before the outcome: the shard journals an outcome only once the rows
            // asked for before it are durable.
            self.record(record);
            self.intents.extend(outcome);
        }
        if !failed.is_empty() {
            self.intents.push_back(Intent::Dsn { msg, failed });
        }
        if let Some(action) = action {
            self.apply_queue_action(id, action, info, now);
        }
        if !job_id.is_empty() && (self.paused_jobs.contains(&job_id) || self.cancelled_jobs.contains_key(&job_id)) {
            // Deferred recipients of a paused or cancelled job come back here: hold or delete.
            let st = self.st_mut(id);
            let (d, v) = (st.q.domain.clone(), st.q.vmta.clone());
            let back: Vec<_> =
                st.q.take_where(|j| j.job_id == job_id).into_iter().map(|j| (d.clone(), v.clone(), j)).collect();
            if self.cancelled_jobs.contains_key(&job_id) {
                self.delete_jobs(back, now);
            } else {
                self.held.extend(back);
            }
        }
    }

    /// Does the message's source want DSNs, and is there a sender to send one to?
    /// (`deliver-local-dsn no` in the sender's domain's `<domain>`, PowerMTA's older form of
    /// `suppress-local-dsn`, says no too.)
    fn wants_dsn(&self, msg: &M) -> bool {
        let sender = msg.sender();
        !sender.is_empty()
            && self.config.source_policy(msg.client_ip()).generate_bounces
            && sender.rsplit_once('@').is_none_or(|(_, d)| self.config.domain_settings(d).deliver_local_dsn)
    }

    /// The `header_NAME` accounting columns' values for a message (none when no file asks).
    fn acct_header_values(&self, data: &[u8]) -> Vec<String> {
        self.config.acct_headers.iter().map(|h| header_value(data, h).unwrap_or_default()).collect()
    }

    /// One log line per outcome of an attempt: delivered at debug; deferred and bounced at
    /// info, within the shard's log budget (a storm of failures cannot flood the log).
    fn log_attempt(&mut self, queue: &str, info: &AttemptInfo, outcomes: &[(Recipient, Fate, Record)], now: Now) {
        let host = hop_text(info);
        for kind in [RecordKind::Delivered, RecordKind::Transient, RecordKind::Bounced] {
            let mut of_kind = outcomes.iter().filter(|(_, _, r)| r.kind == kind);
            let Some((_, _, first)) = of_kind.next() else { continue };
            let rcpts = 1 + of_kind.count();
            let reply = first.dsn_diag.trim_start_matches("smtp;");
            let shard = self.shard;
            match kind {
                RecordKind::Delivered => tracing::debug!(shard, %queue, %host, rcpts, %reply, "delivered"),
                RecordKind::Transient if self.log_limit.allow(now.ms()) => {
                    tracing::info!(shard, %queue, %host, rcpts, %reply, "deferred")
                }
                RecordKind::Bounced if self.log_limit.allow(now.ms()) => {
                    let category = first.bounce_cat.as_str();
                    tracing::info!(shard, %queue, %host, rcpts, %reply, %category, "bounced")
                }
                _ => {}
            }
        }
    }

    /// A connection failure's log line, within the log budget.
    fn log_failure(&mut self, queue: &str, info: &AttemptInfo, reply: &Reply, now: Now) {
        if self.log_limit.allow(now.ms()) {
            let host = hop_text(info);
            tracing::info!(shard = self.shard, %queue, %host, reply = %reply.line(), "connection failed");
        }
    }

    /// Writes the queue's mode and rate changes as `tq` records and log lines.
    fn queue_events(&mut self, id: QueueId, now: Now) {
        let st = self.st_mut(id);
        let (name, vmta) = (st.q.name.clone(), st.q.vmta.clone());
        let mut changed = false;
        for diag in st.q.take_events() {
            tracing::info!(shard = self.shard, queue = %name, change = %diag, "queue mode or rate changed");
            self.record(Record::queue_event(now.unix_ms, &name, &vmta, diag));
            changed = true;
        }
        // Into backoff with `backoff-reroute-to-virtual-mta`: the ready mail moves now (new
        // mail follows it in `enqueue` while the backoff lasts).
        if changed {
            if let Some(to) = self.reroute_target(id) {
                let st = self.st_mut(id);
                let domain = st.q.domain.clone();
                let jobs = st.q.take_ready();
                if !jobs.is_empty() {
                    let n = jobs.len();
                    self.queue_note(&name, &vmta, format!("backoff: {n} messages rerouted to {to}"), now);
                }
                for job in jobs {
                    self.enqueue_in(&domain, &to, job, true);
                }
            }
        }
    }

    /// A queue event as a `tq` record and a log line.
    fn queue_note(&mut self, queue: &str, vmta: &str, diag: String, now: Now) {
        tracing::info!(shard = self.shard, %queue, change = %diag, "queue routing changed");
        self.record(Record::queue_event(now.unix_ms, queue, vmta, diag));
    }

    /// `defer-queue` / `bounce-queue` from a pattern: every ready recipient of the queue.
    fn apply_queue_action(&mut self, id: QueueId, action: QueueAction, info: &AttemptInfo, now: Now) {
        if self.applying_queue_action {
            return; // the synthetic replies below must not trigger it again
        }
        self.applying_queue_action = true;
        let reply = match action {
            QueueAction::Defer => Reply::new(451, "4.7.0 queue deferred by smtp-pattern-list"),
            QueueAction::Bounce => Reply::new(554, "5.7.0 queue bounced by smtp-pattern-list"),
        };
        tracing::info!(shard = self.shard, queue = %self.st(id).q.name, ?action, "pattern action on the whole queue");
        self.fail_ready(id, &reply, info, now);
        self.applying_queue_action = false;
    }

    /// Housekeeping on the caller's timer: backoff that has run its time, retries that came
    /// due, queues with nothing left forgotten, deletes that lapsed.
    pub fn tick(&mut self, now: Now) {
        if let Some(lines) = self.log_limit.take_suppressed(now.ms()) {
            let per_s = loglimit::LINES_PER_S;
            tracing::warn!(
                shard = self.shard,
                lines,
                "delivery log lines left out (more than {per_s} a second); the accounting file has every outcome"
            );
        }
        for id in 0..self.queues.len() {
            let Some(st) = self.queues[id].as_mut() else { continue };
            if st.q.check_mode(now.ms()) {
                self.queue_events(id, now);
            }
            let st = self.st(id);
            let due = st.q.next_retry_ms().is_some_and(|t| t <= now.ms())
                || st.q.ready_jobs() > 0
                || (!st.backlog.is_empty() && st.q.jobs() < QUEUE_WINDOW / 2);
            if due {
                self.dirty.push(id);
            }
            // Forget a queue with nothing queued and no connection (a resolution in flight
            // keeps its queue, so the answer has somewhere to land).
            let st = self.st(id);
            let forget = st.q.is_empty()
                && st.backlog.is_empty()
                && st.q.connections == 0
                && !matches!(st.hops, HopState::Resolving { .. });
            if forget {
                let st = self.queues[id].take().expect("checked");
                self.index.remove(&(st.q.domain, st.q.vmta));
                self.free_ids.push(id);
            }
        }
        self.cancelled_jobs.retain(|_, until| *until > now.ms());
    }

    /// A reloaded configuration: connections go on; queues take their new settings, and rate
    /// cells start afresh from the new rates.
    pub fn reconfigure(&mut self, config: Arc<Config>) {
        self.config = config;
        for (id, st) in self.queues.iter_mut().enumerate() {
            let Some(st) = st.as_mut() else { continue };
            let settings = self.config.queue_settings(&st.q.domain, &st.q.vmta);
            let patterns = settings.pattern_list.as_ref().and_then(|n| self.config.pattern_lists.get(n).cloned());
            st.q.reconfigure(settings, patterns);
            self.dirty.push(id);
        }
        self.cells.clear();
    }

    /// Shutdown: no more work is started; idle connections say QUIT.
    pub fn begin_shutdown(&mut self) {
        self.stopping = true;
        for st in self.queues.iter_mut().flatten() {
            for conn in st.idle.drain(..) {
                self.intents.push_back(Intent::Quit { conn });
            }
        }
    }

    /// Connections open or opening.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Jobs held in every queue (window and backlog) and held back for paused jobs.
    pub fn queued(&self) -> usize {
        let held = self.held.len();
        held + self.queues.iter().flatten().map(|st| st.q.jobs() + usize::from(!st.backlog.is_empty())).sum::<usize>()
    }

    /// Jobs ready to go now.
    pub fn ready_work(&self) -> usize {
        self.queues.iter().flatten().map(|st| st.q.ready_jobs()).sum()
    }

    /// The soonest a waiting job becomes due, or a lost DNS answer is asked for again
    /// (monotonic ms), if any.
    pub fn next_due_ms(&self) -> Option<u64> {
        let due = |st: &QueueState<M>| {
            // A resolution whose answer never came is asked for again then.
            let ask_again = match st.hops {
                HopState::Resolving { since_ms } => Some(since_ms.saturating_add(RESOLVE_ANSWER_WAIT_MS)),
                _ => None,
            };
            [st.q.next_retry_ms(), ask_again].into_iter().flatten().min()
        };
        self.queues.iter().flatten().filter_map(due).min()
    }
}

/// The DSN line of one failed recipient (an expiry is 5.4.7, RFC 3463).
fn dsn_failed(record: &Record, info: &AttemptInfo, orcpt: &str) -> dsn::Failed {
    let expired = record.bounce_cat == "message-expired";
    let status = record.dsn_status.split_whitespace().next().unwrap_or_default();
    dsn::Failed {
        rcpt: record.rcpt.clone(),
        status: if expired { "5.4.7".into() } else { status.to_string() },
        diagnostic: record.dsn_diag.trim_start_matches("smtp;").to_string(),
        remote_mta: info.mx_host.clone(),
        action: if record.kind == RecordKind::Delivered { "relayed" } else { "failed" },
        orcpt: orcpt.to_string(),
    }
}

/// Whether a recipient's outcome is reported to the sender (RFC 3461 §4.1 `NOTIFY`): a
/// failure unless NOTIFY leaves FAILURE out (or says NEVER); a delivery to a receiver that
/// does not offer DSN (it will say nothing more) when NOTIFY has SUCCESS (§5.2.2.1).
fn notify_of(kind: RecordKind, notify: u8, receiver_dsn: bool) -> bool {
    match kind {
        RecordKind::Bounced => notify == 0 || notify & notify::FAILURE != 0,
        RecordKind::Delivered => notify & notify::SUCCESS != 0 && !receiver_dsn,
        _ => false,
    }
}

/// The next hop of an attempt for log lines: `name (address)`, or `-` when none was reached.
fn hop_text(info: &AttemptInfo) -> String {
    match (info.mx_host.is_empty(), info.destination_ip.is_empty()) {
        (true, true) => "-".into(),
        (false, false) if info.mx_host != info.destination_ip => format!("{} ({})", info.mx_host, info.destination_ip),
        (false, _) => info.mx_host.clone(),
        (true, false) => info.destination_ip.clone(),
    }
}

/// What a record says of the message's injection: `srcMta` (`helo (ip)`), `srcType`, the
/// AUTH user, the DSN `ENVID` and the recipient's `ORCPT`.
pub(crate) fn stamp<M: Message>(record: &mut Record, msg: &M, rcpt_index: u32) {
    let Stamped { origin: o, sender, client_ip: ip, orcpt } = msg.stamped(rcpt_index);
    record.src_mta = crate::acct::src_mta(o.helo, ip);
    record.src_api = o.api;
    record.rcv_smtp_user = o.auth_user.to_string();
    record.env_id = o.envid.to_string();
    // The envelope sender as injected (a VERP return path is per recipient).
    record.orig = sender.to_string();
    record.orcpt = orcpt.to_string();
}
