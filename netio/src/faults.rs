//! Fault injection for tests of the real daemon: with `SLUICE_FAULTS` set (for example
//! `seg-write=40,seg-fsync=40,jnl-write=40,jnl-fsync=40`), one spool segment write, segment
//! fdatasync, journal write or journal fdatasync in N is reported failed (EIO) after the real
//! IO, so the shard's failure paths run on io_uring as they would on a failing disk. Off
//! unless the variable is set; the daemon warns at start when it is on.

/// The IO a fault can hit.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Io {
    SegWrite = 0,
    SegSync = 1,
    JnlWrite = 2,
    JnlSync = 3,
}

use sluice_spool::memdisk::Rng;

const NAMES: [&str; 4] = ["seg-write", "seg-fsync", "jnl-write", "jnl-fsync"];

pub(crate) struct Faults {
    /// One in this many fails; 0: never.
    odds: [u64; 4],
    rng: Rng,
}

impl Faults {
    pub fn from_env(shard: u32) -> Faults {
        let mut odds = [0; 4];
        if let Ok(spec) = std::env::var("SLUICE_FAULTS") {
            for item in spec.split(',').filter(|s| !s.is_empty()) {
                let parsed = item.split_once('=').and_then(|(name, n)| {
                    Some((NAMES.iter().position(|k| *k == name.trim())?, n.trim().parse::<u64>().ok()?))
                });
                match parsed {
                    Some((i, n)) => odds[i] = n,
                    None => tracing::error!(item, "SLUICE_FAULTS: expected NAME=N, NAME one of {NAMES:?}"),
                }
            }
            if shard == 0 {
                tracing::warn!(%spec, "fault injection is on (SLUICE_FAULTS): spool IO fails on purpose");
            }
        }
        Faults { odds, rng: Rng::new(u64::from(shard) + 1) }
    }

    /// The completion's result, or EIO when a fault hits it.
    pub fn apply(&mut self, io: Io, result: i32) -> i32 {
        let n = self.odds[io as usize];
        if n == 0 || result < 0 {
            return result;
        }
        if self.rng.below(n) == 0 {
            -libc::EIO
        } else {
            result
        }
    }
}
