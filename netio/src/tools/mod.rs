//! The benchmark tools: `sluice sink` and `sluice loadgen`, each a single io_uring loop.

pub mod loadgen;
pub mod sink;
