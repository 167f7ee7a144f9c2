//! Time as the engine sees it: a `Now` the caller reads once per turn of its loop and
//! passes in (the engine never reads a clock), and calendar formatting of Unix times.

use std::cell::RefCell;

/// The moment a call happens: the monotonic clock (for timers, retries, rates: it never
/// jumps) and the wall clock (for accounting times and message ages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    /// Monotonic nanoseconds (any fixed origin, the same for every shard).
    pub ns: u64,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

impl Now {
    /// A moment in simulated time, both clocks at `ms` (tests and simulations).
    pub fn at_ms(ms: u64) -> Now {
        Now { ns: ms * 1_000_000, unix_ms: ms }
    }

    /// Monotonic milliseconds.
    pub fn ms(&self) -> u64 {
        self.ns / 1_000_000
    }

    /// A monotonic time (ms) as wall-clock Unix ms, for display.
    pub fn unix_of(&self, mono_ms: u64) -> u64 {
        (self.unix_ms + mono_ms).saturating_sub(self.ms())
    }
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's civil-from-days.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

fn parts(unix_ms: u64) -> (i64, u32, u32, u64, u64, u64, usize) {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil(days);
    let weekday = ((days + 4).rem_euclid(7)) as usize; // 1970-01-01 was a Thursday
    (y, m, d, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60, weekday)
}

/// RFC 5322 §3.3 date-time in UTC: `Fri, 27 Nov 2026 21:29:39 +0000`.
pub fn rfc5322_date(unix_ms: u64) -> String {
    thread_local!(static LAST: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) });
    LAST.with(|last| same_second(last, unix_ms, format_rfc5322))
}

fn format_rfc5322(unix_ms: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, m, d, hh, mm, ss, wd) = parts(unix_ms);
    format!("{}, {d} {} {y} {hh:02}:{mm:02}:{ss:02} +0000", DAYS[wd], MONTHS[m as usize - 1])
}

/// ISO 8601 as PowerMTA writes accounting times: `2026-11-27 21:29:39+0000`.
pub fn iso8601(unix_ms: u64) -> String {
    thread_local!(static LAST: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) });
    LAST.with(|last| same_second(last, unix_ms, format_iso8601))
}

fn format_iso8601(unix_ms: u64) -> String {
    let (y, m, d, hh, mm, ss, _) = parts(unix_ms);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}+0000")
}

/// A date formatted once a second per thread: a shard stamps thousands of messages and
/// accounting rows with the same second, and the formatting cost more than the copy.
fn same_second(last: &RefCell<(u64, String)>, unix_ms: u64, format: fn(u64) -> String) -> String {
    let mut last = last.borrow_mut();
    let second = unix_ms / 1000;
    if last.0 != second {
        *last = (second, format(unix_ms));
    }
    last.1.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_795_815_379_000), "Fri, 27 Nov 2026 21:36:19 +0000");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29 00:00:00+0000");
    }

    /// The second's cache never hands out another second's text, whichever way time goes.
    #[test]
    fn each_second_its_own_text() {
        for ms in [1_795_815_379_000, 1_795_815_379_999, 1_795_815_380_000, 1_795_815_379_500, 0, 86_400_000] {
            assert_eq!(rfc5322_date(ms), format_rfc5322(ms), "{ms}");
            assert_eq!(iso8601(ms), format_iso8601(ms), "{ms}");
        }
        assert_eq!(rfc5322_date(1_795_815_380_000), "Fri, 27 Nov 2026 21:36:20 +0000");
    }
}
