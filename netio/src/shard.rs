//! One shard: a pinned thread with its own io_uring. Its loop reaps completions, advances the
//! engine's machines, submits new operations and runs due timers. It owns its listeners'
//! accepted connections, its spool segments and journal, and the delivery queues of the
//! domains hashed to it.

use crate::admin::{AdminCmd, AdminReply, Injection, JobInfo, QueueInfo, Selector, ShardStats};
use crate::faults::{Faults, Io};
use crate::loglimit::LogLimit;
use crate::mailbox::{Hop, MsgRef, Resolution, ShardMsg};
use crate::park::{Parked, ParkedList};
use crate::store::{self, Journal, Segment};
use crate::sys::{ip_of, local_ip, mono_ns, now_ms, sockaddr};

/// Monotonic seconds, for the per-address windows every shard shares.
fn mono_s() -> u64 {
    mono_ns() / 1_000_000_000
}
use crate::{limit_of, owner_shard, ControlRequest, Shared};
use io_uring::{opcode, squeue, types, IoUring};
use sluice_config::Downgrade8bit;
use sluice_engine::acct::{Kind as RecordKind, Record};
use sluice_engine::bounce::dsn;
use sluice_engine::dkim::unstuffed as dkim_unstuffed;
use sluice_engine::queue::{AttemptInfo, Fate, Job, Queue, QueueAction, Recipient};
use sluice_engine::shape::gcra::{GcraCell, Limit};
use sluice_engine::smtp::addr::domain_of;
use sluice_engine::smtp::client::{Client, ClientEvent, TlsMode, END_OF_DATA};
use sluice_engine::smtp::headers::{header_value, take_header};
use sluice_engine::smtp::mime;
use sluice_engine::smtp::reply::Reply;
use sluice_engine::smtp::server::{Event, Session, SessionPolicy};
use sluice_spool::codec::{self, Envelope, Outcome, OUTCOME_BYTES};
use sluice_spool::{Appender, JournalBackoff, Resume, TicketResult};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The virtual MTA of every queue until `<virtual-mta>` support lands.
const DEFAULT_VMTA: &str = "default";
const RING_ENTRIES: u32 = 4096;
/// Connection slots per shard, inbound and outbound together.
const CONNS_MAX: usize = 1 << 20;
const TICK_MS: u64 = 50;
const RECV_BYTES: usize = 64 * 1024;
const OUT_CONNECT_TIMEOUT_MS: u64 = 30_000;
/// RFC 5321 §4.5.3.2 suggests 5 minutes for most replies and 10 for the end of data.
const OUT_REPLY_TIMEOUT_MS: u64 = 300_000;
const OUT_FINAL_TIMEOUT_MS: u64 = 600_000;
/// An outbound connection with nothing to send waits this long for new work, then QUITs.
const OUT_IDLE_MS: u64 = 2_000;
const SHUTDOWN_GRACE_MS: u64 = 3_000;
/// An active segment with no live recipients is retired after this much quiet.
const EMPTY_SEGMENT_IDLE_MS: u64 = 1_000;
/// Journal writes in flight per journal file.
const JOURNAL_WRITES_IN_FLIGHT_MAX: usize = 64;
/// How long a failed resolution is remembered before asking again.
const RESOLVE_FAILURE_TTL_MS: u64 = 60_000;
/// Backoff after a connection fails before its session is ready: doubles from the first to
/// the last value while failures continue.
const CONNECT_BACKOFF_FIRST_MS: u64 = 100;
const CONNECT_BACKOFF_MAX_MS: u64 = 30_000;
/// Accounting records held locally while the control plane is busy.
const ACCT_PENDING_MAX: usize = 1 << 20;
/// A job id longer than this is cut (it rides in every accounting record).
const JOB_ID_CHARS_MAX: usize = 256;
/// An untrusted address whose sessions end in too many protocol errors this many times within
/// the window is refused (421 at connect) for the rest of it.
const SOURCE_ERROR_SESSIONS_MAX: u32 = 3;
const SOURCE_ERROR_WINDOW_S: u64 = 10 * 60;
/// A message's whole DATA phase may last this many `smtp-data-timeout`s (each read gets one).
const DATA_PHASE_TIMEOUTS: u64 = 3;

const _: () = assert!(RECV_BYTES > sluice_engine::smtp::server::COMMAND_LINE_BYTES_MAX);
const _: () = assert!(OUT_IDLE_MS < OUT_REPLY_TIMEOUT_MS);
const _: () = assert!(TICK_MS == crate::RATE_BURST_WINDOW_MS, "rate bursts cover exactly one tick");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Recv,
    Send,
    Connect,
    SegWrite,
    SegSync,
    JnlWrite,
    JnlSync,
    Event,
    Tick,
    Cancel,
    LocalWrite,
}

impl Op {
    fn from(v: u8) -> Op {
        match v {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Connect,
            5 => Op::SegWrite,
            6 => Op::SegSync,
            7 => Op::JnlWrite,
            8 => Op::JnlSync,
            9 => Op::Event,
            10 => Op::Tick,
            12 => Op::LocalWrite,
            _ => Op::Cancel,
        }
    }
}

/// user_data: op (8 bits) | generation (16) | slot or payload (40).
fn ud(op: Op, gen: u16, slot: u64) -> u64 {
    assert!(slot < 1 << 40);
    (op as u64) << 56 | (gen as u64) << 40 | slot
}

fn ud_split(v: u64) -> (Op, u16, u64) {
    (Op::from((v >> 56) as u8), (v >> 40) as u16, v & ((1 << 40) - 1))
}

/// (destination domain, VMTA or pool, job).
pub(crate) type Initial = (String, String, Job<MsgRef>);

/// Groups a message's recipients by destination domain: one job per domain.
/// `template` is the message's job with no recipient yet.
fn group_jobs<'a>(template: &Job<MsgRef>, vmta: &str, rcpts: impl Iterator<Item = (u32, &'a str)>) -> Vec<Initial> {
    let mut jobs: Vec<Initial> = Vec::new();
    for (index, address) in rcpts {
        let domain = domain_of(address);
        let rcpt = Recipient { index, address: address.to_string() };
        match jobs.iter_mut().find(|(d, _, _)| *d == domain) {
            Some((_, _, job)) => job.rcpts.push(rcpt),
            None => {
                let mut job = template.clone();
                job.rcpts.push(rcpt);
                jobs.push((domain, vmta.to_string(), job));
            }
        }
    }
    jobs
}

/// A message's job, before its recipients are added.
fn job_template(
    msg: MsgRef,
    mail_from: &str,
    queued_unix_ms: u64,
    size: u64,
    attempts: u32,
    job_id: &str,
) -> Job<MsgRef> {
    Job {
        msg,
        mail_from: mail_from.to_string(),
        rcpts: Vec::new(),
        attempts,
        queued_unix_ms,
        size,
        job_id: job_id.to_string(),
    }
}

/// A parked job back as a whole one, its addresses read from the spool.
fn job_of(p: &Parked) -> Job<MsgRef> {
    let view = p.msg.segment.message(p.msg.offset);
    let env = &view.envelope;
    let mut job = job_template(p.msg.clone(), env.mail_from, env.queued_unix_ms, p.size, p.attempts, env.job_id);
    job.rcpts =
        p.rcpts.iter().map(|&i| Recipient { index: i, address: env.recipients[i as usize].to_string() }).collect();
    job
}

/// Work found in the spool at start, by queue (destination domain, VMTA): the jobs as
/// references (addresses are read back from the segment when a job enters its queue's window).
pub(crate) type Recovered = HashMap<(String, String), ParkedList>;

/// A recovered message's pending recipients, grouped by destination domain.
pub(crate) fn recovered_jobs(segment: &Arc<Segment>, offset: u64, pending: &[u32]) -> Vec<(String, String, Parked)> {
    let view = segment.message(offset);
    let env = &view.envelope;
    let vmta = if env.vmta.is_empty() { DEFAULT_VMTA } else { env.vmta };
    let mut by_domain: Vec<(String, Vec<u32>)> = Vec::new();
    for &i in pending {
        let domain = domain_of(env.recipients[i as usize]);
        match by_domain.iter_mut().find(|(d, _)| *d == domain) {
            Some((_, r)) => r.push(i),
            None => by_domain.push((domain, vec![i])),
        }
    }
    by_domain
        .into_iter()
        .map(|(domain, rcpts)| {
            let parked = Parked {
                msg: MsgRef { segment: segment.clone(), offset },
                rcpts: rcpts.into_boxed_slice(),
                attempts: 1,
                size: view.data.len() as u64,
                queued_unix_ms: env.queued_unix_ms,
            };
            (domain, vmta.to_string(), parked)
        })
        .collect()
}

/// An accepted message on its way to disk.
struct Store {
    head: Vec<u8>,
    data: Vec<u8>,
    /// After the data: the job id (spool format version 2).
    tail: Vec<u8>,
    iov: [libc::iovec; 3],
    /// How much of head, data and tail is on its way to the segment file.
    written: Resume,
    seq: u64,
    offset: u64,
    mail_from: String,
    recipients: Vec<String>,
    queued_unix_ms: u64,
    /// The VMTA or pool the message goes out through.
    vmta: String,
    /// Who sent it, for `r` records: `helo (ip)`, the AUTH user if any, and the inbound
    /// authentication results.
    src_mta: String,
    smtp_user: String,
    auth_results: String,
    /// The `x-job:` header's value (empty: none).
    job_id: String,
}

impl Store {
    /// A message to spool: its data (transparency form), envelope and VMTA; what the `r`
    /// records say of its origin is empty until set.
    fn boxed(
        data: Vec<u8>,
        mail_from: String,
        recipients: Vec<String>,
        queued_unix_ms: u64,
        vmta: String,
    ) -> Box<Store> {
        Box::new(Store {
            head: Vec::new(),
            data,
            tail: Vec::new(),
            iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 3],
            written: Resume::default(),
            seq: 0,
            offset: 0,
            mail_from,
            recipients,
            queued_unix_ms,
            vmta,
            src_mta: String::new(),
            smtp_user: String::new(),
            auth_results: String::new(),
            job_id: String::new(),
        })
    }
}

/// Spool tickets of locally made messages (DSNs) have this bit; connections' tickets are
/// `generation << 32 | slot`, far below it.
const LOCAL_TICKET: u64 = 1 << 63;
/// A DSN the spool could not take is offered again after this long.
const LOCAL_RETRY_MS: u64 = 1_000;

/// A message sluice makes itself (an RFC 3464 DSN) on its way into the spool. The bounces it
/// reports are journaled only once it is durable: a crash before then bounces, and reports,
/// them again (at least once, never lost).
struct LocalMessage {
    store: Box<Store>,
    outcomes: Vec<(Outcome, Arc<Segment>)>,
    /// A message injected over HTTP: told once it is durable (its queue id) or refused.
    notify: Option<crossbeam_channel::Sender<Result<String, String>>>,
}

struct Inbound {
    session: Session,
    client_ip: IpAddr,
    store: Option<Box<Store>>,
    /// rustls's state once TLS is on (STARTTLS or an implicit-TLS listener).
    tls: Option<Box<rustls::ServerConnection>>,
    /// With TLS: bytes at the front of the input buffer that are decrypted (the rest, up to
    /// its length, is ciphertext just received).
    plain_len: usize,
    /// Ciphertext rustls could not take yet (its buffer was full).
    tls_pending: Vec<u8>,
    /// A message out for authentication checks (its data is with the control plane).
    verifying: Option<Box<(sluice_engine::smtp::server::Message, String)>>,
    /// A complaint report whose suppression entry is being written: the reply waits for it.
    reporting: bool,
    /// While in DATA: when the whole DATA phase must be over (`DATA_PHASE_TIMEOUTS`).
    data_until_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutPhase {
    Connecting,
    Session,
    /// Sending the body and ".\r\n" (`body` says how much is out).
    Body,
}

struct Outbound {
    /// The queue key, `domain/vmta`.
    queue: String,
    /// The VMTA this connection speaks for (a pool's member), and the pool if any.
    vmta: String,
    pool: String,
    source_ip: Option<IpAddr>,
    /// This connection holds one of its source IP's `source-ip-max-smtp-out` places.
    holds_smtp_out: bool,
    client: Client,
    hops: Vec<Hop>,
    hop_index: usize,
    addr: (libc::sockaddr_storage, libc::socklen_t),
    job: Option<Job<MsgRef>>,
    messages_sent: u32,
    phase: OutPhase,
    ever_ready: bool,
    idle: bool,
    /// The pattern list set this connection's host or source IP aside: no more work on it.
    leaving: bool,
    /// rustls's state after STARTTLS, and the decryption bookkeeping (as for inbound).
    tls: Option<Box<rustls::ClientConnection>>,
    plain_len: usize,
    tls_pending: Vec<u8>,
    /// The job's message converted for this receiver (8-bit to quoted-printable), sent
    /// instead of the spooled bytes.
    converted: Option<Vec<u8>>,
    /// How much of the body and ".\r\n" is out.
    body: Resume,
    iov: [libc::iovec; 2],
    msghdr: libc::msghdr,
    info: AttemptInfo,
}

// Connections are boxed once each and never moved, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Kind {
    In(Inbound),
    Out(Outbound),
}

struct Conn {
    gen: u16,
    fd: RawFd,
    /// The socket operation in flight, if any (at most one).
    op: Option<Op>,
    cancelling: bool,
    deadline_ms: u64,
    inbuf: Vec<u8>,
    in_len: usize,
    /// Bytes to send; `sending` says how much of them is out. Emptied once all are.
    out: Vec<u8>,
    sending: Resume,
    kind: Kind,
}

