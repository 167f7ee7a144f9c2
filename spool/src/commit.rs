//! Group-commit bookkeeping, sans-IO. The shard submits writes and syncs; this module decides
//! when a sync is due and which tickets a finished sync makes durable.
//!
//! Acknowledged records always form a prefix of the file: a write that completes before an
//! earlier one is held back until the earlier one completes, so a crash can never leave a
//! hole before an acknowledged record (recovery stops at the first torn record).

use crate::codec::FILE_HEADER_BYTES;
use std::collections::VecDeque;

/// Writes in flight per file; the shard stops accepting DATA when it is reached.
pub const FILE_WRITES_IN_FLIGHT_MAX: usize = 4096;
/// Alignment of records in a segment, so offsets are always 8-byte aligned.
pub const RECORD_ALIGN: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketResult {
    Durable,
    Failed,
}

/// One file's group commit: writes in submission order, the completed prefix waiting for a
/// sync, and the batch covered by the sync in flight.
#[derive(Debug, Default)]
pub struct FileCommit {
    in_flight: VecDeque<(u64, Option<bool>)>,
    written: Vec<u64>,
    syncing: Vec<u64>,
    sync_in_flight: bool,
    /// A write or sync failed: nothing after it can be trusted, the file takes no more writes.
    poisoned: bool,
    /// `take_poisoning` has told of it.
    poisoning_told: bool,
    failed: Vec<u64>,
    /// Group commit's hold (`poll_sync_held`): when the tickets now written were first seen
    /// waiting, and how many the last sync covered.
    waiting_since_us: Option<u64>,
    last_group: usize,
}

impl FileCommit {
    pub fn write_submitted(&mut self, ticket: u64) {
        assert!(self.in_flight.len() < FILE_WRITES_IN_FLIGHT_MAX);
        assert!(!self.poisoned, "write submitted to a poisoned file");
        self.in_flight.push_back((ticket, None));
    }

    pub fn write_completed(&mut self, ticket: u64, ok: bool) {
        let slot = self.in_flight.iter_mut().find(|(t, _)| *t == ticket).expect("completion for a submitted write");
        assert!(slot.1.is_none(), "write completed twice");
        slot.1 = Some(ok);
        while let Some(&(t, Some(ok))) = self.in_flight.front() {
            self.in_flight.pop_front();
            if ok && !self.poisoned {
                self.written.push(t);
            } else {
                self.poisoned = true;
                self.failed.push(t);
            }
        }
    }

    /// True when the caller must submit a sync of this file now.
    pub fn poll_sync(&mut self) -> bool {
        if self.sync_in_flight || self.written.is_empty() {
            return false;
        }
        assert!(self.syncing.is_empty());
        std::mem::swap(&mut self.syncing, &mut self.written);
        self.sync_in_flight = true;
        true
    }

    /// As `poll_sync`, holding a group smaller than the last one for up to `hold_us` after
    /// its first ticket was seen waiting, so that more join it (PostgreSQL's `commit_delay`):
    /// under load, fewer syncs for as many tickets; a lone ticket after a lone one is never
    /// held. Err: held, ask again at that time.
    pub fn poll_sync_held(&mut self, now_us: u64, hold_us: u64) -> Result<bool, u64> {
        if self.written.is_empty() {
            return Ok(false);
        }
        let since = *self.waiting_since_us.get_or_insert(now_us);
        if self.sync_in_flight {
            return Ok(false);
        }
        if self.written.len() < self.last_group && now_us < since + hold_us {
            return Err(since + hold_us);
        }
        self.waiting_since_us = None;
        self.last_group = self.written.len();
        Ok(self.poll_sync())
    }

    /// A sync finished: its tickets are durable, or (on error) failed and the file poisoned.
    pub fn sync_completed(&mut self, ok: bool, out: &mut Vec<(u64, TicketResult)>) {
        assert!(self.sync_in_flight, "sync completion without a sync");
        self.sync_in_flight = false;
        let result = if ok { TicketResult::Durable } else { TicketResult::Failed };
        if !ok {
            // After a failed fsync the kernel may have dropped the dirty pages: never retry it.
            self.poisoned = true;
            self.failed.append(&mut self.written);
        }
        out.extend(self.syncing.drain(..).map(|t| (t, result)));
    }

