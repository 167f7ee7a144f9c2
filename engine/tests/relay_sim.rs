//! Deterministic simulation of the whole relay path in one seeded world: injecting clients
//! hand messages to the relay's SMTP server over a faulty network; the relay spools them
//! (group commit over `memdisk`, which loses unsynced sectors at a crash), answers 250 only
//! once a message is durable, queues it, and delivers it with its SMTP client to a receiving
//! server over another faulty network, journaling each final outcome and deleting spool
//! files whose work is done. The relay crashes at random moments and recovers from what the
//! disk kept, as a restarted daemon does; writes and fsyncs fail now and then, and the disk
//! fills (ENOSPC when a segment or journal is created).
//!
//! What runs is the product's code: the engine's server session, client and queue, the
//! spool's record format, group commit (`Appender`, `FileCommit`), recovery (`recover`) and
//! file lifetimes (`SegmentLife`, `JournalRefs`). The glue between them mirrors the shard
//! (`netio/src/shard.rs`, `netio/src/store.rs`), whose io_uring calls this stands in for.
//!
//! The checker: every message the relay acknowledged reaches the receiver, byte for byte, for
//! every recipient the receiver takes (the others bounce); nothing reaches it more often than
//! explained by the one case SMTP cannot tell apart (a reset between the receiver's 250 and the
//! sender reading it, RFC 1047), by an injector resending after such a reset, by a crash before
//! a delivery's journal entry was durable (or a journal write or fsync that failed), or by a
//! refused message that had reached the disk all the same. A failure prints its seed.

mod common;

use common::net::{start_or_quit, Wire};
use sluice_config::DomainSettings;
use sluice_engine::acct::Kind;
use sluice_engine::queue::{AttemptInfo, Fate, Job, Queue, Recipient};
use sluice_engine::smtp::client::{Client, ClientEvent};
use sluice_engine::smtp::reply::Reply;
use sluice_engine::smtp::server::{Session, SessionPolicy};
use sluice_engine::suppress::AddressList;
use sluice_spool::codec::{self, Decoded, Envelope, FileHeader, FileKind, Outcome, FILE_HEADER_BYTES, OUTCOME_BYTES};
use sluice_spool::memdisk::{MemDisk, Rng};
use sluice_spool::{
    journal_name, recover, segment_name, Appender, FileCommit, JournalBackoff, JournalRefs, SegmentLife, TicketResult,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const SEEDS: u64 = 1000;
const MESSAGES: u64 = 14;
const INJECTORS: usize = 2;
const STEPS_MAX: usize = 400_000;
const CRASHES_MAX: u32 = 6;
const SEGMENT_BYTES: u64 = 1 << 16;
const JOURNAL_BYTES: usize = 4096;
/// The disk: room for a few segments and journals, so it fills now and then.
const DISK_BYTES: usize = 5 * SEGMENT_BYTES as usize;
/// One in this many writes and fsyncs fails.
const IO_FAILURE_ODDS: u64 = 40;

/// A message's place in the spool (what the queue carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Loc {
    seq: u64,
    offset: u64,
}

/// The message an injector sends: CRLF lines, dots doubled (as on the wire and in the
/// spool), a few KiB to a few tens of KiB so segments rotate.
fn body(id: u64) -> Vec<u8> {
    let filler = "y".repeat(70);
    let lines = 40 + (id as usize * 131) % 300;
    let mut b = format!("Subject: message {id}\r\n\r\n..a dot line\r\n").into_bytes();
    for i in 0..lines {
        b.extend_from_slice(format!("{id}.{i} {filler}\r\n").as_bytes());
    }
    b
}

