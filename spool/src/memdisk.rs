//! An in-memory disk that keeps what was written apart from what was synced, and crashes on
//! demand: after a crash each unsynced 512-byte sector independently did or did not reach the
//! platter (torn and reordered writes). Used by crash tests and the simulations; its generator
//! also drives the daemon's fault injection (`SLUICE_FAULTS`).

use std::collections::BTreeMap;

pub const SECTOR_BYTES: usize = 512;

#[derive(Debug, Default, Clone)]
struct File {
    live: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default, Clone)]
pub struct MemDisk {
    files: BTreeMap<String, File>,
}

/// A small deterministic generator (xorshift64*), so failures replay from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

impl MemDisk {
    pub fn create(&mut self, name: &str, size: usize) {
        self.files.insert(name.to_string(), File { live: vec![0; size], durable: vec![0; size] });
    }

    pub fn write(&mut self, name: &str, offset: usize, bytes: &[u8]) {
        let f = self.files.get_mut(name).expect("write to a created file");
        if f.live.len() < offset + bytes.len() {
            f.live.resize(offset + bytes.len(), 0);
        }
        f.live[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    pub fn sync(&mut self, name: &str) {
        let f = self.files.get_mut(name).expect("sync of a created file");
        f.durable = f.live.clone();
    }

    pub fn remove(&mut self, name: &str) {
        self.files.remove(name);
    }

    pub fn read(&self, name: &str) -> &[u8] {
        &self.files[name].live
    }

    /// Bytes the files take (what a full disk is measured against).
    pub fn used_bytes(&self) -> usize {
        self.files.values().map(|f| f.live.len().max(f.durable.len())).sum()
    }

    pub fn exists(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }

    /// Power loss: each unsynced sector survives or not, by the generator.
    pub fn crash(&mut self, rng: &mut Rng) {
        for f in self.files.values_mut() {
            let len = f.live.len().max(f.durable.len());
            f.durable.resize(len, 0);
            f.live.resize(len, 0);
            for start in (0..len).step_by(SECTOR_BYTES) {
                let end = (start + SECTOR_BYTES).min(len);
                if f.live[start..end] != f.durable[start..end] && rng.chance(50) {
                    let cut = start + rng.below((end - start) as u64 + 1) as usize;
                    f.durable[start..cut].copy_from_slice(&f.live[start..cut]);
                }
            }
            f.live = f.durable.clone();
        }
    }
}
