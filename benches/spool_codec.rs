//! Micro-benchmarks of the spool record codec: encoding a message's head (with its CRC over
//! the data), decoding and verifying a record, journal entries.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_spool::codec::{decode_message, encode_message_head, encode_outcome, Decoded, Envelope, Outcome};

fn envelope(rcpts: &[String]) -> Envelope<'_> {
    Envelope {
        queued_unix_ms: 1_795_000_000_000,
        client_ip: "127.0.0.1".parse().unwrap(),
        mail_from: "bounces+12345@mail.example.com",
        envid: "",
        vmta: "",
        recipients: rcpts.iter().map(String::as_str).collect(),
        job_id: "campaign-2026-11",
        extras: Default::default(),
    }
}

fn codec(c: &mut Criterion) {
    let rcpts: Vec<String> = (0..3).map(|i| format!("user{i}@example.org")).collect();
    let mut group = c.benchmark_group("spool_record");
    for size in [1024usize, 100 * 1024] {
        let data = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode_head", size), &data, |b, data| {
            b.iter(|| black_box(encode_message_head(&envelope(&rcpts), black_box(data))))
        });
        let mut record = encode_message_head(&envelope(&rcpts), &data);
        record.extend_from_slice(&data);
        group.bench_with_input(BenchmarkId::new("decode_verify", size), &record, |b, record| {
            b.iter(|| match decode_message(black_box(record)) {
                Decoded::Record(v, n) => black_box((v.data.len(), n)),
                _ => panic!("record decodes"),
            })
        });
    }
    group.finish();
    let o = Outcome { seg_shard: 1, seg_seq: 42, offset: 4096, rcpt: 2 };
    c.bench_function("journal_entry/encode", |b| b.iter(|| black_box(encode_outcome(black_box(&o)))));
}

criterion_group!(benches, codec);
criterion_main!(benches);
