//! The spool machine, sans-IO: one shard's durable store as decisions only. It places each
//! accepted message in a segment (group commit through `Appender`), answers once the record
//! is durable or has failed, journals final outcomes in batches (`FileCommit`, rotating and
//! backing off when journals fail), releases and deletes segments and journals whose work is
//! done (`SegmentLife`, `JournalRefs`), and journals a refused record's recipients as finished
//! so a restart never delivers what its client was told to send again.
//!
//! The caller maps each `SpoolOp` to real IO (the shard: io_uring on files; the relay
//! simulation: the crash-simulating `memdisk`) and reports back; `SpoolEvent`s tell it what
//! became of each message. Creation ops are answered before the next op is taken (the shard
//! creates files synchronously); writes, syncs and deletes complete in any order.

use crate::codec::{self, Outcome, FILE_HEADER_BYTES, OUTCOME_BYTES};
use crate::commit::{Appender, FileCommit, JournalBackoff, TicketResult};
use crate::life::{JournalRefs, SegmentLife};
use std::collections::{HashMap, VecDeque};

/// Journal writes in flight per journal file.
pub const JOURNAL_WRITES_IN_FLIGHT_MAX: usize = 64;

/// The active journal is synced at most this often. Each fdatasync is handed by io_uring to
/// a kernel worker (a context switch or two, issue 24), and no reply waits on an outcome's
/// entry: until it is durable, a crash repeats a delivery, never loses one. Segment syncs, which
/// 250s wait on, are not paced.
pub const JOURNAL_SYNC_PACE_MS: u64 = 10;

/// Group commit's hold: a segment's group smaller than the last one waits this long at most
/// for more records before its fdatasync (250s wait on it: kept short).
pub const SEGMENT_SYNC_HOLD_US: u64 = 500;
/// An active segment with no live recipients is retired after this much quiet.
pub const EMPTY_SEGMENT_IDLE_MS: u64 = 1_000;
/// After a segment cannot be created (disk full), new messages are refused this long.
pub const BROKEN_REFUSE_MS: u64 = 1_000;

/// The caller's handle on a segment file: its life (shared by every shard that delivers
/// from it) and its name.
pub trait SegmentHandle: Clone {
    fn life(&self) -> &SegmentLife;
    fn shard(&self) -> u32;
    fn seq(&self) -> u64;
}

/// A segment file the caller shares behind an `Arc` (the usual handle).
pub trait SegmentFile {
    fn life(&self) -> &SegmentLife;
    fn shard(&self) -> u32;
    fn seq(&self) -> u64;
}

impl<T: SegmentFile> SegmentHandle for std::sync::Arc<T> {
    fn life(&self) -> &SegmentLife {
        SegmentFile::life(&**self)
    }
    fn shard(&self) -> u32 {
        SegmentFile::shard(&**self)
    }
    fn seq(&self) -> u64 {
        SegmentFile::seq(&**self)
    }
}

/// A journal file: the shard directory that holds it and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JournalId {
    pub shard: u32,
    pub seq: u64,
}

/// A journal found at start-up, kept until the segments it names are gone.
#[derive(Debug)]
pub struct OldJournal {
    pub id: JournalId,
    pub refs: JournalRefs,
}

/// IO for the caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolOp<S> {
    /// Create, preallocate and header a segment of `bytes`; answer `segment_created`.
    CreateSegment {
        seq: u64,
        bytes: u64,
    },
    /// Write `ticket`'s record (the caller holds its bytes) at `offset`, all of it (short
    /// writes resumed); answer `written`.
    Write {
        ticket: u64,
        segment: S,
        offset: u64,
    },
    /// fdatasync; answer `segment_synced`.
    SyncSegment {
        segment: S,
    },
    /// Unlink a segment whose work is done.
    DeleteSegment {
        segment: S,
    },
    /// Create, preallocate, header and sync a journal of `bytes`; answer `journal_created`.
    CreateJournal {
        journal: JournalId,
        bytes: u64,
    },
    /// Write `batch_bytes(batch)` at `offset`; answer `journal_written`.
    WriteJournal {
        batch: u64,
        journal: JournalId,
        offset: u64,
    },
    /// fdatasync; answer `journal_synced`.
    SyncJournal {
        journal: JournalId,
    },
    DeleteJournal {
        journal: JournalId,
    },
}

