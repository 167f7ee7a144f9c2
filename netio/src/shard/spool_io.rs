//! The spool side of the IO room: the spool machine's operations on segment and journal files
//! (records copied into their segment's mapping, journal writes, fdatasyncs; creations and
//! deletions synchronously), its
//! answers to the sessions waiting on them, and the messages sluice makes itself (RFC 3464
//! DSNs, HTTP injections) on their way into the spool.

use super::{ud, Op, Shard};
use crate::admin::Injection;
use crate::backend::{Backend, Sub};
use crate::faults::Io;
use crate::mailbox::MsgRef;
use crate::spool_files::{self, align_down, align_up, JournalFile, Segment, DIRECT_ALIGN};
use sluice_engine::bounce::dsn;
use sluice_engine::prepare::{self, Prepared, Way};
use sluice_engine::queue::{Job, Recipient};
use sluice_engine::route::DEFAULT_VMTA;
use sluice_engine::smtp::addr::domain_of;
use sluice_engine::smtp::server::Message;
use sluice_spool::codec::{self, Envelope, Outcome};
use sluice_spool::{Resume, SpoolEvent, SpoolOp};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Spool tickets of locally made messages have this bit; connections' tickets are
/// `generation << 32 | slot`, far below it.
const LOCAL_TICKET: u64 = 1 << 63;
/// A DSN the spool could not take is offered again after this long.
const LOCAL_RETRY_MS: u64 = 1_000;

/// Zeros are written this many steps (`spool_files::zero_step`) ahead of a direct segment's
/// records.
const ZEROS_AHEAD: u64 = 4;

/// A direct segment's writing (`Segment::create_direct`): its records reach the file in
/// block-aligned `RWF_DSYNC` writes from the segment's memory, one at a time (the spool
/// machine asks for one sync of a file at a time), and zeros are written ahead of them, so
/// that those writes find blocks written before and complete without a kernel worker.
pub(super) struct Direct {
    segment: Arc<Segment>,
    /// The durable write in flight: from, to (both aligned) and where the records it covers
    /// end (the next write starts there, rounded down: its last block is written again).
    writing: Option<(u64, u64, u64)>,
    synced_to: u64,
    /// Zeros are written (or being written) below this; the zero write in flight starts at
    /// `zeroing`.
    zeroed_to: u64,
    zeroing: Option<u64>,
    /// A sync asked for while the zero write in flight covers some of its blocks (two writes
    /// of one block at once end in either order): submitted when the zeros are down.
    held: bool,
    /// When this shard first saw it sealed with nothing in flight.
    idle_since_ms: Option<u64>,
}

/// A sealed direct segment's memory is given back this long after its last write
/// (`Segment::settle`): its messages are mostly delivered by then, and the rest are read
/// from the file, through the page cache, when they are tried again.
const SETTLE_AFTER_MS: u64 = 10_000;

/// An accepted message on its way to disk: the bytes of its record (head, data, tail), which
/// stay here, boxed, until the spool answers.
pub(super) struct Spooling {
    head: Vec<u8>,
    pub data: Vec<u8>,
    /// After the data: the job id and the extras (spool format versions 2 and 3).
    tail: Vec<u8>,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub queued_unix_ms: u64,
    /// The VMTA or pool the message goes out through.
    pub vmta: String,
    /// Who sent it, for `r` records: `helo (ip)`, the AUTH user if any, and the inbound
    /// authentication results.
    pub src_mta: String,
    pub smtp_user: String,
    pub auth_results: String,
    /// The `x-job:` header's value (empty: none).
    pub job_id: String,
    /// What the spool keeps of the injection for accounting and DSNs: the EHLO name, the
    /// DSN `ENVID`, flags (`codec::flags`) and each recipient's `NOTIFY`/`ORCPT`.
    pub helo: String,
    /// For `r` records: the client's address and the local address it connected to.
    pub rcv_source_ip: String,
    pub rcv_destination_ip: String,
    pub envid: String,
    pub flags: u8,
    pub rcpt_dsn: Vec<(u32, u8, String)>,
}

