//! The simulations' network: one direction of a TCP connection on a seeded clock.

use sluice_spool::memdisk::Rng;
use std::collections::VecDeque;

/// Bytes in flight, each piece deliverable from a time on.
#[derive(Default)]
pub struct Pipe {
    pieces: VecDeque<(u64, Vec<u8>)>,
}

impl Pipe {
    /// Splits `bytes` into random pieces with random, increasing delivery times (TCP keeps
    /// order).
    pub fn send(&mut self, rng: &mut Rng, now: u64, mut bytes: &[u8]) {
        let mut at = self.pieces.back().map_or(now, |p| p.0).max(now);
        while !bytes.is_empty() {
            let n = (1 + rng.below(bytes.len() as u64) as usize).min(bytes.len());
            at += rng.below(20);
            self.pieces.push_back((at, bytes[..n].to_vec()));
            bytes = &bytes[n..];
        }
    }

    pub fn take_due(&mut self, now: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while self.pieces.front().is_some_and(|p| p.0 <= now) {
            out.extend(self.pieces.pop_front().expect("checked").1);
        }
        out
    }
}