enum HopState {
    Unknown,
    Resolving,
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

struct QueueState {
    q: Queue<MsgRef>,
    hops: HopState,
    idle: Vec<u32>,
    rotation: usize,
    /// Connections that failed before their session was ready, in a row; no new connection
    /// is opened before `connect_backoff_until_ms` (a receiver answering 421 is not hammered).
    connect_failures: u32,
    connect_backoff_until_ms: u64,
    /// Jobs past the queue's in-memory window (`QUEUE_WINDOW`), in arrival order, as bare
    /// references into the spool (the most spilled to a file): their addresses are read back
    /// from the segment when they enter the window.
    parked: ParkedList,
}

/// Jobs a queue holds in memory, ready and waiting; more arrivals are parked as references
/// into the spool (`park.rs`: a few thousand in memory, the rest in a spill file) and enter
/// as the window drains below half. A million-message backlog for one unreachable domain
/// costs a constant amount of memory.
const QUEUE_WINDOW: usize = 10_000;
/// Parked jobs brought back into a window per pump (the tick pumps again while below half).
const UNPARK_BATCH: usize = 1_000;

/// What a queue's pattern list told it to stop using (`skip-mx`, `disable-source-ip`), each
/// until a monotonic-clock time. Kept apart from the queue state, which comes and goes as the
/// queue empties: a disabled source IP stays disabled for its whole time.
#[derive(Default)]
struct Avoided {
    hops: Vec<(SocketAddr, u64)>,
    vmtas: Vec<(String, u64)>,
}

/// How long a `smtp_out_claim` holds without renewal: two ticks.
const SMTP_OUT_CLAIM_MS: u64 = 2 * TICK_MS;

#[derive(Clone, Copy)]
enum Grant {
    Message,
    Connect,
}

#[derive(Default)]
struct QueueCells {
    msg: Option<(GcraCell, Limit)>,
    connect: Option<(GcraCell, Limit)>,
}

struct JournalBatch {
    jseq: u64,
    /// Where the batch goes in its journal, and how much of it is written.
    offset: u64,
    written: Resume,
    bytes: Vec<u8>,
    segments: Vec<Arc<Segment>>,
}

pub(crate) struct Shard {
    id: u32,
    shards: u32,
    shared: Arc<Shared>,
    ring: IoUring,
    dir: PathBuf,
    listeners: Vec<RawFd>,
    accept_addrs: Box<[(libc::sockaddr_storage, libc::socklen_t)]>,
    accept_rearm: Vec<usize>,
    conns: Vec<Option<Box<Conn>>>,
    gens: Vec<u16>,
    free: Vec<u32>,
    session_counter: u64,
    // Spool.
    appender: Appender,
    segments: HashMap<u64, Arc<Segment>>,
    active_empty_since_ms: Option<u64>,
    spool_broken_until_ms: u64,
    /// When a new journal may start after journal failures.
    jnl_backoff: JournalBackoff,
    /// Spool IO failures injected on purpose (`SLUICE_FAULTS`, tests only).
    faults: Faults,
    spool_refusals: Vec<u32>,
    journal: Option<Journal>,
    closed_journals: Vec<Journal>,
    next_journal_seq: u64,
    jnl_pending: Vec<u8>,
    jnl_pending_segments: Vec<Arc<Segment>>,
    jnl_batches: HashMap<u64, JournalBatch>,
    next_batch: u64,
    // Delivery.
    queues: HashMap<String, QueueState>,
    dirty: Vec<String>,
    /// Per queue, its `max-msg-rate` and `max-connect-rate` cells (outlive the queue state,
    /// so a queue that empties and refills does not get a fresh burst).
    queue_cells: HashMap<String, QueueCells>,
    /// Set while a queue-wide pattern action runs (its own replies must not re-trigger it).
    applying_queue_action: bool,
    /// Per pool, which member the next connection uses (outlives the pool's queues, which
    /// come and go as they empty).
    pool_rotation: HashMap<String, usize>,
    /// Per queue key, the next hops and VMTAs its pattern list set aside.
    avoided: HashMap<String, Avoided>,
    outbox: Vec<(u32, ShardMsg)>,
    acct: Vec<Record>,
    /// Operator control: paused queues (selectors), paused jobs and the jobs they hold back,
    /// cancelled jobs (their recipients are deleted wherever they turn up).
    paused_queues: Vec<Selector>,
    paused_jobs: HashSet<String>,
    held: Vec<Initial>,
    /// Deleted jobs, until when their recipients out on connections may still come back.
    cancelled_jobs: HashMap<String, u64>,
    /// DSNs being written (by ticket id), and those waiting to be offered to the spool again.
    local: HashMap<u64, LocalMessage>,
    local_retry: Vec<(u64, LocalMessage)>,
    next_local: u64,
    // Loop.
    timespec: Box<types::Timespec>,
    event_buf: Box<u64>,
    completions: Vec<(u64, i32)>,
    tickets: Vec<(u64, TicketResult)>,
    stopping_since_ms: Option<u64>,
    /// The budget of delivery-failure log lines.
    log_limit: LogLimit,
}

impl Shard {
    pub fn new(
        id: u32,
        shards: u32,
        shared: Arc<Shared>,
        listeners: Vec<RawFd>,
        initial: Recovered,
        old_journals: Vec<Journal>,
        next_seq: u64,
    ) -> std::io::Result<Shard> {
        let ring = IoUring::builder().build(RING_ENTRIES)?;
        let dir = store::shard_dir(&shared.config.spool_dir, id);
        std::fs::create_dir_all(&dir)?;
        let segment_bytes = shared.config.spool_segment_bytes;
        let journal = Journal::create(&dir, id, next_seq, store::journal_bytes(segment_bytes))?;
        // SAFETY: zeroed sockaddr storage is valid.
        let zero: (libc::sockaddr_storage, libc::socklen_t) = (unsafe { std::mem::zeroed() }, 0);
        let mut shard = Shard {
            id,
            shards,
            accept_addrs: vec![zero; listeners.len()].into_boxed_slice(),
            listeners,
            accept_rearm: Vec::new(),
            shared,
            ring,
            dir,
            conns: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            session_counter: 0,
            appender: Appender::new(segment_bytes, next_seq),
            segments: HashMap::new(),
            active_empty_since_ms: None,
            spool_broken_until_ms: 0,
            jnl_backoff: JournalBackoff::default(),
            faults: Faults::from_env(id),
            spool_refusals: Vec::new(),
            journal: Some(journal),
            closed_journals: old_journals,
            next_journal_seq: next_seq + 1,
            jnl_pending: Vec::new(),
            jnl_pending_segments: Vec::new(),
            jnl_batches: HashMap::new(),
            next_batch: 1,
            queues: HashMap::new(),
            dirty: Vec::new(),
            pool_rotation: HashMap::new(),
            avoided: HashMap::new(),
            local: HashMap::new(),
            local_retry: Vec::new(),
            next_local: 0,
            applying_queue_action: false,
            queue_cells: HashMap::new(),
            outbox: Vec::new(),
            acct: Vec::new(),
            paused_queues: Vec::new(),
            paused_jobs: HashSet::new(),
            held: Vec::new(),
            cancelled_jobs: HashMap::new(),
            timespec: Box::new(types::Timespec::new().nsec((TICK_MS * 1_000_000) as u32)),
            event_buf: Box::new(0),
            completions: Vec::with_capacity(RING_ENTRIES as usize * 2),
            tickets: Vec::new(),
            stopping_since_ms: None,
            log_limit: LogLimit::new(now_ms()),
        };
        // Segments (.seg) and journals (.jnl) number independently from the first free
        // sequence of this directory; their extensions keep the names apart.
        for ((domain, vmta), mut jobs) in initial {
            let (key, st) = shard.queue_for(&domain, &vmta);
            while st.q.jobs() < QUEUE_WINDOW && st.parked.is_empty() {
                let Some(parked) = jobs.pop_front() else { break };
                st.q.push(job_of(&parked));
            }
            if st.parked.is_empty() {
                st.parked = jobs;
            } else {
                // Two recovered groups landed in one queue: the second joins behind.
                while let Some(parked) = jobs.pop_front() {
                    st.parked.push_back(parked);
                }
            }
            shard.dirty.push(key);
        }
        Ok(shard)
    }

    fn push(&mut self, entry: squeue::Entry) {
        // SAFETY: every pointer in an entry refers to memory this shard keeps alive until
        // the operation completes (boxed connections, boxed stores, batches, buffers).
        unsafe { crate::sys::push(&mut self.ring, &entry) };
    }

    /// The shard loop: the one unbounded loop, ending only at shutdown.
    pub fn run(&mut self) {
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        self.arm_event();
        self.arm_tick();
        loop {
            // Drain the completion queue first; handle afterwards, never re-entrantly.
            crate::sys::wait(&mut self.ring, &mut self.completions);
            let completions = std::mem::take(&mut self.completions);
            for &(user_data, result) in &completions {
                self.complete(user_data, result);
            }
            self.completions = completions;
            self.completions.clear();
            self.after_completions();
            if self.finished() {
                break;
            }
        }
        self.flush_acct(true);
        // In-flight operations may still reference connection buffers: never free them.
        std::mem::forget(std::mem::take(&mut self.conns));
        std::mem::forget(std::mem::take(&mut self.local));
        tracing::debug!(shard = self.id, "shard stopped");
    }

    fn complete(&mut self, user_data: u64, result: i32) {
        let (op, gen, slot) = ud_split(user_data);
        let result = match op {
            Op::SegWrite | Op::LocalWrite => self.faults.apply(Io::SegWrite, result),
            Op::SegSync => self.faults.apply(Io::SegSync, result),
            Op::JnlWrite => self.faults.apply(Io::JnlWrite, result),
            Op::JnlSync => self.faults.apply(Io::JnlSync, result),
            _ => result,
        };
        match op {
            Op::Accept => self.on_accept(slot as usize, result),
            Op::Recv | Op::Send | Op::Connect => {
                let slot = slot as u32;
                let live = self.conns.get(slot as usize).and_then(|c| c.as_ref()).is_some_and(|c| c.gen == gen);
                assert!(live, "completion for a freed connection slot {slot}");
                self.conn_mut(slot).op = None;
                match op {
                    Op::Recv => self.on_recv(slot, result),
                    Op::Send => self.on_send(slot, result),
                    _ => self.on_connect(slot, result),
                }
            }
            Op::SegWrite => self.on_seg_write(gen, slot as u32, result),
            Op::LocalWrite => self.on_local_write(slot, result),
            Op::SegSync => {
                let mut tickets = std::mem::take(&mut self.tickets);
                self.appender.sync_completed(slot, result >= 0, &mut tickets);
                if result < 0 {
                    tracing::error!(
                        shard = self.id,
                        seq = slot,
                        errno = -result,
                        "segment fdatasync failed; segment retired"
                    );
                }
                self.tickets = tickets;
            }
            Op::JnlWrite => self.on_jnl_write(slot, result),
            Op::JnlSync => self.on_jnl_sync(slot, result),
            Op::Event => {
                self.shared.core.mailboxes[self.id as usize].clear_notified();
                self.drain_mailbox();
                self.arm_event();
            }
            Op::Tick => {
                self.on_tick();
                self.arm_tick();
            }
            Op::Cancel => {}
        }
    }

    fn after_completions(&mut self) {
        self.drain_mailbox();
        self.commit_spool();
        self.flush_journal();
        // Every message marks its queue; pump each queue once per turn of the loop, higher
        // `queue-priority` first (they get the shared source IPs' places first).
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let priority = |k: &String| self.queues.get(k).map_or(0, |st| st.q.settings.queue_priority);
        dirty.sort_by_key(|k| std::cmp::Reverse(priority(k)));
        for domain in &dirty {
            self.pump(domain);
        }
        self.flush_outbox();
        self.flush_acct(false);
    }

    // ---- Connection slots -------------------------------------------------------------

    fn conn_mut(&mut self, slot: u32) -> &mut Conn {
        self.conns[slot as usize].as_mut().expect("live connection")
    }