impl Spooling {
    /// A message to spool: its data (transparency form), envelope and VMTA; what the `r`
    /// records say of its origin is empty until set.
    pub fn boxed(
        data: Vec<u8>,
        mail_from: String,
        recipients: Vec<String>,
        queued_unix_ms: u64,
        vmta: String,
    ) -> Box<Spooling> {
        Box::new(Spooling {
            head: Vec::new(),
            data,
            tail: Vec::new(),
            mail_from,
            recipients,
            queued_unix_ms,
            vmta,
            src_mta: String::new(),
            smtp_user: String::new(),
            auth_results: String::new(),
            job_id: String::new(),
            helo: String::new(),
            rcv_source_ip: String::new(),
            rcv_destination_ip: String::new(),
            envid: String::new(),
            flags: 0,
            rcpt_dsn: Vec::new(),
        })
    }
}

/// A message sluice makes itself on its way into the spool: an RFC 3464 DSN (the bounces it
/// reports are journaled only once it is durable: a crash before then bounces, and reports,
/// them again), or a message injected over HTTP (told once it is durable, or refused).
pub(super) struct LocalMessage {
    store: Box<Spooling>,
    /// Who it came from: an HTTP injection's client; unspecified for messages made here.
    client_ip: IpAddr,
    /// The outcomes to journal once it is durable (with the spool while it is in flight).
    after: Vec<(Outcome, Arc<Segment>)>,
    notify: Notify,
}

/// Who hears that a local message is durable (or could not be stored).
pub(super) enum Notify {
    /// Nobody: a DSN, offered again until the spool takes it.
    Nobody,
    /// An injection's caller (HTTP, pickup), answered with the message's id or why not.
    Caller(crossbeam_channel::Sender<Result<String, String>>),
    /// An inbound connection's mail-merge transaction (its slot and generation).
    Merge { slot: u32, gen: u16 },
}

/// Local messages being written (by id), and those waiting to be offered again.
#[derive(Default)]
pub(super) struct Locals {
    writing: HashMap<u64, LocalMessage>,
    retry: Vec<(u64, LocalMessage)>,
    next: u64,
}

impl<B: Backend> Shard<B> {
    /// Encodes a message's record and hands it to the spool machine under `ticket`.
    pub(super) fn place_record(
        &mut self,
        store: &mut Spooling,
        client_ip: IpAddr,
        ticket: u64,
        after: Vec<(Outcome, Arc<Segment>)>,
    ) {
        let env = Envelope {
            queued_unix_ms: store.queued_unix_ms,
            client_ip,
            mail_from: &store.mail_from,
            envid: &store.envid,
            vmta: &store.vmta,
            recipients: store.recipients.iter().map(String::as_str).collect(),
            job_id: &store.job_id,
            extras: codec::Extras {
                helo: &store.helo,
                auth_user: &store.smtp_user,
                flags: store.flags,
                rcpt_dsn: store
                    .rcpt_dsn
                    .iter()
                    .map(|(index, notify, orcpt)| codec::RcptDsn { index: *index, notify: *notify, orcpt })
                    .collect(),
            },
        };
        (store.head, store.tail) = codec::encode_message_parts(&env, &store.data);
        let total = (store.head.len() + store.data.len() + store.tail.len()) as u64;
        if !crate::FENCE.holds() {
            // This host may no longer own its spool (`spool-takeover`): 4xx, nothing written.
            return self.spool.refuse(ticket, after);
        }
        self.spool.submit(ticket, total, store.recipients.len() as u32, after, self.now.ms());
    }

    /// The store behind a spool ticket (a connection's, or a local message's).
    fn spooling_of(&mut self, ticket: u64) -> &mut Spooling {
        if ticket & LOCAL_TICKET != 0 {
            return &mut self
                .local
                .writing
                .get_mut(&(ticket & !LOCAL_TICKET))
                .expect("a local message in flight")
                .store;
        }
        let (slot, gen) = ((ticket & 0xffff_ffff) as u32, (ticket >> 32) as u16);
        let c = self.ins.get_gen(slot, gen).expect("a storing connection stays until the spool answers");
        c.store.as_deref_mut().expect("a store in flight")
    }

