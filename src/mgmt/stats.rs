//! What the management API reports beyond the shards' counters: traffic over the last
//! minute and hour (samples of the totals), and what the accounting records say — bounces by
//! category, outcomes per VMTA and per destination domain, delivery latency, recent errors.
//! Fed on the control plane from the records the shards already send for accounting.

use sluice_engine::acct::{Kind, Record};
use sluice_netio::admin::Totals;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Samples kept: one a second for an hour, plus the one an hour ago.
const HISTORY_SECONDS: usize = 3601;
/// Distinct VMTAs and destination domains counted by name; past these, `other` (the
/// metrics' label cardinality stays bounded whatever the traffic).
pub const VMTA_LABELS_MAX: usize = 64;
pub const DOMAIN_COUNTED_MAX: usize = 10_000;
/// Domains named in `/metrics` (the busiest); the rest are summed as `other`.
pub const TOP_DOMAINS: usize = 20;
const RECENT_ERRORS: usize = 50;
/// Delivery latency buckets (seconds), Prometheus `le` bounds.
pub const LATENCY_BUCKETS_S: &[f64] = &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0];

/// Totals sampled once a second.
#[derive(Default)]
pub struct History {
    samples: VecDeque<(u64, Totals)>,
    /// Samples were dropped: the oldest kept is not the first.
    trimmed: bool,
}

impl History {
    pub fn sample(&mut self, now_ms: u64, t: Totals) {
        self.samples.push_back((now_ms, t));
        while self.samples.len() > HISTORY_SECONDS {
            self.samples.pop_front();
            self.trimmed = true;
        }
    }

    /// The change of the totals over the last `seconds`; all of them when the process started
    /// within that window (the first sample, taken a moment after start, may count some).
    pub fn over(&self, seconds: u64, now: Totals) -> Totals {
        let Some(&(last_ms, _)) = self.samples.back() else { return now };
        let since = last_ms.saturating_sub(seconds * 1000);
        let started_within = !self.trimmed && self.samples.front().is_some_and(|(t, _)| *t > since);
        let base = match started_within {
            true => Totals::default(),
            false => self.samples.iter().find(|(t, _)| *t >= since).map(|(_, v)| *v).unwrap_or_default(),
        };
        diff(now, base)
    }

    /// Per-interval rates for charts: `points` values of messages in and out per
    /// `step_s` seconds, oldest first.
    pub fn series(&self, step_s: usize, points: usize) -> Vec<(u64, u64, u64)> {
        let v: Vec<&(u64, Totals)> = self.samples.iter().collect();
        let mut out = Vec::new();
        let mut end = v.len();
        while out.len() < points && end > step_s {
            let (t1, a) = v[end - 1];
            let (_, b) = v[end - 1 - step_s];
            let d = diff(*a, *b);
            out.push((*t1, d.msgs_in, d.rcpts_out));
            end -= step_s;
        }
        out.reverse();
        out
    }
}

fn diff(a: Totals, b: Totals) -> Totals {
    Totals {
        msgs_in: a.msgs_in.saturating_sub(b.msgs_in),
        rcpts_in: a.rcpts_in.saturating_sub(b.rcpts_in),
        bytes_in: a.bytes_in.saturating_sub(b.bytes_in),
        msgs_out: a.msgs_out.saturating_sub(b.msgs_out),
        rcpts_out: a.rcpts_out.saturating_sub(b.rcpts_out),
        bytes_out: a.bytes_out.saturating_sub(b.bytes_out),
        rcpts_bounced: a.rcpts_bounced.saturating_sub(b.rcpts_bounced),
        rcpts_deferred: a.rcpts_deferred.saturating_sub(b.rcpts_deferred),
        connection_panics: a.connection_panics.saturating_sub(b.connection_panics),
        dkim_unsignable: a.dkim_unsignable.saturating_sub(b.dkim_unsignable),
        acct_records_dropped: a.acct_records_dropped.saturating_sub(b.acct_records_dropped),
    }
}

/// Delivered, bounced and deferred recipients.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcomes {
    pub delivered: u64,
    pub bounced: u64,
    pub deferred: u64,
}

impl Outcomes {
    fn add(&mut self, kind: Kind) {
        match kind {
            Kind::Delivered => self.delivered += 1,
            Kind::Bounced => self.bounced += 1,
            Kind::Transient => self.deferred += 1,
            _ => {}
        }
    }