    fn alloc(&mut self, fd: RawFd, kind: Kind) -> Option<u32> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.conns.len() < CONNS_MAX => {
                self.conns.push(None);
                self.gens.push(0);
                (self.conns.len() - 1) as u32
            }
            None => return None,
        };
        let gen = self.gens[slot as usize];
        self.conns[slot as usize] = Some(Box::new(Conn {
            gen,
            fd,
            op: None,
            cancelling: false,
            deadline_ms: u64::MAX,
            inbuf: vec![0; RECV_BYTES],
            in_len: 0,
            out: Vec::new(),
            sending: Resume::default(),
            kind,
        }));
        Some(slot)
    }

    fn close(&mut self, slot: u32) {
        let conn = self.conns[slot as usize].take().expect("closing a live connection");
        assert!(conn.op.is_none(), "closing a connection with an operation in flight");
        crate::sys::close(conn.fd);
        self.gens[slot as usize] = self.gens[slot as usize].wrapping_add(1);
        self.free.push(slot);
        match conn.kind {
            Kind::In(inb) => {
                self.shared.core.inbound_connections.fetch_sub(1, Ordering::SeqCst);
                if inb.session.closed_for_errors() {
                    let counts = &self.shared.core.error_sessions;
                    let n = counts.add(inb.client_ip, 1, mono_s(), SOURCE_ERROR_WINDOW_S);
                    if n == SOURCE_ERROR_SESSIONS_MAX {
                        tracing::warn!(shard = self.id, ip = %inb.client_ip, "address refused for a while: too many sessions ended in protocol errors");
                    }
                }
            }
            Kind::Out(out) => {
                self.release_smtp_out(out.source_ip, out.holds_smtp_out);
                if let Some(st) = self.queues.get_mut(&out.queue) {
                    st.q.connections -= 1;
                    st.idle.retain(|s| *s != slot);
                }
                if let Some(job) = out.job {
                    // Unreachable by construction: jobs are settled before a close.
                    self.requeue(&out.queue, job);
                }
                self.dirty.push(out.queue);
            }
        }
    }

    fn submit_recv(&mut self, slot: u32, timeout_ms: u64) {
        let now = now_ms();
        let conn = self.conn_mut(slot);
        assert!(conn.op.is_none());
        if conn.in_len == conn.inbuf.len() {
            conn.inbuf.resize(conn.inbuf.len() * 2, 0);
        }
        let buf = conn.inbuf[conn.in_len..].as_mut_ptr();
        let len = (conn.inbuf.len() - conn.in_len) as u32;
        conn.op = Some(Op::Recv);
        // A partial line waiting for its end keeps the deadline it had: a client trickling a
        // command byte by byte (slowloris) still has to finish it within the timeout.
        let partial = conn.in_len > 0 && conn.deadline_ms != u64::MAX && conn.deadline_ms > now;
        if !partial {
            conn.deadline_ms = now + timeout_ms;
        }
        let entry =
            opcode::Recv::new(types::Fd(conn.fd), buf, len).build().user_data(ud(Op::Recv, conn.gen, slot as u64));
        self.push(entry);
    }

    fn submit_send(&mut self, slot: u32) {
        let now = now_ms();
        let conn = self.conn_mut(slot);
        assert!(conn.op.is_none() && !conn.out.is_empty());
        if conn.sending.is_done() {
            conn.sending = Resume::new(conn.out.len()); // a new send of all that is buffered
        }
        let [rest] = conn.sending.rest([&conn.out]);
        let (buf, len) = (rest.as_ptr(), rest.len() as u32);
        conn.op = Some(Op::Send);
        conn.deadline_ms = now + OUT_REPLY_TIMEOUT_MS;
        let entry = opcode::Send::new(types::Fd(conn.fd), buf, len).flags(libc::MSG_NOSIGNAL).build().user_data(ud(
            Op::Send,
            conn.gen,
            slot as u64,
        ));
        self.push(entry);
    }

    fn cancel(&mut self, slot: u32) {
        let conn = self.conn_mut(slot);
        let Some(op) = conn.op else { return };
        if conn.cancelling {
            return;
        }
        conn.cancelling = true;
        let target = ud(op, conn.gen, slot as u64);
        self.push(opcode::AsyncCancel::new(target).build().user_data(ud(Op::Cancel, 0, 0)));
    }

    // ---- Inbound ----------------------------------------------------------------------

    fn arm_accept(&mut self, i: usize) {
        if self.stopping_since_ms.is_some() {
            return;
        }
        let (storage, len) = &mut self.accept_addrs[i];
        *len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let entry =
            opcode::Accept::new(types::Fd(self.listeners[i]), (storage as *mut libc::sockaddr_storage).cast(), len)
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(ud(Op::Accept, 0, i as u64));
        self.push(entry);
    }

    fn on_accept(&mut self, i: usize, result: i32) {
        if self.stopping_since_ms.is_some() {
            if result >= 0 {
                crate::sys::close(result); // accepted after shutdown began
            }
            return;
        }
        if result < 0 {
            if result != -libc::ECANCELED {
                tracing::warn!(shard = self.id, errno = -result, "accept failed; retrying on the next tick");
            }
            self.accept_rearm.push(i);
            return;
        }
        self.arm_accept(i);
        let fd = result;
        let ip = ip_of(&self.accept_addrs[i].0);
        let config = self.shared.config.clone();
        let policy = config.source_policy(ip);
        self.session_counter += 1;
        let session_id = (self.id as u64) << 48 | self.session_counter;
        let auth = (policy.allow_auth && !self.shared.users.is_empty()).then(|| self.shared.users.clone());
        let immediate_tls = config.listeners.get(i).is_some_and(|a| config.immediate_tls.contains(a));
        let starttls = self.shared.tls.is_some() && policy.allow_starttls && !immediate_tls;
        let auth_blocked = auth.is_some() && self.auth_failures_over(ip, policy.max_auth_failure_rate, 0);
        let mut session = Session::new(
            SessionPolicy {
                host_name: config.host_name.clone(),
                relay_allowed: policy.always_allow_relaying,
                smtp_service: policy.smtp_service,
                max_message_size: policy.max_message_size,
                max_rcpt_per_message: policy.max_rcpt_per_message,
                add_received_header: policy.add_received_header,
                hide_message_source: policy.hide_message_source,
                starttls,
                auth,
                require_auth: policy.require_auth,
                auth_needs_tls: policy.require_starttls_before_auth,
                auth_blocked,
                auth_failures_max: policy.max_auth_failure_rate.count,
                restrictions: policy.restrictions.clone(),
                bare_lf: policy.bare_lf,
                long_lines: policy.long_lines,
                suppression: policy
                    .suppression_lists
                    .iter()
                    .filter_map(|n| self.shared.lists.get(n).cloned())
                    .collect(),
                local: [&self.shared.feedback, &self.shared.bounces]
                    .into_iter()
                    .flatten()
                    .map(|p| p.addresses.clone())
                    .collect(),
            },
            ip,
            session_id,
        );
        let count = self.shared.core.inbound_connections.fetch_add(1, Ordering::SeqCst);
        if count >= config.total_max_smtp_in {
            session.too_busy();
        } else if !policy.always_allow_relaying && self.erring_source(ip) {
            session.refuse_erring_source();
        }
        crate::sys::set_nodelay(fd);
        let tls = match (self.shared.tls.as_ref(), immediate_tls) {
            (Some(config), true) => match rustls::ServerConnection::new(config.clone()) {
                Ok(tls) => {
                    session.set_tls();
                    Some(Box::new(tls))
                }
                Err(e) => {
                    tracing::error!(shard = self.id, error = %e, "cannot start TLS");
                    crate::sys::close(fd);
                    self.shared.core.inbound_connections.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            },
            _ => None,
        };
        let inbound = Inbound {
            session,
            client_ip: ip,
            store: None,
            tls,
            plain_len: 0,
            tls_pending: Vec::new(),
            verifying: None,
            reporting: false,
            data_until_ms: None,
        };
        match self.alloc(fd, Kind::In(inbound)) {
            Some(slot) => self.in_drive(slot),
            None => {
                tracing::error!(shard = self.id, "connection slots exhausted");
                self.shared.core.inbound_connections.fetch_sub(1, Ordering::SeqCst);
                crate::sys::close(fd);
            }
        }
    }

    fn on_recv(&mut self, slot: u32, result: i32) {
        let stopping = self.stopping_since_ms.is_some();
        let conn = self.conn_mut(slot);
        let cancelled = std::mem::take(&mut conn.cancelling);
        let inbound = matches!(conn.kind, Kind::In(_));
        if result > 0 {
            conn.in_len += result as usize;
            return if inbound { self.in_drive(slot) } else { self.out_drive(slot) };
        }
        if !inbound {
            let reason = if cancelled {
                "4.4.2 timeout waiting for the server"
            } else {
                "4.4.2 connection closed by the server"
            };
            return self.out_fail(slot, Reply::new(451, reason));
        }
        if result == -libc::ECANCELED || cancelled {
            // Our own cancel: an idle timeout or shutdown. Say why, then close.
            let Kind::In(inb) = &mut conn.kind else { unreachable!() };
            if stopping {
                inb.session.shutdown();
            } else {
                inb.session.timed_out();
            }
            return self.in_drive(slot);
        }
        // The client went away; anything not yet acknowledged is not ours to keep.
        self.close(slot);
    }

    fn on_send(&mut self, slot: u32, result: i32) {
        let conn = self.conn_mut(slot);
        let timed_out = std::mem::take(&mut conn.cancelling);
        if result <= 0 {
            return if matches!(conn.kind, Kind::In(_)) {
                self.close(slot)
            } else if timed_out {
                // The receiver took nothing for the whole reply timeout: a stuck send.
                self.out_fail(slot, Reply::new(451, "4.4.2 timeout sending to the server"))
            } else {
                self.out_fail(slot, Reply::new(451, "4.4.2 connection lost while sending"))
            };
        }
        let sent = result as usize;
        if let Kind::Out(out) = &mut conn.kind {
            if out.phase == OutPhase::Body {
                if !out.body.advance(sent) {
                    return self.submit_body(slot);
                }
                out.phase = OutPhase::Session;
                out.client.body_sent();
                return self.submit_recv(slot, OUT_FINAL_TIMEOUT_MS);
            }
        }
        if !conn.sending.advance(sent) {
            return self.submit_send(slot);
        }
        conn.out.clear();
        if matches!(conn.kind, Kind::In(_)) {
            self.in_drive(slot)
        } else {
            self.out_drive(slot)
        }
    }

    /// Advances an inbound session as far as its input allows, then submits the next op.
    fn in_drive(&mut self, slot: u32) {
        let now = now_ms();
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        if conn.op.is_some() {
            return;
        }
        let Kind::In(inb) = &mut conn.kind else { unreachable!() };
        let mut message = false;
        let mut start_tls = false;
        while inb.store.is_none() {
            // TLS: what arrived after the waiting plaintext is ciphertext; decrypt it in place.
            if let Some(tls) = inb.tls.as_mut() {
                if let Err(e) = tls_decrypt(tls, &mut inb.tls_pending, &mut conn.inbuf, inb.plain_len, &mut conn.in_len)
                {
                    tracing::debug!(shard = self.id, error = %e, "TLS failed; closing");
                    let _ = tls.write_tls(&mut conn.out); // the alert, if any
                    inb.session.shutdown();
                }
                while tls.wants_write() && tls.write_tls(&mut conn.out).is_ok() {}
            }
            let mut consumed = 0;
            loop {
                let (used, event) = inb.session.receive(now, &conn.inbuf[consumed..conn.in_len]);
                consumed += used;
                match event {
                    Some(Event::Message) => {
                        message = true;
                        break;
                    }
                    Some(Event::StartTls) => {
                        start_tls = true;
                        break;
                    }
                    Some(Event::Close) => break,
                    None if used == 0 || consumed == conn.in_len => break,
                    None => {}
                }
            }
            conn.inbuf.copy_within(consumed..conn.in_len, 0);
            conn.in_len -= consumed;
            if start_tls {
                // RFC 3207 §5: anything pipelined after STARTTLS is dropped, never acted on
                // (the 2011 STARTTLS command-injection attacks).
                conn.in_len = 0;
            }
            inb.plain_len = conn.in_len;
            // More plaintext may wait inside rustls (the buffer was full): go round again.
            let more = inb.tls.as_mut().is_some_and(|t| {
                let waiting = t.process_new_packets().is_ok_and(|s| s.plaintext_bytes_to_read() > 0);
                (waiting || (t.wants_read() && !inb.tls_pending.is_empty())) && conn.in_len < conn.inbuf.len()
            });
            if message || start_tls || inb.session.is_closing() || !more {
                break;
            }
        }
        let failures = inb.session.take_auth_failures();
        if failures > 0 {
            let (ip, rate) = (inb.client_ip, self.shared.config.source_policy(inb.client_ip).max_auth_failure_rate);
            if self.auth_failures_over(ip, rate, failures) {
                let conn = self.conns[slot as usize].as_mut().expect("live connection");
                let Kind::In(inb) = &mut conn.kind else { unreachable!() };
                inb.session.block_auth();
            }
        }
        if message {
            // Stores the message, or refuses it (then the reply is in the session's output).
            self.store_message(slot, now);
        }
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        let Kind::In(inb) = &mut conn.kind else { unreachable!() };
        if !inb.session.output().is_empty() {
            match inb.tls.as_mut() {
                Some(tls) => {
                    use std::io::Write;
                    let _ = tls.writer().write_all(inb.session.output());
                    while tls.wants_write() && tls.write_tls(&mut conn.out).is_ok() {}
                }
                None => conn.out.extend_from_slice(inb.session.output()),
            }
            inb.session.clear_output();
        }
        if start_tls {
            // The 220 went out above in plaintext; from here on the bytes are TLS.
            let config = self.shared.tls.clone().expect("STARTTLS is offered only with a certificate");
            match rustls::ServerConnection::new(config) {
                Ok(tls) => {
                    inb.tls = Some(Box::new(tls));
                    inb.plain_len = 0;
                    inb.session.tls_started();
                }
                Err(e) => {
                    tracing::error!(shard = self.id, error = %e, "cannot start TLS");
                    inb.session.shutdown();
                }
            }
        }
        let closing = inb.session.is_closing();
        let in_data = inb.session.is_in_data();
        let storing = inb.store.is_some() || inb.verifying.is_some() || inb.reporting;
        if !conn.out.is_empty() {
            return self.submit_send(slot);
        }
        if storing {
            return; // waiting for the spool
        }
        if closing {
            return self.close(slot);
        }
        let config = &self.shared.config;
        let mut timeout =
            if in_data { config.smtp_data_timeout } else { config.smtp_command_timeout }.as_millis() as u64;
        // The whole DATA phase is bounded too, not only each read: a client trickling its
        // message a byte per read cannot hold the session for ever (slowloris in DATA).
        if in_data {
            let now = now_ms();
            let until = *inb.data_until_ms.get_or_insert(now + timeout * DATA_PHASE_TIMEOUTS);
            timeout = timeout.min(until.saturating_sub(now).max(1));
        } else {
            inb.data_until_ms = None;
        }
        self.submit_recv(slot, timeout);
    }

    /// Whether `ip` ended `SOURCE_ERROR_SESSIONS_MAX` sessions with protocol errors within
    /// `SOURCE_ERROR_WINDOW_S` (on any shard).
    fn erring_source(&self, ip: IpAddr) -> bool {
        self.shared.core.error_sessions.get(ip, mono_s(), SOURCE_ERROR_WINDOW_S) >= SOURCE_ERROR_SESSIONS_MAX
    }

    /// Adds `new` AUTH failures for `ip` (counted for all shards together) and says whether
    /// it is over `smtp-max-auth-failure-rate` within the rate's period.
    fn auth_failures_over(&self, ip: IpAddr, rate: sluice_config::Rate, new: u32) -> bool {
        let window_s = rate.period.as_secs().max(1);
        let counts = &self.shared.core.auth_failures;
        let n = if new > 0 { counts.add(ip, new, mono_s(), window_s) } else { counts.get(ip, mono_s(), window_s) };
        n >= rate.count
    }

    // ---- Spool: accepting a message ---------------------------------------------------

    fn store_message(&mut self, slot: u32, now: u64) {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        let gen = conn.gen;
        let Kind::In(inb) = &mut conn.kind else { unreachable!() };
        let mut m = inb.session.take_message();
        let config = &self.shared.config;
        // An authenticated session takes its user's named source (`{auth}`).
        let user_source =
            m.auth_user.as_deref().and_then(|u| self.shared.users.get(u)).and_then(|u| config.named_source(&u.source));
        let policy = user_source.unwrap_or_else(|| config.source_policy(inb.client_ip));
        let vmta = match select_vmta(config, policy, inb.client_ip, &mut m.data) {
            Ok(v) => v,
            Err(reply) => {
                inb.session.message_refused(&reply);
                return;
            }
        };
        if !inb.session.restrictions().vmta_allowed(&vmta) {
            let reply = format!("550 5.7.1 Virtual MTA `{vmta}` is not allowed for this sender (allowed-virtual-mta)");
            inb.session.message_refused(&reply);
            return;
        }
        if policy.process_x_job {
            let job = take_header(&mut m.data, &policy.jobid_header, !policy.retain_x_job);
            m.job_id = job.map(|j| j.trim().chars().take(JOB_ID_CHARS_MAX).collect()).unwrap_or_default();
        }
        // Reports to the feedback-loop and bounce processors: taken here as `f` / `rb`
        // records, never relayed.
        let shared = if self.shared.feedback.is_some() || self.shared.bounces.is_some() {
            Some(self.shared.clone())
        } else {
            None // the common case: no Arc traffic per message
        };
        let processors = shared.as_ref().map(|s| [(&s.feedback, true), (&s.bounces, false)]);
        let mut suppress_add = None;
        for (processor, feedback) in processors.into_iter().flatten() {
            let shared = shared.as_ref().expect("processors come from it");
            let Some(p) = processor else { continue };
            let (reports, rest): (Vec<String>, Vec<String>) =
                m.recipients.iter().cloned().partition(|r| p.addresses.contains(r));
            if reports.is_empty() {
                continue;
            }
            m.recipients = rest;
            let text = String::from_utf8_lossy(&dkim_unstuffed(&m.data).concat()).into_owned();
            let records = if feedback {
                feedback_records(shared, p, &text, now).map(|(records, add)| {
                    suppress_add = add;
                    records
                })
            } else {
                bounce_records(shared, &text, &reports[0], now)
            };
            match records {
                Some(records) => {
                    let room = ACCT_PENDING_MAX.saturating_sub(self.acct.len());
                    self.acct.extend(records.into_iter().take(room));
                }
                None if p.deliver_unmatched => m.recipients.extend(reports),
                None => tracing::info!(shard = self.id, from = %m.mail_from, feedback, "not a report; dropped"),
            }
        }
        if let Some((path, address)) = suppress_add {
            // The complainer goes into the list's file before the report is acknowledged: a
            // crash never loses a complaint that was answered 250.
            let waiting = m.recipients.is_empty().then_some((self.id, slot, gen));
            match self.shared.core.control.try_send(ControlRequest::SuppressAdd { path, address, waiting }) {
                Ok(()) if waiting.is_some() => {
                    inb.reporting = true;
                    return;
                }
                Ok(()) => {}
                Err(_) if waiting.is_some() => {
                    inb.session.message_refused("451 4.3.0 Cannot record the complaint now, try again later");
                    return;
                }
                Err(_) => {
                    tracing::error!(shard = self.id, "control plane busy: complainer not added to the suppression file")
                }
            }
        }
        if m.recipients.is_empty() {
            inb.session.message_stored(true, "report");
            return;
        }
        if policy.checks_inbound() {
            // SPF/DKIM/DMARC/ARC need DNS: the control plane checks, then `on_verified` goes on.
            let req = crate::VerifyRequest {
                shard: self.id,
                slot,
                gen,
                data: std::mem::take(&mut m.data),
                client_ip: inb.client_ip,
                helo: m.helo.clone(),
                mail_from: m.mail_from.clone(),
                spf: policy.check_spf || policy.check_dmarc,
                dkim: policy.check_dkim || policy.check_dmarc,
                dmarc: policy.check_dmarc,
                arc: policy.check_arc || policy.arc_sign,
                seal: policy.arc_sign,
            };
            match self.shared.core.control.try_send(ControlRequest::Verify(Box::new(req))) {
                Ok(()) => inb.verifying = Some(Box::new((m, vmta))),
                Err(_) => inb.session.message_refused("451 4.3.0 Authentication checks are busy, try again later"),
            }
            return;
        }
        self.spool_message(slot, m, vmta, String::new(), now);
    }

    /// A complaint's suppression entry is on disk (or could not be written): the report's
    /// session gets its reply.
    fn on_report_stored(&mut self, slot: u32, gen: u16, ok: bool) {
        let Some(conn) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()).filter(|c| c.gen == gen) else {
            return;
        };
        let Kind::In(inb) = &mut conn.kind else { return };
        if !std::mem::take(&mut inb.reporting) {
            return;
        }
        if ok {
            inb.session.message_stored(true, "report");
        } else {
            inb.session.message_refused("451 4.3.0 Cannot record the complaint now, try again later");
        }
        self.in_drive(slot);
    }

    /// The authentication checks are done: their headers go on top, then the message is
    /// signed and spooled. A connection gone in the meantime drops it (never acknowledged).
    fn on_verified(&mut self, slot: u32, gen: u16, data: Vec<u8>, headers: Vec<u8>, summary: String) {
        let Some(conn) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()).filter(|c| c.gen == gen) else {
            return;
        };
        let Kind::In(inb) = &mut conn.kind else { return };
        let Some(waiting) = inb.verifying.take() else { return };
        let (mut m, vmta) = *waiting;
        m.data = headers;
        m.data.extend_from_slice(&data);
        self.spool_message(slot, m, vmta, summary, now_ms());
        self.in_drive(slot);
    }

    /// Signs (DKIM) and spools an accepted message; the reply waits for its fsync.
    fn spool_message(
        &mut self,
        slot: u32,
        mut m: sluice_engine::smtp::server::Message,
        vmta: String,
        auth: String,
        now: u64,
    ) {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        let gen = conn.gen;
        let ticket = (gen as u64) << 32 | slot as u64;
        let Kind::In(inb) = &mut conn.kind else { unreachable!() };
        // DKIM: signed once here, before it is spooled, so no delivery attempt signs again.
        if let Some(header) = dkim_signature(&self.shared, &m.recipients, &vmta, &mut m.data) {
            m.data.splice(0..0, header);
        }
        let mut store = Store::boxed(m.data, m.mail_from, m.recipients, now, vmta);
        store.src_mta = format!("{} ({})", m.helo, inb.client_ip);
        store.smtp_user = m.auth_user.unwrap_or_default();
        store.auth_results = auth;
        store.job_id = m.job_id;
        if now < self.spool_broken_until_ms {
            inb.store = Some(store);
            self.spool_refusals.push(slot);
            return;
        }
        let client_ip = inb.client_ip;
        self.spool_write(&mut store, client_ip, ticket, ud(Op::SegWrite, gen, slot as u64));
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        let Kind::In(inb) = &mut conn.kind else { unreachable!() };
        inb.store = Some(store);
    }

    /// Places a message in the active segment and submits its write. Whatever happens, its
    /// `ticket` comes back through the commit: Durable, or Failed (then 452 / retry).
    fn spool_write(&mut self, store: &mut Store, client_ip: IpAddr, ticket: u64, user_data: u64) {
        let now = now_ms();
        let env = Envelope {
            queued_unix_ms: store.queued_unix_ms,
            client_ip,
            mail_from: &store.mail_from,
            envid: "",
            vmta: &store.vmta,
            recipients: store.recipients.iter().map(String::as_str).collect(),
            job_id: &store.job_id,
        };
        store.head = codec::encode_message_head(&env, &store.data);
        store.tail = codec::encode_message_tail(&env);
        let total = (store.head.len() + store.data.len() + store.tail.len()) as u64;
        let placement = self.appender.place(total, ticket);
        store.seq = placement.seg_seq;
        store.offset = placement.offset;
        if placement.new_segment {
            let size = self.appender.segment_bytes_for(total);
            match Segment::create(&self.dir, self.id, placement.seg_seq, size) {
                Ok(seg) => {
                    self.segments.insert(placement.seg_seq, seg);
                }
                Err(e) => {
                    tracing::error!(shard = self.id, error = %e, "cannot create spool segment; answering 452 for a second");
                    self.spool_broken_until_ms = now + 1_000;
                    self.appender.write_completed(placement.seg_seq, ticket, false);
                    return;
                }
            }
        }
        let seg = self.segments[&placement.seg_seq].clone();
        seg.add_live(store.recipients.len() as u64);
        store.written = Resume::of([&store.head, &store.data, &store.tail]);
        self.submit_store_write(store, user_data);
    }

    /// Writes what is left of a placed message to its segment (all of it, or the rest after
    /// a short write).
    fn submit_store_write(&mut self, store: &mut Store, user_data: u64) {
        let fd = self.segments[&store.seq].fd();
        // The store is boxed: these pointers stay valid until the write completes.
        store.iov = store
            .written
            .rest([&store.head, &store.data, &store.tail])
            .map(|p| libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() });
        let entry = opcode::Writev::new(types::Fd(fd), store.iov.as_ptr(), 3)
            .offset(store.offset + store.written.done() as u64)
            .build()
            .user_data(user_data);
        self.push(entry);
    }

    /// A segment write of `store` completed with `result`: Some(ok) when the write is over
    /// (all written, or failed), None when a short write was resubmitted for the rest.
    fn store_write_done(&mut self, store: &mut Store, result: i32, user_data: u64) -> Option<bool> {
        if result > 0 && !store.written.advance(result as usize) {
            self.submit_store_write(store, user_data);
            return None;
        }
        let ok = result > 0 || (result == 0 && store.written.is_done());
        if !ok {
            let left = store.written.left();
            tracing::error!(shard = self.id, result, left, seq = store.seq, "segment write failed");
        }
        Some(ok)
    }

    // ---- Spool: DSNs (RFC 3464) -------------------------------------------------------

    /// Does the message's source want DSNs, and is there a sender to send one to?
    fn wants_dsn(&self, msg: &MsgRef) -> bool {
        let envelope = msg.segment.message(msg.offset).envelope;
        !envelope.mail_from.is_empty() && self.shared.config.source_policy(envelope.client_ip).generate_bounces
    }

    /// Makes the DSN for `failed` recipients of `msg` and spools it; their journal entries
    /// wait for it.
    fn spool_dsn(&mut self, msg: &MsgRef, failed: Vec<(Outcome, dsn::Failed)>) {
        let now = now_ms();
        let view = msg.segment.message(msg.offset);
        self.next_local += 1;
        let id = format!("{:x}.{:x}.{:x}.{:x}", self.id, msg.segment.seq, msg.offset, self.next_local);
        let (outcomes, failed): (Vec<_>, Vec<_>) = failed.into_iter().unzip();
        let data = dsn::build(&dsn::Report {
            reporting_mta: &self.shared.config.host_name,
            sender: view.envelope.mail_from,
            arrival_unix_ms: view.envelope.queued_unix_ms,
            now_unix_ms: now,
            id: &id,
            original: view.data,
            failed: &failed,
        });
        let vmta = if view.envelope.vmta.is_empty() { DEFAULT_VMTA } else { view.envelope.vmta };
        // A DSN has the null sender: nothing bounces back.
        let store = Store::boxed(data, String::new(), vec![view.envelope.mail_from.to_string()], now, vmta.to_string());
        tracing::info!(shard = self.id, to = %store.recipients[0], recipients = failed.len(), "making a DSN");
        let outcomes = outcomes.into_iter().map(|o| (o, msg.segment.clone())).collect();
        self.write_local(LocalMessage { store, outcomes, notify: None });
    }

    fn write_local(&mut self, mut local: LocalMessage) {
        let now = now_ms();
        if now < self.spool_broken_until_ms {
            if let Some(notify) = local.notify.take() {
                let _ = notify.send(Err("the spool cannot take it now (disk full or failing); try again".into()));
                return;
            }
            self.local_retry.push((now + LOCAL_RETRY_MS, local));
            return;
        }
        self.next_local += 1;
        let id = self.next_local;
        let ticket = LOCAL_TICKET | id;
        let client_ip = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED); // made here
        self.spool_write(&mut local.store, client_ip, ticket, ud(Op::LocalWrite, 0, id));
        self.local.insert(id, local);
    }

    fn on_local_write(&mut self, id: u64, result: i32) {
        let mut local = self.local.remove(&id).expect("write belongs to a local message");
        let done = self.store_write_done(&mut local.store, result, ud(Op::LocalWrite, 0, id));
        let seq = local.store.seq;
        self.local.insert(id, local);
        if let Some(ok) = done {
            self.appender.write_completed(seq, LOCAL_TICKET | id, ok);
        }
    }

    /// The spool answered for a DSN: durable, it is queued for delivery and the bounces it
    /// reports are journaled; refused, it is offered again shortly.
    fn local_stored(&mut self, id: u64, durable: bool) {
        let mut local = self.local.remove(&id).expect("a local message for the ticket");
        let segment = self.segments.get(&local.store.seq).cloned();
        match (durable, segment) {
            (true, Some(seg)) => {
                if let Some(notify) = local.notify.take() {
                    self.received(&local.store);
                    let _ = notify.send(Ok(format!("{:x}.{:x}.{:x}", self.id, local.store.seq, local.store.offset)));
                }
                for (o, s) in &local.outcomes {
                    self.jnl_pending.extend_from_slice(&codec::encode_outcome(o));
                    self.jnl_pending_segments.push(s.clone());
                }
                let store = local.store;
                let msg = MsgRef { segment: seg, offset: store.offset };
                let rcpts = store.recipients.iter().enumerate().map(|(i, r)| (i as u32, r.as_str()));
                let size = store.data.len() as u64;
                let template = job_template(msg, &store.mail_from, store.queued_unix_ms, size, 1, &store.job_id);
                for (domain, vmta, job) in group_jobs(&template, &store.vmta, rcpts) {
                    self.dispatch(domain, vmta, job);
                }
            }
            (_, segment) => {
                if let Some(seg) = segment {
                    self.cancel_refused(&seg, local.store.offset, local.store.recipients.len());
                }
                if let Some(notify) = local.notify.take() {
                    let _ = notify.send(Err("the spool write failed (disk full or failing); try again".into()));
                    return;
                }
                self.local_retry.push((now_ms() + LOCAL_RETRY_MS, local));
            }
        }
    }

    /// A message is durable: its `r` records and the counters.
    fn received(&mut self, store: &Store) {
        let size = store.data.len() as u64;
        let stats = &self.shared.core.stats[self.id as usize];
        ShardStats::add(&stats.msgs_in, 1);
        ShardStats::add(&stats.rcpts_in, store.recipients.len() as u64);
        ShardStats::add(&stats.bytes_in, size);
        let headers = acct_header_values(&self.shared.config, &store.data);
        for rcpt in &store.recipients {
            if self.acct.len() < ACCT_PENDING_MAX {
                let received = sluice_engine::acct::Received {
                    orig: &store.mail_from,
                    src_mta: &store.src_mta,
                    size,
                    vmta: &store.vmta,
                    smtp_user: &store.smtp_user,
                    auth_results: &store.auth_results,
                    job_id: &store.job_id,
                };
                let mut r = Record::received(store.queued_unix_ms, rcpt, &received);
                r.headers.clone_from(&headers);
                self.acct.push(r);
            }
        }
    }

    /// A message injected over HTTP: signed, spooled like a DSN, and answered once durable.
    fn inject(&mut self, inj: Injection) {
        let now = now_ms();
        let mut data = inj.data;
        let config = self.shared.config.clone();
        let vmta = match select_vmta(&config, config.source_policy(inj.client_ip), inj.client_ip, &mut data) {
            Ok(v) => v,
            Err(reply) => {
                let _ = inj.done.send(Err(reply));
                return;
            }
        };
        if let Some(header) = dkim_signature(&self.shared, &inj.recipients, &vmta, &mut data) {
            data.splice(0..0, header);
        }
        let mut store = Store::boxed(data, inj.mail_from, inj.recipients, now, vmta);
        store.src_mta = inj.src_mta;
        store.job_id = inj.job_id;
        self.write_local(LocalMessage { store, outcomes: Vec::new(), notify: Some(inj.done) });
    }

    fn on_seg_write(&mut self, gen: u16, slot: u32, result: i32) {
        let conn = self.conns[slot as usize].as_mut().expect("storing connection is live");
        assert_eq!(conn.gen, gen);
        let Kind::In(inb) = &mut conn.kind else { unreachable!() };
        let mut store = inb.store.take().expect("write belongs to a store");
        let done = self.store_write_done(&mut store, result, ud(Op::SegWrite, gen, slot as u64));
        let seq = store.seq;
        let Kind::In(inb) = &mut self.conn_mut(slot).kind else { unreachable!() };
        inb.store = Some(store);
        if let Some(ok) = done {
            let ticket = (gen as u64) << 32 | slot as u64;
            self.appender.write_completed(seq, ticket, ok);
        }
    }

    /// Submits due fdatasyncs and answers clients whose messages are now durable or failed.
    fn commit_spool(&mut self) {
        let mut seqs = Vec::new();
        self.appender.poll_syncs(&mut seqs);
        let sync = self.shared.config.spool_sync;
        let mut tickets = std::mem::take(&mut self.tickets);
        for seq in seqs {
            match (sync, self.segments.get(&seq)) {
                (true, Some(seg)) => {
                    let entry = opcode::Fsync::new(types::Fd(seg.fd()))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data(ud(Op::SegSync, 0, seq));
                    self.push(entry);
                }
                // `spool-sync no` (benchmarks only): written counts as durable.
                _ => self.appender.sync_completed(seq, true, &mut tickets),
            }
        }
        let mut closed = Vec::new();
        self.appender.reap(&mut tickets, &mut closed);
        for (ticket, result) in tickets.drain(..) {
            if ticket & LOCAL_TICKET != 0 {
                self.local_stored(ticket & !LOCAL_TICKET, result == TicketResult::Durable);
                continue;
            }
            let slot = (ticket & 0xffff_ffff) as u32;
            assert_eq!(
                self.conns[slot as usize].as_ref().map(|c| c.gen as u64),
                Some(ticket >> 32),
                "ticket for a live connection"
            );
            self.stored(slot, result == TicketResult::Durable);
        }
        for slot in std::mem::take(&mut self.spool_refusals) {
            self.stored(slot, false);
        }
        self.tickets = tickets;
        for seq in closed {
            if let Some(seg) = self.segments.remove(&seq) {
                seg.seal();
            }
        }
    }

    /// The spool answered for the message on `slot`.
    fn stored(&mut self, slot: u32, durable: bool) {
        let conn = self.conns[slot as usize].as_mut().expect("storing connection is live");
        let Kind::In(inb) = &mut conn.kind else { unreachable!() };
        let store = inb.store.take().expect("a store in progress");
        let segment = self.segments.get(&store.seq).cloned();
        let queue_id = format!("{:x}.{:x}.{:x}", self.id, store.seq, store.offset);
        inb.session.message_stored(durable, &queue_id);
        let store = *store;
        if let Some(seg) = segment {
            if durable {
                self.received(&store);
                let msg = MsgRef { segment: seg, offset: store.offset };
                let rcpts = store.recipients.iter().enumerate().map(|(i, r)| (i as u32, r.as_str()));
                let size = store.data.len() as u64;
                for (domain, vmta, job) in group_jobs(
                    &job_template(msg, &store.mail_from, store.queued_unix_ms, size, 1, &store.job_id),
                    &store.vmta,
                    rcpts,
                ) {
                    self.dispatch(domain, vmta, job);
                }
            } else {
                self.cancel_refused(&seg, store.offset, store.recipients.len());
            }
        }
        let Kind::In(inb) = &mut self.conn_mut(slot).kind else { unreachable!() };
        inb.session.recycle_data_buffer(store.data);
        self.in_drive(slot);
    }

    /// A message the spool refused (its write or fsync failed) may be on disk all the same,
    /// whole: its recipients are journaled as finished, so a restart does not deliver what its
    /// client was told to send again (the segment goes once those entries are durable, as
    /// for delivered mail). Found by `tests/crash_kill9.rs` with `SLUICE_FAULTS`.
    fn cancel_refused(&mut self, seg: &Arc<Segment>, offset: u64, recipients: usize) {
        for rcpt in 0..recipients as u32 {
            let o = Outcome { seg_shard: seg.shard, seg_seq: seg.seq, offset, rcpt };
            self.jnl_pending.extend_from_slice(&codec::encode_outcome(&o));
            self.jnl_pending_segments.push(seg.clone());
        }
    }

    /// Hands a job to the shard that owns its domain. When the owner's mailbox is full the
    /// job waits in this shard's outbox (never spin: two shards full of each other's work
    /// would wait forever).
    fn dispatch(&mut self, domain: String, vmta: String, job: Job<MsgRef>) {
        let domain = self.shared.config.queue_domain(&domain);
        let owner = owner_shard(&domain, self.shards);
        if owner == self.id {
            return self.enqueue(domain, vmta, job);
        }
        self.outbox.push((owner, ShardMsg::Job { domain, vmta, job }));
    }

    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.outbox);
        for (owner, msg) in pending {
            if let Err(back) = self.shared.core.mailboxes[owner as usize].send(msg) {
                self.outbox.push((owner, back));
            }
        }
    }

    fn drain_mailbox(&mut self) {
        let me = self.id as usize;
        while let Some(msg) = self.shared.core.mailboxes[me].pop() {
            match msg {
                ShardMsg::Job { domain, vmta, job } => self.enqueue(domain, vmta, job),
                ShardMsg::Resolved { domain, resolution, ttl_ms, rollup } => {
                    self.on_resolved(domain, resolution, ttl_ms, rollup)
                }
                ShardMsg::Verified { slot, gen, data, headers, summary } => {
                    self.on_verified(slot, gen, data, headers, summary)
                }
                ShardMsg::Admin(cmd, reply) => {
                    let answer = self.admin(cmd);
                    let _ = reply.send(answer);
                }
                ShardMsg::Reload(shared) => self.reload(shared),
                ShardMsg::ReportStored { slot, gen, ok } => self.on_report_stored(slot, gen, ok),
                ShardMsg::Inject(injection) => self.inject(*injection),
            }
        }
    }

    // ---- Delivery queues --------------------------------------------------------------

    /// The queue `domain/vmta`, created on first use.
    fn queue_for(&mut self, domain: &str, vmta: &str) -> (String, &mut QueueState) {
        let key = format!("{domain}/{vmta}");
        if !self.queues.contains_key(&key) {
            let config = &self.shared.config;
            let settings = config.queue_settings(domain, vmta);
            let patterns = settings.pattern_list.as_ref().and_then(|n| config.pattern_lists.get(n).cloned());
            let st = QueueState {
                q: Queue::new(domain, vmta, settings)
                    .with_bounce_patterns(config.bounce_patterns.clone())
                    .with_patterns(patterns),
                hops: HopState::Unknown,
                idle: Vec::new(),
                rotation: 0,
                connect_failures: 0,
                connect_backoff_until_ms: 0,
                parked: ParkedList::new(self.dir.clone()),
            };
            let mut st = st;
            if self.paused_queues.iter().any(|s| s.matches(domain, vmta)) {
                st.q.set_paused(true);
                st.q.take_events(); // paused from birth: no mode change to report
            }
            self.queues.insert(key.clone(), st);
        }
        let st = self.queues.get_mut(&key).expect("inserted above");
        (key, st)
    }

    fn enqueue(&mut self, domain: String, vmta: String, job: Job<MsgRef>) {
        tracing::trace!(shard = self.id, %domain, %vmta, rcpts = job.rcpts.len(), "enqueue");
        // A paused job's new mail is held with the rest of it. (A deleted job's mail that
        // arrives later is new mail: only recipients out on a connection at the time of the
        // delete are deleted when they come back, in `settle`.)
        if !job.job_id.is_empty() && self.paused_jobs.contains(&job.job_id) {
            return self.held.push((domain, vmta, job));
        }
        let (key, st) = self.queue_for(&domain, &vmta);
        if st.q.jobs() >= QUEUE_WINDOW || !st.parked.is_empty() {
            st.parked.push_back(Parked {
                rcpts: job.rcpts.iter().map(|r| r.index).collect(),
                attempts: job.attempts,
                size: job.size,
                queued_unix_ms: job.queued_unix_ms,
                msg: job.msg,
            });
        } else {
            st.q.push(job);
        }
        self.dirty.push(key);
    }

    /// Moves parked jobs into the queue's window while it is below half full (a paused job's
    /// go to the held list instead).
    fn unpark(&mut self, key: &str) {
        let Some(st) = self.queues.get_mut(key) else { return };
        if st.parked.is_empty() || st.q.jobs() >= QUEUE_WINDOW / 2 {
            return;
        }
        // At most `UNPARK_BATCH` a turn: reading them back from the spool is the shard's time.
        let room = (QUEUE_WINDOW - st.q.jobs()).min(UNPARK_BATCH);
        let (domain, vmta) = (st.q.domain.clone(), st.q.vmta.clone());
        let mut held = Vec::new();
        for _ in 0..room {
            let Some(p) = st.parked.pop_front() else { break };
            let job = job_of(&p);
            if !job.job_id.is_empty() && self.paused_jobs.contains(&job.job_id) {
                held.push((domain.clone(), vmta.clone(), job));
            } else {
                st.q.push(job);
            }
        }
        self.held.extend(held);
    }

    /// Takes the parked jobs `pred` picks, whole (delete, pause a job).
    fn take_parked_where(&mut self, key: &str, mut pred: impl FnMut(&Job<MsgRef>) -> bool) -> Vec<Job<MsgRef>> {
        let Some(st) = self.queues.get_mut(key) else { return Vec::new() };
        st.parked.take_where(|p| pred(&job_of(p))).iter().map(job_of).collect()
    }

    fn requeue(&mut self, key: &str, job: Job<MsgRef>) {
        if let Some(st) = self.queues.get_mut(key) {
            st.q.push(job);
        }
    }

    fn pump(&mut self, domain: &str) {
        let now = now_ms();
        if self.stopping_since_ms.is_some() {
            return;
        }
        let startup = self.shared.config.startup(now.saturating_sub(self.shared.core.started_unix_ms));
        self.unpark(domain);
        let Some(st) = self.queues.get_mut(domain) else { return };
        match startup {
            // `startup-delivery-delay`: mail waits; the tick pumps again.
            sluice_config::Startup::Delaying { .. } => return,
            sluice_config::Startup::Ramping { share } => st.q.set_ramp(share),
            sluice_config::Startup::Running => st.q.set_ramp(1.0),
        }
        st.q.promote_due(now);
        loop {
            let Some(st) = self.queues.get_mut(domain) else { return };
            if !st.q.has_work() {
                break;
            }
            let Some(slot) = st.idle.pop() else { break };
            let Some(Kind::Out(out)) = self.conns[slot as usize].as_ref().map(|c| &c.kind) else { unreachable!() };
            if !self.rate_grant(domain, out.source_ip, Grant::Message) {
                self.queues.get_mut(domain).expect("exists").idle.push(slot);
                break; // rate-limited: the tick pumps again
            }
            let job = self.queues.get_mut(domain).expect("exists").q.take().expect("ready job");
            self.start_txn(slot, job);
        }
        let Some(st) = self.queues.get_mut(domain) else { return };
        tracing::trace!(shard = self.id, %domain, ready = st.q.ready_jobs(), connections = st.q.connections, "pump");
        if !st.q.wants_connection() {
            return;
        }
        let expired = match &st.hops {
            HopState::Ready { expires_ms, .. }
            | HopState::RolledUp { expires_ms, .. }
            | HopState::Failed { expires_ms, .. } => now >= *expires_ms,
            _ => false,
        };
        if expired {
            st.hops = HopState::Unknown;
        }
        match &st.hops {
            HopState::Unknown => {
                let static_hosts = st.q.settings.smtp_hosts.clone();
                if let Some(levels) = static_hosts.as_ref().and_then(|l| literal_hops(l)) {
                    st.hops = HopState::Ready { levels, expires_ms: u64::MAX };
                    return self.pump(domain);
                }
                st.hops = HopState::Resolving;
                let req = ControlRequest::Resolve { shard: self.id, domain: st.q.domain.clone(), static_hosts };
                if self.shared.core.control.try_send(req).is_err() {
                    // Control plane busy: ask again on the next tick.
                    st.hops = HopState::Unknown;
                }
            }
            HopState::Resolving => {}
            HopState::Ready { .. } if now < st.connect_backoff_until_ms => {}
            HopState::Ready { levels, .. } => {
                let levels = levels.clone();
                while self.queues.get(domain).is_some_and(|st| st.q.wants_connection()) {
                    if !self.open_connection(domain, &levels) {
                        break; // a limit says not now; the tick pumps again
                    }
                }
            }
            HopState::RolledUp { into, .. } => {
                let (into, vmta) = (into.clone(), st.q.vmta.clone());
                for job in st.q.take_ready() {
                    self.dispatch(into.clone(), vmta.clone(), job);
                }
            }
            HopState::Failed { resolution, .. } => {
                let reply = match resolution {
                    Resolution::Permanent(r) | Resolution::Temporary(r) => r.clone(),
                    Resolution::Hops(_) => unreachable!("hops are Ready"),
                };
                self.fail_ready(domain, &reply, &AttemptInfo::default());
            }
        }
    }

    /// Every ready job of the queue gets `reply`: a bounce for 5xx, a deferral for 4xx.
    fn fail_ready(&mut self, domain: &str, reply: &Reply, info: &AttemptInfo) {
        while let Some(job) = self.queues.get_mut(domain).and_then(|st| st.q.take()) {
            let replies = vec![reply.clone(); job.rcpts.len()];
            self.settle(domain, job, &replies, info);
        }
        // Not a reply from a host on a connection: nothing to skip or disable.
        if let Some(st) = self.queues.get_mut(domain) {
            st.q.take_avoid();
        }
    }

    /// A resolution applies to every queue of that domain (one per VMTA).
    fn on_resolved(&mut self, domain: String, resolution: Resolution, ttl_ms: u64, rollup: Option<String>) {
        let now = now_ms();
        let hops = |resolution: &Resolution| match resolution {
            Resolution::Hops(_) if rollup.is_some() => {
                HopState::RolledUp { into: rollup.clone().expect("checked"), expires_ms: now + ttl_ms.max(1_000) }
            }
            Resolution::Hops(levels) if levels.iter().any(|l| !l.is_empty()) => {
                HopState::Ready { levels: levels.clone(), expires_ms: now + ttl_ms.max(1_000) }
            }
            Resolution::Hops(_) => HopState::Failed {
                resolution: Resolution::Temporary(Reply::new(451, "4.4.4 no address found for the next hop")),
                expires_ms: now + RESOLVE_FAILURE_TTL_MS,
            },
            other => HopState::Failed {
                resolution: other.clone(),
                expires_ms: now + RESOLVE_FAILURE_TTL_MS.min(ttl_ms.max(1_000)),
            },
        };
        for (key, st) in self.queues.iter_mut().filter(|(_, st)| st.q.domain == domain) {
            st.hops = hops(&resolution);
            self.dirty.push(key.clone());
        }
    }

    /// Records outcomes: accounting for all, a journal entry for final ones.
    fn settle(&mut self, domain: &str, job: Job<MsgRef>, replies: &[Reply], info: &AttemptInfo) {
        let now = now_ms();
        let msg = job.msg.clone();
        let (job_id, size) = (job.job_id.clone(), job.size);
        let st = self.queues.get_mut(domain).expect("a settled job's queue exists");
        let outcomes = st.q.settle(job, replies, info, sluice_engine::time::Now::at_ms(now));
        let stats = &self.shared.core.stats[self.id as usize];
        let count = |kind: RecordKind| outcomes.iter().filter(|(_, _, r)| r.kind == kind).count() as u64;
        let delivered = count(RecordKind::Delivered);
        if delivered > 0 {
            ShardStats::add(&stats.msgs_out, 1);
            ShardStats::add(&stats.rcpts_out, delivered);
            ShardStats::add(&stats.bytes_out, size);
        }
        ShardStats::add(&stats.rcpts_bounced, count(RecordKind::Bounced));
        ShardStats::add(&stats.rcpts_deferred, count(RecordKind::Transient));
        let action = st.q.take_queue_action();
        self.queue_events(domain, now);
        self.log_attempt(domain, info, &outcomes, now);
        let mut dsn_wanted = None;
        let mut failed = Vec::new();
        let headers = match self.shared.config.acct_headers.is_empty() {
            true => Vec::new(),
            false => acct_header_values(&self.shared.config, msg.segment.message(msg.offset).data),
        };
        for (rcpt, fate, mut record) in outcomes {
            record.headers.clone_from(&headers);
            if fate == Fate::Final {
                let o = Outcome {
                    seg_shard: msg.segment.shard,
                    seg_seq: msg.segment.seq,
                    offset: msg.offset,
                    rcpt: rcpt.index,
                };
                if record.kind == RecordKind::Bounced && *dsn_wanted.get_or_insert_with(|| self.wants_dsn(&msg)) {
                    // Journaled once the DSN reporting it is durable.
                    let expired = record.bounce_cat == "message-expired";
                    failed.push((
                        o,
                        dsn::Failed {
                            rcpt: record.rcpt.clone(),
                            status: if expired { "5.4.7".into() } else { record.dsn_status.clone() },
                            diagnostic: record.dsn_diag.trim_start_matches("smtp;").to_string(),
                            remote_mta: info.mx_host.clone(),
                        },
                    ));
                } else {
                    self.jnl_pending.extend_from_slice(&codec::encode_outcome(&o));
                    self.jnl_pending_segments.push(msg.segment.clone());
                }
            }
            if self.acct.len() < ACCT_PENDING_MAX {
                self.acct.push(record);
            }
        }
        if !failed.is_empty() {
            self.spool_dsn(&msg, failed);
        }
        if let Some(action) = action {
            self.apply_queue_action(domain, action, info);
        }
        if !job_id.is_empty() && (self.paused_jobs.contains(&job_id) || self.cancelled_jobs.contains_key(&job_id)) {
            // Deferred recipients of a paused or cancelled job come back here: hold or delete.
            let st = self.queues.get_mut(domain).expect("exists");
            let (d, v) = (st.q.domain.clone(), st.q.vmta.clone());
            let back: Vec<Initial> =
                st.q.take_where(|j| j.job_id == job_id).into_iter().map(|j| (d.clone(), v.clone(), j)).collect();
            if self.cancelled_jobs.contains_key(&job_id) {
                self.delete_jobs(back);
            } else {
                self.held.extend(back);
            }
        }
    }

    /// One log line per outcome of an attempt: delivered at debug; deferred and bounced at
    /// info, within the shard's log budget (a storm of failures cannot flood the log).
    fn log_attempt(&mut self, queue: &str, info: &AttemptInfo, outcomes: &[(Recipient, Fate, Record)], now: u64) {
        let host = hop_text(info);
        for kind in [RecordKind::Delivered, RecordKind::Transient, RecordKind::Bounced] {
            let mut of_kind = outcomes.iter().filter(|(_, _, r)| r.kind == kind);
            let Some((_, _, first)) = of_kind.next() else { continue };
            let rcpts = 1 + of_kind.count();
            let reply = first.dsn_diag.trim_start_matches("smtp;");
            match kind {
                RecordKind::Delivered => {
                    tracing::debug!(shard = self.id, %queue, %host, rcpts, %reply, "delivered")
                }
                RecordKind::Transient if self.log_limit.allow(now) => {
                    tracing::info!(shard = self.id, %queue, %host, rcpts, %reply, "deferred")
                }
                RecordKind::Bounced if self.log_limit.allow(now) => {
                    let category = first.bounce_cat.as_str();
                    tracing::info!(shard = self.id, %queue, %host, rcpts, %reply, %category, "bounced")
                }
                _ => {}
            }
        }
    }

    // ---- Operator control ---------------------------------------------------------------

    fn admin(&mut self, cmd: AdminCmd) -> AdminReply {
        let now = now_ms();
        let matching = |shard: &Shard, sel: &Selector| -> Vec<String> {
            shard
                .queues
                .iter()
                .filter(|(_, st)| sel.matches(&st.q.domain, &st.q.vmta))
                .map(|(k, _)| k.clone())
                .collect()
        };
        let affected = match cmd {
            AdminCmd::Snapshot => return AdminReply::Snapshot(self.snapshot()),
            AdminCmd::Pause(sel) => {
                if !self.paused_queues.contains(&sel) {
                    self.paused_queues.push(sel);
                }
                self.apply_pauses(now)
            }
            AdminCmd::Resume(sel) => {
                self.paused_queues.retain(|p| !(p == &sel || sel.matches(&p.domain, &p.vmta)));
                self.apply_pauses(now)
            }
            AdminCmd::Schedule(sel) => {
                let keys = matching(self, &sel);
                for key in &keys {
                    let st = self.queues.get_mut(key).expect("listed");
                    st.q.retry_now();
                    st.connect_failures = 0;
                    st.connect_backoff_until_ms = 0;
                    if matches!(st.hops, HopState::Failed { .. }) {
                        st.hops = HopState::Unknown;
                    }
                    self.dirty.push(key.clone());
                }
                keys.len() as u64
            }
            AdminCmd::SetMode(sel, backoff) => {
                let keys = matching(self, &sel);
                for key in &keys {
                    self.queues.get_mut(key).expect("listed").q.set_mode(backoff, now);
                    self.queue_events(key, now);
                    self.dirty.push(key.clone());
                }
                keys.len() as u64
            }
            AdminCmd::Delete(sel) => {
                let mut jobs = Vec::new();
                for key in matching(self, &sel) {
                    let st = self.queues.get_mut(&key).expect("listed");
                    let (d, v) = (st.q.domain.clone(), st.q.vmta.clone());
                    jobs.extend(st.q.take_where(|_| true).into_iter().map(|j| (d.clone(), v.clone(), j)));
                    jobs.extend(self.take_parked_where(&key, |_| true).into_iter().map(|j| (d.clone(), v.clone(), j)));
                }
                let (held, kept): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.held).into_iter().partition(|(d, v, _)| sel.matches(d, v));
                self.held = kept;
                jobs.extend(held);
                let n = jobs.iter().map(|(_, _, j)| j.rcpts.len() as u64).sum();
                self.delete_jobs(jobs);
                n
            }
            AdminCmd::PauseJob(id) => {
                self.paused_jobs.insert(id.clone());
                let mut n = 0;
                let keys: Vec<String> = self.queues.keys().cloned().collect();
                for key in keys {
                    let parked = self.take_parked_where(&key, |j| j.job_id == id);
                    let st = self.queues.get_mut(&key).expect("listed");
                    let (d, v) = (st.q.domain.clone(), st.q.vmta.clone());
                    for job in st.q.take_where(|j| j.job_id == id).into_iter().chain(parked) {
                        n += job.rcpts.len() as u64;
                        self.held.push((d.clone(), v.clone(), job));
                    }
                }
                if n > 0 {
                    tracing::info!(shard = self.id, job = %id, recipients = n, "job paused");
                }
                n
            }
            AdminCmd::ResumeJob(id) => {
                self.paused_jobs.remove(&id);
                let (back, kept): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.held).into_iter().partition(|(_, _, j)| j.job_id == id);
                self.held = kept;
                let n = back.iter().map(|(_, _, j)| j.rcpts.len() as u64).sum();
                for (domain, vmta, job) in back {
                    self.enqueue(domain, vmta, job);
                }
                n
            }
            AdminCmd::DeleteJob(id) => {
                self.paused_jobs.remove(&id);
                // A transaction in flight ends within its timeouts; until then, what comes
                // back of the job is deleted.
                self.cancelled_jobs.insert(id.clone(), now + OUT_CONNECT_TIMEOUT_MS + OUT_FINAL_TIMEOUT_MS);
                let mut jobs = Vec::new();
                let keys: Vec<String> = self.queues.keys().cloned().collect();
                for key in keys {
                    let parked = self.take_parked_where(&key, |j| j.job_id == id);
                    let st = self.queues.get_mut(&key).expect("listed");
                    let (d, v) = (st.q.domain.clone(), st.q.vmta.clone());
                    let taken = st.q.take_where(|j| j.job_id == id).into_iter().chain(parked);
                    jobs.extend(taken.map(|j| (d.clone(), v.clone(), j)));
                }
                let (held, kept): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.held).into_iter().partition(|(_, _, j)| j.job_id == id);
                self.held = kept;
                jobs.extend(held);
                let n = jobs.iter().map(|(_, _, j)| j.rcpts.len() as u64).sum();
                self.delete_jobs(jobs);
                n
            }
        };
        AdminReply::Affected(affected)
    }

    /// Sets each queue's paused flag from the selectors; returns how many changed.
    fn apply_pauses(&mut self, now: u64) -> u64 {
        let mut changed = Vec::new();
        for (key, st) in self.queues.iter_mut() {
            let paused = self.paused_queues.iter().any(|s| s.matches(&st.q.domain, &st.q.vmta));
            if st.q.paused() != paused {
                st.q.set_paused(paused);
                changed.push(key.clone());
            }
        }
        for key in &changed {
            self.queue_events(key, now);
            self.dirty.push(key.clone());
        }
        changed.len() as u64
    }

    /// An operator deleted these jobs: a `b` record for each recipient, and a journal entry
    /// (they are final; no DSN is made).
    fn delete_jobs(&mut self, jobs: Vec<Initial>) {
        let now = now_ms();
        let reply = Reply::new(550, "5.0.0 deleted by an operator");
        let mut n = 0;
        for (domain, vmta, job) in jobs {
            let headers = match self.shared.config.acct_headers.is_empty() {
                true => Vec::new(),
                false => acct_header_values(&self.shared.config, job.msg.segment.message(job.msg.offset).data),
            };
            let (_, st) = self.queue_for(&domain, &vmta);
            let mut records = st.q.deleted_records(&job, &reply, now);
            for r in &mut records {
                r.headers.clone_from(&headers);
            }
            for rcpt in &job.rcpts {
                let o = Outcome {
                    seg_shard: job.msg.segment.shard,
                    seg_seq: job.msg.segment.seq,
                    offset: job.msg.offset,
                    rcpt: rcpt.index,
                };
                self.jnl_pending.extend_from_slice(&codec::encode_outcome(&o));
                self.jnl_pending_segments.push(job.msg.segment.clone());
            }
            n += records.len() as u64;
            let room = ACCT_PENDING_MAX.saturating_sub(self.acct.len());
            self.acct.extend(records.into_iter().take(room));
        }
        ShardStats::add(&self.shared.core.stats[self.id as usize].rcpts_bounced, n);
        if n > 0 {
            tracing::info!(shard = self.id, recipients = n, "recipients deleted by an operator");
        }
    }

    fn snapshot(&self) -> crate::admin::Snapshot {
        let mut jobs: HashMap<String, sluice_engine::queue::Contents> = HashMap::new();
        let mut queues = Vec::with_capacity(self.queues.len());
        for st in self.queues.values() {
            let mut c = st.q.contents(Some(&mut jobs));
            c.merge(&st.parked.totals());
            for (job, parked) in st.parked.per_job() {
                jobs.entry(job.clone()).or_default().merge(parked);
            }
            if c.jobs == 0 && st.q.connections == 0 && !st.q.paused() {
                continue; // emptied; forgotten on the next tick
            }
            let mode = if st.q.paused() {
                "paused"
            } else {
                match st.q.mode() {
                    sluice_engine::queue::Mode::Normal => "normal",
                    sluice_engine::queue::Mode::Backoff { .. } => "backoff",
                }
            };
            let dns = match &st.hops {
                HopState::Unknown => "unknown".to_string(),
                HopState::Resolving => "resolving".to_string(),
                HopState::Ready { levels, .. } => {
                    format!("ready ({} hosts)", levels.iter().map(Vec::len).sum::<usize>())
                }
                HopState::RolledUp { into, .. } => format!("rolled up into {into}"),
                HopState::Failed { resolution: Resolution::Permanent(r) | Resolution::Temporary(r), .. } => {
                    format!("failed: {}", r.line())
                }
                HopState::Failed { .. } => "failed".to_string(),
            };
            queues.push(QueueInfo {
                domain: st.q.domain.clone(),
                vmta: st.q.vmta.clone(),
                shard: self.id,
                jobs: c.jobs,
                rcpts: c.rcpts,
                bytes: c.bytes,
                oldest_unix_ms: c.oldest_unix_ms,
                connections: st.q.connections,
                mode,
                next_retry_unix_ms: st.q.next_retry_ms().unwrap_or(0),
                last_error: st.q.last_error.clone(),
                dns,
            });
        }
        let mut out: Vec<JobInfo> = jobs
            .into_iter()
            .map(|(id, c)| JobInfo { paused: self.paused_jobs.contains(&id), id, rcpts: c.rcpts, bytes: c.bytes })
            .collect();
        for (_, _, job) in &self.held {
            let n = job.rcpts.len() as u64;
            match out.iter_mut().find(|j| j.id == job.job_id) {
                Some(j) => {
                    j.rcpts += n;
                    j.bytes += job.size * n;
                }
                None => out.push(JobInfo { id: job.job_id.clone(), rcpts: n, bytes: job.size * n, paused: true }),
            }
        }
        for id in &self.paused_jobs {
            if !out.iter().any(|j| j.id == *id) {
                out.push(JobInfo { id: id.clone(), paused: true, ..Default::default() });
            }
        }
        let conns_out = self.conns.iter().flatten().filter(|c| matches!(c.kind, Kind::Out(_))).count() as u32;
        crate::admin::Snapshot { queues, jobs: out, conns_out }
    }

    /// A reloaded configuration: sessions and connections go on; queues take their new
    /// settings, and rate cells start afresh from the new rates.
    fn reload(&mut self, shared: Arc<Shared>) {
        self.shared = shared;
        let config = self.shared.config.clone();
        for st in self.queues.values_mut() {
            let settings = config.queue_settings(&st.q.domain, &st.q.vmta);
            let patterns = settings.pattern_list.as_ref().and_then(|n| config.pattern_lists.get(n).cloned());
            st.q.reconfigure(settings, patterns);
        }
        self.queue_cells.clear();
        self.dirty.extend(self.queues.keys().cloned());
        tracing::info!(shard = self.id, queues = self.queues.len(), "configuration reloaded");
    }

    /// Writes the queue's mode and rate changes as `tq` accounting records and log lines.
    fn queue_events(&mut self, key: &str, now: u64) {
        let Some(st) = self.queues.get_mut(key) else { return };
        let vmta = st.q.vmta.clone();
        for diag in st.q.take_events() {
            tracing::info!(shard = self.id, queue = key, change = %diag, "queue mode or rate changed");
            if self.acct.len() < ACCT_PENDING_MAX {
                self.acct.push(Record::queue_event(now, key, &vmta, diag));
            }
        }
    }

    /// `defer-queue` / `bounce-queue` from a pattern: every ready recipient of the queue.
    fn apply_queue_action(&mut self, key: &str, action: QueueAction, info: &AttemptInfo) {
        if self.applying_queue_action {
            return; // the synthetic replies below must not trigger it again
        }
        self.applying_queue_action = true;
        let reply = match action {
            QueueAction::Defer => Reply::new(451, "4.7.0 queue deferred by smtp-pattern-list"),
            QueueAction::Bounce => Reply::new(554, "5.7.0 queue bounced by smtp-pattern-list"),
        };
        tracing::info!(shard = self.id, queue = key, ?action, "pattern action on the whole queue");
        self.fail_ready(key, &reply, info);
        self.applying_queue_action = false;
    }

    // ---- Outbound connections ---------------------------------------------------------

    /// Opens a connection for queue `domain` (its key) unless a limit says not now; returns
    /// whether it did.
    fn open_connection(&mut self, domain: &str, levels: &[Vec<Hop>]) -> bool {
        let config = self.shared.config.clone();
        self.reenable(domain);
        let st = self.queues.get(domain).expect("queue exists");
        let avoided = self.avoided.get(domain);
        let disabled = |v: &str| avoided.is_some_and(|a| a.vmtas.iter().any(|(n, _)| n == v));
        // A pool's members take turns, one per connection (a member held back by its limits
        // loses its turn; one disabled by `disable-source-ip` is passed over).
        let (vmta, pool) = match config.pools.get(&st.q.vmta) {
            Some(members) => {
                let turn = self.pool_rotation.entry(st.q.vmta.clone()).or_insert(0);
                let mut pick = None;
                for _ in 0..members.len() {
                    *turn = turn.wrapping_add(1);
                    let member = &members[*turn % members.len()];
                    if !disabled(member) {
                        pick = Some(member.clone());
                        break;
                    }
                }
                let Some(member) = pick else { return false }; // all disabled: wait
                (member, st.q.vmta.clone())
            }
            None if disabled(&st.q.vmta) => return false,
            None => (st.q.vmta.clone(), String::new()),
        };
        // Hops set aside by `skip-mx`, unless that would leave none.
        let skipped = |addr: &SocketAddr| avoided.is_some_and(|a| a.hops.iter().any(|(h, _)| h == addr));
        let all_skipped = levels.iter().flatten().all(|h| skipped(&h.addr));
        let priority = st.q.settings.queue_priority;
        let settings = config.vmtas.get(&vmta);
        let source_ip = settings.and_then(|v| v.source_ip);
        if !self.rate_grant(domain, source_ip, Grant::Connect) {
            return false;
        }
        let Ok(holds_smtp_out) = self.take_smtp_out(source_ip, priority) else {
            return false;
        };
        let avoided = self.avoided.get(domain);
        let skipped = |addr: &SocketAddr| avoided.is_some_and(|a| a.hops.iter().any(|(h, _)| h == addr));
        let st = self.queues.get_mut(domain).expect("queue exists");
        st.rotation = st.rotation.wrapping_add(1);
        // Preference levels in order; within a level, rotate so connections spread.
        let mut hops = Vec::new();
        for level in levels {
            if level.is_empty() {
                continue;
            }
            let r = st.rotation % level.len();
            let usable = |h: &&Hop| all_skipped || !skipped(&h.addr);
            hops.extend(level[r..].iter().filter(usable).cloned());
            hops.extend(level[..r].iter().filter(usable).cloned());
        }
        st.q.connections += 1;
        let tls_mode = match (st.q.settings.require_starttls, st.q.settings.use_starttls) {
            (true, _) => TlsMode::Required,
            (false, true) => TlsMode::Opportunistic,
            (false, false) => TlsMode::Off,
        };
        let ehlo = settings.and_then(|v| v.host_name.as_deref()).unwrap_or(&config.host_name);
        let out = Outbound {
            queue: domain.to_string(),
            source_ip,
            holds_smtp_out,
            client: {
                let mut c = Client::new(ehlo);
                c.set_tls_mode(tls_mode);
                c
            },
            vmta,
            pool,
            hops,
            hop_index: 0,
            // SAFETY: zeroed storage is valid.
            addr: (unsafe { std::mem::zeroed() }, 0),
            job: None,
            messages_sent: 0,
            phase: OutPhase::Connecting,
            ever_ready: false,
            idle: false,
            leaving: false,
            tls: None,
            plain_len: 0,
            tls_pending: Vec::new(),
            converted: None,
            body: Resume::default(),
            iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2],
            // SAFETY: zeroed msghdr is valid.
            msghdr: unsafe { std::mem::zeroed() },
            info: AttemptInfo::default(),
        };
        match self.alloc(-1, Kind::Out(out)) {
            Some(slot) => {
                self.connect_next(slot);
                true
            }
            None => {
                tracing::error!(shard = self.id, "connection slots exhausted");
                self.queues.get_mut(domain).expect("exists").q.connections -= 1;
                self.release_smtp_out(source_ip, holds_smtp_out);
                false
            }
        }
    }

    /// One grant from the queue's cell, then the source IP's (messages or connections).
    fn rate_grant(&mut self, key: &str, source_ip: Option<IpAddr>, grant: Grant) -> bool {
        let now = mono_ns();
        let Some(st) = self.queues.get(key) else { return false };
        let rate = match grant {
            Grant::Message => st.q.msg_rate(), // backoff-max-msg-rate while backing off
            Grant::Connect => st.q.connect_rate(),
        };
        if let Some(rate) = rate {
            // Looked up by &str first: no allocation per grant on the hot path.
            if !self.queue_cells.contains_key(key) {
                self.queue_cells.insert(key.to_string(), QueueCells::default());
            }
            let cells = self.queue_cells.get_mut(key).expect("inserted above");
            let slot = match grant {
                Grant::Message => &mut cells.msg,
                Grant::Connect => &mut cells.connect,
            };
            // The cell keeps its state when the limit changes (backoff, adaptive rate): a
            // fresh cell would grant at once.
            let (cell, limit) = slot.get_or_insert_with(|| (GcraCell::new(), limit_of(rate)));
            *limit = limit_of(rate);
            if cell.try_acquire(now, *limit).is_err() {
                return false;
            }
        }
        let Some(cells) = source_ip.and_then(|ip| self.shared.core.source_limits.get(&ip)) else { return true };
        let cell = match grant {
            Grant::Message => &cells.msg,
            Grant::Connect => &cells.connect,
        };
        cell.as_ref().is_none_or(|(cell, limit)| cell.try_acquire(now, *limit).is_ok())
    }

    /// Takes a `source-ip-max-smtp-out` place for `source_ip` (Ok(true)), or there is no such
    /// limit (Ok(false)), or it is full or claimed by a higher `queue-priority` (Err). A queue
    /// that finds it full claims the next free place for its priority, across all shards.
    fn take_smtp_out(&self, source_ip: Option<IpAddr>, priority: u8) -> Result<bool, ()> {
        let Some(cells) = source_ip.and_then(|ip| self.shared.core.source_limits.get(&ip)) else { return Ok(false) };
        let Some((count, max)) = cells.smtp_out.as_ref() else { return Ok(false) };
        let now = mono_ns() / 1_000_000;
        let ours = (priority as u64 + 1) << 56;
        let live = |claim: u64| claim & ((1 << 56) - 1) > now;
        let claim = cells.smtp_out_claim.load(Ordering::Acquire);
        if claim >> 56 > ours >> 56 && live(claim) {
            return Err(()); // a higher-priority queue is waiting for this place
        }
        match count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < *max).then_some(n + 1)) {
            Ok(_) => Ok(true),
            Err(_) => {
                let mine = ours | (now + SMTP_OUT_CLAIM_MS);
                let _ = cells.smtp_out_claim.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    (c >> 56 <= ours >> 56 || !live(c)).then_some(mine)
                });
                Err(())
            }
        }
    }

    /// Drops the queue's `skip-mx` and `disable-source-ip` marks whose time is up; a source
    /// IP coming back is written as a `tq` record.
    fn reenable(&mut self, key: &str) {
        let Some(a) = self.avoided.get_mut(key) else { return };
        let now = mono_ns() / 1_000_000;
        a.hops.retain(|(_, until)| *until > now);
        let (kept, back): (Vec<_>, Vec<_>) = std::mem::take(&mut a.vmtas).into_iter().partition(|(_, t)| *t > now);
        a.vmtas = kept;
        if a.hops.is_empty() && a.vmtas.is_empty() {
            self.avoided.remove(key);
        }
        for (vmta, _) in back {
            self.queue_note(key, &vmta, format!("source-ip re-enabled: {vmta} ({})", self.source_ip_text(&vmta)));
        }
    }

    fn source_ip_text(&self, vmta: &str) -> String {
        let ip = self.shared.config.vmtas.get(vmta).and_then(|v| v.source_ip);
        ip.map(|ip| ip.to_string()).unwrap_or_else(|| "default source".into())
    }

    /// A queue event as a `tq` accounting record and a log line.
    fn queue_note(&mut self, key: &str, vmta: &str, diag: String) {
        tracing::info!(shard = self.id, queue = key, change = %diag, "queue routing changed");
        if self.acct.len() < ACCT_PENDING_MAX {
            self.acct.push(Record::queue_event(now_ms(), key, vmta, diag));
        }
    }

    /// Could a recipient refused on this connection go out at once another way: another
    /// next hop not skipped (for `skip-mx`), another pool member not disabled (for
    /// `disable-source-ip`)?
    fn alternatives(&self, key: &str, hop: Option<SocketAddr>, vmta: &str) -> (bool, bool) {
        // No pattern list, no skip-mx or disable-source-ip: nothing to look up per transaction.
        let Some(st) = self.queues.get(key).filter(|st| st.q.has_patterns()) else { return (false, false) };
        let avoided = self.avoided.get(key);
        let other_hop = match &st.hops {
            HopState::Ready { levels, .. } => levels
                .iter()
                .flatten()
                .any(|h| Some(h.addr) != hop && !avoided.is_some_and(|a| a.hops.iter().any(|(s, _)| *s == h.addr))),
            _ => false,
        };
        let other_source = self.shared.config.pools.get(&st.q.vmta).is_some_and(|members| {
            members.iter().any(|m| m != vmta && !avoided.is_some_and(|a| a.vmtas.iter().any(|(d, _)| d == m)))
        });
        (other_hop, other_source)
    }

    /// Applies what the queue's pattern list asked to stop using after a reply on `slot`'s
    /// connection; returns whether it did (the connection then leaves).
    fn apply_avoid(&mut self, slot: u32) -> bool {
        let Some(Kind::Out(out)) = self.conns[slot as usize].as_ref().map(|c| &c.kind) else { return false };
        let key = out.queue.clone();
        let Some(avoid) = self.queues.get_mut(&key).and_then(|st| st.q.take_avoid()) else { return false };
        let (vmta, hop) = (out.vmta.clone(), out.hop_index.checked_sub(1).and_then(|i| out.hops.get(i)).cloned());
        let now = mono_ns() / 1_000_000;
        let skip_ms = self.queues.get(&key).map_or(600_000, |st| {
            st.q.settings.retry_after.first().map_or(600_000, |d| d.as_millis() as u64).clamp(1_000, 3_600_000)
        });
        let entry = self.avoided.entry(key.clone()).or_default();
        let mut notes = Vec::new();
        if let (true, Some(hop)) = (avoid.skip_mx, &hop) {
            entry.hops.retain(|(a, _)| *a != hop.addr);
            entry.hops.push((hop.addr, now + skip_ms));
            notes.push(format!("skip-mx: {} ({}) skipped for {}s", hop.host, hop.addr.ip(), skip_ms / 1000));
        }
        if let Some(d) = avoid.disable_source_ip {
            entry.vmtas.retain(|(v, _)| *v != vmta);
            entry.vmtas.push((vmta.clone(), now + d.as_millis() as u64));
            notes.push(format!("source-ip disabled: {vmta} ({}) for {}s", self.source_ip_text(&vmta), d.as_secs()));
        }
        for note in notes {
            self.queue_note(&key, &vmta, note);
        }
        true
    }

    fn release_smtp_out(&self, source_ip: Option<IpAddr>, held: bool) {
        if !held {
            return;
        }
        let count = source_ip.and_then(|ip| self.shared.core.source_limits.get(&ip)).and_then(|c| c.smtp_out.as_ref());
        if let Some((count, _)) = count {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Connects to the next hop in the list (or fails the connection when none is left).
    fn connect_next(&mut self, slot: u32) {
        let now = now_ms();
        let conn = self.conn_mut(slot);
        if conn.fd >= 0 {
            crate::sys::close(conn.fd); // the failed connect is complete
            conn.fd = -1;
        }
        let Kind::Out(out) = &mut conn.kind else { unreachable!() };
        let Some(hop) = out.hops.get(out.hop_index).cloned() else {
            let reply = Reply::new(451, format!("4.4.1 no answer from any host for {}", out.queue));
            return self.out_fail(slot, reply);
        };
        out.hop_index += 1;
        out.info = AttemptInfo {
            source_ip: String::new(),
            destination_ip: hop.addr.ip().to_string(),
            mx_host: hop.host.clone(),
            esmtp: false,
            vmta: out.vmta.clone(),
            vmta_pool: out.pool.clone(),
            other_hop: false,
            other_source: false,
            tls_protocol: String::new(),
            tls_cipher: String::new(),
            hop: Some(hop.addr),
        };
        out.addr = sockaddr(hop.addr);
        let fd = match crate::sys::tcp_socket(hop.addr) {
            Ok(fd) => fd,
            Err(e) => return self.out_fail(slot, Reply::new(451, format!("4.4.1 cannot create socket: {e}"))),
        };
        if let Some(ip) = out.source_ip {
            // The VMTA's `smtp-source-host`: connect from this address.
            let (addr, len) = sockaddr(SocketAddr::new(ip, 0));
            // SAFETY: bind on our fresh descriptor with a valid address.
            if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_storage).cast(), len) } != 0 {
                let e = std::io::Error::last_os_error();
                crate::sys::close(fd);
                return self.out_fail(slot, Reply::new(451, format!("4.4.1 cannot bind source address {ip}: {e}")));
            }
        }
        conn.fd = fd;
        conn.op = Some(Op::Connect);
        conn.deadline_ms = now + OUT_CONNECT_TIMEOUT_MS;
        let entry =
            opcode::Connect::new(types::Fd(fd), (&out.addr.0 as *const libc::sockaddr_storage).cast(), out.addr.1)
                .build()
                .user_data(ud(Op::Connect, conn.gen, slot as u64));
        self.push(entry);
    }

    fn on_connect(&mut self, slot: u32, result: i32) {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        conn.cancelling = false;
        if result < 0 {
            let Kind::Out(out) = &conn.kind else { unreachable!() };
            tracing::debug!(shard = self.id, domain = %out.queue, errno = -result, "connect failed; trying the next host");
            return self.connect_next(slot);
        }
        let fd = conn.fd;
        let Kind::Out(out) = &mut conn.kind else { unreachable!() };
        tracing::trace!(shard = self.id, domain = %out.queue, "connected");
        out.phase = OutPhase::Session;
        out.info.source_ip = local_ip(fd);
        self.submit_recv(slot, OUT_REPLY_TIMEOUT_MS);
    }

    fn submit_body(&mut self, slot: u32) {
        let now = now_ms();
        let conn = self.conn_mut(slot);
        let Kind::Out(out) = &mut conn.kind else { unreachable!() };
        let data = body_of(&out.converted, &out.job);
        // What is left of the body (from the mapped segment, no copy) and ".\r\n".
        if out.body.is_done() {
            out.body = Resume::of([data, END_OF_DATA]);
        }
        out.iov = out
            .body
            .rest([data, END_OF_DATA])
            .map(|p| libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() });
        out.msghdr.msg_iov = out.iov.as_mut_ptr();
        out.msghdr.msg_iovlen = 2;
        conn.op = Some(Op::Send);
        conn.deadline_ms = now + OUT_REPLY_TIMEOUT_MS;
        let entry = opcode::SendMsg::new(types::Fd(conn.fd), &out.msghdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(ud(Op::Send, conn.gen, slot as u64));
        self.push(entry);
    }

    /// Starts `job` on an idle connection taken from the queue's idle list.
    fn start_txn(&mut self, slot: u32, job: Job<MsgRef>) {
        if self.begin_txn(slot, job) {
            self.out_drive(slot);
        } else {
            self.out_next_work(slot); // bounced for its content: the next job, or idle again
        }
    }

    /// Hands `job` to the connection's client (its commands go to the output). A message
    /// with 8-bit content for a receiver without 8BITMIME (RFC 6152 §3) is converted to
    /// quoted-printable for this transaction, or bounced (`downgrade-8bit bounce`): then
    /// false, and the connection is still ready.
    fn begin_txn(&mut self, slot: u32, job: Job<MsgRef>) -> bool {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        let Kind::Out(out) = &mut conn.kind else { unreachable!() };
        let data = job.msg.segment.message(job.msg.offset).data;
        let mut converted = None;
        if !out.client.capabilities().eight_bit_mime && mime::has_8bit(data) {
            let policy =
                self.queues.get(&out.queue).map_or(Downgrade8bit::QuotedPrintable, |st| st.q.settings.downgrade_8bit);
            if policy == Downgrade8bit::Bounce {
                let (domain, info) = (out.queue.clone(), out.info.clone());
                let reply = Reply::new(
                    554,
                    "5.6.3 8-bit content, and the receiver does not offer 8BITMIME (downgrade-8bit bounce)",
                );
                let replies = vec![reply; job.rcpts.len()];
                self.settle(&domain, job, &replies, &info);
                return false;
            }
            converted = Some(mime::convert_stuffed(data, mime::Convert { eight_bit: true, long_lines: false }));
        }
        out.idle = false;
        let size = converted.as_ref().map_or(job.size, |c| c.len() as u64);
        let rcpts: Vec<&str> = job.rcpts.iter().map(|r| r.address.as_str()).collect();
        out.client.start(&job.mail_from, &rcpts, size);
        out.job = Some(job);
        out.converted = converted;
        out.messages_sent += 1;
        move_client_output(out, &mut conn.out);
        true
    }

    /// Feeds replies to the client machine and acts on its events.
    fn out_drive(&mut self, slot: u32) {
        loop {
            let conn = self.conns[slot as usize].as_mut().expect("live connection");
            if conn.op.is_some() {
                return;
            }
            let Kind::Out(out) = &mut conn.kind else { unreachable!() };
            if let Some(tls) = out.tls.as_mut() {
                let decrypted =
                    tls_decrypt(tls, &mut out.tls_pending, &mut conn.inbuf, out.plain_len, &mut conn.in_len);
                while tls.wants_write() && tls.write_tls(&mut conn.out).is_ok() {}
                if let Err(e) = decrypted {
                    return self.out_fail(slot, Reply::new(451, format!("4.7.5 TLS with the server failed: {e}")));
                }
                if out.info.tls_protocol.is_empty() && !tls.is_handshaking() {
                    (out.info.tls_protocol, out.info.tls_cipher) = crate::tls::describe(tls);
                }
            }
            let (used, event) = out.client.receive(&conn.inbuf[..conn.in_len]);
            conn.inbuf.copy_within(used..conn.in_len, 0);
            conn.in_len -= used;
            out.plain_len = conn.in_len;
            move_client_output(out, &mut conn.out);
            let progressed = used > 0 || event.is_some();
            match event {
                None => {}
                Some(ClientEvent::Ready) => {
                    out.ever_ready = true;
                    out.info.esmtp = out.client.capabilities().esmtp;
                    if let Some(st) = self.queues.get_mut(&out.queue) {
                        st.connect_failures = 0;
                        st.connect_backoff_until_ms = 0;
                    }
                    self.out_next_work(slot);
                }
                Some(ClientEvent::SendBody) if out.tls.is_some() => {
                    // Inside TLS the body is encrypted into the send buffer (no zero-copy).
                    let data = body_of(&out.converted, &out.job);
                    let tls = out.tls.as_mut().expect("checked");
                    use std::io::Write;
                    let written = tls.writer().write_all(data).and_then(|_| tls.writer().write_all(END_OF_DATA));
                    while tls.wants_write() && tls.write_tls(&mut conn.out).is_ok() {}
                    if let Err(e) = written {
                        return self.out_fail(slot, Reply::new(451, format!("4.7.5 TLS write failed: {e}")));
                    }
                    out.client.body_sent();
                }
                Some(ClientEvent::SendBody) => {
                    assert!(conn.out.is_empty(), "the client writes nothing before the body");
                    out.phase = OutPhase::Body;
                    out.body = Resume::default();
                    return self.submit_body(slot);
                }
                Some(ClientEvent::StartTls) => {
                    let hop = out.hop_index.checked_sub(1).and_then(|i| out.hops.get(i));
                    let name = hop
                        .and_then(|h| rustls::pki_types::ServerName::try_from(h.host.clone()).ok())
                        .or_else(|| hop.map(|h| rustls::pki_types::ServerName::IpAddress(h.addr.ip().into())))
                        .expect("a connected hop");
                    match rustls::ClientConnection::new(self.shared.tls_client.clone(), name) {
                        Ok(mut tls) => {
                            tls.set_buffer_limit(None); // a whole message may be written at once
                            conn.in_len = 0; // nothing the server sent in plain text after 220 counts
                            out.plain_len = 0;
                            while tls.wants_write() && tls.write_tls(&mut conn.out).is_ok() {}
                            out.tls = Some(Box::new(tls));
                            out.client.tls_started(); // EHLO again, sent once the handshake is done
                            move_client_output(out, &mut conn.out);
                        }
                        Err(e) => {
                            return self.out_fail(slot, Reply::new(451, format!("4.7.5 cannot start TLS: {e}")));
                        }
                    }
                }
                Some(ClientEvent::Done(replies)) => {
                    let job = out.job.take().expect("a transaction had a job");
                    out.converted = None;
                    let domain = out.queue.clone();
                    let mut info = out.info.clone();
                    let idle = out.client.is_idle();
                    let hop = out.hop_index.checked_sub(1).and_then(|i| out.hops.get(i)).map(|h| h.addr);
                    let vmta = out.vmta.clone();
                    (info.other_hop, info.other_source) = self.alternatives(&domain, hop, &vmta);
                    self.settle(&domain, job, &replies, &info);
                    if self.apply_avoid(slot) {
                        // `skip-mx` / `disable-source-ip`: this connection takes no more work
                        // (the refused job must not come straight back to it after RSET).
                        let Kind::Out(out) = &mut self.conn_mut(slot).kind else { unreachable!() };
                        out.leaving = true;
                    }
                    if idle {
                        self.out_next_work(slot);
                    }
                }
                Some(ClientEvent::Failed(reply)) => return self.out_fail(slot, reply),
                Some(ClientEvent::Closed) => return self.close(slot),
            }
            let conn = self.conn_mut(slot);
            if !conn.out.is_empty() {
                return self.submit_send(slot);
            }
            let Kind::Out(out) = &conn.kind else { unreachable!() };
            if out.idle {
                return;
            }
            if !progressed || conn.in_len == 0 {
                if out.client.awaiting_reply() {
                    self.submit_recv(slot, OUT_REPLY_TIMEOUT_MS);
                }
                return;
            }
        }
    }

    /// The connection is ready: take the next job, wait idle, or QUIT.
    fn out_next_work(&mut self, slot: u32) {
        let now = now_ms();
        let stopping = self.stopping_since_ms.is_some();
        let Some(Kind::Out(out)) = self.conns[slot as usize].as_ref().map(|c| &c.kind) else { unreachable!() };
        let (domain, source_ip, sent) = (out.queue.clone(), out.source_ip, out.messages_sent);
        let st = self.queues.get_mut(&domain).expect("queue of a connection exists");
        let limit = st.q.settings.max_msg_per_connection;
        let at_limit = (limit != 0 && sent >= limit) || out.leaving;
        let mut job = None;
        if !at_limit && !stopping {
            st.q.promote_due(now);
            // A message starts only with a grant from the queue's and the source IP's rates.
            if st.q.has_work() && self.rate_grant(&domain, source_ip, Grant::Message) {
                job = self.queues.get_mut(&domain).expect("exists").q.take();
            }
        }
        if let Some(job) = job {
            if self.begin_txn(slot, job) {
                return;
            }
            return self.out_next_work(slot); // bounced for its content: the next one
        }
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        let Kind::Out(out) = &mut conn.kind else { unreachable!() };
        if at_limit || stopping {
            out.client.quit();
            move_client_output(out, &mut conn.out);
            return;
        }
        out.idle = true;
        conn.deadline_ms = now + OUT_IDLE_MS;
        self.queues.get_mut(&domain).expect("exists").idle.push(slot);
    }

    /// The connection failed: its job (if any) is deferred; if the queue has no connection
    /// left that ever worked, the whole ready list is deferred too.
    fn out_fail(&mut self, slot: u32, reply: Reply) {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        if conn.op.is_some() {
            // Wait for the in-flight op to finish; it will fail and call us again.
            self.cancel(slot);
            return;
        }
        let Kind::Out(out) = &mut conn.kind else { unreachable!() };
        let domain = out.queue.clone();
        let mut info = out.info.clone();
        let ever_ready = out.ever_ready;
        let job = out.job.take();
        let hop = out.hop_index.checked_sub(1).and_then(|i| out.hops.get(i)).map(|h| h.addr);
        let vmta = out.vmta.clone();
        (info.other_hop, info.other_source) = self.alternatives(&domain, hop, &vmta);
        // The pattern list sees the receiver's own words (a 421 greeting, say).
        if let Some(st) = self.queues.get_mut(&domain) {
            st.q.observe(&reply, now_ms());
            self.queue_events(&domain, now_ms());
        }
        let transient = if reply.is_transient() { reply } else { Reply::new(451, format!("4.4.0 {}", reply.line())) };
        if job.is_none() && self.log_limit.allow(now_ms()) {
            let host = hop_text(&info);
            tracing::info!(shard = self.id, queue = %domain, %host, reply = %transient.line(), "connection failed");
        }
        if let Some(job) = job {
            let replies = vec![transient.clone(); job.rcpts.len()];
            self.settle(&domain, job, &replies, &info);
        }
        // `skip-mx` / `disable-source-ip` on this reply, with somewhere else to go: the next
        // connection goes there at once, without a backoff or deferring the queue.
        let elsewhere = self.apply_avoid(slot) && (info.other_hop || info.other_source);
        self.close(slot);
        if elsewhere {
            self.dirty.push(domain);
            return;
        }
        if !ever_ready {
            if let Some(st) = self.queues.get_mut(&domain) {
                let backoff = (CONNECT_BACKOFF_FIRST_MS << st.connect_failures.min(16)).min(CONNECT_BACKOFF_MAX_MS);
                st.connect_failures += 1;
                st.connect_backoff_until_ms = now_ms() + backoff;
            }
        }
        let others = self.queues.get(&domain).map(|st| st.q.connections).unwrap_or(0);
        if !ever_ready && others == 0 && self.stopping_since_ms.is_none() {
            tracing::debug!(shard = self.id, %domain, reply = %transient.line(), "deferring the queue's ready mail");
            self.fail_ready(&domain, &transient, &info);
        }
    }

    // ---- Journal ----------------------------------------------------------------------

    fn flush_journal(&mut self) {
        if !self.jnl_pending.is_empty() {
            self.write_journal_batch();
        }
        let sync = self.shared.config.spool_sync;
        let mut to_sync = Vec::new();
        for j in self.journal.iter_mut().chain(self.closed_journals.iter_mut()) {
            if j.commit.poll_sync() {
                to_sync.push((j.seq, j.fd()));
            }
        }
        for (jseq, fd) in to_sync {
            if sync {
                let entry = opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build().user_data(ud(
                    Op::JnlSync,
                    0,
                    jseq,
                ));
                self.push(entry);
            } else {
                self.on_jnl_sync(jseq, 0);
            }
        }
    }

    fn write_journal_batch(&mut self) {
        let len = self.jnl_pending.len() as u64;
        // A journal whose write or fsync failed takes no more entries (its pages may be gone):
        // a new one starts. (Found by the spool simulation: this used to panic the shard.)
        let needs_rotation = !self.journal.as_ref().is_some_and(|j| j.has_room(len) && !j.commit.poisoned());
        if needs_rotation {
            if !self.jnl_backoff.may_start_journal(now_ms()) {
                return;
            }
            match Journal::create(
                &self.dir,
                self.id,
                self.next_journal_seq,
                store::journal_bytes(self.shared.config.spool_segment_bytes),
            ) {
                Ok(j) => {
                    self.next_journal_seq += 1;
                    if let Some(old) = self.journal.replace(j) {
                        self.closed_journals.push(old);
                    }
                }
                Err(e) => {
                    tracing::error!(shard = self.id, error = %e, "cannot create journal; outcomes stay pending");
                    return;
                }
            }
        }
        let j = self.journal.as_mut().expect("a journal");
        if j.commit.idle() || self.jnl_batches.len() < JOURNAL_WRITES_IN_FLIGHT_MAX {
            let batch_id = self.next_batch;
            self.next_batch += 1;
            let bytes = std::mem::take(&mut self.jnl_pending);
            let segments = std::mem::take(&mut self.jnl_pending_segments);
            assert_eq!(bytes.len(), segments.len() * OUTCOME_BYTES);
            for s in &segments {
                j.reference(s);
            }
            let offset = j.next_offset;
            j.next_offset += len;
            j.commit.write_submitted(batch_id);
            let written = Resume::new(bytes.len());
            let batch = JournalBatch { jseq: j.seq, offset, written, bytes, segments };
            self.jnl_batches.insert(batch_id, batch);
            self.submit_journal_write(batch_id);
        }
    }

    /// Writes what is left of a journal batch (all of it, or the rest after a short write).
    fn submit_journal_write(&mut self, batch_id: u64) {
        let batch = &self.jnl_batches[&batch_id];
        let fd = self.journal_by_seq(batch.jseq).fd();
        let batch = &self.jnl_batches[&batch_id];
        let [rest] = batch.written.rest([&batch.bytes]);
        let entry = opcode::Write::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
            .offset(batch.offset + batch.written.done() as u64)
            .build()
            .user_data(ud(Op::JnlWrite, 0, batch_id));
        self.push(entry);
    }

    /// One of this shard's own journals (its closed list also holds old journals of other
    /// directories, whose numbers may be the same; found by `tests/crash_kill9.rs` with
    /// `SLUICE_FAULTS`, where journals rotate often: the shard panicked).
    fn journal_by_seq(&mut self, jseq: u64) -> &mut Journal {
        let id = self.id;
        if self.journal.as_ref().is_some_and(|j| j.seq == jseq) {
            return self.journal.as_mut().expect("checked");
        }
        self.closed_journals.iter_mut().find(|j| j.shard == id && j.seq == jseq).expect("journal of a batch exists")
    }

    fn on_jnl_write(&mut self, batch_id: u64, result: i32) {
        let batch = self.jnl_batches.get_mut(&batch_id).expect("batch in flight");
        if result > 0 && !batch.written.advance(result as usize) {
            return self.submit_journal_write(batch_id);
        }
        let ok = result > 0 && batch.written.is_done();
        if !ok {
            tracing::error!(shard = self.id, result, "journal write failed; its entries go to a new journal");
        }
        let jseq = batch.jseq;
        self.journal_by_seq(jseq).commit.write_completed(batch_id, ok);
        self.settle_journal(jseq, None);
    }

    fn on_jnl_sync(&mut self, jseq: u64, result: i32) {
        if result < 0 {
            tracing::error!(shard = self.id, result, "journal fsync failed; its entries go to a new journal");
        }
        self.settle_journal(jseq, Some(result >= 0));
    }

    /// A journal's fsync finished (`sync`), or a write completed: durable batches release
    /// their segments; failed ones go back to be written to a new journal (a failed write or
    /// fsync poisons the file), so their segments do not stay live until a restart.
    fn settle_journal(&mut self, jseq: u64, sync: Option<bool>) {
        let mut done = Vec::new();
        let j = self.journal_by_seq(jseq);
        if let Some(ok) = sync {
            j.commit.sync_completed(ok, &mut done);
        }
        j.commit.take_failed(&mut done);
        let newly_poisoned = j.commit.take_poisoning();
        let durable = done.iter().any(|(_, r)| *r == TicketResult::Durable);
        self.jnl_backoff.settled(now_ms(), newly_poisoned, durable);
        for (batch_id, r) in done {
            let batch = self.jnl_batches.remove(&batch_id).expect("batch in flight");
            if r == TicketResult::Durable {
                for seg in batch.segments {
                    seg.release(1);
                }
            } else {
                self.jnl_pending.extend_from_slice(&batch.bytes);
                self.jnl_pending_segments.extend(batch.segments);
            }
        }
    }

    // ---- Timers -----------------------------------------------------------------------

    fn arm_tick(&mut self) {
        let entry = opcode::Timeout::new(&*self.timespec).build().user_data(ud(Op::Tick, 0, 0));
        self.push(entry);
    }

    fn arm_event(&mut self) {
        let fd = self.shared.core.mailboxes[self.id as usize].eventfd();
        let entry = opcode::Read::new(types::Fd(fd), (&mut *self.event_buf as *mut u64).cast(), 8)
            .build()
            .user_data(ud(Op::Event, 0, 0));
        self.push(entry);
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        if let Some(lines) = self.log_limit.take_suppressed(now) {
            let per_s = crate::loglimit::LINES_PER_S;
            tracing::warn!(
                shard = self.id,
                lines,
                "delivery log lines left out (more than {per_s} a second); the accounting file has every outcome"
            );
        }
        for i in std::mem::take(&mut self.accept_rearm) {
            self.arm_accept(i);
        }
        if self.shared.core.shutdown.load(Ordering::SeqCst) && self.stopping_since_ms.is_none() {
            self.begin_shutdown(now);
        }
        // Connection deadlines.
        let mut expired = Vec::new();
        for (slot, conn) in self.conns.iter().enumerate() {
            if let Some(c) = conn {
                if now >= c.deadline_ms {
                    expired.push(slot as u32);
                }
            }
        }
        for slot in expired {
            let conn = self.conns[slot as usize].as_mut().expect("live connection");
            conn.deadline_ms = u64::MAX;
            match &mut conn.kind {
                Kind::Out(out) if out.idle => {
                    // Idle long enough: say QUIT (RFC 5321 §4.1.1.10) and close.
                    out.idle = false;
                    if let Some(st) = self.queues.get_mut(&out.queue) {
                        st.idle.retain(|s| *s != slot);
                    }
                    out.client.quit();
                    move_client_output(out, &mut conn.out);
                    self.submit_send(slot);
                }
                _ => self.cancel(slot),
            }
        }
        // Backoff that has run its time.
        let mut changed = Vec::new();
        for (key, st) in self.queues.iter_mut() {
            if st.q.check_mode(now) {
                changed.push(key.clone());
            }
        }
        for key in changed {
            self.queue_events(&key, now);
        }
        // Retries that came due.
        let due: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, st)| {
                st.q.next_retry_ms().is_some_and(|t| t <= now)
                    || st.q.ready_jobs() > 0
                    || (!st.parked.is_empty() && st.q.jobs() < QUEUE_WINDOW / 2)
            })
            .map(|(d, _)| d.clone())
            .collect();
        self.dirty.extend(due);
        // Forget queues with nothing queued and no connection (a resolution in flight keeps
        // its queue, so the answer has somewhere to land).
        self.queues.retain(|_, st| {
            !(st.q.is_empty()
                && st.parked.is_empty()
                && st.q.connections == 0
                && !matches!(st.hops, HopState::Resolving))
        });
        // DSNs the spool could not take: offer them again.
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.local_retry).into_iter().partition(|(t, _)| *t <= now);
        self.local_retry = later;
        for (_, local) in due {
            self.write_local(local);
        }
        self.retire_empty_segment(now);
        self.closed_journals.retain_mut(|j| !j.try_retire());
        self.cancelled_jobs.retain(|_, until| *until > now);
    }

    /// Deletes the active segment once it has held no live recipient for a while, so an idle
    /// relay's spool empties.
    fn retire_empty_segment(&mut self, now: u64) {
        let Some(seq) = self.appender.active_seq() else {
            self.active_empty_since_ms = None;
            return;
        };
        let empty = self.segments.get(&seq).is_some_and(|s| s.live() == 0) && !self.appender.in_flight();
        if !empty {
            self.active_empty_since_ms = None;
            return;
        }
        let since = *self.active_empty_since_ms.get_or_insert(now);
        if now - since >= EMPTY_SEGMENT_IDLE_MS {
            self.appender.seal_active();
            self.active_empty_since_ms = None;
            let mut tickets = Vec::new();
            let mut closed = Vec::new();
            self.appender.reap(&mut tickets, &mut closed);
            assert!(tickets.is_empty());
            for seq in closed {
                if let Some(seg) = self.segments.remove(&seq) {
                    seg.seal();
                }
            }
        }
    }

    // ---- Shutdown ---------------------------------------------------------------------

    fn begin_shutdown(&mut self, now: u64) {
        tracing::info!(shard = self.id, "shutting down: no new connections");
        self.stopping_since_ms = Some(now);
        for i in 0..self.listeners.len() {
            self.push(opcode::AsyncCancel::new(ud(Op::Accept, 0, i as u64)).build().user_data(ud(Op::Cancel, 0, 0)));
        }
        let slots: Vec<u32> = (0..self.conns.len() as u32).filter(|s| self.conns[*s as usize].is_some()).collect();
        for slot in slots {
            let conn = self.conns[slot as usize].as_ref().expect("live connection");
            let (cancel, close) = match &conn.kind {
                // Sessions between commands get 421; sessions mid-message may finish.
                Kind::In(inb) => (inb.store.is_none() && !inb.session.is_in_data() && conn.op == Some(Op::Recv), false),
                Kind::Out(out) => (conn.op.is_some(), out.idle && conn.op.is_none()),
            };
            if cancel {
                self.cancel(slot);
            } else if close {
                self.close(slot);
            }
        }
    }

    fn finished(&mut self) -> bool {
        let Some(since) = self.stopping_since_ms else { return false };
        let spool_quiet = !self.appender.in_flight() && self.jnl_batches.is_empty() && self.jnl_pending.is_empty();
        let inbound_left = self.conns.iter().flatten().any(|c| matches!(c.kind, Kind::In(_)));
        let outbound_left = self.conns.iter().flatten().any(|c| matches!(c.kind, Kind::Out(_)));
        let grace_over = now_ms() >= since + SHUTDOWN_GRACE_MS;
        spool_quiet && ((!inbound_left && !outbound_left) || grace_over)
    }

    fn flush_acct(&mut self, blocking: bool) {
        if self.acct.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.acct);
        let req = ControlRequest::Acct(batch);
        let result = if blocking {
            self.shared.core.control.send_timeout(req, std::time::Duration::from_secs(2)).map_err(|e| e.into_inner())
        } else {
            self.shared.core.control.try_send(req).map_err(|e| e.into_inner())
        };
        if let Err(ControlRequest::Acct(batch)) = result {
            self.acct = batch;
        }
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

