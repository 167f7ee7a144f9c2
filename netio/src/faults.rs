//! Fault injection for tests of the real daemon: with `SLUICE_FAULTS` set (for example
//! `seg-write=40,seg-fsync=40,jnl-write=40,jnl-fsync=40`), one spool segment write, segment
//! fdatasync, journal write or journal fdatasync in N is reported failed (EIO) after the real
//! IO, so the shard's failure paths run on io_uring as they would on a failing disk. Two more
//! items make panics on purpose, for the tests of what a panic ends: with `conn-panic`, a
//! client line starting `XFAULT-CONN-PANIC` panics while its connection's input is handled
//! (only that connection may end); with `shard-panic`, one starting `XFAULT-SHARD-PANIC`
//! panics in the shard outside any connection's handling (the process must exit). Off unless
//! the variable is set; the daemon warns at start when it is on. `lose-answers` drops the
//! control plane's answers to inbound checks and complaint reports, as a full mailbox would.

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
    /// `conn-panic`, `shard-panic`.
    panics: [bool; 2],
    /// `lose-answers`: the control plane's answers to inbound checks and complaint reports
    /// are dropped on arrival, as a full mailbox drops them.
    pub lose_answers: bool,
}

/// Where an injected panic happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PanicAt {
    /// While one connection's input is handled.
    Connection = 0,
    /// In the shard, outside any connection's handling.
    Shard = 1,
}

const PANIC_NAMES: [&str; 2] = ["conn-panic", "shard-panic"];
const PANIC_WORDS: [&[u8]; 2] = [b"XFAULT-CONN-PANIC", b"XFAULT-SHARD-PANIC"];

impl Faults {
    pub fn from_env(shard: u32) -> Faults {
        let spec = std::env::var("SLUICE_FAULTS").ok();
        let faults = Faults::from_spec(spec.as_deref(), u64::from(shard) + 1);
        if let (Some(spec), 0) = (spec, shard) {
            tracing::warn!(%spec, "fault injection is on (SLUICE_FAULTS): spool IO fails on purpose");
        }
        faults
    }

    /// The faults `spec` names (as `SLUICE_FAULTS`), drawn from `seed`.
    pub fn from_spec(spec: Option<&str>, seed: u64) -> Faults {
        let mut odds = [0; 4];
        let mut panics = [false; 2];
        let mut lose_answers = false;
        if let Some(spec) = spec {
            for item in spec.split(',').filter(|s| !s.is_empty()) {
                if let Some(i) = PANIC_NAMES.iter().position(|k| *k == item.trim()) {
                    panics[i] = true;
                    continue;
                }
                if item.trim() == "lose-answers" {
                    lose_answers = true;
                    continue;
                }
                let parsed = item.split_once('=').and_then(|(name, n)| {
                    Some((NAMES.iter().position(|k| *k == name.trim())?, n.trim().parse::<u64>().ok()?))
                });
                match parsed {
                    Some((i, n)) => odds[i] = n,
                    None => tracing::error!(
                        item,
                        "SLUICE_FAULTS: expected NAME=N, NAME one of {NAMES:?}, or one of {PANIC_NAMES:?}"
                    ),
                }
            }
        }
        Faults { odds, rng: Rng::new(seed), panics, lose_answers }
    }

    /// The panic a client's pending input asks for, when that fault is on.
    pub fn panic_for(&self, input: &[u8]) -> Option<PanicAt> {
        [PanicAt::Connection, PanicAt::Shard]
            .into_iter()
            .find(|at| self.panics[*at as usize] && input.starts_with(PANIC_WORDS[*at as usize]))
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