/// The message id in data that went through the relay (headers were added on top).
fn id_of(data: &[u8]) -> u64 {
    let at = memchr_find(data, b"Subject: message ").expect("a simulated message") + 17;
    let end = at + data[at..].iter().position(|b| !b.is_ascii_digit()).expect("digits end");
    std::str::from_utf8(&data[at..end]).expect("ascii").parse().expect("an id")
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Recipients: most taken at once; `gone…` refused for good (5xx); `later…` deferred (451)
/// until `LATER_UNTIL_MS`, so old messages wait in the spool while new ones come and go.
fn recipients(rng: &mut Rng, id: u64) -> Vec<String> {
    (0..1 + rng.below(4))
        .map(|i| {
            let kind = match rng.below(12) {
                0 | 1 => "gone",
                2 => "later",
                _ => "user",
            };
            format!("{kind}{id}-{i}@dest.test")
        })
        .collect()
}

const LATER_UNTIL_MS: u64 = 100_000;
/// Messages are injected over this long (ms), so the relay restarts between them.
const INJECT_OVER_MS: u64 = 150_000;

/// What the injectors and the receiver know; survives the relay's crashes.
#[derive(Default)]
struct Outside {
    messages: Vec<Vec<String>>,
    /// When each message is handed to an injector.
    inject_at: Vec<u64>,
    /// The injector read a 250 for it: done.
    injected: HashSet<u64>,
    /// On an injector connection now.
    sending: HashSet<u64>,
    /// The receiver accepted (message, recipient) this many times.
    received: HashMap<(u64, String), u32>,
}

impl Outside {
    /// Not yet injected, nor on a connection now.
    fn waiting(&self, id: &u64) -> bool {
        !self.injected.contains(id) && !self.sending.contains(id)
    }

    fn next_to_inject(&self, now: u64) -> Option<u64> {
        (0..MESSAGES).find(|id| self.waiting(id) && self.inject_at[*id as usize] <= now)
    }
}

/// The checker's ledger.
#[derive(Default)]
struct Ledger {
    /// Copies of a message the relay acknowledged with 250 (an injector that missed the 250
    /// sends again: a second copy, rightly delivered twice).
    acked: HashMap<u64, u32>,
    acked_locs: HashSet<Loc>,
    /// Extra deliveries each (message, recipient) may get, and why.
    explained: HashMap<(u64, String), u32>,
    /// (message, recipient) the relay recorded delivered, and bounced.
    delivered: HashSet<(u64, String)>,
    bounced: HashSet<(u64, String)>,
}

impl Ledger {
    fn explain(&mut self, id: u64, rcpts: impl IntoIterator<Item = String>) {
        for r in rcpts {
            *self.explained.entry((id, r)).or_default() += 1;
        }
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    crashes: u64,
    acked: u64,
    refused_452: u64,
    disk_full: u64,
    failed_writes: u64,
    failed_syncs: u64,
    failed_journal_io: u64,
    resets: u64,
    torn_records: u64,
    delivered: u64,
    bounced: u64,
    duplicates: u64,
    segments_deleted: u64,
    journals_retired: u64,
}

/// An injector's connection to the relay.
struct InConn {
    wire: Wire,
    /// The message the injector is sending.
    msg: Option<u64>,
    /// The relay is storing a message from this connection (its ticket).
    storing: Option<u64>,
    /// The peer is gone (reset); the relay side lingers until its store answers.
    dead: bool,
}

/// The relay's delivery connection to the receiver.
struct OutConn {
    wire: Wire,
    job: Option<Job<Loc>>,
    /// The receiver accepted the data; the relay has not read the reply.
    accepted_unread: bool,
}

struct Store {
    slot: usize,
    loc: Loc,
    id: u64,
    rcpts: Vec<String>,
    mail_from: String,
    size: u64,
    /// Its segment exists (creation did not fail).
    placed: bool,
}

struct SegWrite {
    ticket: u64,
    loc: Loc,
    bytes: Vec<u8>,
}

struct Jnl {
    seq: u64,
    commit: FileCommit,
    next_offset: usize,
    refs: JournalRefs,
}

struct JnlWrite {
    batch: u64,
    jseq: u64,
    offset: usize,
    bytes: Vec<u8>,
}

/// (message, recipient) delivered.
type Delivery = (u64, String);

/// Everything the relay process holds in memory: gone at a crash.
struct Relay {
    appender: Appender,
    segments: HashMap<u64, SegmentLife>,
    seg_writes: Vec<SegWrite>,
    stores: HashMap<u64, Store>,
    refusals: Vec<u64>,
    broken_until: u64,
    next_ticket: u64,
    journal: Option<Jnl>,
    closed_journals: Vec<Jnl>,
    next_journal_seq: u64,
    /// When a new journal may start after journal failures.
    jnl_backoff: JournalBackoff,
    jnl_pending: Vec<Outcome>,
    /// Per pending entry: the delivery it records, if a delivery (for the ledger).
    jnl_pending_what: Vec<Option<Delivery>>,
    jnl_writes: Vec<JnlWrite>,
    /// Batches in flight: their entries and the deliveries they record.
    jnl_batches: HashMap<u64, (Vec<Outcome>, Vec<Option<Delivery>>)>,
    next_batch: u64,
    queue: Queue<Loc>,
    inbound: Vec<Option<InConn>>,
    outbound: Option<OutConn>,
    sessions: u64,
}

struct World {
    seed: u64,
    rng: Rng,
    now: u64,
    disk: MemDisk,
    outside: Outside,
    ledger: Ledger,
    stats: Stats,
    settings: DomainSettings,
    sink_policy: SessionPolicy,
}

fn relay_policy() -> SessionPolicy {
    SessionPolicy { relay_allowed: true, max_rcpt_per_message: 100, ..SessionPolicy::default() }
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let messages = (0..MESSAGES).map(|id| recipients(&mut rng, id)).collect();
        let inject_at = (0..MESSAGES).map(|_| 1_000 + rng.below(INJECT_OVER_MS)).collect();
        let mut refused = AddressList::new("gone");
        refused.regexes.push(regex::Regex::new("^gone").expect("valid"));
        World {
            seed,
            rng,
            now: 1_000,
            disk: MemDisk::default(),
            outside: Outside { messages, inject_at, ..Outside::default() },
            ledger: Ledger::default(),
            stats: Stats::default(),
            settings: DomainSettings {
                retry_after: vec![Duration::from_secs(1)],
                bounce_after: Duration::from_secs(3600),
                max_rcpt_per_message: 3,
                ..DomainSettings::default()
            },
            sink_policy: SessionPolicy {
                relay_allowed: true,
                suppression: vec![Arc::new(refused)],
                max_rcpt_per_message: 100,
                ..SessionPolicy::default()
            },
        }
    }

    fn fails(&mut self) -> bool {
        self.rng.below(IO_FAILURE_ODDS) == 0
    }

    /// A file of `size` bytes is created (preallocated, header written), or the disk is full.
    fn create_file(&mut self, name: &str, size: usize, header: FileHeader) -> bool {
        if self.disk.used_bytes() + size > DISK_BYTES {
            self.stats.disk_full += 1;
            return false;
        }
        self.disk.create(name, size);
        self.disk.write(name, 0, &codec::encode_file_header(header));
        true
    }

    // ---- Recovery (store::recover, then Shard::new) -------------------------------------

    /// The relay (re)starts: scans the disk, applies the journals, deletes what is finished
    /// and queues the rest.
    fn start_relay(&mut self) -> Relay {
        let mut segments = Vec::new();
        let mut journals = Vec::new();
        let mut file_seqs = Vec::new();
        for name in self.disk.names() {
            let seq = u64::from_str_radix(name.split('.').next().expect("a stem"), 16).expect("hex stem");
            file_seqs.push(seq);
            if name.ends_with(".seg") {
                match recover::scan_segment(self.disk.read(&name)).expect("a segment") {
                    Some(s) => {
                        self.stats.torn_records += u64::from(s.torn_at.is_some());
                        segments.push(s);
                    }
                    None => self.forget_segment(seq),
                }
            } else {
                let (_, jseq, outcomes) = recover::scan_journal(self.disk.read(&name)).expect("a journal");
                journals.push((jseq, outcomes));
            }
        }
        let outcomes: Vec<Outcome> = journals.iter().flat_map(|j| j.1.iter().copied()).collect();
        let plan = recover::plan(&segments, &outcomes);
        let next_seq = recover::next_seq(&file_seqs, &outcomes, 0);
        let mut lives: HashMap<u64, SegmentLife> = segments.iter().map(|s| (s.seq, SegmentLife::default())).collect();
        let mut queue: Queue<Loc> = Queue::new("dest.test", "default", self.settings.clone());
        for p in &plan.pending {
            lives[&p.seg_seq].add_live(p.pending.len() as u64);
            let bytes = self.disk.read(&segment_name(p.seg_seq));
            let Decoded::Record(view, len) = codec::decode_message(&bytes[p.offset as usize..]) else {
                panic!("seed {}: a planned record does not decode", self.seed)
            };
            let loc = Loc { seq: p.seg_seq, offset: p.offset };
            let id = id_of(view.data);
            if !self.ledger.acked_locs.contains(&loc) {
                // Refused (its write or fsync failed) but on disk all the same: delivered now,
                // and the injector sends it again.
                self.ledger.explain(id, p.pending.iter().map(|&r| view.envelope.recipients[r as usize].to_string()));
            }
            queue.push(Job {
                msg: loc,
                mail_from: view.envelope.mail_from.to_string(),
                rcpts: p
                    .pending
                    .iter()
                    .map(|&r| Recipient { index: r, address: view.envelope.recipients[r as usize].to_string() })
                    .collect(),
                attempts: 1,
                queued_unix_ms: view.envelope.queued_unix_ms,
                size: len as u64,
                job_id: String::new(),
            });
        }
        for (seq, life) in &lives {
            if life.seal() {
                self.forget_segment(*seq);
            }
        }
        lives.retain(|_, l| !l.is_deleted());
        let mut closed_journals = Vec::new();
        for (jseq, outcomes) in journals {
            let mut j = Jnl {
                seq: jseq,
                commit: FileCommit::default(),
                next_offset: JOURNAL_BYTES,
                refs: JournalRefs::default(),
            };
            for o in outcomes {
                if let Some(life) = lives.get(&o.seg_seq) {
                    j.refs.reference(o.seg_shard, o.seg_seq, life);
                }
            }
            if j.refs.all_gone() {
                self.disk.remove(&journal_name(jseq));
                self.stats.journals_retired += 1;
            } else {
                closed_journals.push(j);
            }
        }
        Relay {
            appender: Appender::new(SEGMENT_BYTES, next_seq),
            segments: lives,
            seg_writes: Vec::new(),
            stores: HashMap::new(),
            refusals: Vec::new(),
            broken_until: 0,
            next_ticket: 1,
            journal: None,
            closed_journals,
            next_journal_seq: next_seq,
            jnl_backoff: JournalBackoff::default(),
            jnl_pending: Vec::new(),
            jnl_pending_what: Vec::new(),
            jnl_writes: Vec::new(),
            jnl_batches: HashMap::new(),
            next_batch: 1,
            queue,
            inbound: (0..INJECTORS).map(|_| None).collect(),
            outbound: None,
            sessions: 0,
        }
    }

    /// Power loss: memory gone, unsynced sectors kept or lost at random.
    fn crash(&mut self, relay: Relay) {
        self.stats.crashes += 1;
        for c in relay.inbound.into_iter().flatten() {
            if let Some(id) = c.msg {
                self.outside.sending.remove(&id);
            }
        }
        if let Some(c) = relay.outbound {
            if let (Some(job), true) = (c.job, c.accepted_unread) {
                let id = self.id_at(job.msg);
                self.ledger.explain(id, job.rcpts.into_iter().map(|r| r.address));
            }
        }
        // Deliveries whose journal entries were not yet durable are made again.
        let undurable = relay.jnl_pending_what.into_iter().chain(relay.jnl_batches.into_values().flat_map(|b| b.1));
        for (id, rcpt) in undurable.flatten() {
            self.ledger.explain(id, [rcpt]);
        }
        self.disk.crash(&mut self.rng);
    }

    fn id_at(&self, loc: Loc) -> u64 {
        match codec::decode_message(&self.disk.read(&segment_name(loc.seq))[loc.offset as usize..]) {
            Decoded::Record(view, _) => id_of(view.data),
            other => panic!("seed {}: {loc:?} does not decode: {other:?}", self.seed),
        }
    }

    // ---- Reception (shard: store_message, spool_write, commit_spool, stored) -------------

    fn store_message(&mut self, relay: &mut Relay, slot: usize) {
        let conn = relay.inbound[slot].as_mut().expect("live");
        let m = conn.wire.server.take_message();
        let ticket = relay.next_ticket;
        relay.next_ticket += 1;
        conn.storing = Some(ticket);
        let id = id_of(&m.data);
        let env = Envelope {
            queued_unix_ms: self.now,
            client_ip: "127.0.0.1".parse().expect("an address"),
            mail_from: &m.mail_from,
            envid: "",
            vmta: "",
            recipients: m.recipients.iter().map(String::as_str).collect(),
            job_id: "",
        };
        let mut bytes = Vec::new();
        codec::encode_message(&env, &m.data, &mut bytes);
        let mut store = Store {
            slot,
            loc: Loc { seq: 0, offset: 0 },
            id,
            rcpts: m.recipients.clone(),
            mail_from: m.mail_from.clone(),
            size: m.data.len() as u64,
            placed: false,
        };
        if self.now < relay.broken_until {
            relay.refusals.push(ticket);
            relay.stores.insert(ticket, store);
            return;
        }
        let p = relay.appender.place(bytes.len() as u64, ticket);
        store.loc = Loc { seq: p.seg_seq, offset: p.offset };
        if p.new_segment {
            let size = relay.appender.segment_bytes_for(bytes.len() as u64) as usize;
            let header = FileHeader { kind: FileKind::Segment, shard: 0, seq: p.seg_seq };
            if !self.create_file(&segment_name(p.seg_seq), size, header) {
                relay.broken_until = self.now + 1_000;
                relay.appender.write_completed(p.seg_seq, ticket, false);
                relay.stores.insert(ticket, store);
                return;
            }
            relay.segments.insert(p.seg_seq, SegmentLife::default());
        }
        relay.segments[&p.seg_seq].add_live(store.rcpts.len() as u64);
        store.placed = true;
        relay.seg_writes.push(SegWrite { ticket, loc: store.loc, bytes });
        relay.stores.insert(ticket, store);
    }

    /// A segment write completes (in any order), now and then failing half way.
    fn complete_seg_write(&mut self, relay: &mut Relay) {
        let i = self.rng.below(relay.seg_writes.len() as u64) as usize;
        let w = relay.seg_writes.swap_remove(i);
        let ok = !self.fails();
        let n = if ok { w.bytes.len() } else { w.bytes.len() / 2 };
        self.disk.write(&segment_name(w.loc.seq), w.loc.offset as usize, &w.bytes[..n]);
        self.stats.failed_writes += u64::from(!ok);
        relay.appender.write_completed(w.loc.seq, w.ticket, ok);
    }

    fn commit_spool(&mut self, relay: &mut Relay) {
        let mut seqs = Vec::new();
        relay.appender.poll_syncs(&mut seqs);
        let mut tickets = Vec::new();
        for seq in seqs {
            let ok = !self.fails();
            if ok {
                self.disk.sync(&segment_name(seq));
            }
            self.stats.failed_syncs += u64::from(!ok);
            relay.appender.sync_completed(seq, ok, &mut tickets);
        }
        let mut closed = Vec::new();
        relay.appender.reap(&mut tickets, &mut closed);
        for (ticket, r) in tickets {
            self.stored(relay, ticket, r == TicketResult::Durable);
        }
        for ticket in std::mem::take(&mut relay.refusals) {
            self.stored(relay, ticket, false);
        }
        for seq in closed {
            if relay.segments.get(&seq).is_some_and(SegmentLife::seal) {
                self.delete_segment(relay, seq);
            }
        }
    }

    fn stored(&mut self, relay: &mut Relay, ticket: u64, durable: bool) {
        let store = relay.stores.remove(&ticket).expect("a store in flight");
        let conn = relay.inbound[store.slot].as_mut().expect("a storing connection stays");
        assert_eq!(conn.storing.take(), Some(ticket));
        conn.wire.server.message_stored(durable, "sim");
        if durable {
            self.stats.acked += 1;
            *self.ledger.acked.entry(store.id).or_default() += 1;
            if !self.ledger.acked_locs.insert(store.loc) {
                panic!("seed {}: two messages acknowledged at {:?}", self.seed, store.loc);
            }
            relay.queue.push(Job {
                msg: store.loc,
                mail_from: store.mail_from,
                rcpts: store
                    .rcpts
                    .iter()
                    .enumerate()
                    .map(|(i, a)| Recipient { index: i as u32, address: a.clone() })
                    .collect(),
                attempts: 1,
                queued_unix_ms: self.now,
                size: store.size,
                job_id: String::new(),
            });
        } else {
            self.stats.refused_452 += 1;
            if store.placed {
                // On disk all the same, perhaps: journaled as finished (shard: cancel_refused).
                for rcpt in 0..store.rcpts.len() as u32 {
                    let o = Outcome { seg_shard: 0, seg_seq: store.loc.seq, offset: store.loc.offset, rcpt };
                    relay.jnl_pending.push(o);
                    relay.jnl_pending_what.push(None);
                }
            }
        }
    }

    fn delete_segment(&mut self, relay: &mut Relay, seq: u64) {
        assert!(
            !relay.queue.take_where(|j| j.msg.seq == seq).iter().any(|_| true),
            "seed {}: segment {seq} deleted with jobs queued",
            self.seed
        );
        if let Some(c) = &relay.outbound {
            assert!(
                c.job.as_ref().is_none_or(|j| j.msg.seq != seq),
                "seed {}: segment {seq} deleted mid-delivery",
                self.seed
            );
        }
        self.forget_segment(seq);
        relay.segments.remove(&seq);
    }

    /// A segment file goes: its sequence number may be used again (when no journal names it).
    fn forget_segment(&mut self, seq: u64) {
        self.disk.remove(&segment_name(seq));
        self.ledger.acked_locs.retain(|l| l.seq != seq);
        self.stats.segments_deleted += 1;
    }

    /// The active segment, idle and empty, is sealed (and so deleted).
    fn retire_empty_segment(&mut self, relay: &mut Relay) {
        let Some(seq) = relay.appender.active_seq() else { return };
        if relay.segments.get(&seq).is_none_or(|s| s.live() != 0) || relay.appender.in_flight() {
            return;
        }
        relay.appender.seal_active();
        let (mut tickets, mut closed) = (Vec::new(), Vec::new());
        relay.appender.reap(&mut tickets, &mut closed);
        assert!(tickets.is_empty());
        for seq in closed {
            if relay.segments.get(&seq).is_some_and(SegmentLife::seal) {
                self.delete_segment(relay, seq);
            }
        }
    }

    // ---- Journal (shard: write_journal_batch, on_jnl_write, on_jnl_sync) ----------------

    fn write_journal_batch(&mut self, relay: &mut Relay) {
        let len = relay.jnl_pending.len() * OUTCOME_BYTES;
        let has_room =
            relay.journal.as_ref().is_some_and(|j| !j.commit.poisoned() && j.next_offset + len <= JOURNAL_BYTES);
        if !has_room {
            if !relay.jnl_backoff.may_start_journal(self.now) {
                return;
            }
            let seq = relay.next_journal_seq;
            if !self.create_file(
                &journal_name(seq),
                JOURNAL_BYTES,
                FileHeader { kind: FileKind::Journal, shard: 0, seq },
            ) {
                return; // Outcomes stay pending; tried again later.
            }
            self.disk.sync(&journal_name(seq));
            relay.next_journal_seq += 1;
            let j = Jnl {
                seq,
                commit: FileCommit::default(),
                next_offset: FILE_HEADER_BYTES,
                refs: JournalRefs::default(),
            };
            if let Some(old) = relay.journal.replace(j) {
                relay.closed_journals.push(old);
            }
        }
        let j = relay.journal.as_mut().expect("a journal");
        let batch = relay.next_batch;
        relay.next_batch += 1;
        let mut bytes = Vec::new();
        let entries = std::mem::take(&mut relay.jnl_pending);
        for o in &entries {
            bytes.extend_from_slice(&codec::encode_outcome(o));
            j.refs.reference(o.seg_shard, o.seg_seq, &relay.segments[&o.seg_seq]);
        }
        let offset = j.next_offset;
        j.next_offset += len;
        j.commit.write_submitted(batch);
        relay.jnl_writes.push(JnlWrite { batch, jseq: j.seq, offset, bytes });
        relay.jnl_batches.insert(batch, (entries, std::mem::take(&mut relay.jnl_pending_what)));
    }

    fn journal_mut(relay: &mut Relay, jseq: u64) -> &mut Jnl {
        if relay.journal.as_ref().is_some_and(|j| j.seq == jseq) {
            return relay.journal.as_mut().expect("checked");
        }
        let seqs: Vec<u64> = relay.closed_journals.iter().map(|j| j.seq).collect();
        let active = relay.journal.as_ref().map(|j| j.seq);
        relay
            .closed_journals
            .iter_mut()
            .find(|j| j.seq == jseq)
            .unwrap_or_else(|| panic!("journal {jseq} of a batch: active {active:?}, closed {seqs:?}"))
    }

    fn complete_jnl_write(&mut self, relay: &mut Relay) {
        let i = self.rng.below(relay.jnl_writes.len() as u64) as usize;
        let w = relay.jnl_writes.swap_remove(i);
        let ok = !self.fails();
        let n = if ok { w.bytes.len() } else { w.bytes.len() / 2 };
        self.disk.write(&journal_name(w.jseq), w.offset, &w.bytes[..n]);
        self.stats.failed_journal_io += u64::from(!ok);
        Self::journal_mut(relay, w.jseq).commit.write_completed(w.batch, ok);
        self.settle_journal(relay, w.jseq, None);
    }

    fn sync_journals(&mut self, relay: &mut Relay) {
        let seqs: Vec<u64> = relay.journal.iter().chain(relay.closed_journals.iter()).map(|j| j.seq).collect();
        for jseq in seqs {
            // Settling one may have retired the next.
            let exists = relay.journal.iter().chain(relay.closed_journals.iter()).any(|j| j.seq == jseq);
            if exists && Self::journal_mut(relay, jseq).commit.poll_sync() {
                let ok = !self.fails();
                if ok {
                    self.disk.sync(&journal_name(jseq));
                }
                self.stats.failed_journal_io += u64::from(!ok);
                self.settle_journal(relay, jseq, Some(ok));
            }
        }
    }

    /// A journal's sync finished (or a write failed): durable batches release their
    /// segments; failed ones go back to be written to a new journal.
    fn settle_journal(&mut self, relay: &mut Relay, jseq: u64, sync: Option<bool>) {
        let mut done = Vec::new();
        let j = Self::journal_mut(relay, jseq);
        if let Some(ok) = sync {
            j.commit.sync_completed(ok, &mut done);
        }
        j.commit.take_failed(&mut done);
        let newly_poisoned = j.commit.take_poisoning();
        let durable = done.iter().any(|(_, r)| *r == TicketResult::Durable);
        relay.jnl_backoff.settled(self.now, newly_poisoned, durable);
        for (batch, r) in done {
            let (entries, what) = relay.jnl_batches.remove(&batch).expect("a batch in flight");
            if r == TicketResult::Durable {
                for o in entries {
                    if relay.segments[&o.seg_seq].release(1) {
                        self.delete_segment(relay, o.seg_seq);
                    }
                }
            } else {
                relay.jnl_pending.extend(entries);
                relay.jnl_pending_what.extend(what);
            }
        }
        let mut kept = Vec::new();
        for mut j in std::mem::take(&mut relay.closed_journals) {
            if j.commit.idle() && j.refs.all_gone() {
                self.disk.remove(&journal_name(j.seq));
                self.stats.journals_retired += 1;
            } else {
                kept.push(j);
            }
        }
        relay.closed_journals = kept;
    }

    // ---- Delivery -----------------------------------------------------------------------

    fn settle(&mut self, relay: &mut Relay, job: Job<Loc>, replies: &[Reply]) {
        let loc = job.msg;
        let id = self.id_at(loc);
        for (rcpt, fate, record) in
            relay.queue.settle(job, replies, &AttemptInfo::default(), sluice_engine::time::Now::at_ms(self.now))
        {
            if fate != Fate::Final {
                continue;
            }
            let key = (id, rcpt.address.clone());
            let what = if record.kind == Kind::Delivered {
                self.ledger.delivered.insert(key.clone());
                Some(key)
            } else {
                self.ledger.bounced.insert(key);
                None
            };
            relay.jnl_pending.push(Outcome { seg_shard: 0, seg_seq: loc.seq, offset: loc.offset, rcpt: rcpt.index });
            relay.jnl_pending_what.push(what);
        }
    }

    /// One turn of the delivery connection (as `delivery_sim`, reading bodies from the spool).
    fn drive_outbound(&mut self, relay: &mut Relay) {
        if relay.outbound.is_none() {
            if relay.queue.ready_jobs() == 0 {
                return;
            }
            relay.sessions += 1;
            let mut client = Client::new("relay.test");
            if self.rng.below(2) == 0 {
                client.disable_pipelining();
            }
            let server = Session::new(self.sink_policy.clone(), "192.0.2.7".parse().expect("ip"), relay.sessions);
            relay.outbound = Some(OutConn { wire: Wire::new(client, server), job: None, accepted_unread: false });
        }
        let now = self.now;
        let c = relay.outbound.as_mut().expect("set above");
        c.wire.transmit(&mut self.rng, now);
        if self.rng.below(400) == 0 {
            self.stats.resets += 1;
            let mut c = relay.outbound.take().expect("live");
            if let Some(job) = c.job.take() {
                if c.accepted_unread {
                    let id = self.id_at(job.msg);
                    self.ledger.explain(id, job.rcpts.iter().map(|r| r.address.clone()));
                }
                let replies = vec![Reply::new(421, "4.4.2 connection reset"); job.rcpts.len()];
                self.settle(relay, job, &replies);
            }
            return;
        }
        let OutConn { wire, job, accepted_unread } = c;
        let (seed, rng, received, disk, queue) =
            (self.seed, &mut self.rng, &mut self.outside.received, &self.disk, &mut relay.queue);
        let mut closing = wire.serve(now, |server, _message| {
            let m = server.take_message();
            let id = id_of(&m.data);
            assert!(m.data.ends_with(&body(id)), "seed {seed}: message {id} changed on its way");
            let deferred = now < LATER_UNTIL_MS && m.recipients.iter().any(|r| r.starts_with("later"));
            if deferred || rng.below(8) == 0 {
                server.message_stored(false, "");
            } else {
                for r in &m.recipients {
                    *received.entry((id, r.clone())).or_default() += 1;
                }
                *accepted_unread = true;
                server.message_stored(true, "sink");
            }
            true
        });
        let mut finished = Vec::new();
        wire.read(rng, now, |rng, client, event| {
            match event {
                ClientEvent::Ready => *job = start_or_quit(rng, client, queue),
                ClientEvent::SendBody => {
                    let loc = job.as_ref().expect("in a transaction").msg;
                    let Decoded::Record(view, _) =
                        codec::decode_message(&disk.read(&segment_name(loc.seq))[loc.offset as usize..])
                    else {
                        panic!("seed {seed}: queued message at {loc:?} unreadable")
                    };
                    return Some(view.data.to_vec());
                }
                ClientEvent::Done(replies) => {
                    *accepted_unread = false;
                    finished.push((job.take().expect("a transaction"), replies));
                }
                ClientEvent::Failed(reply) => {
                    if let Some(j) = job.take() {
                        let n = j.rcpts.len();
                        finished.push((j, vec![reply; n]));
                    }
                    closing = true;
                }
                ClientEvent::Closed => closing = true,
                ClientEvent::StartTls => unreachable!("not offered"),
            }
            None
        });
        for (job, replies) in finished {
            self.settle(relay, job, &replies);
        }
        if closing {
            let mut c = relay.outbound.take().expect("live");
            if let Some(job) = c.job.take() {
                let replies = vec![Reply::new(421, "4.4.2 closed"); job.rcpts.len()];
                self.settle(relay, job, &replies);
            }
        }
    }

    // ---- Injection ----------------------------------------------------------------------

    fn next_to_inject(&self) -> Option<u64> {
        self.outside.next_to_inject(self.now)
    }

    fn drive_inbound(&mut self, relay: &mut Relay, slot: usize) {
        if relay.inbound[slot].is_none() {
            if self.next_to_inject().is_none() || self.rng.below(20) != 0 {
                return;
            }
            relay.sessions += 1;
            let mut client = Client::new("injector.test");
            if self.rng.below(2) == 0 {
                client.disable_pipelining();
            }
            let server = Session::new(relay_policy(), "127.0.0.1".parse().expect("ip"), relay.sessions);
            relay.inbound[slot] =
                Some(InConn { wire: Wire::new(client, server), msg: None, storing: None, dead: false });
        }
        let now = self.now;
        let c = relay.inbound[slot].as_mut().expect("set above");
        if c.dead {
            if c.storing.is_none() {
                relay.inbound[slot] = None;
            }
            return;
        }
        c.wire.transmit(&mut self.rng, now);
        if self.rng.below(500) == 0 {
            self.stats.resets += 1;
            self.hang_up(relay, slot);
            return;
        }
        let mut closing = false;
        if c.storing.is_none() {
            // A message stops the reading: the session waits for its store.
            let mut message = false;
            closing = c.wire.serve(now, |_, _message| {
                message = true;
                false
            });
            if message {
                self.store_message(relay, slot);
            }
        }
        let c = relay.inbound[slot].as_mut().expect("live");
        let outside = &mut self.outside;
        let InConn { wire, msg, .. } = c;
        wire.read(&mut self.rng, now, |rng, client, event| {
            match event {
                ClientEvent::Ready => match outside.next_to_inject(now) {
                    Some(id) if rng.below(8) != 0 => {
                        outside.sending.insert(id);
                        let rcpts: Vec<&str> = outside.messages[id as usize].iter().map(String::as_str).collect();
                        client.start("sender@src.test", &rcpts, body(id).len() as u64);
                        *msg = Some(id);
                    }
                    _ => client.quit(),
                },
                ClientEvent::SendBody => return Some(body(msg.expect("sending"))),
                ClientEvent::Done(replies) => {
                    let id = msg.take().expect("sending");
                    outside.sending.remove(&id);
                    if replies.iter().all(|r| r.code == 250) {
                        outside.injected.insert(id);
                    }
                }
                ClientEvent::Failed(_) | ClientEvent::Closed => {
                    if let Some(id) = msg.take() {
                        outside.sending.remove(&id);
                    }
                    closing = true;
                }
                ClientEvent::StartTls => unreachable!("not offered"),
            }
            None
        });
        if closing {
            self.hang_up(relay, slot);
        }
    }

    /// An injector's connection ends: its message goes back to wait; the relay's side
    /// lingers while a store is in flight (its answer still comes).
    fn hang_up(&mut self, relay: &mut Relay, slot: usize) {
        let c = relay.inbound[slot].as_mut().expect("live");
        if let Some(id) = c.msg.take() {
            self.outside.sending.remove(&id);
        }
        if c.storing.is_some() {
            c.dead = true;
        } else {
            relay.inbound[slot] = None;
        }
    }

    // ---- The world ----------------------------------------------------------------------

    fn run(mut self) -> Stats {
        let mut relay = self.start_relay();
        for _ in 0..STEPS_MAX {
            self.now += self.rng.below(15);
            if self.stats.crashes < u64::from(CRASHES_MAX) && self.rng.below(3000) == 0 {
                self.crash(relay);
                relay = self.start_relay();
                continue;
            }
            // The disk: writes complete in any order; syncs come in batches.
            if !relay.seg_writes.is_empty() && self.rng.below(3) == 0 {
                self.complete_seg_write(&mut relay);
            }
            if self.rng.below(4) == 0 {
                self.commit_spool(&mut relay);
            }
            if !relay.jnl_pending.is_empty() && self.rng.below(6) == 0 {
                self.write_journal_batch(&mut relay);
            }
            if !relay.jnl_writes.is_empty() && self.rng.below(3) == 0 {
                self.complete_jnl_write(&mut relay);
            }
            if self.rng.below(6) == 0 {
                self.sync_journals(&mut relay);
            }
            if self.rng.below(50) == 0 {
                self.retire_empty_segment(&mut relay);
            }
            for slot in 0..INJECTORS {
                self.drive_inbound(&mut relay, slot);
            }
            relay.queue.promote_due(self.now);
            self.drive_outbound(&mut relay);
            let idle = relay.inbound.iter().all(Option::is_none) && relay.outbound.is_none();
            if idle && relay.queue.ready_jobs() == 0 && self.next_to_inject().is_none() {
                if self.outside.injected.len() as u64 == MESSAGES && relay.queue.is_empty() {
                    break;
                }
                // A quiet moment: nothing to do until a retry or the next injection. Operators
                // restart relays at such moments; crashes come at any.
                if self.stats.crashes < u64::from(CRASHES_MAX) && self.rng.below(8) == 0 {
                    self.crash(relay);
                    relay = self.start_relay();
                    continue;
                }
                let next_injection = (0..MESSAGES)
                    .filter(|id| self.outside.waiting(id))
                    .map(|id| self.outside.inject_at[id as usize])
                    .min();
                if let Some(at) = [relay.queue.next_retry_ms(), next_injection].into_iter().flatten().min() {
                    self.now = self.now.max(at);
                }
            }
        }
        self.check(&relay);
        self.stats
    }

    fn check(&mut self, relay: &Relay) {
        let seed = self.seed;
        assert_eq!(
            self.outside.injected.len() as u64,
            MESSAGES,
            "seed {seed}: not every message was accepted in {STEPS_MAX} steps ({:?})",
            self.stats
        );
        assert!(relay.queue.is_empty(), "seed {seed}: recipients stuck in the queue");
        for (id, rcpts) in self.outside.messages.iter().enumerate() {
            let id = id as u64;
            let copies = self.ledger.acked.get(&id).copied().unwrap_or(0);
            assert!(copies > 0, "seed {seed}: message {id} injected without a 250 from the relay");
            for r in rcpts {
                let key = (id, r.clone());
                let got = self.outside.received.get(&key).copied().unwrap_or(0);
                if r.starts_with("gone") {
                    assert_eq!(got, 0, "seed {seed}: {key:?} refused by the receiver yet delivered");
                    assert!(self.ledger.bounced.contains(&key), "seed {seed}: {key:?} neither delivered nor bounced");
                    continue;
                }
                assert!(got >= 1, "seed {seed}: acknowledged {key:?} never delivered (lost)");
                assert!(
                    self.ledger.delivered.contains(&key),
                    "seed {seed}: {key:?} delivered, the relay never learnt it"
                );
                let allowed = copies + self.ledger.explained.get(&key).copied().unwrap_or(0);
                assert!(got <= allowed, "seed {seed}: {key:?} delivered {got} times, {allowed} explained");
                self.stats.delivered += 1;
                self.stats.duplicates += u64::from(got - 1);
            }
            self.stats.bounced += rcpts.iter().filter(|r| r.starts_with("gone")).count() as u64;
        }
    }
}

#[test]
fn relay_loses_nothing_through_faults_and_crashes() {
    let mut total = Stats::default();
    for seed in 1..=SEEDS {
        let Ok(s) = std::panic::catch_unwind(|| World::new(seed).run()) else {
            panic!("relay simulation failed; replay with seed {seed}");
        };
        let fields = [
            (&mut total.crashes, s.crashes),
            (&mut total.acked, s.acked),
            (&mut total.refused_452, s.refused_452),
            (&mut total.disk_full, s.disk_full),
            (&mut total.failed_writes, s.failed_writes),
            (&mut total.failed_syncs, s.failed_syncs),
            (&mut total.failed_journal_io, s.failed_journal_io),
            (&mut total.resets, s.resets),
            (&mut total.torn_records, s.torn_records),
            (&mut total.delivered, s.delivered),
            (&mut total.bounced, s.bounced),
            (&mut total.duplicates, s.duplicates),
            (&mut total.segments_deleted, s.segments_deleted),
            (&mut total.journals_retired, s.journals_retired),
        ];
        for (t, v) in fields {
            *t += v;
        }
    }
    eprintln!("relay simulation, {SEEDS} seeds: {total:?}");
    // Every fault happened, or the simulation proves nothing.
    for (what, n) in [
        ("crashes", total.crashes),
        ("452 refusals", total.refused_452),
        ("full disks", total.disk_full),
        ("failed segment writes", total.failed_writes),
        ("failed segment fsyncs", total.failed_syncs),
        ("failed journal IO", total.failed_journal_io),
        ("resets", total.resets),
        ("torn records", total.torn_records),
        ("segments deleted", total.segments_deleted),
        ("journals retired", total.journals_retired),
    ] {
        assert!(n >= 20, "{what} exercised only {n} times: {total:?}");
    }
}
