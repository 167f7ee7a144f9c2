//! One shard: a pinned thread with its own IO backend (`crate::backend`: io_uring, epoll) —
//! the IO room. Its loop takes completions, reads the clock once, and maps the sans-IO
//! machines' wants to operations: the connection machines (`crate::conn`) on sockets, the spool machine
//! (`sluice_spool::machine`) on segment and journal files, and the delivery scheduler's
//! intents (`sluice_engine::sched`) on connections, mailboxes and the control plane. This
//! file is the loop, the timers and shutdown; `inbound`, `outbound` and `spool_io` are the
//! rest of the room. Only this room asks a backend for IO.

mod inbound;
mod outbound;
mod slab;
mod spool_io;

use crate::admin::ShardStats;
use crate::backend::{Backend, Sub};
use crate::faults::{Faults, Io};
use crate::mailbox::{MsgRef, ShardMsg};
use crate::park::ParkedList;
use crate::spool_files::{self, JournalFile, Segment};
use crate::{ControlRequest, Shared};
use inbound::InConn;
use outbound::OutConn;
use slab::Slab;
use sluice_engine::acct::gate::RowGate;
use sluice_engine::acct::Record;
use sluice_engine::sched::backlog::Backlog;
use sluice_engine::sched::{ConnId, Intent, Scheduler};
use sluice_engine::time::Now;
use sluice_spool::{JournalId, OldJournal, Spool};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The timer: deadlines, retries, rates' ticks.
const TICK_MS: u64 = 50;
const SHUTDOWN_GRACE_MS: u64 = 3_000;
/// Accounting records held locally while the control plane is busy.
const ACCT_PENDING_MAX: usize = 1 << 20;
/// Dropped accounting records are logged at most this often.
const ACCT_DROP_LOG_EVERY_MS: u64 = 10_000;
/// Rounds of handing work between the machines in one turn of the loop (each round does all
/// there is; more than a few means a bug feeding itself).
const SETTLE_ROUNDS_MAX: usize = 64;

const _: () =
    assert!(TICK_MS == sluice_engine::sched::limits::RATE_BURST_WINDOW_MS, "rate bursts cover exactly one tick");

/// What a completion is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    InRecv,
    InSend,
    OutConnect,
    OutRecv,
    OutSend,
    SegSync,
    JnlWrite,
    JnlSync,
    Event,
    Tick,
    Cancel,
    SegZero,
}

impl Op {
    const ALL: [Op; 13] = [
        Op::Accept,
        Op::InRecv,
        Op::InSend,
        Op::OutConnect,
        Op::OutRecv,
        Op::OutSend,
        Op::SegSync,
        Op::JnlWrite,
        Op::JnlSync,
        Op::Event,
        Op::Tick,
        Op::Cancel,
        Op::SegZero,
    ];

