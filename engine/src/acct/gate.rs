//! The order between accounting rows and the outcomes they record: an outcome is journaled
//! (or its DSN spooled) only once the row written before it is durable, so a crash never
//! leaves an outcome the spool recorded without its row (issue 22). Rows travel to the
//! accounting writer in numbered batches (1, 2, ...); the writer confirms the last batch it
//! made durable; what waited for that batch or an earlier one goes on.
//!
//! Sans-IO: the shard and the simulation keep one `RowGate` each and tell it what was sent
//! and what was confirmed.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct RowGate<T> {
    /// Batches handed to the writer; the next is `sent + 1`.
    sent: u64,
    /// What waits, with the batch it waits for, oldest first.
    held: VecDeque<(u64, T)>,
}

impl<T> Default for RowGate<T> {
    fn default() -> Self {
        RowGate { sent: 0, held: VecDeque::new() }
    }
}

impl<T> RowGate<T> {
    /// The number of the batch about to be sent.
    pub fn next_batch(&self) -> u64 {
        self.sent + 1
    }

    /// The batch `next_batch()` went to the writer.
    pub fn sent(&mut self) {
        self.sent += 1;
    }

    /// `item` follows every row recorded so far (`unsent`: some of them are not sent yet).
    /// Gives it back when those rows are durable already (`durable`: the last batch the
    /// writer confirmed); keeps it otherwise.
    pub fn admit(&mut self, item: T, unsent: bool, durable: u64) -> Option<T> {
        let batch = self.sent + u64::from(unsent);
        if self.held.is_empty() && batch <= durable {
            return Some(item);
        }
        self.held.push_back((batch, item));
        None
    }

    /// The next item whose rows are durable now.
    pub fn release(&mut self, durable: u64) -> Option<T> {
        match self.held.front() {
            Some((batch, _)) if *batch <= durable => self.held.pop_front().map(|(_, item)| item),
            _ => None,
        }
    }

    pub fn waiting(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items wait for the batch holding the rows before them, in order; one that comes when
    /// everything before it is confirmed goes at once.
    #[test]
    fn items_wait_for_the_batch_before_them() {
        let mut g = RowGate::default();
        assert_eq!(g.admit("a", false, 0), Some("a"), "no rows before it");
        assert_eq!(g.admit("b", true, 0), None, "its row is not sent yet");
        g.sent(); // batch 1 holds b's row
        assert_eq!(g.admit("c", false, 0), None, "batch 1 is not durable");
        assert_eq!(g.admit("d", true, 5), None, "behind b and c, whatever the mark");
        assert_eq!(g.release(0), None);
        assert_eq!(g.release(1), Some("b"));
        assert_eq!(g.release(1), Some("c"));
        assert_eq!(g.release(1), None, "d's row is in batch 2");
        g.sent();
        assert_eq!(g.release(2), Some("d"));
        assert_eq!(g.waiting(), 0);
        assert_eq!(g.admit("e", false, 2), Some("e"));
    }
}