/// The `header_NAME` accounting columns' values for a message (none when no file asks).
fn acct_header_values(config: &sluice_config::Config, data: &[u8]) -> Vec<String> {
    config.acct_headers.iter().map(|h| header_value(data, h).unwrap_or_default()).collect()
}

/// `smtp-hosts` whose hosts are all IP literals need no DNS.
fn literal_hops(levels: &[Vec<sluice_config::HostPort>]) -> Option<Vec<Vec<Hop>>> {
    levels
        .iter()
        .map(|level| {
            level
                .iter()
                .map(|h| {
                    h.host
                        .parse::<IpAddr>()
                        .ok()
                        .map(|ip| Hop { host: h.host.clone(), addr: SocketAddr::new(ip, h.port) })
                })
                .collect()
        })
        .collect()
}

/// The VMTA or pool for an accepted message: its `x-virtual-mta:` header when the source
/// allows it (the header is removed unless `retain-x-virtual-mta`), else the source's
/// `default-virtual-mta`, else the default. An unknown name is refused with 550 when the
/// source says `reject-invalid-virtual-mta`, and otherwise falls back.
/// Feeds the ciphertext after `plain_len` in `buf` (and any left from before) to rustls and
/// writes the plaintext it yields back into `buf` from `plain_len` on; `len` ends as the
/// plaintext's end. Ciphertext rustls cannot take yet waits in `pending`.
fn tls_decrypt<D>(
    tls: &mut rustls::ConnectionCommon<D>,
    pending: &mut Vec<u8>,
    buf: &mut [u8],
    plain_len: usize,
    len: &mut usize,
) -> Result<(), rustls::Error> {
    use std::io::Read;
    pending.extend_from_slice(&buf[plain_len..*len]);
    *len = plain_len;
    let mut fed = 0;
    loop {
        // Plaintext out first, so rustls has room for more ciphertext.
        loop {
            match tls.reader().read(&mut buf[*len..]) {
                Ok(0) => break, // clean close_notify, or no room: the session sees what it has
                Ok(n) => *len += n,
                Err(_) => break, // WouldBlock: nothing more decrypted yet
            }
        }
        if fed == pending.len() || !tls.wants_read() {
            break;
        }
        let mut rd = &pending[fed..];
        match tls.read_tls(&mut rd) {
            Ok(0) | Err(_) => break, // rustls is full: the rest waits
            Ok(n) => fed += n,
        }
        tls.process_new_packets()?;
    }
    pending.drain(..fed);
    Ok(())
}