    fn from(v: u8) -> Op {
        Op::ALL[(v as usize).saturating_sub(1).min(Op::ALL.len() - 1)]
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

/// A socket's one operation in flight and its deadline (monotonic ms).
struct Sock {
    fd: RawFd,
    op: Option<Op>,
    cancelling: bool,
    deadline_ms: u64,
}

impl Sock {
    fn new(fd: RawFd) -> Sock {
        Sock { fd, op: None, cancelling: false, deadline_ms: u64::MAX }
    }
}

/// Cancels a socket's operation in flight (a timeout or shutdown); its completion comes back
/// failed. A cancel already asked for is not asked again.
fn cancel_sock<B: Backend>(io: &mut B, sock: &mut Sock, gen: u16, slot: u32) {
    let Some(op) = sock.op else { return };
    if std::mem::replace(&mut sock.cancelling, true) {
        return;
    }
    // SAFETY: a cancel holds no pointer.
    unsafe { io.submit(Sub::Cancel { fd: sock.fd, user_data: ud(op, gen, slot as u64) }, ud(Op::Cancel, 0, 0)) };
}

/// Work found in the spool at start, by queue (destination domain, VMTA).
pub(crate) type Recovered = HashMap<(String, String), ParkedList>;

/// What a shard starts with, whichever backend it runs on.
pub(crate) struct Start {
    pub id: u32,
    pub shards: u32,
    pub shared: Arc<Shared>,
    pub listeners: Vec<RawFd>,
    pub initial: Recovered,
    pub journals: Vec<OldJournal>,
    pub next_seq: u64,
    /// Spool IO failures injected on purpose (`SLUICE_FAULTS`; the simulation's own).
    pub faults: Faults,
}

impl Start {
    /// Builds the shard on `io` and runs it until shutdown.
    pub fn run<B: Backend>(self, io: B) -> std::io::Result<()> {
        Shard::new(io, self).map(|mut shard| shard.run())
    }
}

pub(crate) struct Shard<B: Backend> {
    id: u32,
    shared: Arc<Shared>,
    io: B,
    dir: PathBuf,
    now: Now,
    listeners: Vec<RawFd>,
    accept_addrs: Box<[(libc::sockaddr_storage, libc::socklen_t)]>,
    accept_rearm: Vec<usize>,
    ins: Slab<InConn>,
    outs: Slab<OutConn>,
    /// Hosts whose STARTTLS handshake failed, and until when they get plain text
    /// (`outbound::TLS_FALLBACK_MS`).
    tls_failed: HashMap<std::net::SocketAddr, u64>,
    /// When dropped accounting records were last logged.
    acct_dropped_logged_ms: u64,
    /// The budget for inbound refusal lines (a hostile client can draw many).
    in_log_limit: sluice_engine::sched::loglimit::LogLimit,
    /// The scheduler's connection ids, to their slots.
    out_slots: HashMap<ConnId, u32>,
    session_counter: u64,
    /// Connections handed to other shards (their traffic class's), for a round robin.
    handed_over: u64,
    spool: Spool<Arc<Segment>>,
    journals: HashMap<JournalId, JournalFile>,
    /// Journal writes in flight: their journal's descriptor, offset and progress.
    jnl_writes: HashMap<u64, (RawFd, u64, sluice_spool::Resume)>,
    /// Direct segments being written (`spool_io::Direct`), by sequence: the active one, and
    /// any rotated out until their last write is done.
    direct: HashMap<u64, spool_io::Direct>,
    /// Spool IO failures injected on purpose (`SLUICE_FAULTS`, tests only).
    faults: Faults,
    local: spool_io::Locals,
    sched: Scheduler<MsgRef>,
    stats: Arc<ShardStats>,
    outbox: Vec<(u32, ShardMsg)>,
    acct: Vec<Record>,
    /// Outcomes to journal and DSNs to spool (`Intent::Outcome`, `Intent::Dsn`), each waiting
    /// for the accounting batch that holds its row to be durable. A crash before then leaves
    /// the recipient pending (tried again, with a row of its own), never an outcome without
    /// its row.
    held: RowGate<Intent<MsgRef>>,
    event_buf: Box<u64>,
    completions: Vec<(u64, i32)>,
    stopping_since_ms: Option<u64>,
}

impl<B: Backend> Shard<B> {
    pub fn new(io: B, start: Start) -> std::io::Result<Shard<B>> {
        let Start { id, shards, shared, listeners, initial, journals: old_journals, next_seq, faults } = start;
        let dir = spool_files::shard_dir(&shared.config.spool_dir, id);
        std::fs::create_dir_all(&dir)?;
        let segment_bytes = shared.config.spool_segment_bytes;
        let spool = Spool::new(id, segment_bytes, spool_files::journal_bytes(segment_bytes), next_seq, old_journals);
        let now = io.now();
        let stats = shared.core.stats[id as usize].clone();
        let backlog_dir = dir.clone();
        let make_backlog = Box::new(move || Box::new(ParkedList::new(backlog_dir.clone())) as Box<dyn Backlog<MsgRef>>);
        let config = shared.config.clone();
        let sched =
            Scheduler::new(id, shards, config, shared.core.source_limits.clone(), stats.clone(), make_backlog, now);
        // SAFETY: zeroed sockaddr storage is valid.
        let zero: (libc::sockaddr_storage, libc::socklen_t) = (unsafe { std::mem::zeroed() }, 0);
        let mut shard = Shard {
            id,
            accept_addrs: vec![zero; listeners.len()].into_boxed_slice(),
            listeners,
            accept_rearm: Vec::new(),
            shared,
            io,
            dir,
            now,
            ins: Slab::default(),
            outs: Slab::default(),
            tls_failed: HashMap::new(),
            acct_dropped_logged_ms: 0,
            in_log_limit: sluice_engine::sched::loglimit::LogLimit::new(now.ms()),
            out_slots: HashMap::new(),
            session_counter: 0,
            handed_over: 0,
            spool,
            journals: HashMap::new(),
            jnl_writes: HashMap::new(),
            direct: HashMap::new(),
            faults,
            local: spool_io::Locals::default(),
            sched,
            stats,
            outbox: Vec::new(),
            acct: Vec::new(),
            held: RowGate::default(),
            event_buf: Box::new(0),
            completions: Vec::with_capacity(1024),
            stopping_since_ms: None,
        };
        for ((domain, vmta), jobs) in initial {
            shard.sched.adopt(&domain, &vmta, Box::new(jobs));
        }
        Ok(shard)
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    fn submit(&mut self, sub: Sub, user_data: u64) {
        // SAFETY: every pointer in an operation refers to memory this shard keeps alive until
        // the operation completes (boxed connections, boxed stores, journal batches, buffers).
        unsafe { self.io.submit(sub, user_data) };
    }

    /// The shard loop: the one unbounded loop, ending only at shutdown.
    pub fn run(&mut self) {
        self.arm();
        while self.turn() {}
        self.stop();
    }

    /// Arms the listeners, the mailbox and the timer.
    pub(crate) fn arm(&mut self) {
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        self.arm_event();
        self.arm_tick();
    }

    /// One turn of the loop: waits for completions, reads the clock, handles them, runs the
    /// machines. False once the shard has finished shutting down.
    pub(crate) fn turn(&mut self) -> bool {
        // Drain the completion queue first; handle afterwards, never re-entrantly.
        let limit_ns = self.spool.sync_again_us().map(|us| (us * 1000).saturating_sub(self.now.ns));
        self.io.wait_at_most(&mut self.completions, limit_ns);
        self.now = self.io.now();
        let completions = std::mem::take(&mut self.completions);
        for &(user_data, result) in &completions {
            self.complete(user_data, result);
        }
        self.completions = completions;
        self.completions.clear();
        self.after_completions();
        !self.finished()
    }

    /// After the last turn: the last accounting rows out, and buffers operations may still
    /// use kept alive.
    fn stop(&mut self) {
        self.flush_acct(true);
        // In-flight operations may still reference buffers: never free them.
        std::mem::forget(std::mem::take(&mut self.ins));
        std::mem::forget(std::mem::take(&mut self.outs));
        std::mem::forget(std::mem::take(&mut self.local));
        std::mem::forget(std::mem::take(&mut self.jnl_writes));
        std::mem::forget(std::mem::take(&mut self.direct));
        tracing::debug!(shard = self.id, "shard stopped");
    }

    fn complete(&mut self, user_data: u64, result: i32) {
        let (op, gen, slot) = ud_split(user_data);
        let result = match op {
            Op::SegSync => self.faults.apply(Io::SegSync, result),
            Op::JnlWrite => self.faults.apply(Io::JnlWrite, result),
            Op::JnlSync => self.faults.apply(Io::JnlSync, result),
            _ => result,
        };
        match op {
            Op::Accept => self.on_accept(slot as usize, result),
            Op::InRecv | Op::InSend => {
                self.ins.sock_done(slot as u32, gen, |c| &mut c.sock);
                match op {
                    Op::InRecv => self.on_in_recv(slot as u32, result),
                    _ => self.on_in_send(slot as u32, result),
                }
            }
            Op::OutConnect | Op::OutRecv | Op::OutSend => {
                self.outs.sock_done(slot as u32, gen, |c| &mut c.sock);
                match op {
                    Op::OutConnect => self.on_connect(slot as u32, result),
                    Op::OutRecv => self.on_out_recv(slot as u32, result),
                    _ => self.on_out_send(slot as u32, result),
                }
            }
            Op::SegSync => self.on_seg_sync(slot, result),
            Op::SegZero => self.on_seg_zero(slot, result),
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
        self.release_held(false);
        self.spool.flush_at(self.now.ns / 1000);
        self.settle_machines();
        self.sched.pump(self.now);
        self.settle_machines();
        // Records copied into their segments this turn are synced now, not a turn later (or,
        // a group held back to gather more, soon: the wait below is cut short for it).
        self.spool.flush_at(self.now.ns / 1000);
        self.settle_machines();
        self.flush_outbox();
        self.flush_acct(false);
    }

    /// Hands work between the machines until none is left: the spool's ops and events, the
    /// scheduler's intents (each may give the others more).
    fn settle_machines(&mut self) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            let mut progress = self.drain_spool();
            while let Some(intent) = self.sched.poll_intent() {
                progress = true;
                self.carry_out(intent);
            }
            if !progress {
                return;
            }
        }
        tracing::error!(shard = self.id, "machines kept feeding each other; the rest waits for the next turn");
    }

    fn drain_mailbox(&mut self) {
        let me = self.id as usize;
        while let Some(msg) = self.shared.core.mailboxes[me].pop() {
            match msg {
                ShardMsg::Job { domain, vmta, job } => self.sched.enqueue(&domain, &vmta, job),
                ShardMsg::Resolved { domain, resolution, ttl_ms, rollup } => {
                    self.sched.on_resolved(&domain, resolution, ttl_ms, rollup, self.now)
                }
                ShardMsg::Verified { .. } | ShardMsg::ReportStored { .. } if self.faults.lose_answers => {}
                ShardMsg::Verified { slot, gen, data, headers, summary } => {
                    self.on_verified(slot, gen, data, headers, summary)
                }
                ShardMsg::Admin(cmd, reply) => {
                    let _ = reply.send(self.sched.on_admin(cmd, self.now));
                }
                ShardMsg::Reload(shared) => {
                    self.sched.reconfigure(shared.config.clone());
                    self.shared = shared;
                    tracing::info!(shard = self.id, "configuration reloaded");
                }
                ShardMsg::ReportStored { slot, gen, ok } => self.on_report_stored(slot, gen, ok),
                ShardMsg::Inject(injection) => self.inject(*injection),
                ShardMsg::Accepted { fd, ip, listener } => self.on_handed_over(fd, ip, listener),
            }
        }
    }

    /// Hands jobs to the shards that own them. When an owner's mailbox is full the job waits
    /// in this shard's outbox (never spin: two shards full of each other's work would wait
    /// forever).
    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        for (owner, msg) in std::mem::take(&mut self.outbox) {
            if let Err(back) = self.shared.core.mailboxes[owner as usize].send(msg) {
                self.outbox.push((owner, back));
            }
        }
    }

    /// A number no other session or message of this shard gets (session ids, Message-Ids).
    fn next_number(&mut self) -> (u32, u64) {
        self.session_counter += 1;
        (self.id, self.session_counter)
    }

    /// Signs a message about to be spooled (`prepare::sign`), counting one it cannot sign.
    fn sign(&self, recipients: &[String], vmta: &str, data: &mut Vec<u8>) {
        if !sluice_engine::prepare::sign(&self.shared.dkim, &self.shared.config, recipients, vmta, data) {
            ShardStats::add(&self.stats.dkim_unsignable, 1);
        }
    }

    /// Asks the control plane to add an address to its suppression list (the list's file,
    /// fsynced; the fleet's set); `waiting`: the session whose reply waits for it. False when
    /// the control plane is busy (logged when nobody waits).
    fn send_suppress(&self, add: sluice_engine::prepare::SuppressAdd, waiting: Option<(u32, u32, u16)>) -> bool {
        let sluice_engine::prepare::SuppressAdd { path, list, address } = add;
        let sent = self.shared.core.control.try_send(ControlRequest::SuppressAdd { path, list, address, waiting });
        if sent.is_err() && waiting.is_none() {
            tracing::error!(shard = self.id, "control plane busy: an address not added to its suppression file");
        }
        sent.is_ok()
    }

    fn record(&mut self, r: Record) {
        if self.acct.len() < ACCT_PENDING_MAX {
            return self.acct.push(r);
        }
        // The control plane has taken nothing for a long while: say so, and count (never
        // silently: an operator's bounce handler reads this file).
        ShardStats::add(&self.stats.acct_records_dropped, 1);
        let now_ms = self.now.ms();
        if now_ms >= self.acct_dropped_logged_ms + ACCT_DROP_LOG_EVERY_MS {
            self.acct_dropped_logged_ms = now_ms;
            let dropped = self.stats.acct_records_dropped.load(Ordering::Relaxed);
            tracing::error!(
                shard = self.id,
                pending = ACCT_PENDING_MAX,
                dropped,
                "accounting records dropped: the accounting writer is not keeping up (see acct_records_dropped)"
            );
        }
    }

    fn flush_acct(&mut self, blocking: bool) {
        if self.acct.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.acct);
        let req = ControlRequest::Acct { shard: self.id, batch: self.held.next_batch(), records };
        let result = if blocking {
            self.shared.core.control.send_timeout(req, std::time::Duration::from_secs(2)).map_err(|e| e.into_inner())
        } else {
            self.shared.core.control.try_send(req).map_err(|e| e.into_inner())
        };
        match result {
            Ok(()) => self.held.sent(),
            Err(ControlRequest::Acct { records, .. }) => self.acct = records,
            Err(_) => unreachable!("the request sent comes back"),
        }
    }

