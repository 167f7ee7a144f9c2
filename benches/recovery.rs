//! Spool recovery after a restart with a large backlog: one million queued messages (1 KiB
//! each, two recipients, none delivered) in 64 MiB segments across 4 shard directories, the
//! state a relay is in after its destinations were unreachable for an hour. Measured: the
//! time `recover` takes to scan, verify (CRC) and plan them, and the memory the plan holds.
//! The figures go to target/criterion/recovery.txt; criterion times a run too.
//! `SLUICE_RECOVERY_MESSAGES` changes the count, `SLUICE_RECOVERY_DOMAINS` the number of
//! destination domains of the first recipient (1000; the second is always example.org).

use criterion::{criterion_group, criterion_main, Criterion};
use sluice_spool::codec::{encode_file_header, encode_message, Envelope, FileHeader, FileKind, FILE_HEADER_BYTES};
use sluice_spool::commit::Appender;
use std::io::Write;
use std::time::Instant;

const SEGMENT_BYTES: usize = 64 << 20;
const SHARDS: u32 = 4;

#[path = "common/mod.rs"]
mod common;
use common::rss_kib;

/// Writes `n` messages as segment files under `spool/SHARD/`.
fn build_spool(spool: &std::path::Path, n: usize, domains: usize) {
    let data: Vec<u8> = b"From: news@src.test\r\nTo: list@example.org\r\nSubject: backlog\r\n\r\n"
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'x', 960))
        .chain(*b"\r\n")
        .collect();
    let mut written = 0;
    let mut seq = 1u64;
    while written < n {
        for shard in 0..SHARDS {
            let dir = spool.join(shard.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let mut seg = Vec::with_capacity(SEGMENT_BYTES);
            seg.extend_from_slice(&encode_file_header(FileHeader { kind: FileKind::Segment, shard, seq }));
            assert_eq!(seg.len(), FILE_HEADER_BYTES);
            let mut record = Vec::with_capacity(2048);
            while written < n {
                let rcpts =
                    [format!("a{written}@dest{}.example", written % domains), format!("b{written}@example.org")];
                let env = Envelope {
                    queued_unix_ms: 1_795_000_000_000,
                    client_ip: "127.0.0.1".parse().unwrap(),
                    mail_from: "bounces@src.test",
                    envid: "",
                    vmta: "",
                    recipients: rcpts.iter().map(String::as_str).collect(),
                    job_id: "backlog",
                    extras: Default::default(),
                };
                record.clear();
                encode_message(&env, &data, &mut record);
                let len = Appender::aligned(record.len() as u64) as usize;
                if seg.len() + len > SEGMENT_BYTES {
                    break;
                }
                seg.extend_from_slice(&record);
                seg.resize(seg.len() + (len - record.len()), 0);
                written += 1;
            }
            seg.resize(SEGMENT_BYTES, 0);
            let mut f = std::fs::File::create(dir.join(sluice_spool::segment_name(seq))).unwrap();
            f.write_all(&seg).unwrap();
            seq += 1;
            if written >= n {
                break;
            }
        }
    }
}

fn recovery(c: &mut Criterion) {
    let n: usize = std::env::var("SLUICE_RECOVERY_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let domains: usize = std::env::var("SLUICE_RECOVERY_DOMAINS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let spool = std::env::temp_dir().join(format!("sluice-bench-recovery-{n}-{domains}"));
    if !spool.join("done").exists() {
        let _ = std::fs::remove_dir_all(&spool);
        build_spool(&spool, n, domains.max(1));
        std::fs::write(spool.join("done"), "").unwrap();
    }
    let before = rss_kib();
    let start = Instant::now();
    let recovered = sluice_netio::spool_files::recover(&spool).unwrap();
    let elapsed = start.elapsed();
    let after = rss_kib();
    assert_eq!(recovered.messages.len(), n, "every message is found");
    let report = format!(
        "messages {n}\nsegments {}\nrecover_seconds {:.2}\nmessages_per_second {:.0}\nplan_rss_mib {:.0}\n",
        std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|d| std::fs::read_dir(d.path()).unwrap().count())
            .sum::<usize>(),
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        after.saturating_sub(before) as f64 / 1024.0,
    );
    drop(recovered);
    print!("{report}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("recovery.txt"), &report).unwrap();
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.bench_function(format!("recover_{n}_messages"), |b| {
        b.iter(|| sluice_netio::spool_files::recover(&spool).unwrap().messages.len())
    });
    group.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