    /// Carries out the spool machine's operations and answers its events; returns whether
    /// there were any.
    pub(super) fn drain_spool(&mut self) -> bool {
        let mut any = false;
        loop {
            if let Some(op) = self.spool.poll_op() {
                any = true;
                self.spool_op(op);
                continue;
            }
            let Some(SpoolEvent::Stored { ticket, durable, at, after }) = self.spool.poll_event() else { return any };
            any = true;
            if ticket & LOCAL_TICKET != 0 {
                self.local_spooled(ticket & !LOCAL_TICKET, durable, at, after);
            } else {
                self.on_spooled((ticket & 0xffff_ffff) as u32, (ticket >> 32) as u16, durable, at);
            }
        }
    }

    fn spool_op(&mut self, op: SpoolOp<Arc<Segment>>) {
        let now_ms = self.now.ms();
        let sync = self.shared.config.spool_sync;
        match op {
            SpoolOp::CreateSegment { seq, bytes } => {
                let created = self.create_segment(seq, bytes, sync);
                if let Err(e) = &created {
                    tracing::error!(shard = self.id, error = %e, "cannot create spool segment; answering 452 for a second");
                }
                self.spool.segment_created(seq, created.ok(), now_ms);
                self.zero_ahead(seq);
            }
            SpoolOp::Write { ticket, segment, offset } => {
                // Copied into the segment's memory: no write call, nothing for a kernel worker;
                // the segment's next sync makes it durable (issue 24).
                let s = self.spooling_of(ticket);
                // (A host that may no longer own its spool was refused in `place_record`, in the
                // same turn: the lease outlives the fence by half its length.)
                let copied = segment.append(offset, [&s.head, &s.data, &s.tail]);
                let ok = self.faults.apply(Io::SegWrite, if copied { 1 } else { -libc::ENOSPC }) > 0;
                if !ok {
                    tracing::error!(shard = self.id, seq = segment.seq, offset, copied, "segment write failed");
                }
                self.spool.written(ticket, ok);
                self.zero_ahead(segment.seq);
            }
            SpoolOp::SyncSegment { segment } if sync && self.direct.contains_key(&segment.seq) => {
                self.sync_direct(segment.seq)
            }
            SpoolOp::SyncSegment { segment } if sync => {
                self.submit(Sub::Fdatasync { fd: segment.fd() }, ud(Op::SegSync, 0, segment.seq));
            }
            // `spool-sync no` (benchmarks only): written counts as durable.
            SpoolOp::SyncSegment { segment } => self.spool.segment_synced(segment.seq, true),
            SpoolOp::DeleteSegment { segment } => segment.delete(),
            SpoolOp::CreateJournal { journal, bytes } => {
                let created = JournalFile::create(&self.dir, journal, bytes);
                match created {
                    Ok(f) => {
                        self.journals.insert(journal, f);
                    }
                    Err(e) => {
                        tracing::error!(shard = self.id, error = %e, "cannot create journal; outcomes stay pending")
                    }
                }
                let ok = self.journals.contains_key(&journal);
                self.spool.journal_created(journal, ok, now_ms);
            }
            SpoolOp::WriteJournal { batch, journal, offset } => {
                let fd = self.journals[&journal].fd();
                let len = self.spool.batch_bytes(batch).len();
                self.jnl_writes.insert(batch, (fd, offset, Resume::new(len)));
                self.submit_journal_write(batch);
            }
            SpoolOp::SyncJournal { journal } if sync => {
                let fd = self.journals[&journal].fd();
                self.submit(Sub::Fdatasync { fd }, ud(Op::JnlSync, 0, journal.seq));
            }
            SpoolOp::SyncJournal { journal } => self.spool.journal_synced(journal, true, now_ms),
            SpoolOp::DeleteJournal { journal } => {
                self.journals.remove(&journal);
                crate::spool_files::delete_journal(&self.shared.config.spool_dir, journal);
            }
        }
    }

