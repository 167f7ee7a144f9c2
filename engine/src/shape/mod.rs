//! Traffic shaping primitives. `gcra`: the lock-free rate limiter shared by all shards
//! (per source IP, per queue).

pub mod gcra;
