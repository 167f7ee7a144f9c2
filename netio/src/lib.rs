//! sluice-netio: the only room that does IO. One pinned thread per CPU, each with its own
//! io_uring, SO_REUSEPORT listeners, spool segments and the delivery queues of the domains
//! hashed to it; the engine's sans-IO machines run inside.

pub mod admin;
pub mod backend;
pub mod conn;
mod faults;
pub mod guard;
pub(crate) mod mailbox;
mod park;
mod shard;
pub mod sim;
pub mod spool_files;
pub mod suppress;
mod sys;
pub mod tls;
pub mod tools;

pub use mailbox::{Hop, Resolution};
use mailbox::{Mailbox, ShardMsg};
use sluice_config::{Config, HostPort};
use sluice_engine::acct::Record;
pub use sluice_engine::route::owner_shard;
use sluice_engine::sched::limits::SourceLimits;
use sluice_engine::shape::counts::AddressCounts;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// What shards ask of the control plane.
pub enum ControlRequest {
    /// Resolve next hops for a domain: MX (or the static `smtp-hosts` names) to addresses.
    Resolve { shard: u32, domain: String, static_hosts: Option<Vec<Vec<HostPort>>> },
    /// Accounting records to append: a shard's batch `batch` (1, 2, ... in the order sent).
    /// Once they are durable, the writer says so with `Responder::acct_durable`; the shard
    /// journals the outcomes they record only then, so a crash never leaves an outcome the
    /// spool recorded without its row.
    Acct { shard: u32, batch: u64, records: Vec<Record> },
    /// Append a complaining recipient to an `auto-suppress-list`'s file (and fsync it), and,
    /// for a `redis-set` list, to the fleet's set; with `waiting`, the report's session
    /// (shard, slot, generation) gets its reply once it is durable
    /// (`Responder::report_stored`).
    SuppressAdd { path: Option<std::path::PathBuf>, list: String, address: String, waiting: Option<(u32, u32, u16)> },
    /// Authentication checks (SPF, DKIM, DMARC, ARC) and ARC sealing of a message before it
    /// is spooled; answered with `ShardMsg::Verified`. The data travels and comes back.
    Verify(Box<VerifyRequest>),
}

/// A message to check: its bytes (transparency form) and what the checks need.
pub struct VerifyRequest {
    pub shard: u32,
    /// The connection waiting: slot and generation.
    pub slot: u32,
    pub gen: u16,
    pub data: Vec<u8>,
    pub client_ip: std::net::IpAddr,
    pub helo: String,
    pub mail_from: String,
    pub spf: bool,
    pub dkim: bool,
    pub dmarc: bool,
    pub arc: bool,
    pub seal: bool,
    /// `check-iprev-inbound`: the client's PTR name resolves back to it.
    pub iprev: bool,
}

/// Requests in flight to the control plane before shards hold theirs back.
pub const CONTROL_CHANNEL_CAPACITY: usize = 16 * 1024;