    /// Tickets that failed since the last call (their client gets a 4xx).
    pub fn take_failed(&mut self, out: &mut Vec<(u64, TicketResult)>) {
        out.extend(self.failed.drain(..).map(|t| (t, TicketResult::Failed)));
    }

    pub fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// True once: the first time it is asked after the file became poisoned. One failure,
    /// however many tickets fail behind it (what `JournalBackoff` counts).
    pub fn take_poisoning(&mut self) -> bool {
        let news = self.poisoned && !self.poisoning_told;
        self.poisoning_told |= self.poisoned;
        news
    }

    /// Writes submitted and not yet completed (those completed and waiting for a sync are not
    /// counted).
    pub fn writes_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Nothing in flight, nothing waiting: the file may be closed.
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty() && self.written.is_empty() && !self.sync_in_flight && self.failed.is_empty()
    }
}

/// When a shard may start a new journal after journal failures: at once after one failing
/// journal (outcomes not journaled are redelivered after a crash), then 10 ms doubling to 1 s
/// while new journals keep failing (a failing disk would otherwise get a new file per batch).
/// A journal counts once when it fails, not once per batch that fails behind the failure; a
/// durable batch resets the count.
#[derive(Debug, Default)]
pub struct JournalBackoff {
    failures_in_row: u32,
    until_ms: u64,
}

impl JournalBackoff {
    /// A journal's completions were settled: `newly_poisoned` when they poisoned it,
    /// `durable` when some batch became durable.
    pub fn settled(&mut self, now_ms: u64, newly_poisoned: bool, durable: bool) {
        if newly_poisoned {
            self.failures_in_row += 1;
            let wait = match self.failures_in_row {
                1 => 0,
                n => (10u64 << (n - 2).min(7)).min(1_000),
            };
            self.until_ms = now_ms + wait;
        } else if durable {
            self.failures_in_row = 0;
        }
    }

    pub fn may_start_journal(&self, now_ms: u64) -> bool {
        now_ms >= self.until_ms
    }
}

/// Where a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub seg_seq: u64,
    pub offset: u64,
    /// The caller must create this segment (header at 0) before writing the record.
    pub new_segment: bool,
}

/// One shard's segment appender: picks the segment and offset for each record, rotates full
/// or poisoned segments, and tracks the group commit of every segment still syncing.
#[derive(Debug)]
pub struct Appender {
    segment_bytes: u64,
    next_seq: u64,
    active: Option<(u64, u64)>, // (seq, next offset)
    files: Vec<(u64, FileCommit)>,
}

/// Segments whose commits are still draining after rotation; bounded by how fast rotation
/// can happen relative to syncs (one sync drains a segment).
pub const SEGMENTS_DRAINING_MAX: usize = 64;

impl Appender {
    pub fn new(segment_bytes: u64, first_seq: u64) -> Self {
        assert!(segment_bytes >= 1 << 16);
        Appender { segment_bytes, next_seq: first_seq, active: None, files: Vec::new() }
    }

    fn commit(&mut self, seq: u64) -> &mut FileCommit {
        &mut self.files.iter_mut().find(|(s, _)| *s == seq).expect("segment has a commit").1
    }

    /// Bytes a record of `len` takes in a segment, padding included.
    pub fn aligned(len: u64) -> u64 {
        len.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
    }

    /// Segment size needed for a record of `len` bytes (a message larger than a standard
    /// segment gets a segment of its own).
    pub fn segment_bytes_for(&self, len: u64) -> u64 {
        self.segment_bytes.max(FILE_HEADER_BYTES as u64 + Self::aligned(len))
    }

    /// Chooses where a record of `len` bytes goes, and registers the write as submitted.
    pub fn place(&mut self, len: u64, ticket: u64) -> Placement {
        let aligned = Self::aligned(len);
        let mut new_segment = false;
        let fits = match self.active {
            Some((seq, off)) => !self.commit(seq).poisoned() && off + aligned <= self.segment_bytes,
            None => false,
        };
        if !fits {
            self.active = Some((self.next_seq, FILE_HEADER_BYTES as u64));
            self.files.push((self.next_seq, FileCommit::default()));
            assert!(self.files.len() <= SEGMENTS_DRAINING_MAX + 1, "segments draining unboundedly");
            self.next_seq += 1;
            new_segment = true;
        }
        let (seq, off) = self.active.expect("set above");
        self.active = Some((seq, off + aligned));
        self.commit(seq).write_submitted(ticket);
        Placement { seg_seq: seq, offset: off, new_segment }
    }