    /// An outcome to journal or a DSN to spool: at once when every row recorded before it
    /// is durable, else held until it is (`held`).
    fn after_rows(&mut self, intent: Intent<MsgRef>) {
        if let Some(intent) = self.held.admit(intent, !self.acct.is_empty(), self.acct_durable()) {
            self.carry_out_held(intent);
        }
    }

    fn acct_durable(&self) -> u64 {
        self.shared.core.acct_durable[self.id as usize].load(Ordering::Acquire)
    }

    /// Carries out the held intents whose rows are durable (all of them with `all`: a
    /// shutdown whose accounting writer did not answer in time).
    fn release_held(&mut self, all: bool) {
        let durable = if all { u64::MAX } else { self.acct_durable() };
        while let Some(intent) = self.held.release(durable) {
            self.carry_out_held(intent);
        }
    }

    fn carry_out_held(&mut self, intent: Intent<MsgRef>) {
        match intent {
            Intent::Outcome { msg, rcpt } => self.journal_outcome(msg, rcpt),
            Intent::Dsn { msg, failed } => self.spool_dsn(msg, failed),
            _ => unreachable!("only outcomes and DSNs wait for their rows (`after_rows`)"),
        }
    }

    // ---- Timers -----------------------------------------------------------------------

    fn arm_tick(&mut self) {
        self.submit(Sub::Timeout { ms: TICK_MS }, ud(Op::Tick, 0, 0));
    }