#[derive(Debug)]
pub enum StartError {
    IoUring(std::io::Error),
    Listen(SocketAddr, std::io::Error),
    Spool(std::path::PathBuf, std::io::Error),
    Thread(std::io::Error),
    /// `<traffic-class>`es reserve more shards than there are.
    Classes(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::IoUring(e) => write!(
                f,
                "io_uring is not available ({e}) and `io-backend io_uring` asks for it. \
                 Check `sysctl kernel.io_uring_disabled` (must be 0), and, in a container, a seccomp profile \
                 that allows io_uring_setup, io_uring_enter and io_uring_register \
                 (packaging/seccomp.json); Linux 5.19 or newer is required. \
                 `io-backend auto` (the default) uses epoll where io_uring is refused"
            ),
            StartError::Listen(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::Spool(p, e) => write!(f, "spool {}: {e}", p.display()),
            StartError::Thread(e) => write!(f, "cannot start shard thread: {e}"),
            StartError::Classes(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// State every shard shares for the life of the process (a reload keeps it).
pub(crate) struct Core {
    pub mailboxes: Vec<Mailbox>,
    pub control: crossbeam_channel::Sender<ControlRequest>,
    pub shutdown: AtomicBool,
    pub inbound_connections: AtomicU32,
    /// Built from the configuration at start: a reload does not change source-IP limits.
    pub source_limits: Arc<SourceLimits>,
    /// Counters, one block per shard.
    pub stats: Vec<Arc<admin::ShardStats>>,
    pub started_unix_ms: u64,
    /// Failed AUTH attempts and sessions ended in protocol errors, per client address, seen
    /// the same by every shard (a client cannot get the limit once per shard).
    pub auth_failures: AddressCounts,
    pub error_sessions: AddressCounts,
    /// Cold VMTA warm-up, shared by every shard (`max-cold-virtual-mta-msg`).
    pub cold: sluice_engine::prepare::ColdCounts,
    /// Which shards run what (`<traffic-class>`), fixed at start.
    pub sets: sluice_config::ShardSets,
    /// Per shard: the last accounting batch the writer has made durable (`ControlRequest::Acct`).
    /// An atomic rather than a mailbox message: a full mailbox cannot lose it.
    pub acct_durable: Vec<AtomicU64>,
}

/// Whether this process may still deliver from and write to its spool. Always, unless the
/// host is one of a fleet with `spool-takeover` (src/takeover.rs): then only while its Redis
/// lease was renewed recently enough that no peer can have adopted the spool. Checked before
/// each connection and transaction is started and before each message is written; a shard's
/// clock is not used (the simulation never fences).
pub struct Fence {
    until_ns: AtomicU64,
}

pub static FENCE: Fence = Fence { until_ns: AtomicU64::new(u64::MAX) };

impl Fence {
    /// The reply a delivery or an injection gets while the fence is down.
    pub const WHY: &'static str = "4.3.0 this host cannot confirm its spool is still its own (spool-takeover lease)";

    pub fn holds(&self) -> bool {
        let until = self.until_ns.load(Ordering::Acquire);
        until == u64::MAX || sys::mono_ns() < until
    }

    /// Now, on the fence's clock: take it before asking Redis to renew the lease.
    pub fn now_ns() -> u64 {
        sys::mono_ns()
    }

    /// The lease asked for at `asked_ns` was renewed: the fence holds for `valid` from then.
    pub fn hold_from(&self, asked_ns: u64, valid: std::time::Duration) {
        self.until_ns.store(asked_ns.saturating_add(valid.as_nanos() as u64).min(u64::MAX - 1), Ordering::Release);
    }

    /// Down for good: a peer adopted the spool.
    pub fn close(&self) {
        self.until_ns.store(0, Ordering::Release);
    }
}

/// Client addresses counted at once per table (8 bytes each); beyond that the oldest
/// windows give way.
pub(crate) const ADDRESS_COUNTS_SLOTS: usize = 1 << 16;

/// The reloadable parts of a configuration, built from a checked `Config`.
pub struct Settings {
    pub config: Arc<Config>,
    pub dkim: sluice_engine::dkim::Keys,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub lists: sluice_config::names::Names<Arc<sluice_engine::suppress::AddressList>>,
    pub feedback: Option<sluice_engine::prepare::Processor>,
    pub bounces: Option<sluice_engine::prepare::Processor>,
}

/// State every shard shares: the process's core and the current configuration's parts,
/// swapped as a whole by a reload.
pub(crate) struct Shared {
    pub core: Arc<Core>,
    pub config: Arc<Config>,
    /// DKIM signing keys (`domain-key`), read once at start.
    pub dkim: sluice_engine::dkim::Keys,
    /// `<smtp-user>` credentials for SMTP AUTH.
    pub users: Arc<sluice_engine::smtp::auth::Users>,
    /// Inbound TLS (`smtp-server-tls-certificate`), if configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Outbound STARTTLS (opportunistic: certificates are not checked, RFC 7435).
    pub tls_client: Arc<rustls::ClientConfig>,
    /// `<address-list>`s by name.
    pub lists: sluice_config::names::Names<Arc<sluice_engine::suppress::AddressList>>,
    /// `<feedback-loop-processor>` and `<bounce-processor>`, if configured.
    pub feedback: Option<sluice_engine::prepare::Processor>,
    pub bounces: Option<sluice_engine::prepare::Processor>,
}

impl Shared {
    fn new(core: Arc<Core>, s: Settings) -> Shared {
        Shared {
            core,
            users: Arc::new(sluice_engine::smtp::auth::Users::from_config(&s.config, salt_seed())),
            config: s.config,
            dkim: s.dkim,
            tls: s.tls,
            tls_client: tls::client_config(),
            lists: s.lists,
            feedback: s.feedback,
            bounces: s.bounces,
        }
    }

    /// What message preparation reads besides the message (`sluice_engine::prepare`).
    pub(crate) fn world(&self) -> sluice_engine::prepare::World<'_> {
        sluice_engine::prepare::World {
            config: &self.config,
            dkim: &self.dkim,
            lists: &self.lists,
            feedback: self.feedback.as_ref(),
            bounces: self.bounces.as_ref(),
            cold: &self.core.cold,
        }
    }
}

/// A salt seed unpredictable from outside: the clock and the process, mixed.
fn salt_seed() -> u128 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.as_nanos() ^ (std::process::id() as u128) << 64 ^ (sys::mono_ns() as u128) << 32
}

/// The running data plane.
pub struct Runtime {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub shards: u32,
    pub recovered_messages: usize,
    /// The IO backend the shards run on.
    pub backend: backend::Chosen,
}

/// A handle the control plane uses to answer shards and to steer them.
#[derive(Clone)]
pub struct Responder {
    core: Arc<Core>,
    /// The configuration in force (a reload replaces it).
    current: Arc<std::sync::Mutex<Arc<Shared>>>,
}

/// How long an operator's command waits for every shard to answer.
const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Responder {
    /// Hands a message to a shard's mailbox, waiting up to a second while it is full; gives
    /// it back when the shard did not take it (as `Mailbox::send`).
    #[allow(clippy::result_large_err)]
    fn send(&self, shard: u32, mut msg: ShardMsg) -> Result<(), ShardMsg> {
        for _ in 0..1000 {
            match self.core.mailboxes[shard as usize].send(msg) {
                Ok(()) => return Ok(()),
                Err(back) => msg = back,
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(msg)
    }

    pub fn shards(&self) -> u32 {
        self.core.mailboxes.len() as u32
    }

    /// Which shards run what (`<traffic-class>`).
    pub fn shard_sets(&self) -> &sluice_config::ShardSets {
        &self.core.sets
    }

    /// The accounting writer has made `shard`'s batches up to `batch` durable: the shard
    /// journals their outcomes on its next tick.
    pub fn acct_durable(&self, shard: u32, batch: u64) {
        if let Some(mark) = self.core.acct_durable.get(shard as usize) {
            mark.fetch_max(batch, Ordering::Release);
        }
    }

    /// Sends `cmd` to every shard and collects their answers (blocking; call it off the
    /// runtime's async threads).
    pub fn admin(&self, cmd: admin::AdminCmd) -> Result<Vec<admin::AdminReply>, String> {
        let (tx, rx) = crossbeam_channel::bounded(self.core.mailboxes.len());
        for shard in 0..self.shards() {
            if self.send(shard, ShardMsg::Admin(cmd.clone(), tx.clone())).is_err() {
                return Err(format!("shard {shard} is not answering (its mailbox is full)"));
            }
        }
        let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
        let mut replies = Vec::new();
        while replies.len() < self.core.mailboxes.len() {
            match rx.recv_deadline(deadline) {
                Ok(r) => replies.push(r),
                Err(_) => return Err("the shards did not answer within 5 s".into()),
            }
        }
        Ok(replies)
    }

    /// Hands a message injected over HTTP to a shard (round robin by the caller's `n`, over
    /// the shards no traffic class reserves).
    pub fn inject(&self, n: u64, injection: admin::Injection) -> Result<(), String> {
        let general = &self.core.sets.general;
        let shard = general.start + (n % general.len().max(1) as u64) as u32;
        self.send(shard, ShardMsg::Inject(Box::new(injection))).map_err(|_| "the spool is busy, try again".to_string())
    }

    /// The counters summed over every shard.
    pub fn totals(&self) -> admin::Totals {
        admin::Totals::of(self.core.stats.iter().map(|s| &**s))
    }

    pub fn inbound_connections(&self) -> u32 {
        self.core.inbound_connections.load(Ordering::Relaxed)
    }

    pub fn started_unix_ms(&self) -> u64 {
        self.core.started_unix_ms
    }

    /// The suppression lists in force (for their counters).
    pub fn lists(&self) -> sluice_config::names::Names<Arc<sluice_engine::suppress::AddressList>> {
        self.current.lock().expect("not poisoned").lists.clone()
    }

    pub fn config(&self) -> Arc<Config> {
        self.current.lock().expect("not poisoned").config.clone()
    }

    /// The limits every shard shares (the fleet's cells among them), for the control plane.
    pub fn source_limits(&self) -> Arc<SourceLimits> {
        self.core.source_limits.clone()
    }

    /// Puts a new configuration in force on every shard: queues take their new settings,
    /// sessions and connections go on. Listeners, shards, the spool and source-IP limits stay
    /// as they were at start.
    pub fn reload(&self, settings: Settings) {
        let shared = Arc::new(Shared::new(self.core.clone(), settings));
        *self.current.lock().expect("not poisoned") = shared.clone();
        for shard in 0..self.shards() {
            if self.send(shard, ShardMsg::Reload(shared.clone())).is_err() {
                tracing::error!(shard, "shard mailbox full for 1s; it keeps the old configuration");
            }
        }
    }

    /// Hands a checked message back to its shard, with the headers to put on top
    /// (Authentication-Results, and an ARC set when sealed) and a one-line summary.
    pub fn verified(&self, shard: u32, slot: u32, gen: u16, data: Vec<u8>, headers: Vec<u8>, summary: String) {
        let msg = ShardMsg::Verified { slot, gen, data, headers, summary };
        if self.send(shard, msg).is_ok() {
            return;
        }
        tracing::error!(
            shard,
            "shard mailbox full for 1s; a checked message was dropped (its client gets no reply and retries)"
        );
    }

    /// A complaint's suppression entry is on disk (`ok`) or could not be written: the report's
    /// session gets 250 or 451.
    pub fn report_stored(&self, shard: u32, slot: u32, gen: u16, ok: bool) {
        if self.send(shard, ShardMsg::ReportStored { slot, gen, ok }).is_err() {
            tracing::error!(shard, "shard mailbox full for 1s; a report's client gets no reply and retries");
        }
    }

    /// Delivers a resolution to the shard that asked; retries briefly if its mailbox is full.
    /// `rollup`: the domain whose queue this one's mail joins (MX rollup), if not its own.
    pub fn resolved(&self, shard: u32, domain: String, resolution: Resolution, ttl_ms: u64, rollup: Option<String>) {
        let msg = ShardMsg::Resolved { domain, resolution, ttl_ms, rollup };
        if self.send(shard, msg).is_ok() {
            return;
        }
        tracing::error!(shard, "shard mailbox full for 1s; resolution dropped, the queue asks again after a minute");
    }
}

/// A recovered message's pending recipients, grouped by destination domain, as backlog
/// entries (addresses are read back from the segment when a job enters its queue's window).
fn recovered_jobs(
    segment: &Arc<spool_files::Segment>,
    offset: u64,
    pending: &[u32],
) -> Vec<(String, String, park::Parked)> {
    let view = segment.message(offset);
    let env = &view.envelope;
    let vmta = if env.vmta.is_empty() { sluice_engine::route::DEFAULT_VMTA } else { env.vmta };
    let mut by_domain: Vec<(String, Vec<u32>)> = Vec::new();
    // `verp-default`: a job per recipient (`Parked::job` gives each its return path).
    let verp = env.extras.flags & sluice_spool::codec::flags::VERP != 0;
    for &i in pending {
        let domain = sluice_engine::smtp::addr::domain_of(env.recipients[i as usize]);
        match by_domain.iter_mut().find(|(d, _)| *d == domain && !verp) {
            Some((_, r)) => r.push(i),
            None => by_domain.push((domain, vec![i])),
        }
    }
    by_domain
        .into_iter()
        .map(|(domain, rcpts)| {
            let parked = park::Parked {
                msg: mailbox::MsgRef { segment: segment.clone(), offset },
                rcpts: rcpts.into_boxed_slice(),
                attempts: 1,
                size: view.data.len() as u64,
                queued_unix_ms: env.queued_unix_ms,
            };
            (domain, vmta.to_string(), parked)
        })
        .collect()
}

/// The niceness of the shards no traffic class reserves, when there are classes: where they
/// share cores with a class's shards, the class's mail goes first.
const GENERAL_SHARD_NICE: i32 = 5;

/// Fails with EADDRINUSE when anything already listens on `addr`. The shards' listeners use
/// SO_REUSEPORT, which would otherwise let a second sluice share the port silently. The probe
/// binds without listening: a listening probe took in clients that came early and reset them
/// when it closed.
fn probe_free(addr: SocketAddr) -> std::io::Result<()> {
    sys::bind_only(addr)
}

/// What start-up builds before any shard runs, whichever backend they run on (the runtime's
/// threads, or the simulation): the spool recovered, the state the shards share, and what each
/// shard starts with.
pub(crate) struct Plan {
    pub shared: Arc<Shared>,
    pub starts: Vec<shard::Start>,
    pub recovered_messages: usize,
}

impl Plan {
    /// Recovers the spool and hands its work to the shards that own it; `listen` makes one
    /// shard's listener for an address (called once per listener per shard); each shard's
    /// mailbox holds `mailbox_capacity` messages.
    pub(crate) fn make(
        settings: Settings,
        control: crossbeam_channel::Sender<ControlRequest>,
        shards: u32,
        mailbox_capacity: usize,
        mut listen: impl FnMut(SocketAddr) -> Result<RawFd, StartError>,
    ) -> Result<Plan, StartError> {
        let config = settings.config.clone();
        let sets = config.shard_sets(shards).map_err(StartError::Classes)?;
        let spool = config.spool_dir.clone();
        let recovery_started = std::time::Instant::now();
        let recovered = spool_files::recover(&spool).map_err(|e| StartError::Spool(spool.clone(), e))?;
        if !recovered.messages.is_empty() {
            tracing::info!(
                messages = recovered.messages.len(),
                ms = recovery_started.elapsed().as_millis() as u64,
                "spool recovered: queued messages found"
            );
        }
        if recovered.torn_records > 0 {
            tracing::info!(torn = recovered.torn_records, "spool recovery skipped torn (never acknowledged) records");
        }
        let mut mailboxes = Vec::new();
        for _ in 0..shards {
            mailboxes.push(Mailbox::new(mailbox_capacity).map_err(StartError::Thread)?);
        }
        let core = Arc::new(Core {
            mailboxes,
            control,
            shutdown: AtomicBool::new(false),
            inbound_connections: AtomicU32::new(0),
            source_limits: Arc::new(sluice_engine::sched::limits::source_limits(&config)),
            stats: (0..shards).map(|_| Arc::new(admin::ShardStats::default())).collect(),
            started_unix_ms: sys::now_ms(),
            auth_failures: AddressCounts::new(ADDRESS_COUNTS_SLOTS),
            error_sessions: AddressCounts::new(ADDRESS_COUNTS_SLOTS),
            cold: Default::default(),
            acct_durable: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            sets: sets.clone(),
        });
        let shared = Arc::new(Shared::new(core, settings));
        let mut listeners: Vec<Vec<RawFd>> = (0..shards).map(|_| Vec::new()).collect();
        for addr in config.listeners.iter().map(|l| l.addr) {
            for l in listeners.iter_mut() {
                l.push(listen(addr)?);
            }
        }
        // Recovered work goes to the shard that owns each recipient's domain.
        let recovered_messages = recovered.messages.len();
        // Grouped by queue as they are found (no domain and VMTA strings per job), each queue's
        // straight into a parked list that spills to its shard's spool directory: a large
        // backlog is not held in memory twice on its way to the shards.
        let mut initial: Vec<shard::Recovered> = (0..shards).map(|_| Default::default()).collect();
        for id in 0..shards {
            let dir = spool_files::shard_dir(&spool, id);
            std::fs::create_dir_all(&dir).map_err(|e| StartError::Spool(dir, e))?;
        }
        for m in recovered.messages {
            // Its class as when it was received: the header it named one with, else the
            // class of the shard that received it (a source's), if the shards are as they were.
            let class = sluice_engine::route::header_class(&config, m.segment.data(m.offset));
            let class = class.as_deref().or(sets.class_of(m.segment.shard));
            for (domain, vmta, job) in recovered_jobs(&m.segment, m.offset, &m.pending) {
                let domain = config.queue_domain(&domain);
                let owner = sluice_engine::route::queue_owner(&config, &sets, &domain, &vmta, class);
                let queues = &mut initial[owner as usize];
                match queues.get_mut(&(domain.clone(), vmta.clone())) {
                    Some(jobs) => jobs.push_back(job),
                    None => {
                        let mut jobs = park::ParkedList::new(spool_files::shard_dir(&spool, owner));
                        jobs.push_back(job);
                        queues.insert((domain, vmta), jobs);
                    }
                }
            }
        }
        let mut old_journals: Vec<Vec<sluice_spool::OldJournal>> = (0..shards).map(|_| Vec::new()).collect();
        for (i, j) in recovered.old_journals.into_iter().enumerate() {
            old_journals[i % shards as usize].push(j);
        }
        let starts = listeners
            .into_iter()
            .zip(initial)
            .zip(old_journals)
            .enumerate()
            .map(|(id, ((listeners, initial), journals))| {
                let id = id as u32;
                let next_seq = recovered.next_seq.get(&id).copied().unwrap_or(1);
                let faults = faults::Faults::from_env(id);
                shard::Start { id, shards, shared: shared.clone(), listeners, initial, journals, next_seq, faults }
            })
            .collect();
        Ok(Plan { shared, starts, recovered_messages })
    }

    /// The control plane's handle on these shards.
    pub(crate) fn responder(&self) -> Responder {
        Responder { core: self.shared.core.clone(), current: Arc::new(std::sync::Mutex::new(self.shared.clone())) }
    }
}

impl Runtime {
    /// Recovers the spool, binds the listeners on every shard, and starts the shards.
    pub fn start(
        settings: Settings,
        control: crossbeam_channel::Sender<ControlRequest>,
    ) -> Result<(Runtime, Responder), StartError> {
        let config = settings.config.clone();
        // The backend before anything else, so a failure says what it is.
        let backend = backend::choose(config.io_backend).map_err(StartError::IoUring)?;
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let shards = config.shards.unwrap_or(cores.len().max(1)) as u32;
        for addr in config.listeners.iter().map(|l| &l.addr) {
            probe_free(*addr).map_err(|e| StartError::Listen(*addr, e))?;
        }
        // Listeners: one SO_REUSEPORT socket per listener per shard.
        let listen = |addr| {
            let fd = sys::listen(addr, true).map_err(|e| StartError::Listen(addr, e))?;
            Ok(std::os::fd::IntoRawFd::into_raw_fd(fd))
        };
        let plan = Plan::make(settings, control, shards, mailbox::MAILBOX_CAPACITY, listen)?;
        let responder = plan.responder();
        let Plan { shared, starts, recovered_messages } = plan;
        let ring_options = backend::uring::Options {
            sqpoll: shared.config.io_uring_sqpoll,
            multishot: shared.config.io_uring_multishot_receive,
            registered_files: shared.config.io_uring_registered_files,
        };
        let mut threads = Vec::new();
        for start in starts {
            let id = start.id;
            // With traffic classes, the other shards yield the CPU to the classes' shards where
            // they share cores.
            let yields = !shared.core.sets.classes.is_empty() && shared.core.sets.general.contains(&id);
            let core = cores.get(id as usize % cores.len().max(1)).copied();
            let handle = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    if yields {
                        sys::lower_priority(GENERAL_SHARD_NICE);
                    }
                    let ran = match backend {
                        backend::Chosen::IoUring => {
                            backend::uring::Uring::new(ring_options).and_then(|io| start.run(io))
                        }
                        backend::Chosen::Epoll => backend::epoll::Epoll::new().and_then(|io| start.run(io)),
                    };
                    if let Err(e) = ran {
                        tracing::error!(shard = id, error = %e, "shard failed to start");
                        std::process::exit(1);
                    }
                })
                .map_err(StartError::Thread)?;
            threads.push(handle);
        }
        Ok((Runtime { shared, threads, shards, recovered_messages, backend }, responder))
    }

    /// Stops accepting, finishes or abandons in-flight work safely, and lets shards exit.
    pub fn shutdown(&self) {
        self.shared.core.shutdown.store(true, Ordering::SeqCst);
        for m in &self.shared.core.mailboxes {
            m.wake();
        }
    }

    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}
