//! The lock-free GCRA cell: one grant attempt, uncontended and refused.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sluice_engine::shape::gcra::{GcraCell, Limit};
use std::time::Duration;

fn limiter(c: &mut Criterion) {
    let limit = Limit::new(1_000_000, Duration::from_secs(1), 100);
    let cell = GcraCell::new();
    let mut now = 0u64;
    c.bench_function("gcra/grant", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(cell.try_acquire(black_box(now), limit).is_ok())
        })
    });
    let slow = Limit::new(1, Duration::from_secs(3600), 1);
    let full = GcraCell::new();
    let _ = full.try_acquire(0, slow);
    c.bench_function("gcra/refuse", |b| b.iter(|| black_box(full.try_acquire(black_box(1), slow).is_err())));
}

criterion_group!(benches, limiter);
criterion_main!(benches);