    /// The active segment takes no more records (it is about to be deleted, or is poisoned).
    pub fn seal_active(&mut self) -> Option<u64> {
        self.active.take().map(|(seq, _)| seq)
    }

    pub fn active_seq(&self) -> Option<u64> {
        self.active.map(|(seq, _)| seq)
    }

    pub fn write_completed(&mut self, seq: u64, ticket: u64, ok: bool) {
        self.commit(seq).write_completed(ticket, ok);
    }

    /// Segments that need a sync submitted now (`FileCommit::poll_sync_held`); returns when
    /// to ask again for a group held back, if one is.
    pub fn poll_syncs(&mut self, out: &mut Vec<u64>, now_us: u64, hold_us: u64) -> Option<u64> {
        let mut again: Option<u64> = None;
        let active = self.active.map(|(s, _)| s);
        for (seq, c) in &mut self.files {
            // A rotated segment takes no more records: nothing would join its group.
            let hold = if Some(*seq) == active { hold_us } else { 0 };
            match c.poll_sync_held(now_us, hold) {
                Ok(true) => out.push(*seq),
                Ok(false) => {}
                Err(at) => again = Some(again.map_or(at, |a| a.min(at))),
            }
        }
        again
    }

    pub fn sync_completed(&mut self, seq: u64, ok: bool, out: &mut Vec<(u64, TicketResult)>) {
        self.commit(seq).sync_completed(ok, out);
    }

    /// Collects failed tickets and forgets rotated segments whose commits are done.
    /// Returns the segments forgotten (the caller may close its write handle).
    pub fn reap(&mut self, out: &mut Vec<(u64, TicketResult)>, closed: &mut Vec<u64>) {
        let active = self.active.map(|(s, _)| s);
        for (_, c) in &mut self.files {
            c.take_failed(out);
        }
        self.files.retain(|(seq, c)| {
            let keep = Some(*seq) == active || !c.idle();
            if !keep {
                closed.push(*seq);
            }
            keep
        });
    }

