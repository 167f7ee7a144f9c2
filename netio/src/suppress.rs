//! Loads `<address-list>`s at start. Hash files (10 million lines is normal) are turned into a
//! sorted binary index next to them, `FILE.sluice-idx`, rebuilt when the file changes, and
//! memory-mapped: 32 bytes per entry, in the page cache, shared by every shard, no heap. Where
//! the index cannot be written (a read-only directory) the table is kept in memory instead.

use memmap2::Mmap;
use sluice_config::{Config, ConfigError, ListEntry};
use sluice_engine::prepare::Processor;
use sluice_engine::suppress::{parse_hex_hash, sort_table, AddressList, HashTable, Hashed};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const INDEX_MAGIC: &[u8; 8] = b"SLUIDX1\0";
/// Magic, then the source file's size and modification time (ns): 24 bytes.
const INDEX_HEADER: usize = 24;

struct MappedTable(Mmap);

impl HashTable for MappedTable {
    fn bytes(&self) -> &[u8] {
        &self.0[INDEX_HEADER..]
    }
}

fn stamp(path: &Path) -> std::io::Result<(u64, u64)> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta.modified()?.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    Ok((meta.len(), mtime))
}

fn index_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".sluice-idx");
    PathBuf::from(p)
}

/// The sorted table for a hash file: its index mapped (built first when missing or stale).
pub fn hash_table(path: &Path) -> std::io::Result<Box<dyn HashTable>> {
    let (size, mtime) = stamp(path)?;
    let idx = index_path(path);
    let fresh = |idx: &Path| -> Option<Mmap> {
        let f = std::fs::File::open(idx).ok()?;
        // SAFETY: the index is written whole and renamed into place; sluice never changes it
        // in place (a new one replaces it).
        let map = unsafe { Mmap::map(&f) }.ok()?;
        let ok = map.len() >= INDEX_HEADER
            && &map[..8] == INDEX_MAGIC
            && map[8..16] == size.to_le_bytes()
            && map[16..24] == mtime.to_le_bytes()
            && (map.len() - INDEX_HEADER) % 32 == 0;
        ok.then_some(map)
    };
    if let Some(map) = fresh(&idx) {
        return Ok(Box::new(MappedTable(map)));
    }
    let mut records = Vec::with_capacity((size / 65) as usize);
    for (n, line) in BufReader::with_capacity(1 << 20, std::fs::File::open(path)?).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        records.push(
            parse_hex_hash(&line).ok_or_else(|| {
                std::io::Error::other(format!("line {}: not a 64-digit hex SHA-256: {line:?}", n + 1))
            })?,
        );
    }
    let table = sort_table(records);
    let tmp = idx.with_extension("sluice-idx.tmp");
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(INDEX_MAGIC)?;
        f.write_all(&size.to_le_bytes())?;
        f.write_all(&mtime.to_le_bytes())?;
        f.write_all(&table)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &idx)
    })();
    match written.ok().and_then(|_| fresh(&idx)) {
        Some(map) => Ok(Box::new(MappedTable(map))),
        None => {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(file = %path.display(), "cannot write the hash index beside it; keeping the table in memory");
            Ok(Box::new(table))
        }
    }
}

pub fn load_feedback(config: &Config) -> Result<Option<Processor>, ConfigError> {
    load_processor(config, config.feedback_processor.as_ref())
}

/// The `<bounce-processor>`: the addresses asynchronous bounces come to.
pub fn load_bounces(config: &Config) -> Result<Option<Processor>, ConfigError> {
    load_processor(config, config.bounce_processor.as_ref())
}

fn load_processor(
    config: &Config,
    p: Option<&sluice_config::FeedbackProcessor>,
) -> Result<Option<Processor>, ConfigError> {
    let Some(p) = p else { return Ok(None) };
    let addresses = load_one(&p.addresses)?;
    let auto_suppress = match &p.auto_suppress {
        None => None,
        Some(name) => {
            let list = &config.address_lists[name];
            let file = list.entries.iter().find_map(|(e, _)| match e {
                ListEntry::File(path) => Some(path.clone()),
                _ => None,
            });
            let shared = list.entries.iter().any(|(e, _)| matches!(e, ListEntry::RedisSet(_)));
            if file.is_none() && shared {
                return Ok(Some(Processor {
                    addresses,
                    deliver_unmatched: p.deliver_unmatched,
                    auto_suppress: None,
                    auto_suppress_list: p.auto_suppress.clone(),
                }));
            }
            let Some(file) = file else {
                let span = list.entries.first().map(|(_, s)| s.clone());
                let message =
                    format!("auto-suppress-list `{name}` has no `address-file` (or `redis-set`) to add complainers to");
                return Err(match span {
                    Some(span) => ConfigError::at(&span, message, "add `address-file /path/complainers.txt` to it"),
                    None => ConfigError { file: String::new(), line: 0, message, hint: "add an address-file".into() },
                });
            };
            Some(file)
        }
    };
    let auto_suppress_list = p.auto_suppress.clone();
    Ok(Some(Processor { addresses, deliver_unmatched: p.deliver_unmatched, auto_suppress, auto_suppress_list }))
}

/// Every `<address-list>`, ready for lookups; a file that cannot be read is a config error
/// at its line.
pub fn load_lists(config: &Config) -> Result<sluice_config::names::Names<Arc<AddressList>>, ConfigError> {
    let mut out = sluice_config::names::Names::new();
    for (name, list) in &config.address_lists {
        out.insert(name.clone(), load_one(list)?);
    }
    Ok(out)
}

fn load_one(list: &sluice_config::AddressListConfig) -> Result<Arc<AddressList>, ConfigError> {
    let name = &list.name;
    {
        let mut l = AddressList::new(name);
        for (entry, span) in &list.entries {
            let fail = |path: &Path, e: std::io::Error| {
                ConfigError::at(
                    span,
                    format!("cannot load {}: {e}", path.display()),
                    "check the path and the file's format",
                )
            };
            match entry {
                ListEntry::Address(a) if a.contains('@') => {
                    l.addresses.insert(a.clone());
                }
                ListEntry::Address(local) => {
                    l.local_parts.insert(local.clone());
                }
                ListEntry::Regex(re) => {
                    l.regexes.push(regex::Regex::new(&format!("(?i){re}")).expect("checked when parsed"))
                }
                ListEntry::Domain(d) => {
                    l.domains.insert(d.clone());
                }
                ListEntry::File(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| fail(path, e))?;
                    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                        let line = line.to_ascii_lowercase();
                        if line.contains('@') {
                            l.addresses.insert(line);
                        } else {
                            l.local_parts.insert(line);
                        }
                    }
                }
                ListEntry::HashFile(path) => {
                    l.hashed.push(Hashed { key: None, table: hash_table(path).map_err(|e| fail(path, e))? })
                }
                ListEntry::HmacFile(path, key) => l.hashed.push(Hashed {
                    key: Some(key.as_bytes().to_vec()),
                    table: hash_table(path).map_err(|e| fail(path, e))?,
                }),
                // Filled from Redis by the control plane (`src/cluster.rs`), then kept in step.
                ListEntry::RedisSet(_) => {}
            }
        }
        Ok(Arc::new(l))
    }
}
