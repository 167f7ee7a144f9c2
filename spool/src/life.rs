//! When spool files may go, sans-IO: a segment once it is sealed (takes no more records) and
//! no recipient in it is live; a journal once every segment it holds entries for is gone.
//! Shared by the shards (a segment is released by every shard delivering from it, hence the
//! atomics) and by the relay simulation, which deletes from its `memdisk` on the same answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A segment's live-recipient count, sealed and deleted flags, and whether its file is gone.
#[derive(Debug, Default)]
pub struct SegmentLife {
    live: AtomicU64,
    sealed: AtomicBool,
    /// Claimed for deletion: one caller (of any shard) unlinks the file.
    deleted: AtomicBool,
    /// Set by that caller once the file is unlinked (`unlinked`). Shared with journals, which
    /// need to know when the segment is gone but must not keep its file (and so its disk
    /// space) alive. Not the claim: a journal of another shard deleted between the claim and
    /// the unlink would leave, after a crash there, a segment without the entries that say its
    /// recipients were delivered, and all of them would be delivered again.
    gone: Arc<AtomicBool>,
}

impl SegmentLife {
    /// `n` recipients were placed in the segment (or found owed in it at recovery).
    pub fn add_live(&self, n: u64) {
        assert!(!self.sealed.load(Ordering::SeqCst), "records added to a sealed segment");
        self.live.fetch_add(n, Ordering::SeqCst);
    }

    pub fn live(&self) -> u64 {
        self.live.load(Ordering::SeqCst)
    }

    /// `n` recipients reached a final, journaled outcome (or their write failed). True when
    /// the caller must delete the file now (at most once over the segment's life).
    #[must_use]
    pub fn release(&self, n: u64) -> bool {
        let before = self.live.fetch_sub(n, Ordering::SeqCst);
        assert!(before >= n, "segment released below zero");
        before == n && self.sealed.load(Ordering::SeqCst) && self.mark_deleted()
    }

    /// No more records will be added. True when the caller must delete the file now.
    #[must_use]
    pub fn seal(&self) -> bool {
        self.sealed.store(true, Ordering::SeqCst);
        self.live.load(Ordering::SeqCst) == 0 && self.mark_deleted()
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::SeqCst)
    }

    fn mark_deleted(&self) -> bool {
        self.deleted.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    /// The caller that was told to delete the file has unlinked it: journals holding entries
    /// for it may go.
    pub fn unlinked(&self) {
        self.gone.store(true, Ordering::SeqCst);
    }
}

/// The segments a journal holds entries for, by (shard, sequence).
#[derive(Debug, Default)]
pub struct JournalRefs {
    refs: HashMap<(u32, u64), Arc<AtomicBool>>,
}

impl JournalRefs {
    pub fn reference(&mut self, shard: u32, seq: u64, segment: &SegmentLife) {
        self.refs.entry((shard, seq)).or_insert_with(|| segment.gone.clone());
    }

    /// True once every referenced segment's file is unlinked: the journal's entries matter no
    /// more.
    pub fn all_gone(&mut self) -> bool {
        self.refs.retain(|_, gone| !gone.load(Ordering::SeqCst));
        self.refs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_once_when_sealed_and_idle() {
        let s = SegmentLife::default();
        s.add_live(2);
        assert!(!s.release(1));
        assert!(!s.seal(), "one recipient still live");
        assert!(s.release(1), "last release of a sealed segment deletes it");
        assert!(s.is_deleted());
        let idle = SegmentLife::default();
        assert!(idle.seal() && !idle.seal(), "an idle segment is deleted once, at sealing");
    }

    #[test]
    fn journal_retires_after_its_segments() {
        let (a, b) = (SegmentLife::default(), SegmentLife::default());
        a.add_live(1);
        b.add_live(1);
        let mut j = JournalRefs::default();
        j.reference(0, 1, &a);
        j.reference(0, 2, &b);
        assert!(!a.seal() && a.release(1));
        a.unlinked();
        assert!(!j.all_gone(), "segment 2 is still there");
        assert!(!b.seal() && b.release(1));
        assert!(!j.all_gone(), "segment 2 is to be deleted, not yet unlinked");
        b.unlinked();
        assert!(j.all_gone());
    }
}
