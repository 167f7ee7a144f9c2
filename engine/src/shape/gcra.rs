//! GCRA (the generic cell rate algorithm) in one `AtomicU64`: the theoretical arrival time
//! (TAT). A grant at `now` is allowed when `TAT <= now + tolerance`, and moves TAT to
//! `max(TAT, now) + emission`. Updated by compare-exchange: no lock, shared by every shard.
//!
//! Bound (proved in the test's comment): in any window of length W, at most
//! `W / emission + burst` grants, whatever the interleaving of callers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Compare-exchange retries before a caller reports contention as a refusal; each retry
/// means another caller made progress, so this only bounds a pathological spin.
pub const CAS_RETRIES_MAX: u32 = 1024;

/// How long a caller refused by `Limit::NEVER` waits before asking again (a reload may
/// have changed the rate).
pub const NEVER_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Time per event at the sustained rate.
    pub emission_ns: u64,
    /// How far ahead of `now` the TAT may run: (burst - 1) emissions.
    pub tolerance_ns: u64,
}

impl Limit {
    /// Nothing passes (a rate of 0: PowerMTA's `max-msg-rate 0` holds the queue's mail).
    pub const NEVER: Limit = Limit { emission_ns: u64::MAX, tolerance_ns: 0 };

    /// `count` events per `period`, with up to `burst` at once (burst ≥ 1).
    pub fn new(count: u32, period: Duration, burst: u32) -> Limit {
        assert!(count > 0 && burst > 0 && !period.is_zero());
        let emission_ns = (period.as_nanos() / count as u128).max(1) as u64;
        Limit { emission_ns, tolerance_ns: emission_ns * (burst as u64 - 1) }
    }
}

#[derive(Debug, Default)]
pub struct GcraCell {
    tat_ns: AtomicU64,
}

impl GcraCell {
    pub const fn new() -> Self {
        GcraCell { tat_ns: AtomicU64::new(0) }
    }

    /// Takes one grant at `now_ns` (any monotonic clock, the same for every caller), or
    /// returns how long until one would be allowed.
    pub fn try_acquire(&self, now_ns: u64, limit: Limit) -> Result<(), Duration> {
        if limit == Limit::NEVER {
            return Err(NEVER_RETRY);
        }
        let mut tat = self.tat_ns.load(Ordering::Acquire);
        for _ in 0..CAS_RETRIES_MAX {
            if tat > now_ns + limit.tolerance_ns {
                return Err(Duration::from_nanos(tat - now_ns - limit.tolerance_ns));
            }
            let next = tat.max(now_ns) + limit.emission_ns;
            match self.tat_ns.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
        Err(Duration::from_nanos(limit.emission_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_zero_rate_never_grants() {
        let cell = GcraCell::new();
        for now in [0, 1, 1 << 40] {
            assert_eq!(cell.try_acquire(now, Limit::NEVER), Err(NEVER_RETRY));
        }
    }

    #[test]
    fn sustained_rate_and_burst() {
        let cell = GcraCell::new();
        let limit = Limit::new(10, Duration::from_secs(1), 3);
        // A burst of 3 at t=0, then nothing until one emission (100ms) later.
        assert!((0..3).all(|_| cell.try_acquire(0, limit).is_ok()));
        assert_eq!(cell.try_acquire(0, limit), Err(Duration::from_millis(100)));
        assert!(cell.try_acquire(100_000_000, limit).is_ok());
        assert!(cell.try_acquire(150_000_000, limit).is_err());
        assert!(cell.try_acquire(200_000_000, limit).is_ok());
    }

    /// Every thread hammers one cell for a bounded time; grants, by the `now` each used, never
    /// exceed rate × window + burst in any window. (Take the grant in a window whose
    /// compare-exchange came first: it leaves TAT ≥ a + T. Each later grant adds T and needs
    /// TAT ≤ now + τ ≤ a + W + τ, so k ≤ (W + τ)/T + 1 = W/T + burst.)
    #[test]
    fn concurrent_grants_respect_the_bound_in_every_window() {
        const THREADS: usize = 4;
        const RUN: Duration = Duration::from_millis(300);
        let limit = Limit::new(2000, Duration::from_secs(1), 20);
        let cell = Arc::new(GcraCell::new());
        let start = Instant::now();
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let cell = cell.clone();
                std::thread::spawn(move || {
                    let mut grants = Vec::new();
                    while start.elapsed() < RUN {
                        let now = start.elapsed().as_nanos() as u64;
                        if cell.try_acquire(now, limit).is_ok() {
                            grants.push(now);
                        }
                    }
                    grants
                })
            })
            .collect();
        let mut grants: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        grants.sort_unstable();
        assert!(grants.len() > 300, "the limiter granted something: {}", grants.len());
        for window_ms in [1u64, 10, 50, 100] {
            let w = window_ms * 1_000_000;
            let bound = (w / limit.emission_ns) as usize + 20;
            let mut lo = 0;
            for hi in 0..grants.len() {
                while grants[hi] - grants[lo] > w {
                    lo += 1;
                }
                assert!(hi - lo < bound, "{} grants in a {window_ms}ms window, bound {bound}", hi - lo + 1);
            }
        }
        // And it is not over-strict: close to the rate over the whole run.
        // The burst, one per emission interval, and one for the interval's both ends.
        let expected = (RUN.as_millis() as usize) * 2 + 20 + 1;
        assert!(
            grants.len() <= expected && grants.len() >= expected * 8 / 10,
            "{} grants, expected about {expected}",
            grants.len()
        );
    }
}
