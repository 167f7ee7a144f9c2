//! The benchmark tools: `sluice sink` and `sluice loadgen`, each a single io_uring loop.

pub mod loadgen;
pub mod sink;

/// The tools' pseudo-random numbers (a 64-bit LCG: reproducible, no dependency): steps
/// `state` and returns its high 31 bits.
pub(crate) fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *state >> 33
}