    pub fn in_flight(&self) -> bool {
        self.files.iter().any(|(_, c)| !c.idle())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(c: &mut FileCommit, tickets: std::ops::Range<u64>) {
        for t in tickets {
            c.write_submitted(t);
            c.write_completed(t, true);
        }
    }

    /// Group commit's hold: a group as large as the last goes at once; a smaller one waits
    /// for more until the hold is over (the caller is told when to ask again); a lone ticket
    /// after a lone one never waits.
    #[test]
    fn a_smaller_group_than_the_last_is_held_a_moment() {
        let mut c = FileCommit::default();
        let mut out = Vec::new();
        written(&mut c, 0..1);
        assert_eq!(c.poll_sync_held(1_000, 500), Ok(true), "the first ticket is not held");
        c.sync_completed(true, &mut out);
        written(&mut c, 1..2);
        assert_eq!(c.poll_sync_held(2_000, 500), Ok(true), "a lone ticket after a lone one is not held");
        c.sync_completed(true, &mut out);
        written(&mut c, 2..8);
        assert_eq!(c.poll_sync_held(3_000, 500), Ok(true), "a larger group goes at once");
        c.sync_completed(true, &mut out);
        written(&mut c, 8..10);
        assert_eq!(c.poll_sync_held(4_000, 500), Err(4_500), "2 after 6: held");
        written(&mut c, 10..13);
        assert_eq!(c.poll_sync_held(4_200, 500), Err(4_500), "5 after 6: still held");
        assert_eq!(c.poll_sync_held(4_500, 500), Ok(true), "the hold is over");
        c.sync_completed(true, &mut out);
        assert_eq!(out.len(), 13);
        assert!(out.iter().all(|(_, r)| *r == TicketResult::Durable));
        written(&mut c, 13..15);
        assert_eq!(c.poll_sync_held(5_000, 0), Ok(true), "no hold asked: at once");
        c.sync_completed(true, &mut out);
        written(&mut c, 15..21);
        assert_eq!(c.poll_sync_held(6_000, 500), Ok(true), "as many as the last group (or more): at once");
    }

    #[test]
    fn out_of_order_completion_waits_for_prefix() {
        let mut c = FileCommit::default();
        c.write_submitted(1);
        c.write_submitted(2);
        c.write_completed(2, true);
        assert!(!c.poll_sync(), "2 must wait for 1");
        c.write_completed(1, true);
        assert!(c.poll_sync());
        let mut out = Vec::new();
        c.sync_completed(true, &mut out);
        assert_eq!(out, vec![(1, TicketResult::Durable), (2, TicketResult::Durable)]);
        assert!(c.idle());
    }

    #[test]
    fn writes_during_sync_join_next_batch() {
        let mut c = FileCommit::default();
        let mut out = Vec::new();
        c.write_submitted(1);
        c.write_completed(1, true);
        assert!(c.poll_sync());
        c.write_submitted(2);
        c.write_completed(2, true);
        assert!(!c.poll_sync(), "one sync at a time");
        c.sync_completed(true, &mut out);
        assert_eq!(out, vec![(1, TicketResult::Durable)]);
        assert!(c.poll_sync());
        c.sync_completed(true, &mut out);
        assert_eq!(out[1], (2, TicketResult::Durable));
    }

    #[test]
    fn failed_write_poisons_everything_after_it() {
        let mut c = FileCommit::default();
        let mut out = Vec::new();
        for t in 1..=3 {
            c.write_submitted(t);
        }
        c.write_completed(3, true);
        c.write_completed(2, false);
        c.write_completed(1, true);
        assert!(c.poisoned());
        assert!(c.take_poisoning() && !c.take_poisoning(), "one failure, told once");
        assert!(c.poll_sync());
        c.sync_completed(true, &mut out);
        c.take_failed(&mut out);
        assert_eq!(out, vec![(1, TicketResult::Durable), (2, TicketResult::Failed), (3, TicketResult::Failed)]);
    }

    #[test]
    fn failed_sync_fails_its_batch() {
        let mut c = FileCommit::default();
        let mut out = Vec::new();
        c.write_submitted(1);
        c.write_completed(1, true);
        assert!(c.poll_sync());
        c.sync_completed(false, &mut out);
        assert_eq!(out, vec![(1, TicketResult::Failed)]);
        assert!(c.poisoned());
    }

    #[test]
    fn journal_backoff_grows_only_while_journals_keep_failing() {
        let mut b = JournalBackoff::default();
        b.settled(1_000, true, false);
        assert!(b.may_start_journal(1_000), "one failing journal: a new one at once");
        b.settled(1_000, false, false);
        assert!(b.may_start_journal(1_000), "batches failing behind it do not count");
        b.settled(1_000, true, false);
        assert!(!b.may_start_journal(1_009) && b.may_start_journal(1_010));
        for _ in 0..20 {
            b.settled(2_000, true, false);
        }
        assert!(!b.may_start_journal(2_999) && b.may_start_journal(3_000), "at most a second");
        b.settled(3_000, false, true);
        b.settled(3_000, true, false);
        assert!(b.may_start_journal(3_000), "a durable batch resets the count");
    }

    #[test]
    fn appender_rotates_full_and_poisoned_segments() {
        let mut a = Appender::new(1 << 16, 1);
        let p = a.place(1000, 1);
        assert_eq!((p.seg_seq, p.offset, p.new_segment), (1, FILE_HEADER_BYTES as u64, true));
        let p2 = a.place(1000, 2);
        assert_eq!((p2.seg_seq, p2.offset, p2.new_segment), (1, FILE_HEADER_BYTES as u64 + 1000, false));
        let p3 = a.place(1 << 16, 3);
        assert!(p3.new_segment && p3.seg_seq == 2);
        a.write_completed(2, 3, false);
        let p4 = a.place(10, 4);
        assert!(p4.new_segment && p4.seg_seq == 3, "poisoned segment is rotated");
    }
}
