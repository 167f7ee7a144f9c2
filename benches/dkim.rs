//! DKIM signing cost per message, as the shard pays it once at reception: RSA-2048 and
//! Ed25519, on 1 KiB and 10 KiB messages in spool (transparency) form.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sluice_config::DkimOptions;
use sluice_engine::dkim::Keys;

fn keys() -> Keys {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/engine/testdata");
    let text = format!(
        "smtp-listener 127.0.0.1:25\ndomain-key rsa,rsa.test,{dir}/rsa-pkcs8.pem\ndomain-key ed,ed.test,{dir}/ed25519.pem\n"
    );
    let config = sluice_config::load("bench.conf", &text, &mut |_| Err("none".into())).expect("config");
    Keys::load(&config, &mut |p| std::fs::read(p)).expect("keys")
}

fn message(from_domain: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "Received: from client (127.0.0.1) by relay\r\nFrom: News <news@{from_domain}>\r\nTo: r@dest.test\r\n\
         Subject: weekly news\r\nDate: Sat, 28 Nov 2026 00:00:00 +0000\r\nMessage-ID: <1@{from_domain}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    while m.len() < size {
        m.extend_from_slice(b"<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.</p>\r\n");
    }
    m
}

fn dkim(c: &mut Criterion) {
    let keys = keys();
    let opts = DkimOptions::default();
    let mut g = c.benchmark_group("dkim_sign");
    for (alg, domain) in [("rsa2048", "rsa.test"), ("ed25519", "ed.test")] {
        for size in [1024, 10 * 1024] {
            let m = message(domain, size);
            g.throughput(Throughput::Elements(1));
            g.bench_function(format!("{alg}/{}KiB", size / 1024), |b| {
                b.iter(|| black_box(keys.sign("", black_box(&m), &opts).unwrap().unwrap()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, dkim);
criterion_main!(benches);
