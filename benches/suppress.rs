//! Suppression lookups in a 10-million-entry hashed list (the size bulk senders keep), and
//! the list's load time and memory: the hash file is written once under the system temp dir,
//! indexed (first load), then mapped (later loads). Load figures go to
//! target/criterion/suppress-load.txt; lookups are criterion's.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sluice_engine::suppress::{address_hash, AddressList, Hashed};
use std::io::Write;
use std::time::Instant;

const ENTRIES: usize = 10_000_000;

#[path = "common/mod.rs"]
mod common;
use common::rss_kib;

fn suppress(c: &mut Criterion) {
    let path = std::env::temp_dir().join(format!("sluice-bench-{ENTRIES}.sha256"));
    if !path.exists() {
        let mut w = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(&path).unwrap());
        for i in 0..ENTRIES {
            writeln!(w, "{}", address_hash(&format!("user{i}@bulk.test"), None)).unwrap();
        }
        w.flush().unwrap();
    }
    let _ = std::fs::remove_file(path.with_extension("sha256.sluice-idx"));
    let rss0 = rss_kib();
    let t = Instant::now();
    let first = sluice_netio::suppress::hash_table(&path).unwrap();
    let build_s = t.elapsed().as_secs_f64();
    drop(first);
    let t = Instant::now();
    let table = sluice_netio::suppress::hash_table(&path).unwrap();
    let map_s = t.elapsed().as_secs_f64();
    let heap_after = rss_kib().saturating_sub(rss0);
    let entries = table.bytes().len() / 32;
    let report = format!(
        "entries {entries}\nfirst load (parse, sort, write index) {build_s:.2} s\nlater load (map the index) {:.3} ms\nindex bytes per entry {}\nresident growth after loading (pages not yet touched) {heap_after} KiB\n",
        map_s * 1e3,
        table.bytes().len() / entries
    );
    std::fs::create_dir_all("target/criterion").unwrap();
    std::fs::write("target/criterion/suppress-load.txt", &report).unwrap();
    eprintln!("{report}");
    let mut list = AddressList::new("bench");
    list.hashed.push(Hashed { key: None, table });
    let mut g = c.benchmark_group("suppress_10M");
    g.bench_function("hit", |b| b.iter(|| assert!(list.suppresses(black_box("user7654321@bulk.test")))));
    g.bench_function("miss", |b| b.iter(|| assert!(!list.suppresses(black_box("nobody@bulk.test")))));
    g.finish();
}

criterion_group!(benches, suppress);
criterion_main!(benches);
