//! Suppression lists (`<address-list>`): addresses, local parts, domains, regexes, and hashed
//! entries (lower-case hex SHA-256 of the lower-cased address, or HMAC-SHA256 with a key).
//! Hashed entries live in a sorted table of 32-byte records (memory-mapped by the loader, so
//! 10 million entries cost 320 MB of page cache and no heap), searched by bisection. A lookup
//! allocates nothing: the address is lower-cased into a stack buffer.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

/// Addresses longer than this are never suppressed by hash (RFC 5321 allows 256 octets).
pub const ADDRESS_BYTES_MAX: usize = 320;

/// A sorted table of 32-byte hashes (from a file's index, mapped, or built in memory).
pub trait HashTable: Send + Sync {
    fn bytes(&self) -> &[u8];
}

impl HashTable for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Hashes of full addresses: plain SHA-256 (`key` None) or HMAC-SHA256 with `key`.
pub struct Hashed {
    pub key: Option<Vec<u8>>,
    pub table: Box<dyn HashTable>,
}

impl Hashed {
    pub fn len(&self) -> usize {
        self.table.bytes().len() / 32
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn contains(&self, lower: &[u8]) -> bool {
        let digest: [u8; 32] = match &self.key {
            None => Sha256::digest(lower).into(),
            Some(key) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(lower);
                mac.finalize().into_bytes().into()
            }
        };
        contains_sorted(self.table.bytes(), &digest)
    }
}

/// Bisection over sorted 32-byte records.
pub fn contains_sorted(table: &[u8], digest: &[u8; 32]) -> bool {
    let (mut lo, mut hi) = (0usize, table.len() / 32);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match table[mid * 32..mid * 32 + 32].cmp(digest) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// Sorts 32-byte records and drops duplicates (the table format).
pub fn sort_table(mut records: Vec<[u8; 32]>) -> Vec<u8> {
    records.sort_unstable();
    records.dedup();
    records.concat()
}

/// Parses one line of a hash file: 64 hex digits (case-insensitive).
pub fn parse_hex_hash(line: &str) -> Option<[u8; 32]> {
    let line = line.trim();
    if line.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(line.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The hash an operator puts in an `address-hash-file` (or `address-hmac-file` with a key).
pub fn address_hash(address: &str, hmac_key: Option<&[u8]>) -> String {
    let lower = address.trim().to_ascii_lowercase();
    let digest: Vec<u8> = match hmac_key {
        None => Sha256::digest(lower.as_bytes()).to_vec(),
        Some(key) => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(lower.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct AddressList {
    pub name: String,
    /// Lower-case full addresses, and local parts (entries without `@`: any domain).
    pub addresses: HashSet<String>,
    pub local_parts: HashSet<String>,
    pub domains: HashSet<String>,
    pub regexes: Vec<regex::Regex>,
    pub hashed: Vec<Hashed>,
    /// Recipients refused because of this list.
    pub hits: AtomicU64,
    /// Addresses added while running (an `auto-suppress-list`'s complainers). Read only when
    /// there are any, so lists that never grow take no lock.
    added: std::sync::RwLock<HashSet<String>>,
    has_added: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for AddressList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AddressList({})", self.name)
    }
}

impl AddressList {
    pub fn new(name: &str) -> AddressList {
        AddressList {
            name: name.to_string(),
            addresses: HashSet::new(),
            local_parts: HashSet::new(),
            domains: HashSet::new(),
            regexes: Vec::new(),
            hashed: Vec::new(),
            hits: AtomicU64::new(0),
            added: std::sync::RwLock::new(HashSet::new()),
            has_added: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Is `address` on the list? Counts a hit when it is.
    pub fn suppresses(&self, address: &str) -> bool {
        let hit = self.contains(address);
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Is `address` on the list (no hit counted)?
    pub fn contains(&self, address: &str) -> bool {
        let mut buf = [0u8; ADDRESS_BYTES_MAX];
        let n = address.len();
        if n > ADDRESS_BYTES_MAX {
            return false;
        }
        buf[..n].copy_from_slice(address.as_bytes());
        buf[..n].make_ascii_lowercase();
        let lower = std::str::from_utf8(&buf[..n]).unwrap_or(address);
        let (local, domain) = lower.rsplit_once('@').unwrap_or((lower, ""));
        let hit = self.addresses.contains(lower)
            || self.local_parts.contains(local)
            || self.domains.contains(domain)
            || self.hashed.iter().any(|h| h.contains(lower.as_bytes()))
            || self.regexes.iter().any(|r| r.is_match(lower))
            || (self.has_added.load(Ordering::Acquire) && self.added.read().expect("not poisoned").contains(lower));
        hit
    }

    /// Adds an address while running (its file is appended to separately, for restarts).
    pub fn add(&self, address: &str) {
        self.added.write().expect("not poisoned").insert(address.trim().to_ascii_lowercase());
        self.has_added.store(true, Ordering::Release);
    }

    /// Takes over the addresses `old` was given while running (a reload's new list keeps the
    /// shared set's members and the complainers until they are read again).
    pub fn carry_added(&self, old: &AddressList) {
        if !old.has_added.load(Ordering::Acquire) {
            return;
        }
        let from = old.added.read().expect("not poisoned");
        self.added.write().expect("not poisoned").extend(from.iter().cloned());
        self.has_added.store(true, Ordering::Release);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_list_keeps_what_the_old_was_given() {
        let old = AddressList::new("s");
        let new = AddressList::new("s");
        new.carry_added(&old);
        assert!(!new.contains("x@y.test"));
        old.add("X@y.test");
        new.carry_added(&old);
        assert!(new.contains("x@Y.test") && !new.contains("z@y.test"));
    }

    #[test]
    fn every_kind_of_entry() {
        let mut l = AddressList::new("s");
        l.addresses.insert("a@b.test".into());
        l.local_parts.insert("abuse".into());
        l.domains.insert("gone.test".into());
        l.regexes.push(regex::Regex::new("^bounce-.*@").unwrap());
        let sha = parse_hex_hash(&address_hash("Hashed@X.test", None)).unwrap();
        l.hashed.push(Hashed { key: None, table: Box::new(sort_table(vec![sha, [0; 32], [0xff; 32]])) });
        let mac = parse_hex_hash(&address_hash("m@x.test", Some(b"k1"))).unwrap();
        l.hashed.push(Hashed { key: Some(b"k1".to_vec()), table: Box::new(sort_table(vec![mac])) });
        for (addr, want) in [
            ("A@B.test", true),
            ("abuse@anywhere.test", true),
            ("x@gone.test", true),
            ("x@sub.gone.test", false),
            ("bounce-7@x.test", true),
            ("hashed@x.test", true),
            ("HASHED@x.TEST", true),
            ("m@x.test", true),
            ("other@x.test", false),
        ] {
            assert_eq!(l.suppresses(addr), want, "{addr}");
        }
        assert_eq!(l.hits(), 7);
        assert!(!l.contains("new@x.test"));
        l.add("New@X.test");
        assert!(l.contains("new@x.test"), "added while running");
    }

    #[test]
    fn hashes_are_sha256_of_the_lower_cased_address() {
        // echo -n "user@example.com" | sha256sum
        assert_eq!(
            address_hash("User@Example.com", None),
            "b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514"
        );
        assert_eq!(parse_hex_hash("zz"), None);
        let t = sort_table(vec![[3; 32], [1; 32], [2; 32], [1; 32]]);
        assert_eq!(t.len(), 96, "sorted, duplicates dropped");
        assert!(contains_sorted(&t, &[2; 32]) && !contains_sorted(&t, &[4; 32]));
    }
}