/// What became of a message the caller submitted.
#[derive(Debug, PartialEq, Eq)]
pub enum SpoolEvent<S> {
    /// Durable at (segment, offset) — answer 250 and queue it — or failed: answer 452 (its
    /// recipients are already journaled as finished) and take back the outcomes that were
    /// to follow it.
    Stored { ticket: u64, durable: bool, at: Option<(S, u64)>, after: Vec<(Outcome, S)> },
}

struct Ticket<S> {
    rcpts: u32,
    seq: u64,
    offset: u64,
    /// Placed in a segment that exists (creation did not fail).
    placed: bool,
    /// Outcomes journaled once this record is durable (a DSN's bounces).
    after: Vec<(Outcome, S)>,
}

struct Journal {
    id: JournalId,
    bytes: u64,
    next_offset: u64,
    commit: FileCommit,
    refs: JournalRefs,
}

struct Batch<S> {
    journal: JournalId,
    bytes: Vec<u8>,
    entries: Vec<(Outcome, S)>,
}

pub struct Spool<S> {
    shard: u32,
    appender: Appender,
    journal_bytes: u64,
    /// This shard's segments that take records or are still syncing.
    segments: HashMap<u64, S>,
    /// A segment being created, and the writes waiting for it.
    creating: Option<(u64, Vec<u64>)>,
    tickets: HashMap<u64, Ticket<S>>,
    broken_until_ms: u64,
    active_empty_since_ms: Option<u64>,
    /// When the active journal's last sync was asked for (`JOURNAL_SYNC_PACE_MS`).
    journal_sync_asked_ms: Option<u64>,
    /// A segment's group held back: flush again then (µs).
    sync_again_us: Option<u64>,
    journal: Option<Journal>,
    closed: Vec<Journal>,
    creating_journal: Option<JournalId>,
    next_journal_seq: u64,
    backoff: JournalBackoff,
    pending: Vec<(Outcome, S)>,
    batches: HashMap<u64, Batch<S>>,
    next_batch: u64,
    ops: VecDeque<SpoolOp<S>>,
    events: VecDeque<SpoolEvent<S>>,
}

impl<S: SegmentHandle> Spool<S> {
    /// A shard's spool: new segments and journals are numbered from `first_seq` (above every
    /// file recovery found, `recover::next_seq`); `old` journals are kept until their
    /// segments are gone.
    pub fn new(shard: u32, segment_bytes: u64, journal_bytes: u64, first_seq: u64, old: Vec<OldJournal>) -> Self {
        assert!(journal_bytes >= (FILE_HEADER_BYTES + OUTCOME_BYTES) as u64);
        let closed = old
            .into_iter()
            .map(|o| Journal { id: o.id, bytes: 0, next_offset: 0, commit: FileCommit::default(), refs: o.refs })
            .collect();
        // The first journal is made at once, while the disk has room for it: a disk that
        // fills before the first outcome would otherwise leave no journal to record the
        // deliveries that free it (a deadlock: nothing released, nothing accepted).
        let first = JournalId { shard, seq: first_seq };
        let mut spool = Spool {
            shard,
            appender: Appender::new(segment_bytes, first_seq),
            journal_bytes,
            segments: HashMap::new(),
            creating: None,
            tickets: HashMap::new(),
            broken_until_ms: 0,
            active_empty_since_ms: None,
            journal_sync_asked_ms: None,
            sync_again_us: None,
            journal: None,
            closed,
            creating_journal: None,
            // Segments and journals number independently from the same first free number;
            // their extensions keep the names apart.
            next_journal_seq: first_seq,
            backoff: JournalBackoff::default(),
            pending: Vec::new(),
            batches: HashMap::new(),
            next_batch: 1,
            ops: VecDeque::new(),
            events: VecDeque::new(),
        };
        spool.next_journal_seq += 1;
        spool.creating_journal = Some(first);
        spool.ops.push_back(SpoolOp::CreateJournal { journal: first, bytes: journal_bytes });
        spool
    }