/// A feedback report's `f` record (None: not a report); the complainer goes to the
/// auto-suppress list's file through the control plane.
/// A complaint's `f` record, and the suppression file entry to make durable (the
/// `auto-suppress-list`'s file and the complainer), if any.
type FeedbackOutcome = (Vec<Record>, Option<(PathBuf, String)>);

fn feedback_records(
    shared: &Shared,
    p: &crate::suppress::FeedbackLoop,
    text: &str,
    now: u64,
) -> Option<FeedbackOutcome> {
    let f = sluice_engine::feedback::parse(text)?;
    tracing::info!(rcpt = %f.rcpt, kind = %f.feedback_type, "feedback report");
    if let (Some(list), false) = (p.auto_suppress_list.as_ref().and_then(|n| shared.lists.get(n)), f.rcpt.is_empty()) {
        list.add(&f.rcpt); // refused from now on, on every shard
    }
    let add = p.auto_suppress.clone().filter(|_| !f.rcpt.is_empty()).map(|path| (path, f.rcpt.clone()));
    Some((vec![Record::feedback(now, &f)], add))
}

/// An asynchronous bounce's `rb` records, one per failed recipient, with their category
/// (None: not a DSN). `to` is the address it came to (VERP names the recipient).
fn bounce_records(shared: &Shared, text: &str, to: &str, now: u64) -> Option<Vec<Record>> {
    let bounces = sluice_engine::feedback::parse_dsn(text, to)?;
    let records = bounces
        .iter()
        .map(|b| {
            let line = format!("{}\r\n", b.diagnostic);
            let reply = sluice_engine::smtp::reply::parse_reply(line.as_bytes())
                .ok()
                .flatten()
                .map(|(r, _)| r)
                .unwrap_or_else(|| Reply::new(550, format!("{} {}", b.status, b.diagnostic)));
            let category = sluice_engine::bounce::classify(&reply, &shared.config.bounce_patterns);
            tracing::info!(rcpt = %b.rcpt, %category, "remote bounce");
            Record::remote_bounce(now, b, category)
        })
        .collect();
    Some(records)
}