    /// A new segment: direct where the backend gains by it, the spool syncs and the
    /// filesystem takes `O_DIRECT` (else mapped).
    fn create_segment(&mut self, seq: u64, bytes: u64, sync: bool) -> std::io::Result<Arc<Segment>> {
        static NO_DIRECT_TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if sync && self.io.direct_spool() && bytes % DIRECT_ALIGN == 0 {
            match Segment::create_direct(&self.dir, self.id, seq, bytes) {
                Ok(segment) => {
                    let zeroed_to = spool_files::zero_step(bytes);
                    let d = Direct {
                        segment: segment.clone(),
                        writing: None,
                        synced_to: 0,
                        zeroed_to,
                        zeroing: None,
                        held: false,
                        idle_since_ms: None,
                    };
                    self.direct.insert(seq, d);
                    return Ok(segment);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    if !NO_DIRECT_TOLD.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::info!(dir = %self.dir.display(), "the spool's filesystem takes no O_DIRECT: segments are synced with fdatasync");
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Segment::create(&self.dir, self.id, seq, bytes)
    }

    /// Makes a direct segment's records so far durable: one `RWF_DSYNC` write of their
    /// blocks from the last write's last block on.
    fn sync_direct(&mut self, seq: u64) {
        let d = self.direct.get_mut(&seq).expect("a direct segment");
        let records_end = d.segment.appended();
        let (from, to) = (align_down(d.synced_to), align_up(records_end).min(d.segment.size()));
        if d.zeroing.is_some_and(|z| to > z) {
            d.held = true;
            return;
        }
        if records_end == d.synced_to {
            // The last write covered these records too (it takes every record copied in by
            // then, some of the next group's among them): durable already.
            return self.spool.segment_synced(seq, true);
        }
        d.segment.zero_tail(to);
        d.writing = Some((from, to, records_end));
        self.submit_direct(seq);
    }

    fn submit_direct(&mut self, seq: u64) {
        let d = &self.direct[&seq];
        let (from, to, _) = d.writing.expect("a direct write");
        assert!(from < to, "an empty direct write ({from}..{to}) would complete with 0, a failure");
        let (buf, len) = d.segment.direct_range(from, to.min(from + (1 << 30)));
        let fd = d.segment.fd();
        // SAFETY (the submit contract): `buf` is the segment's memory, kept alive by `Direct`.
        self.submit(Sub::WriteDurable { fd, buf, len, offset: from }, ud(Op::SegSync, 0, seq));
    }

    /// Zeros written ahead of a direct segment's records (one write at a time, never over a
    /// block a durable write covers or will cover before it is done: those end at the
    /// records' end, rounded up, and a sync reaching into the zeros waits for them).
    fn zero_ahead(&mut self, seq: u64) {
        let Some(d) = self.direct.get_mut(&seq) else { return };
        let (len, records_to) = (d.segment.size(), align_up(d.segment.appended()));
        if d.zeroing.is_some()
            || d.zeroed_to >= len
            || d.zeroed_to >= records_to + ZEROS_AHEAD * spool_files::zero_step(len)
        {
            return;
        }
        let from = d.zeroed_to.max(records_to);
        let to = (from + spool_files::zero_step(len)).min(len);
        if from >= to {
            return;
        }
        (d.zeroing, d.zeroed_to) = (Some(from), to);
        let fd = d.segment.fd();
        let buf = spool_files::zeros().as_ptr();
        // SAFETY (the submit contract): static memory.
        self.submit(Sub::Write { fd, buf, len: (to - from) as u32, offset: from }, ud(Op::SegZero, 0, seq));
    }

    pub(super) fn on_seg_zero(&mut self, seq: u64, result: i32) {
        let Some(d) = self.direct.get_mut(&seq) else { return };
        let from = d.zeroing.take().expect("a zero write in flight");
        if result < 0 || (result as u64) < d.zeroed_to - from {
            // Records go to blocks never written: slower (their writes convert them), as safe.
            tracing::debug!(shard = self.id, seq, result, "zeros ahead of a direct segment's records not written");
            d.zeroed_to = d.segment.size();
        }
        if std::mem::take(&mut d.held) {
            self.sync_direct(seq);
        }
        self.zero_ahead(seq);
    }

    /// Direct segments sealed with nothing in flight leave `direct`: at once when deleted,
    /// else `SETTLE_AFTER_MS` later (their memory becomes the file's mapping: `settle`).
    pub(super) fn settle_direct(&mut self) {
        let now_ms = self.now.ms();
        self.direct.retain(|_, d| {
            let sealed = sluice_spool::SegmentFile::life(&*d.segment).is_sealed();
            if d.writing.is_some() || d.zeroing.is_some() || d.held || !sealed {
                return true;
            }
            if d.segment.is_deleted() {
                return false;
            }
            let since = *d.idle_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) < SETTLE_AFTER_MS {
                return true;
            }
            d.segment.settle();
            false
        });
    }

    pub(super) fn on_seg_sync(&mut self, seq: u64, result: i32) {
        if let Some(d) = self.direct.get_mut(&seq).filter(|d| d.writing.is_some()) {
            let (from, to, records_end) = d.writing.take().expect("checked");
            if result > 0 && from + (result as u64) < to {
                // Short: the rest, from the block where it stopped (durable when all of it is).
                d.writing = Some((align_down(from + result as u64), to, records_end));
                return self.submit_direct(seq);
            }
            if result > 0 {
                d.synced_to = records_end;
            } else {
                tracing::error!(
                    shard = self.id,
                    seq,
                    result,
                    from,
                    to,
                    "segment sync failed (RWF_DSYNC write); segment retired"
                );
            }
            self.spool.segment_synced(seq, result > 0);
            return self.zero_ahead(seq);
        }
        if result < 0 {
            tracing::error!(shard = self.id, seq, errno = -result, "segment sync failed (fdatasync); segment retired");
        }
        self.spool.segment_synced(seq, result >= 0);
    }

    fn submit_journal_write(&mut self, batch: u64) {
        let (fd, offset, written) = self.jnl_writes[&batch];
        let [rest] = written.rest([self.spool.batch_bytes(batch)]);
        let sub = Sub::Write { fd, buf: rest.as_ptr(), len: rest.len() as u32, offset: offset + written.done() as u64 };
        self.submit(sub, ud(Op::JnlWrite, 0, batch));
    }

    pub(super) fn on_jnl_write(&mut self, batch: u64, result: i32) {
        let w = self.jnl_writes.get_mut(&batch).expect("a journal write in flight");
        if result > 0 && !w.2.advance(result as usize) {
            return self.submit_journal_write(batch);
        }
        let ok = result > 0 && w.2.is_done();
        self.jnl_writes.remove(&batch);
        if !ok {
            tracing::error!(shard = self.id, result, "journal write failed; its entries go to a new journal");
        }
        self.spool.journal_written(batch, ok, self.now.ms());
    }

    pub(super) fn on_jnl_sync(&mut self, seq: u64, result: i32) {
        if result < 0 {
            tracing::error!(shard = self.id, result, "journal fsync failed; its entries go to a new journal");
        }
        let journal = sluice_spool::JournalId { shard: self.id, seq };
        self.spool.journal_synced(journal, result >= 0, self.now.ms());
    }

    /// A durable message's jobs, one per recipient domain, to their queues.
    pub(super) fn queue_spooled(&mut self, store: &Spooling, segment: Arc<Segment>, offset: u64) {
        let msg = MsgRef { segment, offset };
        let mut jobs: Vec<(String, Job<MsgRef>)> = Vec::new();
        // `verp-default`: a job per recipient, each with its own return path.
        let verp = store.flags & codec::flags::VERP != 0;
        for (i, address) in store.recipients.iter().enumerate() {
            let domain = domain_of(address);
            let rcpt = Recipient { index: i as u32, address: address.clone() };
            match jobs.iter_mut().find(|(d, _)| *d == domain && !verp) {
                Some((_, job)) => job.rcpts.push(rcpt),
                None => {
                    let mail_from = match verp {
                        true => sluice_engine::smtp::addr::verp(&store.mail_from, address),
                        false => store.mail_from.clone(),
                    };
                    let job = Job {
                        msg: msg.clone(),
                        mail_from,
                        rcpts: vec![rcpt],
                        attempts: 1,
                        first_attempt_unix_ms: 0,
                        queued_unix_ms: store.queued_unix_ms,
                        size: store.data.len() as u64,
                        job_id: store.job_id.clone(),
                        drew_421: Vec::new(),
                    };
                    jobs.push((domain, job));
                }
            }
        }
        let class = sluice_engine::route::header_class(&self.shared.config, &store.data);
        for (domain, job) in jobs {
            self.sched.dispatch(&domain, store.vmta.clone(), job, class.as_deref());
        }
    }

    /// A recipient's final outcome, to journal.
    pub(super) fn journal_outcome(&mut self, msg: MsgRef, rcpt: u32) {
        let o = Outcome { seg_shard: msg.segment.shard, seg_seq: msg.segment.seq, offset: msg.offset, rcpt };
        self.spool.record_outcome(o, msg.segment);
    }

    // ---- Messages sluice makes ------------------------------------------------------

    /// Makes the DSN for `failed` recipients of `msg` and spools it; their journal entries
    /// wait for it.
    pub(super) fn spool_dsn(&mut self, msg: MsgRef, failed: Vec<(u32, dsn::Failed)>) {
        let now = self.now;
        let view = msg.segment.message(msg.offset);
        self.local.next += 1;
        let id = format!("{:x}.{:x}.{:x}.{:x}", self.id, msg.segment.seq, msg.offset, self.local.next);
        let (rcpts, failed): (Vec<u32>, Vec<dsn::Failed>) = failed.into_iter().unzip();
        let data = dsn::build(&dsn::Report {
            reporting_mta: &self.shared.config.host_name,
            sender: view.envelope.mail_from,
            arrival_unix_ms: view.envelope.queued_unix_ms,
            now_unix_ms: now.unix_ms,
            id: &id,
            original: view.data,
            failed: &failed,
            envid: view.envelope.envid,
            full: view.envelope.extras.flags & codec::flags::RET_FULL != 0,
        });
        let vmta = if view.envelope.vmta.is_empty() { DEFAULT_VMTA } else { view.envelope.vmta };
        // A DSN has the null sender: nothing bounces back.
        let to = view.envelope.mail_from.to_string();
        let store = Spooling::boxed(data, String::new(), vec![to], now.unix_ms, vmta.to_string());
        tracing::info!(shard = self.id, to = %store.recipients[0], recipients = failed.len(), "making a DSN");
        let seg = &msg.segment;
        let after = rcpts
            .into_iter()
            .map(|rcpt| (Outcome { seg_shard: seg.shard, seg_seq: seg.seq, offset: msg.offset, rcpt }, seg.clone()))
            .collect();
        let client_ip = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        self.write_local(LocalMessage { store, client_ip, after, notify: Notify::Nobody });
    }

    /// A message injected over HTTP (signed, spooled like a DSN, and answered once durable),
    /// or moved from a deliver-only spool (as it was).
    pub(super) fn inject(&mut self, inj: Injection) {
        let mut m = Message {
            mail_from: inj.mail_from,
            recipients: inj.recipients,
            data: inj.data,
            job_id: inj.job_id,
            envid: inj.envid.unwrap_or_default(),
            flags: codec::flags::API,
            ..Message::default()
        };
        let mut kept = None;
        let (vmta, helo) = match inj.moved {
            Some(moved) => {
                (m.envid, m.flags) = (moved.envid, moved.flags);
                kept = Some((moved.auth_user, moved.rcpt_dsn));
                (moved.vmta, moved.helo)
            }
            None => {
                let config = self.shared.config.clone();
                let policy = config.policy_for(inj.client_ip, inj.source.as_slice());
                let way = Way {
                    vmta: inj.vmta.as_deref(),
                    restrictions: &policy.restrictions,
                    ours_first: false,
                    number: self.next_number(),
                    reports: true,
                };
                let prepared = prepare::prepare(&self.shared.world(), &policy, &mut m, &way, self.now.unix_ms);
                let Prepared { vmta, records, suppress } = match prepared {
                    Ok(p) => p,
                    Err(reply) => {
                        let _ = inj.done.send(Err(reply));
                        return;
                    }
                };
                for r in records {
                    self.record(r);
                }
                for add in suppress {
                    self.send_suppress(add, None);
                }
                if m.recipients.is_empty() {
                    let _ = inj.done.send(Ok("report".into()));
                    return;
                }
                self.sign(&m.recipients, &vmta, &mut m.data);
                // The name the submission path goes by (`http`, `pickup`): the srcMta column's.
                (vmta, inj.src_mta.split(' ').next().unwrap_or("http").to_string())
            }
        };
        let mut store = Spooling::boxed(m.data, m.mail_from, m.recipients, self.now.unix_ms, vmta);
        store.src_mta = inj.src_mta;
        store.helo = helo;
        store.rcv_source_ip = inj.client_ip.to_string();
        store.job_id = m.job_id;
        store.envid = m.envid;
        store.flags = m.flags;
        if let Some((auth_user, rcpt_dsn)) = kept {
            (store.smtp_user, store.rcpt_dsn) = (auth_user, rcpt_dsn);
        }
        let client_ip = inj.client_ip;
        self.write_local(LocalMessage { store, client_ip, after: Vec::new(), notify: Notify::Caller(inj.done) });
    }

    fn write_local(&mut self, mut local: LocalMessage) {
        self.local.next += 1;
        let id = self.local.next;
        let client_ip = local.client_ip;
        let after = std::mem::take(&mut local.after);
        let mut store = std::mem::replace(
            &mut local.store,
            Spooling::boxed(Vec::new(), String::new(), Vec::new(), 0, String::new()),
        );
        self.place_record(&mut store, client_ip, LOCAL_TICKET | id, after);
        local.store = store;
        self.local.writing.insert(id, local);
    }

    /// The spool answered for a local message: durable, it is queued for delivery (an
    /// injection's client is told its id); refused, a DSN is offered again shortly and an
    /// injection's client told to try again.
    fn local_spooled(
        &mut self,
        id: u64,
        durable: bool,
        at: Option<(Arc<Segment>, u64)>,
        after: Vec<(Outcome, Arc<Segment>)>,
    ) {
        let mut local = self.local.writing.remove(&id).expect("a local message for the ticket");
        let notify = std::mem::replace(&mut local.notify, Notify::Nobody);
        match (durable, at) {
            (true, Some((segment, offset))) => {
                let id = format!("{:x}.{:x}.{:x}", self.id, segment.seq, offset);
                match notify {
                    Notify::Nobody => {}
                    Notify::Caller(tx) => {
                        self.received(&local.store);
                        let _ = tx.send(Ok(id));
                    }
                    Notify::Merge { slot, gen } => {
                        self.received(&local.store);
                        self.merge_spooled(slot, gen, Some(id));
                    }
                }
                self.queue_spooled(&local.store, segment, offset);
            }
            _ => match notify {
                Notify::Nobody => {
                    local.after = after;
                    self.local.retry.push((self.now.ms() + LOCAL_RETRY_MS, local));
                }
                Notify::Caller(tx) => {
                    let _ = tx.send(Err("the spool cannot take it now (disk full or failing); try again".into()));
                }
                Notify::Merge { slot, gen } => self.merge_spooled(slot, gen, None),
            },
        }
    }

    /// A mail-merge message submitted by `submit_merge` (spool_io's caller) is on disk, or
    /// failed; `write_local` is how each goes.
    pub(super) fn write_merge_message(&mut self, store: Box<Spooling>, client_ip: IpAddr, slot: u32, gen: u16) {
        self.write_local(LocalMessage { store, client_ip, after: Vec::new(), notify: Notify::Merge { slot, gen } });
    }

    /// DSNs the spool could not take: offered again.
    pub(super) fn retry_locals(&mut self) {
        let now_ms = self.now.ms();
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.local.retry).into_iter().partition(|(t, _)| *t <= now_ms);
        self.local.retry = later;
        for (_, local) in due {
            self.write_local(local);
        }
    }
}
