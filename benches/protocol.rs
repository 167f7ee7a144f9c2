//! Micro-benchmarks of the protocol hot path: SMTP command handling, the DATA end-of-data
//! scanner, reply parsing.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_engine::smtp::data::DataScanner;
use sluice_engine::smtp::reply::parse_reply;
use sluice_engine::smtp::server::{Event, Session, SessionPolicy};

fn policy() -> SessionPolicy {
    SessionPolicy {
        host_name: "bench.test".into(),
        relay_allowed: true,
        smtp_service: true,
        max_message_size: 50 << 20,
        max_rcpt_per_message: 1000,
        add_received_header: false,
        hide_message_source: false,
        ..Default::default()
    }
}

/// A pipelined transaction's commands (RFC 2920), handled up to the 354.
fn commands(c: &mut Criterion) {
    let mut group = c.benchmark_group("smtp_commands");
    for rcpts in [1usize, 10] {
        let mut input =
            b"EHLO client.example.com\r\nMAIL FROM:<sender@example.com> SIZE=1024 BODY=8BITMIME\r\n".to_vec();
        for i in 0..rcpts {
            input.extend_from_slice(format!("RCPT TO:<user{i}@example.org>\r\n").as_bytes());
        }
        input.extend_from_slice(b"DATA\r\n");
        group.throughput(Throughput::Elements(rcpts as u64 + 3));
        group.bench_with_input(BenchmarkId::from_parameter(format!("{rcpts}_rcpt")), &input, |b, input| {
            b.iter(|| {
                let mut s = Session::new(policy(), "127.0.0.1".parse().unwrap(), 1);
                let mut at = 0;
                while at < input.len() {
                    let (used, ev) = s.receive(0, &input[at..]);
                    at += used;
                    assert!(ev.is_none() && used > 0);
                }
                black_box(s.output().len())
            })
        });
    }
    group.finish();
}

/// The end-of-data scanner over message bodies of typical sizes.
fn data_scanner(c: &mut Criterion) {
    let mut group = c.benchmark_group("data_scanner");
    for size in [1024usize, 10 * 1024, 100 * 1024] {
        let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor\r\n";
        let mut body = Vec::with_capacity(size + 100);
        while body.len() < size {
            body.extend_from_slice(line);
        }
        body.extend_from_slice(b".\r\n");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| {
                let mut scanner = DataScanner::default();
                let mut content = 0;
                let (used, done) = scanner.scan(body, |c| content += c.len());
                assert!(done && used == body.len());
                black_box(content)
            })
        });
    }
    group.finish();
}

fn replies(c: &mut Criterion) {
    let ehlo = b"250-mx.example.org at your service\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n";
    c.bench_function("reply_parse/ehlo_7_lines", |b| b.iter(|| black_box(parse_reply(black_box(ehlo)).unwrap())));
    c.bench_function("reply_parse/250_one_line", |b| {
        b.iter(|| black_box(parse_reply(black_box(b"250 2.0.0 Ok: queued as 0.1.20\r\n")).unwrap()))
    });
}

/// A whole inbound message through the session, as a shard sees it.
fn whole_message(c: &mut Criterion) {
    let mut input = b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(b"Subject: bench\r\n\r\n");
    while input.len() < 1100 {
        input.extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit\r\n");
    }
    input.extend_from_slice(b".\r\n");
    let mut group = c.benchmark_group("session");
    group.throughput(Throughput::Elements(1));
    group.bench_function("message_1k", |b| {
        let mut s = Session::new(policy(), "127.0.0.1".parse().unwrap(), 1);
        let (_, _) = s.receive(0, b"EHLO c\r\n");
        s.clear_output();
        b.iter(|| {
            let mut at = 0;
            loop {
                let (used, ev) = s.receive(0, &input[at..]);
                at += used;
                if ev == Some(Event::Message) {
                    let m = s.take_message();
                    s.message_stored(true, "q");
                    s.recycle_data_buffer(m.data);
                    break;
                }
            }
            s.clear_output();
        })
    });
    group.finish();
}

criterion_group!(benches, commands, data_scanner, replies, whole_message);
criterion_main!(benches);