/// The body the connection's transaction sends: the spooled message, or its conversion.
fn body_of<'a>(converted: &'a Option<Vec<u8>>, job: &'a Option<Job<MsgRef>>) -> &'a [u8] {
    match converted {
        Some(c) => c,
        None => {
            let job = job.as_ref().expect("body belongs to a job");
            job.msg.segment.message(job.msg.offset).data
        }
    }
}

/// Moves the SMTP client's commands to the wire: encrypted when the connection is in TLS.
fn move_client_output(out: &mut Outbound, wire: &mut Vec<u8>) {
    if out.client.output().is_empty() {
        return;
    }
    match out.tls.as_mut() {
        Some(tls) => {
            use std::io::Write;
            let _ = tls.writer().write_all(out.client.output()); // no buffer limit: never short
            while tls.wants_write() && tls.write_tls(wire).is_ok() {}
        }
        None => wire.extend_from_slice(out.client.output()),
    }
    out.client.clear_output();
}

/// The `DKIM-Signature:` field for a message when one of its recipient domains has
/// `dkim-sign yes` and a `domain-key` covers its From domain (signing errors are logged and
/// the message goes unsigned rather than refused).
fn dkim_signature(shared: &Shared, recipients: &[String], vmta: &str, data: &mut Vec<u8>) -> Option<Vec<u8>> {
    if shared.dkim.is_empty() {
        return None;
    }
    // X-DKIM-Options is for sluice alone: never delivered.
    let message = take_header(data, "x-dkim-options", true)
        .map(|v| sluice_engine::dkim::MessageOptions::parse(&v))
        .unwrap_or_default();
    let mut seen: Vec<String> = Vec::with_capacity(1);
    let settings = recipients.iter().map(|r| domain_of(r).to_ascii_lowercase()).find_map(|d| {
        if seen.contains(&d) {
            return None;
        }
        let s = shared.config.queue_settings(&d, vmta);
        seen.push(d);
        s.dkim_sign.then_some(s)
    })?;
    match shared.dkim.sign_with(vmta, data, &settings.dkim, &message) {
        Ok(header) => header,
        Err(e) => {
            tracing::error!(error = %e, "message left unsigned");
            None
        }
    }
}

fn select_vmta(
    config: &sluice_config::Config,
    policy: &sluice_config::SourcePolicy,
    client_ip: IpAddr,
    data: &mut Vec<u8>,
) -> Result<String, String> {
    let fallback = policy.default_virtual_mta.clone().unwrap_or_else(|| DEFAULT_VMTA.to_string());
    if !policy.process_x_virtual_mta {
        return Ok(fallback);
    }
    let Some(name) = take_header(data, "x-virtual-mta", !policy.retain_x_virtual_mta) else {
        return Ok(fallback);
    };
    if config.vmta_target(&name).is_some() {
        return Ok(name);
    }
    if policy.reject_invalid_virtual_mta {
        return Err(format!("550 5.7.1 Unknown virtual MTA `{name}` (x-virtual-mta header)"));
    }
    tracing::warn!(%name, %client_ip, "unknown virtual MTA in x-virtual-mta; using the default");
    Ok(fallback)
}
