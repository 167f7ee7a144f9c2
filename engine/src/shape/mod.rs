//! Traffic shaping primitives shared by all shards without a lock. `gcra`: the rate limiter
//! (per source IP, per queue); `counts`: windowed counts per client address (AUTH failures,
//! sessions ended in errors).

pub mod counts;
pub mod gcra;
