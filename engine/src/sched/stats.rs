//! Counters one shard keeps (relaxed atomics, written by that shard alone, on their own cache
//! line) and the control plane sums.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
#[repr(align(128))]
pub struct ShardStats {
    pub msgs_in: AtomicU64,
    pub rcpts_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Transactions that delivered at least one recipient.
    pub msgs_out: AtomicU64,
    pub rcpts_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub rcpts_bounced: AtomicU64,
    pub rcpts_deferred: AtomicU64,
    /// Connections closed because handling their input panicked (the shard went on).
    pub connection_panics: AtomicU64,
    /// Messages that would be signed but have no From address with a domain.
    pub dkim_unsignable: AtomicU64,
    /// Accounting records dropped because the control plane took none for too long.
    pub acct_records_dropped: AtomicU64,
}

impl ShardStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The sums over every shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub msgs_in: u64,
    pub rcpts_in: u64,
    pub bytes_in: u64,
    pub msgs_out: u64,
    pub rcpts_out: u64,
    pub bytes_out: u64,
    pub rcpts_bounced: u64,
    pub rcpts_deferred: u64,
    pub connection_panics: u64,
    pub dkim_unsignable: u64,
    pub acct_records_dropped: u64,
}

impl Totals {
    pub fn of<'a>(stats: impl IntoIterator<Item = &'a ShardStats>) -> Totals {
        let mut t = Totals::default();
        for s in stats {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            t.msgs_in += get(&s.msgs_in);
            t.rcpts_in += get(&s.rcpts_in);
            t.bytes_in += get(&s.bytes_in);
            t.msgs_out += get(&s.msgs_out);
            t.rcpts_out += get(&s.rcpts_out);
            t.bytes_out += get(&s.bytes_out);
            t.rcpts_bounced += get(&s.rcpts_bounced);
            t.rcpts_deferred += get(&s.rcpts_deferred);
            t.connection_panics += get(&s.connection_panics);
            t.dkim_unsignable += get(&s.dkim_unsignable);
            t.acct_records_dropped += get(&s.acct_records_dropped);
        }
        t
    }
}