    /// When the caller should flush again for a group held back (µs), if one is.
    pub fn sync_again_us(&self) -> Option<u64> {
        self.sync_again_us
    }

    pub fn poll_op(&mut self) -> Option<SpoolOp<S>> {
        self.ops.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SpoolEvent<S>> {
        self.events.pop_front()
    }

    /// A record the caller will not write (it may not write to this spool now): answered
    /// not durable, as a full disk's, without touching a segment.
    pub fn refuse(&mut self, ticket: u64, after: Vec<(Outcome, S)>) {
        self.events.push_back(SpoolEvent::Stored { ticket, durable: false, at: None, after });
    }

    /// A record of `len` bytes for `rcpts` recipients, under the caller's `ticket` (unique
    /// among those in flight). `after`: outcomes to journal once it is durable.
    pub fn submit(&mut self, ticket: u64, len: u64, rcpts: u32, after: Vec<(Outcome, S)>, now_ms: u64) {
        assert!(!self.tickets.contains_key(&ticket), "ticket {ticket} submitted twice");
        if now_ms < self.broken_until_ms {
            // The disk just refused a segment: 452 without trying, for a moment.
            return self.refuse(ticket, after);
        }
        let p = self.appender.place(len, ticket);
        self.tickets.insert(ticket, Ticket { rcpts, seq: p.seg_seq, offset: p.offset, placed: false, after });
        if p.new_segment {
            assert!(self.creating.is_none(), "a segment is created before the next op is taken");
            let bytes = self.appender.segment_bytes_for(len);
            self.creating = Some((p.seg_seq, vec![ticket]));
            self.ops.push_back(SpoolOp::CreateSegment { seq: p.seg_seq, bytes });
            return;
        }
        match &mut self.creating {
            Some((seq, waiting)) if *seq == p.seg_seq => waiting.push(ticket),
            _ => self.place(ticket),
        }
    }

    fn place(&mut self, ticket: u64) {
        let t = self.tickets.get_mut(&ticket).expect("a ticket in flight");
        let segment = self.segments[&t.seq].clone();
        segment.life().add_live(t.rcpts as u64);
        t.placed = true;
        self.ops.push_back(SpoolOp::Write { ticket, segment, offset: t.offset });
    }

    /// The answer to `CreateSegment`: the new segment's handle, or None (disk full, or the
    /// file could not be made): its records fail and new ones are refused for a moment.
    pub fn segment_created(&mut self, seq: u64, segment: Option<S>, now_ms: u64) {
        let (creating, waiting) = self.creating.take().expect("a segment being created");
        assert_eq!(creating, seq);
        match segment {
            Some(s) => {
                assert_eq!((s.shard(), s.seq()), (self.shard, seq));
                self.segments.insert(seq, s);
                for ticket in waiting {
                    self.place(ticket);
                }
            }
            None => {
                self.broken_until_ms = now_ms + BROKEN_REFUSE_MS;
                for ticket in waiting {
                    self.appender.write_completed(seq, ticket, false);
                }
                self.appender.seal_active();
                self.reap();
            }
        }
    }

    /// `ticket`'s record is written whole (`ok`), or the write failed.
    pub fn written(&mut self, ticket: u64, ok: bool) {
        let seq = self.tickets[&ticket].seq;
        self.appender.write_completed(seq, ticket, ok);
    }

    /// A segment's fdatasync finished.
    pub fn segment_synced(&mut self, seq: u64, ok: bool) {
        let mut results = Vec::new();
        self.appender.sync_completed(seq, ok, &mut results);
        self.answer(results);
    }

    /// A recipient's final outcome (delivered, bounced, deleted), to journal. `segment` is
    /// the message's (any shard's): it is released once the entry is durable.
    pub fn record_outcome(&mut self, outcome: Outcome, segment: S) {
        self.pending.push((outcome, segment));
    }

    /// Once per turn of the caller's loop: segment syncs due, answers, a journal batch, and
    /// journal syncs due.
    pub fn flush(&mut self, now_ms: u64) {
        self.flush_at(now_ms * 1000);
    }

    /// `flush` with the time in microseconds: a segment's group may be held back for
    /// `SEGMENT_SYNC_HOLD_US` (`FileCommit::poll_sync_held`); `sync_again_us` says when to
    /// flush again for it.
    pub fn flush_at(&mut self, now_us: u64) {
        let now_ms = now_us / 1000;
        let mut seqs = Vec::new();
        self.sync_again_us = self.appender.poll_syncs(&mut seqs, now_us, SEGMENT_SYNC_HOLD_US);
        for seq in seqs {
            let segment = self.segments[&seq].clone();
            self.ops.push_back(SpoolOp::SyncSegment { segment });
        }
        self.reap();
        self.start_batch(now_ms);
        let due = self.journal_sync_asked_ms.is_none_or(|t| now_ms >= t + JOURNAL_SYNC_PACE_MS);
        if let Some(j) = self.journal.as_mut().filter(|_| due) {
            if j.commit.poll_sync() {
                self.journal_sync_asked_ms = Some(now_ms);
                self.ops.push_back(SpoolOp::SyncJournal { journal: j.id });
            }
        }
        // A journal rotated out is synced at once: it takes no more entries.
        for j in &mut self.closed {
            if j.commit.poll_sync() {
                self.ops.push_back(SpoolOp::SyncJournal { journal: j.id });
            }
        }
    }

    /// Failed tickets, and segments that finished syncing after rotation (sealed now).
    fn reap(&mut self) {
        let (mut results, mut closed) = (Vec::new(), Vec::new());
        self.appender.reap(&mut results, &mut closed);
        self.answer(results);
        for seq in closed {
            if let Some(segment) = self.segments.remove(&seq) {
                if segment.life().seal() {
                    self.ops.push_back(SpoolOp::DeleteSegment { segment });
                }
            }
        }
    }

    fn answer(&mut self, results: Vec<(u64, TicketResult)>) {
        for (ticket, result) in results {
            let t = self.tickets.remove(&ticket).expect("a ticket in flight");
            let segment = self.segments.get(&t.seq).cloned().filter(|_| t.placed);
            let durable = result == TicketResult::Durable;
            if durable {
                self.pending.extend(t.after);
                let at = segment.map(|s| (s, t.offset));
                self.events.push_back(SpoolEvent::Stored { ticket, durable, at, after: Vec::new() });
                continue;
            }
            if let Some(s) = segment {
                // A refused record may be whole on disk all the same: its recipients are
                // journaled as finished, so a restart does not deliver what its client was
                // told to send again (found by tests/crash_kill9.rs with SLUICE_FAULTS).
                for rcpt in 0..t.rcpts {
                    let o = Outcome { seg_shard: self.shard, seg_seq: t.seq, offset: t.offset, rcpt };
                    self.pending.push((o, s.clone()));
                }
            }
            self.events.push_back(SpoolEvent::Stored { ticket, durable, at: None, after: t.after });
        }
    }

    /// Outcomes per batch: what fits in one journal after its header.
    fn batch_entries_max(&self) -> usize {
        (self.journal_bytes as usize - FILE_HEADER_BYTES) / OUTCOME_BYTES
    }

    fn start_batch(&mut self, now_ms: u64) {
        if self.pending.is_empty() || self.creating_journal.is_some() {
            return;
        }
        let n = self.pending.len().min(self.batch_entries_max());
        let len = (n * OUTCOME_BYTES) as u64;
        // A journal whose write or fsync failed takes no more entries (its pages may be
        // gone): a new one starts. (Found by the spool simulation: this used to panic.)
        let room = self.journal.as_ref().is_some_and(|j| !j.commit.poisoned() && j.next_offset + len <= j.bytes);
        if !room {
            if !self.backoff.may_start_journal(now_ms) {
                return;
            }
            let id = JournalId { shard: self.shard, seq: self.next_journal_seq };
            self.next_journal_seq += 1;
            self.creating_journal = Some(id);
            self.ops.push_back(SpoolOp::CreateJournal { journal: id, bytes: self.journal_bytes });
            return;
        }
        let j = self.journal.as_mut().expect("checked");
        // Writes, not batches waiting for a sync: an entry written reaches the page cache and
        // so survives a SIGKILL, synced or not. Holding writes back behind a slow fdatasync
        // (hundreds of ms on a busy disk) left every delivery of that time to be repeated
        // after a crash.
        if j.commit.writes_in_flight() >= JOURNAL_WRITES_IN_FLIGHT_MAX {
            return;
        }
        let entries: Vec<(Outcome, S)> = self.pending.drain(..n).collect();
        let mut bytes = Vec::with_capacity(len as usize);
        for (o, s) in &entries {
            bytes.extend_from_slice(&codec::encode_outcome(o));
            j.refs.reference(s.shard(), s.seq(), s.life());
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        let offset = j.next_offset;
        j.next_offset += len;
        j.commit.write_submitted(batch);
        self.batches.insert(batch, Batch { journal: j.id, bytes, entries });
        self.ops.push_back(SpoolOp::WriteJournal { batch, journal: j.id, offset });
    }

    /// The answer to `CreateJournal`. A journal that cannot be made leaves the outcomes
    /// pending (tried again on the next flush).
    pub fn journal_created(&mut self, journal: JournalId, ok: bool, now_ms: u64) {
        assert_eq!(self.creating_journal.take(), Some(journal));
        if !ok {
            return;
        }
        let new = Journal {
            id: journal,
            bytes: self.journal_bytes,
            next_offset: FILE_HEADER_BYTES as u64,
            commit: FileCommit::default(),
            refs: JournalRefs::default(),
        };
        if let Some(old) = self.journal.replace(new) {
            self.closed.push(old);
        }
        self.start_batch(now_ms);
    }

    /// The bytes of a journal batch being written (stable until `journal_written`).
    pub fn batch_bytes(&self, batch: u64) -> &[u8] {
        &self.batches[&batch].bytes
    }

    pub fn journal_written(&mut self, batch: u64, ok: bool, now_ms: u64) {
        let id = self.batches[&batch].journal;
        self.journal_mut(id).commit.write_completed(batch, ok);
        self.settle(id, None, now_ms);
    }

    pub fn journal_synced(&mut self, journal: JournalId, ok: bool, now_ms: u64) {
        self.settle(journal, Some(ok), now_ms);
    }

    fn journal_mut(&mut self, id: JournalId) -> &mut Journal {
        if self.journal.as_ref().is_some_and(|j| j.id == id) {
            return self.journal.as_mut().expect("checked");
        }
        self.closed.iter_mut().find(|j| j.id == id).expect("the journal of a batch exists")
    }

    /// Durable batches release their segments; failed ones go back to be written to a new
    /// journal (a failed write or fsync poisons the file), so their segments do not stay
    /// live until a restart.
    fn settle(&mut self, id: JournalId, sync: Option<bool>, now_ms: u64) {
        let mut done = Vec::new();
        let j = self.journal_mut(id);
        if let Some(ok) = sync {
            j.commit.sync_completed(ok, &mut done);
        }
        j.commit.take_failed(&mut done);
        let newly_poisoned = j.commit.take_poisoning();
        let durable = done.iter().any(|(_, r)| *r == TicketResult::Durable);
        self.backoff.settled(now_ms, newly_poisoned, durable);
        for (batch, result) in done {
            let b = self.batches.remove(&batch).expect("a batch in flight");
            if result == TicketResult::Durable {
                for (_, segment) in b.entries {
                    if segment.life().release(1) {
                        self.ops.push_back(SpoolOp::DeleteSegment { segment });
                    }
                }
            } else {
                self.pending.extend(b.entries);
            }
        }
    }

    /// Housekeeping on the caller's timer: the active segment, once empty for a while, is
    /// sealed (so an idle relay's spool empties); closed journals whose segments are all
    /// gone are deleted.
    pub fn tick(&mut self, now_ms: u64) {
        let active = self.appender.active_seq();
        let empty = active.and_then(|seq| self.segments.get(&seq)).is_some_and(|s| s.life().live() == 0)
            && !self.appender.in_flight();
        if !empty {
            self.active_empty_since_ms = None;
        } else if now_ms.saturating_sub(*self.active_empty_since_ms.get_or_insert(now_ms)) >= EMPTY_SEGMENT_IDLE_MS {
            self.active_empty_since_ms = None;
            self.appender.seal_active();
            self.reap();
        }
        let mut kept = Vec::with_capacity(self.closed.len());
        for mut j in std::mem::take(&mut self.closed) {
            if j.commit.idle() && j.refs.all_gone() {
                self.ops.push_back(SpoolOp::DeleteJournal { journal: j.id });
            } else {
                kept.push(j);
            }
        }
        self.closed = kept;
    }

    /// No write, sync or journal entry outstanding (shutdown may finish).
    pub fn is_quiet(&self) -> bool {
        !self.appender.in_flight()
            && self.tickets.is_empty()
            && self.batches.is_empty()
            && self.pending.is_empty()
            && self.creating_journal.is_none()
    }

    /// Outcomes not yet durable: after a crash their recipients are delivered again (what
    /// the relay simulation's checker allows for).
    pub fn undurable(&self) -> impl Iterator<Item = &Outcome> {
        self.pending.iter().map(|(o, _)| o).chain(self.batches.values().flat_map(|b| b.entries.iter().map(|(o, _)| o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Debug)]
    struct Seg(Arc<(u64, SegmentLife)>);

    impl PartialEq for Seg {
        fn eq(&self, other: &Self) -> bool {
            Arc::ptr_eq(&self.0, &other.0)
        }
    }
    impl Eq for Seg {}

    impl SegmentHandle for Seg {
        fn life(&self) -> &SegmentLife {
            &self.0 .1
        }
        fn shard(&self) -> u32 {
            0
        }
        fn seq(&self) -> u64 {
            self.0 .0
        }
    }

    /// Runs every op at once, successfully; returns the ops seen.
    fn run_ops(s: &mut Spool<Seg>, now: u64) -> Vec<&'static str> {
        let mut seen = Vec::new();
        while let Some(op) = s.poll_op() {
            match op {
                SpoolOp::CreateSegment { seq, .. } => {
                    seen.push("create-seg");
                    s.segment_created(seq, Some(Seg(Arc::new((seq, SegmentLife::default())))), now);
                }
                SpoolOp::Write { ticket, .. } => {
                    seen.push("write");
                    s.written(ticket, true);
                }
                SpoolOp::SyncSegment { segment } => {
                    seen.push("sync-seg");
                    s.segment_synced(segment.seq(), true);
                }
                SpoolOp::DeleteSegment { segment } => {
                    seen.push("delete-seg");
                    segment.life().unlinked();
                }
                SpoolOp::CreateJournal { journal, .. } => {
                    seen.push("create-jnl");
                    s.journal_created(journal, true, now);
                }
                SpoolOp::WriteJournal { batch, .. } => {
                    seen.push("write-jnl");
                    s.journal_written(batch, true, now);
                }
                SpoolOp::SyncJournal { journal } => {
                    seen.push("sync-jnl");
                    s.journal_synced(journal, true, now);
                }
                SpoolOp::DeleteJournal { .. } => seen.push("delete-jnl"),
            }
        }
        seen
    }

    /// A spool whose first journal is made.
    fn started() -> Spool<Seg> {
        let mut s: Spool<Seg> = Spool::new(0, 1 << 16, 4096, 1, Vec::new());
        let Some(SpoolOp::CreateJournal { journal, .. }) = s.poll_op() else { panic!("the first journal at once") };
        s.journal_created(journal, true, 0);
        s
    }

    fn turn(s: &mut Spool<Seg>, now: u64) -> Vec<&'static str> {
        let mut seen = run_ops(s, now);
        s.flush(now);
        seen.extend(run_ops(s, now));
        seen
    }

    #[test]
    fn a_message_is_stored_delivered_journaled_and_its_files_go() {
        let mut s: Spool<Seg> = Spool::new(0, 1 << 16, 4096, 1, Vec::new());
        s.submit(7, 100, 2, Vec::new(), 0);
        assert_eq!(turn(&mut s, 0), ["create-jnl", "create-seg", "write", "sync-seg"]);
        let Some(SpoolEvent::Stored { ticket: 7, durable: true, at: Some((seg, offset)), .. }) = s.poll_event() else {
            panic!("stored")
        };
        assert_eq!(offset, FILE_HEADER_BYTES as u64);
        assert_eq!(seg.life().live(), 2);
        for rcpt in 0..2 {
            s.record_outcome(Outcome { seg_shard: 0, seg_seq: 1, offset, rcpt }, seg.clone());
        }
        s.flush(0);
        assert_eq!(run_ops(&mut s, 0), ["write-jnl"], "the journal was made at the start");
        assert_eq!(turn(&mut s, 0), ["sync-jnl"]);
        assert_eq!(seg.life().live(), 0);
        // Idle and empty: the active segment is sealed after a second, and deleted.
        s.tick(500);
        assert!(run_ops(&mut s, 500).is_empty());
        s.tick(1_600);
        assert_eq!(run_ops(&mut s, 1_600), ["delete-seg"]);
        assert!(s.is_quiet());
    }

    #[test]
    fn a_refused_record_is_journaled_finished_and_its_followers_come_back() {
        let mut s = started();
        let dsn_for = Seg(Arc::new((99, SegmentLife::default())));
        dsn_for.life().add_live(1);
        let after = vec![(Outcome { seg_shard: 0, seg_seq: 99, offset: 8, rcpt: 0 }, dsn_for.clone())];
        s.submit(1, 100, 3, after.clone(), 0);
        let Some(SpoolOp::CreateSegment { seq, .. }) = s.poll_op() else { panic!() };
        s.segment_created(seq, Some(Seg(Arc::new((seq, SegmentLife::default())))), 0);
        let Some(SpoolOp::Write { ticket, .. }) = s.poll_op() else { panic!() };
        s.written(ticket, false);
        s.flush(0);
        let Some(SpoolEvent::Stored { durable: false, after: back, .. }) = s.poll_event() else { panic!() };
        assert_eq!(back, after, "the DSN's bounces come back to be offered again");
        assert_eq!(s.undurable().count(), 3, "its 3 recipients journaled as finished");
        assert_eq!(dsn_for.life().live(), 1);
    }

    #[test]
    fn a_full_disk_refuses_for_a_moment() {
        let mut s = started();
        s.submit(1, 100, 1, Vec::new(), 0);
        let Some(SpoolOp::CreateSegment { seq, .. }) = s.poll_op() else { panic!() };
        s.segment_created(seq, None, 0);
        assert!(matches!(s.poll_event(), Some(SpoolEvent::Stored { ticket: 1, durable: false, .. })));
        s.submit(2, 100, 1, Vec::new(), 10);
        assert!(s.poll_op().is_none(), "not even tried while broken");
        assert!(matches!(s.poll_event(), Some(SpoolEvent::Stored { ticket: 2, durable: false, .. })));
        s.submit(3, 100, 1, Vec::new(), BROKEN_REFUSE_MS);
        assert!(matches!(s.poll_op(), Some(SpoolOp::CreateSegment { .. })));
    }

    /// More outcomes at once than one journal holds: written in several journals, none lost
    /// (a batch larger than a journal used to make a new journal on every turn).
    #[test]
    fn outcomes_beyond_one_journal_go_in_several() {
        let mut s: Spool<Seg> = Spool::new(0, 1 << 16, 4096, 1, Vec::new());
        let seg = Seg(Arc::new((42, SegmentLife::default())));
        seg.life().add_live(1000);
        for rcpt in 0..1000 {
            s.record_outcome(Outcome { seg_shard: 0, seg_seq: 42, offset: 8, rcpt }, seg.clone());
        }
        for t in 0..20 {
            turn(&mut s, t * JOURNAL_SYNC_PACE_MS);
        }
        assert_eq!(seg.life().live(), 0);
        assert!(s.is_quiet());
    }

    /// A journal fdatasync that takes long holds back no write: each turn's entries reach the
    /// file (and so survive a SIGKILL) while the sync is out. Only writes still in flight
    /// count against `JOURNAL_WRITES_IN_FLIGHT_MAX`: outcomes of a busy disk's slow sync used
    /// to wait unwritten once 64 batches waited for it, and a crash then repeated every
    /// delivery of those hundreds of milliseconds (seen in `tests/crash_kill9.rs`).
    #[test]
    fn a_slow_journal_sync_holds_back_no_write() {
        // A journal large enough for every entry (no rotation in the way).
        let mut s: Spool<Seg> = Spool::new(0, 1 << 16, 1 << 16, 1, Vec::new());
        let Some(SpoolOp::CreateJournal { journal, .. }) = s.poll_op() else { panic!("the first journal at once") };
        s.journal_created(journal, true, 0);
        let seg = Seg(Arc::new((42, SegmentLife::default())));
        let turns = 3 * JOURNAL_WRITES_IN_FLIGHT_MAX as u32;
        seg.life().add_live(u64::from(turns));
        let mut syncs = 0;
        for rcpt in 0..turns {
            s.record_outcome(Outcome { seg_shard: 0, seg_seq: 42, offset: 8, rcpt }, seg.clone());
            s.flush(u64::from(rcpt));
            // Writes complete at once; the sync asked for never does (until the end).
            let mut wrote = false;
            while let Some(op) = s.poll_op() {
                match op {
                    SpoolOp::WriteJournal { batch, .. } => {
                        wrote = true;
                        s.journal_written(batch, true, u64::from(rcpt));
                    }
                    SpoolOp::SyncJournal { .. } => syncs += 1,
                    op => panic!("unexpected {op:?}"),
                }
            }
            assert!(wrote, "turn {rcpt}: its entry is written while the sync is out");
        }
        assert_eq!(syncs, 1, "one sync out, none completed");
        assert_eq!(seg.life().live(), u64::from(turns), "nothing is durable yet");
        s.journal_synced(journal, true, u64::from(turns));
        let ops = turn(&mut s, u64::from(turns) + JOURNAL_SYNC_PACE_MS);
        assert_eq!(ops, ["sync-jnl"], "one sync for everything written meanwhile");
        assert_eq!(seg.life().live(), 0);
    }

    /// Outcomes of turns close together share one journal fdatasync; the next comes once the
    /// pace allows, and nothing is left unsynced.
    #[test]
    fn journal_syncs_are_paced() {
        let mut s = started();
        let seg = Seg(Arc::new((42, SegmentLife::default())));
        seg.life().add_live(3);
        let mut syncs = Vec::new();
        for (rcpt, now) in [(0, 100), (1, 101), (2, 105)] {
            s.record_outcome(Outcome { seg_shard: 0, seg_seq: 42, offset: 8, rcpt }, seg.clone());
            let seen = turn(&mut s, now);
            assert!(seen.contains(&"write-jnl"), "each turn's entries are written at once: {seen:?}");
            syncs.extend(seen.iter().filter(|o| **o == "sync-jnl").map(|_| now));
        }
        // The first turn's entry is synced on the next turn (once written), the others wait.
        assert_eq!(syncs, [101], "one sync for three turns within {JOURNAL_SYNC_PACE_MS} ms");
        assert_eq!(seg.life().live(), 2, "the later entries wait for the next sync");
        assert_eq!(turn(&mut s, 110), Vec::<&str>::new());
        assert_eq!(turn(&mut s, 101 + JOURNAL_SYNC_PACE_MS), ["sync-jnl"]);
        assert_eq!(seg.life().live(), 0);
    }
}