    fn arm_event(&mut self) {
        let fd = self.shared.core.mailboxes[self.id as usize].eventfd();
        let buf = (&mut *self.event_buf as *mut u64).cast();
        self.submit(Sub::Read { fd, buf, len: 8 }, ud(Op::Event, 0, 0));
    }

    fn on_tick(&mut self) {
        let now = self.now;
        for i in std::mem::take(&mut self.accept_rearm) {
            self.arm_accept(i);
        }
        if self.shared.core.shutdown.load(Ordering::SeqCst) && self.stopping_since_ms.is_none() {
            self.begin_shutdown();
        }
        self.in_deadlines(now.ms());
        if let Some(lines) = self.in_log_limit.take_suppressed(now.ms()) {
            let per_s = sluice_engine::sched::loglimit::LINES_PER_S;
            tracing::warn!(shard = self.id, lines, "inbound refusal lines left out (more than {per_s} a second)");
        }
        self.out_deadlines(now.ms());
        self.sched.tick(now);
        self.spool.tick(now.ms());
        self.settle_direct();
        self.retry_locals();
    }

    // ---- Shutdown ---------------------------------------------------------------------

    fn begin_shutdown(&mut self) {
        tracing::info!(shard = self.id, "shutting down: no new connections");
        self.stopping_since_ms = Some(self.now.ms());
        for i in 0..self.listeners.len() {
            let fd = self.listeners[i];
            self.submit(Sub::Cancel { fd, user_data: ud(Op::Accept, 0, i as u64) }, ud(Op::Cancel, 0, 0));
        }
        self.sched.begin_shutdown();
        self.in_shutdown();
        self.out_shutdown();
    }

    fn finished(&mut self) -> bool {
        let Some(since) = self.stopping_since_ms else { return false };
        let grace_over = self.now.ms() >= since + SHUTDOWN_GRACE_MS;
        if self.held.waiting() > 0 {
            if !grace_over {
                return false;
            }
            // Journaled without their rows rather than delivered again after the restart.
            tracing::error!(
                shard = self.id,
                outcomes = self.held.waiting(),
                "shutdown: the accounting writer has not confirmed the last rows; journaling their outcomes anyway"
            );
            self.release_held(true);
            return false;
        }
        let spool_quiet = self.spool.is_quiet();
        spool_quiet && ((self.ins.is_empty() && self.outs.is_empty()) || grace_over)
    }
}
