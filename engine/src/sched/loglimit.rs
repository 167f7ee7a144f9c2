//! A budget for log lines that traffic can multiply (one per delivery failure): a token
//! bucket per shard, so a storm of failures (a receiver down, a blocklisting) writes at most
//! `LINES_PER_S` lines a second after a burst, and one summary line says how many it left out.

/// Lines a second in the long run, and the burst allowed above it.
pub const LINES_PER_S: u64 = 20;
pub const BURST_LINES: u64 = 200;
/// How often the count of lines left out is reported (while there are any).
const SUMMARY_EVERY_MS: u64 = 10_000;

pub struct LogLimit {
    tokens_milli: u64,
    last_ms: u64,
    suppressed: u64,
    reported_ms: u64,
}

impl LogLimit {
    pub fn new(now_ms: u64) -> LogLimit {
        LogLimit { tokens_milli: BURST_LINES * 1000, last_ms: now_ms, suppressed: 0, reported_ms: 0 }
    }

    /// Whether one more line may be written now (else it is counted as left out).
    pub fn allow(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = now_ms.max(self.last_ms);
        self.tokens_milli = (self.tokens_milli + elapsed * LINES_PER_S).min(BURST_LINES * 1000);
        if self.tokens_milli >= 1000 {
            self.tokens_milli -= 1000;
            return true;
        }
        self.suppressed += 1;
        false
    }

    /// Lines left out since the last report, once every `SUMMARY_EVERY_MS` while any were.
    pub fn take_suppressed(&mut self, now_ms: u64) -> Option<u64> {
        if self.suppressed == 0 || now_ms < self.reported_ms + SUMMARY_EVERY_MS {
            return None;
        }
        self.reported_ms = now_ms;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_cut_to_the_rate_and_counted() {
        let mut l = LogLimit::new(0);
        let allowed = (0..10_000).filter(|_| l.allow(0)).count() as u64;
        assert_eq!(allowed, BURST_LINES);
        // Ten seconds of the storm, a thousand lines a second: the rate's worth get through.
        let mut later = 0;
        for ms in 1..=10_000u64 {
            if l.allow(ms) {
                later += 1;
            }
        }
        assert_eq!(later, 10 * LINES_PER_S);
        assert_eq!(l.take_suppressed(10_000), Some(10_000 - BURST_LINES + 10_000 - 10 * LINES_PER_S));
        assert_eq!(l.take_suppressed(10_001), None, "once every SUMMARY_EVERY_MS");
    }
}