    pub fn total(&self) -> u64 {
        self.delivered + self.bounced + self.deferred
    }
}

/// A failed or deferred attempt, for the dashboard.
#[derive(Debug, Clone)]
pub struct RecentError {
    pub time_ms: u64,
    pub kind: &'static str,
    pub queue: String,
    pub rcpt_domain: String,
    pub diag: String,
}

/// Delivery latency as a Prometheus histogram (shared: a clone is what `/metrics` encodes).
pub struct Latency(pub prometheus_client::metrics::histogram::Histogram);

impl Default for Latency {
    fn default() -> Self {
        Latency(prometheus_client::metrics::histogram::Histogram::new(LATENCY_BUCKETS_S.iter().copied()))
    }
}

#[derive(Default)]
pub struct Observer {
    pub bounced_by_category: BTreeMap<String, u64>,
    pub by_vmta: BTreeMap<String, Outcomes>,
    pub by_domain: HashMap<String, Outcomes>,
    /// Counts of latency samples per bucket (the last one: above every bound), their sum.
    pub latency_buckets: Vec<u64>,
    pub latency_sum_s: f64,
    pub latency_count: u64,
    pub latency: Latency,
    pub feedback: BTreeMap<String, u64>,
    pub remote_bounces: BTreeMap<String, u64>,
    pub recent_errors: VecDeque<RecentError>,
}

fn bounded<'a, V: Default>(map: &'a mut BTreeMap<String, V>, key: &str, max: usize) -> &'a mut V {
    // A key seen before costs no allocation (this runs for every delivery row).
    if map.contains_key(key) {
        return map.get_mut(key).expect("just seen");
    }
    let key = if map.len() >= max { "other" } else { key };
    map.entry(key.to_string()).or_default()
}

impl Observer {
    pub fn observe(&mut self, records: &[Record]) {
        if self.latency_buckets.is_empty() {
            self.latency_buckets = vec![0; LATENCY_BUCKETS_S.len() + 1];
        }
        for r in records {
            match r.kind {
                Kind::Delivered | Kind::Bounced | Kind::Transient => {}
                Kind::Feedback => {
                    let t = if r.feedback_type.is_empty() { "unknown" } else { &r.feedback_type };
                    *bounded(&mut self.feedback, &t.to_ascii_lowercase(), VMTA_LABELS_MAX) += 1;
                    continue;
                }
                Kind::RemoteBounce => {
                    let c = if r.bounce_cat.is_empty() { "other" } else { &r.bounce_cat };
                    *bounded(&mut self.remote_bounces, c, VMTA_LABELS_MAX) += 1;
                    continue;
                }
                Kind::QueueEvent | Kind::Received | Kind::RemoteStatus => continue,
            }
            bounded(&mut self.by_vmta, &r.vmta, VMTA_LABELS_MAX).add(r.kind);
            let domain = sluice_engine::smtp::addr::domain_of(&r.rcpt);
            match self.by_domain.get_mut(&domain) {
                Some(counts) => counts.add(r.kind),
                None => {
                    let full = self.by_domain.len() >= DOMAIN_COUNTED_MAX;
                    self.by_domain.entry(if full { "other".into() } else { domain.clone() }).or_default().add(r.kind);
                }
            }
            match r.kind {
                Kind::Delivered => {
                    let s = r.time_logged_ms.saturating_sub(r.time_queued_ms) as f64 / 1000.0;
                    let i = LATENCY_BUCKETS_S.iter().position(|b| s <= *b).unwrap_or(LATENCY_BUCKETS_S.len());
                    self.latency_buckets[i] += 1;
                    self.latency_sum_s += s;
                    self.latency_count += 1;
                    self.latency.0.observe(s);
                }
                Kind::Bounced | Kind::Transient => {
                    if r.kind == Kind::Bounced {
                        let c = if r.bounce_cat.is_empty() { "other" } else { &r.bounce_cat };
                        *bounded(&mut self.bounced_by_category, c, VMTA_LABELS_MAX) += 1;
                    }
                    self.recent_errors.push_back(RecentError {
                        time_ms: r.time_logged_ms,
                        kind: r.kind.code(),
                        queue: r.queue.clone(),
                        rcpt_domain: domain,
                        diag: r.dsn_diag.clone(),
                    });
                    while self.recent_errors.len() > RECENT_ERRORS {
                        self.recent_errors.pop_front();
                    }
                }
                _ => {}
            }
        }
    }

