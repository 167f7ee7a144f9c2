//! Counts per client address within a time window, shared by every shard without a lock:
//! failed AUTH attempts (`smtp-max-auth-failure-rate`) and sessions ended for protocol
//! errors. One table of atomic words built at start-up, so memory is bounded whatever the
//! number of addresses; an entry whose window has passed is free for reuse, and when every
//! slot an address may use is live, the one with the oldest window goes.
//!
//! Each slot is one `u64`: a 24-bit tag of the address's hash, the window's start (24 bits
//! of seconds, wrapping every 194 days) and the count (16 bits, saturating). The slot's
//! position comes from other bits of the same hash, so two addresses share a count only if
//! 38 bits of their hashes agree.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots an address may occupy, starting at its home slot.
pub const PROBES_MAX: usize = 8;
/// A compare-and-swap lost to another shard is tried again at most this often.
const RETRIES_MAX: usize = 1024;

const TAG_BITS: u32 = 24;
const TIME_BITS: u32 = 24;
const COUNT_BITS: u32 = 16;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const _: () = assert!(TAG_BITS + TIME_BITS + COUNT_BITS == 64);

pub struct AddressCounts {
    slots: Box<[AtomicU64]>,
    mask: usize,
}

fn pack(tag: u64, start_s: u64, count: u64) -> u64 {
    tag << (TIME_BITS + COUNT_BITS) | (start_s & TIME_MASK) << COUNT_BITS | count.min(COUNT_MAX)
}

fn unpack(word: u64) -> (u64, u64, u64) {
    (word >> (TIME_BITS + COUNT_BITS), (word >> COUNT_BITS) & TIME_MASK, word & COUNT_MAX)
}

/// FNV-1a over the address bytes: stable, no seed, no allocation.
fn hash(ip: IpAddr) -> u64 {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl AddressCounts {
    /// A table of at least `slots` entries (rounded up to a power of two).
    pub fn new(slots: usize) -> AddressCounts {
        let n = slots.max(PROBES_MAX).next_power_of_two();
        AddressCounts { slots: (0..n).map(|_| AtomicU64::new(0)).collect(), mask: n - 1 }
    }

    /// The address's tag (never 0: 0 marks an empty slot) and home slot.
    fn locate(&self, ip: IpAddr) -> (u64, usize) {
        let h = hash(ip);
        let tag = (h >> (64 - TAG_BITS)).max(1);
        (tag, h as usize & self.mask)
    }

    fn live(start_s: u64, now_s: u64, window_s: u64) -> bool {
        (now_s.wrapping_sub(start_s) & TIME_MASK) < window_s
    }

    /// The address's count within the window that holds `now_s` (0 when none is live).
    pub fn get(&self, ip: IpAddr, now_s: u64, window_s: u64) -> u32 {
        let (tag, home) = self.locate(ip);
        for p in 0..PROBES_MAX {
            let (t, start, count) = unpack(self.slots[(home + p) & self.mask].load(Ordering::Acquire));
            if t == tag {
                return if Self::live(start, now_s, window_s) { count as u32 } else { 0 };
            }
        }
        0
    }

    /// Adds `n` to the address's count (a new window starts when the last one is over) and
    /// returns the count after.
    pub fn add(&self, ip: IpAddr, n: u32, now_s: u64, window_s: u64) -> u32 {
        assert!(window_s > 0 && window_s < TIME_MASK, "a window of {window_s} s");
        let (tag, home) = self.locate(ip);
        for _ in 0..RETRIES_MAX {
            // Its own slot if it has one; else a free or lapsed one; else the oldest window.
            let mut victim: Option<(usize, u64, u64)> = None; // (slot, word, age)
            let mut own = None;
            for p in 0..PROBES_MAX {
                let i = (home + p) & self.mask;
                let word = self.slots[i].load(Ordering::Acquire);
                let (t, start, _) = unpack(word);
                if t == tag {
                    own = Some((i, word));
                    break;
                }
                let age = if word == 0 { u64::MAX } else { now_s.wrapping_sub(start) & TIME_MASK };
                let free = word == 0 || !Self::live(start, now_s, window_s);
                let age = if free { u64::MAX } else { age };
                if victim.is_none_or(|(_, _, a)| age > a) {
                    victim = Some((i, word, age));
                }
            }
            let (i, word, new) = match own {
                Some((i, word)) => {
                    let (_, start, count) = unpack(word);
                    let new = if Self::live(start, now_s, window_s) {
                        pack(tag, start, count + n as u64)
                    } else {
                        pack(tag, now_s, n as u64)
                    };
                    (i, word, new)
                }
                None => {
                    let (i, word, _) = victim.expect("PROBES_MAX slots were looked at");
                    (i, word, pack(tag, now_s, n as u64))
                }
            };
            if self.slots[i].compare_exchange(word, new, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return unpack(new).2 as u32;
            }
        }
        // Lost the race every time (another shard counting the same slots): count nothing
        // rather than spin; the next failure counts.
        self.get(ip, now_s, window_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | n))
    }

    #[test]
    fn counts_within_a_window_then_start_again() {
        let c = AddressCounts::new(1024);
        assert_eq!(c.add(ip(1), 1, 100, 300), 1);
        assert_eq!(c.add(ip(1), 2, 200, 300), 3);
        assert_eq!(c.get(ip(1), 399, 300), 3);
        assert_eq!(c.get(ip(2), 200, 300), 0, "another address has its own count");
        assert_eq!(c.get(ip(1), 400, 300), 0, "the window is over");
        assert_eq!(c.add(ip(1), 1, 400, 300), 1, "a new window");
    }

    #[test]
    fn memory_is_bounded_and_the_busiest_recent_addresses_stay() {
        let c = AddressCounts::new(64);
        // 10,000 addresses through a 64-slot table: no growth, no panic; a live address
        // added last is found.
        for n in 0..10_000 {
            c.add(ip(n), 1, 1_000 + n as u64 / 100, 60);
        }
        assert_eq!(c.slots.len(), 64);
        assert_eq!(c.add(ip(5), 3, 2_000, 60), 3);
        assert_eq!(c.get(ip(5), 2_001, 60), 3);
    }

    /// Shards counting the same address at once lose no count.
    #[test]
    fn concurrent_adds_all_count() {
        let c = Arc::new(AddressCounts::new(1024));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        c.add(ip(7), 1, 50, 300);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(ip(7), 50, 300), 4_000);
    }
}