    /// The busiest destination domains, by recipients handled, and the rest summed.
    pub fn top_domains(&self, n: usize) -> (Vec<(String, Outcomes)>, Outcomes) {
        let mut all: Vec<(&String, &Outcomes)> = self.by_domain.iter().collect();
        all.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(b.0)));
        let mut rest = Outcomes::default();
        for (_, o) in all.iter().skip(n) {
            rest.delivered += o.delivered;
            rest.bounced += o.bounced;
            rest.deferred += o.deferred;
        }
        (all.into_iter().take(n).map(|(d, o)| (d.clone(), *o)).collect(), rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: Kind, rcpt: &str, vmta: &str, cat: &str, latency_ms: u64) -> Record {
        let mut r = Record::queue_event(10_000 + latency_ms, "q/v", vmta, "smtp;550 5.1.1 no such user".into());
        r.kind = kind;
        r.rcpt = rcpt.into();
        r.bounce_cat = cat.into();
        r.time_queued_ms = 10_000;
        r
    }

    #[test]
    fn outcomes_are_counted_by_vmta_domain_category_and_latency() {
        let mut o = Observer::default();
        o.observe(&[
            record(Kind::Delivered, "a@x.test", "v1", "", 300),
            record(Kind::Delivered, "b@x.test", "v1", "", 7_000),
            record(Kind::Bounced, "c@y.test", "v2", "bad-mailbox", 0),
            record(Kind::Transient, "d@y.test", "v2", "", 0),
        ]);
        assert_eq!(o.by_vmta["v1"].delivered, 2);
        assert_eq!(o.by_vmta["v2"].bounced, 1);
        assert_eq!(o.by_vmta["v2"].deferred, 1);
        assert_eq!(o.bounced_by_category["bad-mailbox"], 1);
        assert_eq!(o.by_domain["x.test"].delivered, 2);
        assert_eq!(o.latency_count, 2);
        assert_eq!(o.latency_buckets[1], 1, "0.3 s is in the 0.5 s bucket");
        assert_eq!(o.latency_buckets[4], 1, "7 s is in the 10 s bucket");
        assert_eq!(o.recent_errors.len(), 2);
        let (top, rest) = o.top_domains(1);
        assert_eq!(top[0].0, "x.test");
        assert_eq!(rest.total(), 2);
    }

    #[test]
    fn label_sets_stay_bounded() {
        let mut o = Observer::default();
        let records: Vec<Record> =
            (0..VMTA_LABELS_MAX + 10).map(|i| record(Kind::Delivered, "a@x.test", &format!("v{i}"), "", 0)).collect();
        o.observe(&records);
        assert_eq!(o.by_vmta.len(), VMTA_LABELS_MAX + 1, "the overflow goes to `other`");
        assert_eq!(o.by_vmta["other"].delivered, 10);
    }

    #[test]
    fn history_gives_the_change_over_a_window() {
        let mut h = History::default();
        let at = |n: u64| Totals { msgs_in: n, ..Default::default() };
        for s in 0..120u64 {
            h.sample(s * 1000, at(s * 10));
        }
        let now = at(1190);
        assert_eq!(h.over(60, now).msgs_in, 600);
        assert_eq!(h.over(3600, now).msgs_in, 1190, "since the start");
        // Up a few seconds, the first sample taken after messages came: the minute and the
        // hour count all of them, as the totals do (a status read at once once said 4 of 5).
        let mut young = History::default();
        young.sample(500, at(1));
        young.sample(1500, at(3));
        assert_eq!((young.over(60, at(5)).msgs_in, young.over(3600, at(5)).msgs_in), (5, 5));
        assert_eq!(History::default().over(60, at(5)).msgs_in, 5, "before any sample");
        // An hour and more of samples: the oldest ones dropped, the window's start counts.
        let mut old = History::default();
        for s in 0..4000u64 {
            old.sample(s * 1000, at(100 + s));
        }
        assert_eq!(old.over(3600, at(4099)).msgs_in, 3600);
        let series = h.series(1, 3);
        assert_eq!(series.len(), 3);
        assert!(series.iter().all(|(_, i, _)| *i == 10));
    }
}
