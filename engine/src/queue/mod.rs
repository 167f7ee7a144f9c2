//! A delivery queue (destination domain / virtual MTA): ready jobs, the retry schedule, and
//! the decision for each recipient after an attempt. Generic over the caller's message
//! handle `M`, so the runtime decides how message bytes are reached.

use crate::acct::{Kind, Record};
use crate::bounce;
use crate::smtp::reply::Reply;
use crate::time::Now;
use sluice_config::{DomainSettings, PatternAction, PatternRule, Rate};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Recipients in one transaction when `max-rcpt-per-message` is 0 (no limit configured).
pub const TXN_RCPTS_MAX: usize = 100;

#[derive(Debug, Clone)]
pub struct Recipient {
    pub index: u32,
    pub address: String,
}

#[derive(Debug, Clone)]
pub struct Job<M> {
    pub msg: M,
    pub mail_from: String,
    pub rcpts: Vec<Recipient>,
    pub attempts: u32,
    /// When delivery was first tried (0: not yet; not kept across a restart).
    pub first_attempt_unix_ms: u64,
    pub queued_unix_ms: u64,
    pub size: u64,
    /// The job (`x-job:`) the message belongs to, for every accounting record; empty: none.
    pub job_id: String,
    /// Recipients (their `index`) whose RCPT was answered 421 once already: the second time
    /// such a recipient goes on alone, so a receiver that closes at it every time cannot hold
    /// the others back (not kept across a restart).
    pub drew_421: Vec<u32>,
}

/// Where an attempt happened, for the accounting record.
#[derive(Debug, Clone, Default)]
pub struct AttemptInfo {
    pub source_ip: String,
    /// The VMTA that made the attempt (a pool's member) and its pool, if any.
    pub vmta: String,
    pub vmta_pool: String,
    pub destination_ip: String,
    pub mx_host: String,
    pub esmtp: bool,
    /// The extensions the receiver offered, comma-separated (`dlvEsmtpAvailable`).
    pub esmtp_keywords: String,
    /// Another next hop (not skipped) could take a recipient refused here: `skip-mx` then
    /// retries it at once there.
    pub other_hop: bool,
    /// Another source IP (a pool member not disabled) could: `disable-source-ip` then
    /// retries the recipient at once through it.
    pub other_source: bool,
    /// TLS on the connection: protocol and cipher suite (empty: plain text).
    pub tls_protocol: String,
    pub tls_cipher: String,
    /// The next hop's address, when one was reached.
    pub hop: Option<std::net::SocketAddr>,
    /// The receiver offered DSN and was given the DSN parameters (it reports from here on).
    pub dsn_offered: bool,
}

/// What the pattern list asked to stop using after a reply (`skip-mx`, `disable-source-ip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Avoid {
    pub skip_mx: bool,
    /// Disable the connection's source IP for this queue for this long.
    pub disable_source_ip: Option<Duration>,
}

/// What became of one recipient after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Delivered or bounced: write the journal entry.
    Final,
    /// Deferred: the recipient is back in the retry schedule.
    Retry,
}

pub struct Queue<M> {
    pub name: String,
    pub domain: String,
    /// The VMTA or pool this queue sends through.
    pub vmta: String,
    pub settings: DomainSettings,
    ready: VecDeque<Job<M>>,
    retry: BTreeMap<(u64, u64), Job<M>>,
    retry_seq: u64,
    /// `retry_once`: the delay for deferrals now, instead of the retry list.
    retry_delay: Option<Duration>,
    /// Connections open or opening for this queue.
    pub connections: u32,
    /// `<bounce-category-patterns>`, tried before the built-in rules.
    bounce_patterns: std::sync::Arc<Vec<sluice_config::BouncePattern>>,
    /// The queue's `smtp-pattern-list`, checked against every reply.
    patterns: Option<Arc<Vec<PatternRule>>>,
    mode: Mode,
    queue_action: Option<QueueAction>,
    avoid: Avoid,
    /// `adaptive-rate`: the current rate in messages per second (AIMD), if adaptive.
    adaptive_per_s: Option<f64>,
    /// The adaptive rate last reported, so increases are reported in 10% steps.
    adaptive_reported_per_s: f64,
    /// Mode and rate changes not yet written as `tq` records.
    events: Vec<String>,
    /// Paused by an operator: nothing is taken from it (mail keeps arriving).
    paused: bool,
    /// The last reply that did not deliver, for the operator (status, `/queueDetail`).
    pub last_error: Option<String>,
    /// `startup-ramp`: the share of its connection and rate limits the queue may use now.
    ramp: f64,
    /// Recipients per transaction the receiver took before answering "too many recipients"
    /// (RFC 5321 §4.5.3.1.10): later transactions send at most this many.
    learned_txn_rcpts_max: Option<usize>,
}

/// What a queue holds, for status pages: jobs, recipients, bytes, the oldest arrival.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Contents {
    pub jobs: u64,
    pub rcpts: u64,
    pub bytes: u64,
    /// Arrival of the oldest message (Unix ms; 0: empty).
    pub oldest_unix_ms: u64,
}

impl Contents {
    /// Counts one job: `rcpts` recipients of a `size`-byte message that arrived at
    /// `queued_unix_ms`.
    pub fn add_job(&mut self, rcpts: u64, size: u64, queued_unix_ms: u64) {
        self.jobs += 1;
        self.rcpts += rcpts;
        self.bytes += size * rcpts;
        if self.oldest_unix_ms == 0 || queued_unix_ms < self.oldest_unix_ms {
            self.oldest_unix_ms = queued_unix_ms;
        }
    }

    /// Adds another part (of a queue, or of a job).
    pub fn merge(&mut self, more: &Contents) {
        self.jobs += more.jobs;
        self.rcpts += more.rcpts;
        self.bytes += more.bytes;
        if more.oldest_unix_ms != 0 && (self.oldest_unix_ms == 0 || more.oldest_unix_ms < self.oldest_unix_ms) {
            self.oldest_unix_ms = more.oldest_unix_ms;
        }
    }
}

/// Adaptive rate: the floor, the start when `max-msg-rate` is unset, the additive step (per
/// second of clean deliveries, like TCP's one segment per round trip) and the cut on a
/// throttling reply.
pub const ADAPTIVE_MIN_PER_S: f64 = 1.0;
pub const ADAPTIVE_START_PER_S: f64 = 100.0;
pub const ADAPTIVE_INCREASE_PER_S: f64 = 5.0;
pub const ADAPTIVE_DECREASE: f64 = 0.5;

/// Normal, or backing off until a time (PowerMTA's queue modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Backoff { until_ms: u64 },
}

/// A pattern asked for something done to the whole queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueAction {
    Defer,
    Bounce,
}

impl<M> Queue<M> {
    pub fn new(domain: &str, vmta: &str, settings: DomainSettings) -> Self {
        Queue {
            name: format!("{domain}/{vmta}"),
            domain: domain.to_string(),
            vmta: vmta.to_string(),
            settings,
            ready: VecDeque::new(),
            retry: BTreeMap::new(),
            retry_seq: 0,
            retry_delay: None,
            connections: 0,
            bounce_patterns: Default::default(),
            patterns: None,
            mode: Mode::Normal,
            queue_action: None,
            avoid: Avoid::default(),
            adaptive_per_s: None,
            adaptive_reported_per_s: 0.0,
            events: Vec::new(),
            paused: false,
            last_error: None,
            ramp: 1.0,
            learned_txn_rcpts_max: None,
        }
    }

    /// `startup-ramp`: limits apply at `share` (0..=1) of their value; at least 1 each.
    pub fn set_ramp(&mut self, share: f64) {
        self.ramp = share.clamp(0.0, 1.0);
    }

    fn ramped(&self, n: u32) -> u32 {
        if self.ramp >= 1.0 {
            return n;
        }
        ((n as f64 * self.ramp).ceil() as u32).max(1)
    }

    /// A rate at the start-up ramp's share (a zero rate stays zero: the queue holds).
    fn ramped_rate(&self, r: Rate) -> Rate {
        if r.is_zero() {
            return r;
        }
        Rate { count: self.ramped(r.count), period: r.period }
    }

    /// `max-connect-rate`, ramped at start-up.
    /// `max-connect-rate`, or `backoff-max-connect-rate` while backing off.
    pub fn connect_rate(&self) -> Option<Rate> {
        let configured = match self.mode {
            Mode::Backoff { .. } => self.settings.backoff_max_connect_rate.or(self.settings.max_connect_rate),
            Mode::Normal => self.settings.max_connect_rate,
        };
        configured.map(|r| self.ramped_rate(r))
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Pauses or resumes the queue (an operator's `pause queue` / `resume queue`).
    pub fn set_paused(&mut self, paused: bool) {
        if self.paused != paused {
            self.events.push(if paused { "mode=paused (operator)" } else { "mode=resumed (operator)" }.into());
        }
        self.paused = paused;
    }

    /// An operator's `set queue --mode=...`: backoff (for `backoff-to-normal-after`) or normal.
    pub fn set_mode(&mut self, backoff: bool, now_ms: u64) {
        let mode = if backoff {
            Mode::Backoff { until_ms: now_ms + self.settings.backoff_to_normal_after.as_millis() as u64 }
        } else {
            Mode::Normal
        };
        if mode != self.mode {
            self.events.push(format!("mode={} (operator)", if backoff { "backoff" } else { "normal" }));
        }
        self.mode = mode;
    }

    /// An operator's `schedule`: every waiting retry is due now.
    pub fn retry_now(&mut self) -> usize {
        let n = self.retry.len();
        self.ready.extend(std::mem::take(&mut self.retry).into_values());
        n
    }

    /// Takes every job, ready or waiting, that `pred` picks (delete, pause a job).
    pub fn take_where(&mut self, mut pred: impl FnMut(&Job<M>) -> bool) -> Vec<Job<M>> {
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.ready.len());
        for job in self.ready.drain(..) {
            if pred(&job) {
                out.push(job);
            } else {
                keep.push_back(job);
            }
        }
        self.ready = keep;
        let keys: Vec<(u64, u64)> = self.retry.iter().filter(|(_, j)| pred(j)).map(|(k, _)| *k).collect();
        out.extend(keys.iter().filter_map(|k| self.retry.remove(k)));
        out
    }

    /// Jobs, recipients, bytes and the oldest arrival, ready and waiting together; with
    /// `per_job`, the recipients of each job id too.
    pub fn contents(&self, mut per_job: Option<&mut std::collections::HashMap<String, Contents>>) -> Contents {
        let mut c = Contents::default();
        for job in self.ready.iter().chain(self.retry.values()) {
            let add = |c: &mut Contents| c.add_job(job.rcpts.len() as u64, job.size, job.queued_unix_ms);
            add(&mut c);
            if let Some(map) = per_job.as_deref_mut().filter(|_| !job.job_id.is_empty()) {
                add(map.entry(job.job_id.clone()).or_default());
            }
        }
        c
    }

    /// Bounce records (`b`) for a job an operator deleted: every recipient, with `reply`.
    pub fn deleted_records(&self, job: &Job<M>, reply: &Reply, unix_ms: u64) -> Vec<Record> {
        let info = AttemptInfo::default();
        job.rcpts.iter().map(|r| self.record(job, r, Kind::Bounced, reply, "other", &info, unix_ms)).collect()
    }

    /// Swaps in settings and a pattern list from a reloaded configuration.
    pub fn reconfigure(&mut self, settings: DomainSettings, patterns: Option<Arc<Vec<PatternRule>>>) {
        self.settings = settings;
        self.patterns = patterns;
    }

    pub fn with_bounce_patterns(mut self, patterns: std::sync::Arc<Vec<sluice_config::BouncePattern>>) -> Self {
        self.bounce_patterns = patterns;
        self
    }

    /// Whether replies are checked against an `smtp-pattern-list` (only then can one ask to
    /// skip a host or disable a source IP).
    pub fn has_patterns(&self) -> bool {
        self.patterns.is_some()
    }

    pub fn with_patterns(mut self, patterns: Option<Arc<Vec<PatternRule>>>) -> Self {
        self.patterns = patterns;
        self
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `max-smtp-out`, or `backoff-max-smtp-out` while backing off.
    pub fn max_smtp_out(&self) -> u32 {
        self.ramped(match self.mode {
            Mode::Backoff { .. } => self.settings.backoff_max_smtp_out.unwrap_or(self.settings.max_smtp_out),
            Mode::Normal => self.settings.max_smtp_out,
        })
    }

    /// `max-msg-rate`, or `backoff-max-msg-rate` while backing off; with `adaptive-rate`,
    /// the adaptive rate (never above `max-msg-rate`).
    pub fn msg_rate(&self) -> Option<Rate> {
        self.unramped_msg_rate().map(|r| self.ramped_rate(r))
    }

    fn unramped_msg_rate(&self) -> Option<Rate> {
        let configured = match self.mode {
            Mode::Backoff { .. } => self.settings.backoff_max_msg_rate.or(self.settings.max_msg_rate),
            Mode::Normal => self.settings.max_msg_rate,
        };
        match self.adaptive_per_s {
            // Expressed per 100 s so fractional rates keep their precision.
            Some(per_s) => {
                let adaptive =
                    Rate { count: (per_s * 100.0).round().max(1.0) as u32, period: Duration::from_secs(100) };
                Some(match configured {
                    Some(c) if rate_per_s(c) < per_s => c,
                    _ => adaptive,
                })
            }
            None => configured,
        }
    }

    pub fn adaptive_per_s(&self) -> Option<f64> {
        self.adaptive_per_s
    }

    /// AIMD on each reply: a clean delivery adds a little, a throttling reply (421, 4.7.x,
    /// or any pattern-list match) halves the rate.
    fn adapt(&mut self, reply: &Reply, pattern_matched: bool) {
        if !self.settings.adaptive_rate {
            return;
        }
        let ceiling = self.settings.max_msg_rate.map(rate_per_s).unwrap_or(f64::INFINITY);
        let rate = self.adaptive_per_s.get_or_insert(ceiling.min(ADAPTIVE_START_PER_S));
        let throttled = pattern_matched
            || reply.code == 421
            || (reply.is_transient() && reply.enhanced().is_some_and(|e| e.starts_with("4.7.")));
        let before = *rate;
        if throttled {
            *rate = (*rate * ADAPTIVE_DECREASE).max(ADAPTIVE_MIN_PER_S);
        } else if reply.is_positive() {
            *rate = (*rate + ADAPTIVE_INCREASE_PER_S / *rate).min(ceiling);
        }
        let now = *rate;
        if now < before {
            self.events.push(format!("rate={now:.1}/s (decrease on: {})", reply.line()));
            self.adaptive_reported_per_s = now;
        } else if now >= self.adaptive_reported_per_s * 1.1 {
            self.events.push(format!("rate={now:.1}/s (increase)"));
            self.adaptive_reported_per_s = now;
        }
    }

    /// Mode and rate changes since the last call, for `tq` records and the log.
    pub fn take_events(&mut self) -> Vec<String> {
        std::mem::take(&mut self.events)
    }

    fn retry_list(&self) -> &[Duration] {
        match self.mode {
            Mode::Backoff { .. } => &self.settings.backoff_retry_after,
            Mode::Normal => &self.settings.retry_after,
        }
    }

    /// Checks a reply against the pattern list and applies its mode changes. Returns whether
    /// the recipient must bounce (`bounce-rcpt`); queue-wide actions wait in
    /// `take_queue_action`.
    pub fn observe(&mut self, reply: &Reply, now_ms: u64) -> bool {
        self.observe_rule(reply, now_ms).0
    }

    /// As `observe`; also says whether the rule asked to leave this hop or source IP.
    fn observe_rule(&mut self, reply: &Reply, now_ms: u64) -> (bool, Avoid) {
        let patterns = self.patterns.clone();
        let back_to_normal =
            reply.is_positive() && self.settings.backoff_to_normal_after_delivery && self.mode != Mode::Normal;
        // The reply as one line, only where something reads it (not for each plain delivery).
        let line = if patterns.is_some() || back_to_normal { reply.line() } else { String::new() };
        let rule = patterns.as_ref().and_then(|p| p.iter().find(|r| r.regex.is_match(&line)));
        self.adapt(reply, rule.is_some());
        if back_to_normal {
            self.mode = Mode::Normal;
            self.events.push(format!("mode=normal (clean delivery: {line})"));
        }
        let Some(rule) = rule else { return (false, Avoid::default()) };
        let mut bounce = false;
        let mut avoid = Avoid::default();
        for action in &rule.actions {
            match action {
                PatternAction::Backoff(after) => {
                    let after = after.unwrap_or(self.settings.backoff_to_normal_after);
                    if self.mode == Mode::Normal {
                        self.events.push(format!("mode=backoff for {}s (on: {line})", after.as_secs()));
                    }
                    self.mode = Mode::Backoff { until_ms: now_ms + after.as_millis() as u64 };
                }
                PatternAction::Normal => {
                    if self.mode != Mode::Normal {
                        self.events.push(format!("mode=normal (on: {line})"));
                    }
                    self.mode = Mode::Normal;
                }
                PatternAction::BounceRcpt => bounce = true,
                PatternAction::DeferQueue => self.queue_action = Some(QueueAction::Defer),
                PatternAction::BounceQueue => self.queue_action = Some(QueueAction::Bounce),
                PatternAction::SkipMx => avoid.skip_mx = true,
                PatternAction::DisableSourceIp(d) => avoid.disable_source_ip = Some(*d),
            }
        }
        self.avoid.skip_mx |= avoid.skip_mx;
        self.avoid.disable_source_ip = avoid.disable_source_ip.or(self.avoid.disable_source_ip);
        (bounce, avoid)
    }

    /// What the pattern list asked to stop using since the last call.
    pub fn take_avoid(&mut self) -> Option<Avoid> {
        let avoid = std::mem::take(&mut self.avoid);
        (avoid != Avoid::default()).then_some(avoid)
    }

    pub fn take_queue_action(&mut self) -> Option<QueueAction> {
        self.queue_action.take()
    }

    /// Leaves backoff when its time is up; returns true when it did.
    pub fn check_mode(&mut self, now_ms: u64) -> bool {
        match self.mode {
            Mode::Backoff { until_ms } if now_ms >= until_ms => {
                self.mode = Mode::Normal;
                self.events.push("mode=normal (backoff-to-normal-after)".into());
                true
            }
            _ => false,
        }
    }

    pub fn push(&mut self, job: Job<M>) {
        self.ready.push_back(job);
    }

    /// A job that was taken and not started goes back first in line.
    pub fn push_front(&mut self, job: Job<M>) {
        self.ready.push_front(job);
    }

    /// Jobs held, ready and waiting.
    pub fn jobs(&self) -> usize {
        self.ready.len() + self.retry.len()
    }

    pub fn ready_jobs(&self) -> usize {
        self.ready.len()
    }

    pub fn retry_jobs(&self) -> usize {
        self.retry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.retry.is_empty()
    }

    /// Moves retries whose time has come to the ready list.
    pub fn promote_due(&mut self, now_ms: u64) {
        while let Some(entry) = self.retry.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            self.ready.push_back(entry.remove());
        }
    }

    pub fn next_retry_ms(&self) -> Option<u64> {
        self.retry.keys().next().map(|k| k.0)
    }

    /// Is there work to hand a connection now (ready jobs, not paused)?
    pub fn has_work(&self) -> bool {
        !self.paused && !self.ready.is_empty()
    }

    /// Should another connection be opened? One per ready job, up to `max-smtp-out`.
    pub fn wants_connection(&self) -> bool {
        self.has_work() && self.connections < self.max_smtp_out() && (self.connections as usize) < self.ready.len()
    }

    /// Recipients in the next transaction: `max-rcpt-per-message`, or fewer when the
    /// receiver said it takes fewer.
    pub fn txn_rcpts_max(&self) -> usize {
        let configured = match self.settings.max_rcpt_per_message {
            0 => TXN_RCPTS_MAX,
            n => n as usize,
        };
        configured.min(self.learned_txn_rcpts_max.unwrap_or(usize::MAX))
    }

    /// The next transaction's worth of work: one message, up to the recipient limit.
    pub fn take(&mut self) -> Option<Job<M>>
    where
        M: Clone,
    {
        let mut job = self.ready.pop_front()?;
        let max = self.txn_rcpts_max();
        if job.rcpts.len() > max {
            let rest = job.rcpts.split_off(max);
            let mut remainder = job.clone();
            remainder.rcpts = rest;
            self.ready.push_front(remainder);
        }
        Some(job)
    }

    /// Every ready job (a queue handing its mail to another: MX rollup).
    pub fn take_ready(&mut self) -> Vec<Job<M>> {
        self.ready.drain(..).collect()
    }

    /// Every job, ready or waiting: used when a queue is drained on shutdown or reload.
    pub fn drain(&mut self) -> Vec<Job<M>> {
        let mut all: Vec<Job<M>> = self.ready.drain(..).collect();
        all.extend(std::mem::take(&mut self.retry).into_values());
        all
    }

    /// Deferrals until the next call retry after `delay` instead of the retry list (a failed
    /// lookup: `retry-after-dns-error`); None: the list again.
    pub fn retry_once(&mut self, delay: Option<Duration>) {
        self.retry_delay = delay;
    }

    fn schedule_retry(&mut self, mut job: Job<M>, now_ms: u64) {
        let list = self.retry_list();
        let delay = self.retry_delay.unwrap_or(list[(job.attempts as usize).saturating_sub(1).min(list.len() - 1)]);
        job.attempts += 1;
        self.retry_seq += 1;
        self.retry.insert((now_ms + delay.as_millis() as u64, self.retry_seq), job);
    }

    /// Decides each recipient's fate from its reply (RFC 5321 §4.2.1: 2yz done, 4yz retry,
    /// 5yz bounce; a 4yz past `bounce-after` expires). Returns one accounting record per
    /// recipient, with its fate. Retries are timed on the monotonic clock, the message's age
    /// on the wall clock.
    pub fn settle(
        &mut self,
        mut job: Job<M>,
        replies: &[Reply],
        info: &AttemptInfo,
        now: Now,
    ) -> Vec<(Recipient, Fate, Record)>
    where
        M: Clone,
    {
        assert_eq!(job.rcpts.len(), replies.len());
        let now_ms = now.ms();
        let expired = now.unix_ms >= job.queued_unix_ms + self.settings.bounce_after.as_millis() as u64;
        let mut out = Vec::with_capacity(replies.len());
        let mut deferred = Vec::new();
        let mut elsewhere = Vec::new();
        // RFC 5321 §4.5.3.1.10: recipients refused as too many for one transaction go in the
        // next one at once; it is no failure (no record, no retry delay).
        let accepted = replies.iter().filter(|r| r.is_positive()).count();
        let mut too_many = Vec::new();
        let mut alone = Vec::new();
        for (rcpt, reply) in std::mem::take(&mut job.rcpts).into_iter().zip(replies) {
            if accepted > 0 && too_many_recipients(reply) {
                too_many.push(rcpt);
                continue;
            }
            let (bounce_rcpt, avoid) = self.observe_rule(reply, now_ms);
            let go_elsewhere = !reply.is_positive()
                && !bounce_rcpt
                && ((avoid.skip_mx && info.other_hop) || (avoid.disable_source_ip.is_some() && info.other_source));
            let (kind, fate, category) = if go_elsewhere {
                // Not this host or this IP: another one takes it at once (no retry delay).
                (Kind::Transient, Fate::Retry, "")
            } else if reply.is_positive() {
                (Kind::Delivered, Fate::Final, "success")
            } else if reply.is_permanent() || bounce_rcpt {
                (Kind::Bounced, Fate::Final, bounce::classify(reply, &self.bounce_patterns))
            } else if expired {
                (Kind::Bounced, Fate::Final, "message-expired")
            } else {
                (Kind::Transient, Fate::Retry, "")
            };
            if kind != Kind::Delivered {
                self.last_error = Some(reply.line());
            }
            let record = self.record(&job, &rcpt, kind, reply, category, info, now.unix_ms);
            if go_elsewhere {
                elsewhere.push(rcpt.clone());
            } else if fate == Fate::Retry && reply.code == 421 && job.drew_421.contains(&rcpt.index) {
                alone.push(rcpt.clone());
            } else if fate == Fate::Retry {
                if reply.code == 421 {
                    job.drew_421.push(rcpt.index);
                }
                deferred.push(rcpt.clone());
            }
            out.push((rcpt, fate, record));
        }
        if !too_many.is_empty() {
            let took = replies.len() - too_many.len();
            self.learned_txn_rcpts_max = Some(took.min(self.learned_txn_rcpts_max.unwrap_or(usize::MAX)).max(1));
            let mut again = job.clone();
            again.rcpts = too_many;
            self.ready.push_front(again);
        }
        if !elsewhere.is_empty() {
            let mut again = job.clone();
            again.rcpts = elsewhere;
            self.ready.push_front(again);
        }
        for rcpt in alone {
            let mut on_its_own = job.clone();
            on_its_own.rcpts = vec![rcpt];
            self.schedule_retry(on_its_own, now_ms);
        }
        if !deferred.is_empty() {
            job.rcpts = deferred;
            self.schedule_retry(job, now_ms);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        job: &Job<M>,
        rcpt: &Recipient,
        kind: Kind,
        reply: &Reply,
        category: &str,
        info: &AttemptInfo,
        unix_ms: u64,
    ) -> Record {
        // An expiry is permanent whatever the last reply was (RFC 3463: 5.4.7).
        let expired = kind == Kind::Bounced && category == "message-expired" && !reply.is_permanent();
        let status = match reply.enhanced() {
            _ if expired => "5.4.7".to_string(),
            Some(e) => e.to_string(),
            None if kind == Kind::Delivered => "2.0.0".to_string(),
            None => format!("{}.0.0", reply.code / 100),
        };
        let dsn_mta =
            if info.mx_host.is_empty() { String::new() } else { format!("{} ({})", info.mx_host, info.destination_ip) };
        let vmta = if info.vmta.is_empty() { self.vmta.as_str() } else { info.vmta.as_str() };
        let mut diag = String::with_capacity(9 + reply.text.len());
        diag.push_str("smtp;");
        reply.push_line(&mut diag);
        let mut r = Record::queue_event(unix_ms, &self.name, vmta, diag);
        r.kind = kind;
        r.time_queued_ms = job.queued_unix_ms;
        r.time_first_attempt_ms = job.first_attempt_unix_ms;
        // `orig`: the scheduler's `stamp` writes the sender as injected (this job's may be
        // a VERP return path).
        r.rcpt = rcpt.address.clone();
        r.dsn_status = status;
        r.dsn_mta = dsn_mta;
        r.bounce_cat = category.to_string();
        r.dlv_source_ip = info.source_ip.clone();
        r.dlv_destination_ip = info.destination_ip.clone();
        r.dlv_esmtp_available = info.esmtp_keywords.clone();
        r.dlv_size = job.size;
        r.vmta_pool = info.vmta_pool.clone();
        r.dlv_tls_protocol = info.tls_protocol.clone();
        r.dlv_tls_cipher = info.tls_cipher.clone();
        r.job_id = job.job_id.clone();
        r
    }
}

/// "Too many recipients" (RFC 5321 §4.5.3.1.10): 452, or the 552 of RFC 821 that clients
/// are told to take as temporary, with X.5.3 or those words.
pub fn too_many_recipients(reply: &Reply) -> bool {
    (reply.code == 452 || reply.code == 552)
        && (reply.enhanced().is_some_and(|e| e.ends_with(".5.3"))
            || reply.text.to_ascii_lowercase().contains("too many recipients"))
}

fn rate_per_s(r: Rate) -> f64 {
    r.count as f64 / r.period.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn job(n: usize) -> Job<u32> {
        Job {
            msg: 7,
            mail_from: "s@a.test".into(),
            rcpts: (0..n).map(|i| Recipient { index: i as u32, address: format!("r{i}@b.test") }).collect(),
            attempts: 1,
            first_attempt_unix_ms: 0,
            queued_unix_ms: 1_000,
            size: 100,
            job_id: String::new(),
            drew_421: Vec::new(),
        }
    }

    fn queue() -> Queue<u32> {
        let settings = DomainSettings {
            max_rcpt_per_message: 2,
            retry_after: vec![Duration::from_secs(10), Duration::from_secs(60)],
            bounce_after: Duration::from_secs(3600),
            ..Default::default()
        };
        Queue::new("b.test", "", settings)
    }

    #[test]
    fn splits_by_max_rcpt_per_message() {
        let mut q = queue();
        q.push(job(5));
        let sizes: Vec<usize> = std::iter::from_fn(|| q.take()).map(|j| j.rcpts.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    #[test]
    fn settle_delivers_bounces_defers_and_follows_retry_list() {
        let mut q = queue();
        let replies =
            [Reply::new(250, "2.0.0 ok"), Reply::new(550, "5.1.1 no such user"), Reply::new(451, "4.3.0 later")];
        let out = q.settle(job(3), &replies, &AttemptInfo::default(), Now::at_ms(2_000));
        let kinds: Vec<(Kind, Fate)> = out.iter().map(|(_, f, r)| (r.kind, f.clone())).collect();
        assert_eq!(
            kinds,
            vec![(Kind::Delivered, Fate::Final), (Kind::Bounced, Fate::Final), (Kind::Transient, Fate::Retry)]
        );
        assert_eq!(out[1].2.bounce_cat, "bad-mailbox");
        assert_eq!(q.next_retry_ms(), Some(12_000), "first retry after 10s");
        q.promote_due(11_999);
        assert_eq!(q.ready_jobs(), 0);
        q.promote_due(12_000);
        let j = q.take().unwrap();
        assert_eq!((j.rcpts.len(), j.attempts), (1, 2));
        q.settle(j, &[Reply::new(421, "4.7.0 try later")], &AttemptInfo::default(), Now::at_ms(12_000));
        assert_eq!(q.next_retry_ms(), Some(72_000), "second retry uses the next delay");
    }

    /// RFC 5321 §4.5.3.1.10: a receiver that takes 2 per transaction gets the rest in the
    /// next transactions at once, with no record and no retry delay; later jobs are split to
    /// what it takes. A 452 with nothing accepted is an ordinary deferral.
    #[test]
    fn too_many_recipients_go_in_the_next_transaction_at_once() {
        let mut q = queue();
        q.settings.max_rcpt_per_message = 0;
        q.push(job(5));
        let j = q.take().unwrap();
        assert_eq!(j.rcpts.len(), 5);
        let too_many = Reply::new(452, "4.5.3 Too many recipients");
        let replies = [Reply::new(250, "ok"), Reply::new(250, "ok"), too_many.clone(), too_many.clone(), too_many];
        let out = q.settle(j, &replies, &AttemptInfo::default(), Now::at_ms(2_000));
        assert_eq!(out.len(), 2, "records only for the two that went");
        assert!(out.iter().all(|(_, f, r)| *f == Fate::Final && r.kind == Kind::Delivered));
        assert_eq!(q.next_retry_ms(), None, "nothing waits for a retry");
        let sizes: Vec<usize> = std::iter::from_fn(|| q.take()).map(|j| j.rcpts.len()).collect();
        assert_eq!(sizes, vec![2, 1], "the rest now, at the receiver's 2 per transaction");
        assert_eq!(q.txn_rcpts_max(), 2);
        q.push(job(1));
        let j = q.take().unwrap();
        let out = q.settle(j, &[Reply::new(452, "4.5.3 Too many recipients")], &Default::default(), Now::at_ms(3_000));
        assert_eq!((out.len(), out[0].1.clone()), (1, Fate::Retry), "nothing accepted: a deferral");
        // The 552 of RFC 821 in words, without an enhanced code.
        assert!(too_many_recipients(&Reply::new(552, "Too many recipients")));
        assert!(!too_many_recipients(&Reply::new(452, "4.2.2 Mailbox full")));
    }

    #[test]
    fn transient_past_bounce_after_expires() {
        let mut q = queue();
        let out =
            q.settle(job(1), &[Reply::new(451, "4.3.0 later")], &AttemptInfo::default(), Now::at_ms(1_000 + 3_600_000));
        assert_eq!((out[0].2.kind, out[0].2.bounce_cat.as_str()), (Kind::Bounced, "message-expired"));
        assert!(q.is_empty());
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;
    use sluice_config::PatternAction;

    fn queue(actions: Vec<PatternAction>) -> Queue<u32> {
        let settings = DomainSettings {
            max_smtp_out: 20,
            backoff_max_smtp_out: Some(2),
            max_msg_rate: None,
            backoff_max_msg_rate: Some(Rate { count: 10, period: Duration::from_secs(1) }),
            retry_after: vec![Duration::from_secs(600)],
            backoff_retry_after: vec![Duration::from_secs(5)],
            backoff_to_normal_after: Duration::from_secs(60),
            ..Default::default()
        };
        let rule = PatternRule { regex: sluice_config::BouncePatternRegex::new("^421 .*too many").unwrap(), actions };
        Queue::new("b.test", "default", settings).with_patterns(Some(Arc::new(vec![rule])))
    }

    #[test]
    fn backoff_changes_limits_and_expires() {
        let mut q = queue(vec![PatternAction::Backoff(Some(Duration::from_secs(3)))]);
        assert_eq!((q.max_smtp_out(), q.msg_rate()), (20, None));
        assert!(!q.observe(&Reply::new(250, "ok"), 0));
        assert_eq!(q.mode(), Mode::Normal);
        q.observe(&Reply::new(421, "4.7.0 too many errors"), 1_000);
        assert_eq!(q.mode(), Mode::Backoff { until_ms: 4_000 });
        assert_eq!((q.max_smtp_out(), q.msg_rate().map(|r| r.count)), (2, Some(10)));
        assert!(!q.check_mode(3_999));
        assert!(q.check_mode(4_000));
        assert_eq!(q.mode(), Mode::Normal);
    }

    #[test]
    fn first_clean_delivery_ends_backoff_when_so_set() {
        let mut q = queue(vec![PatternAction::Backoff(None)]);
        q.observe(&Reply::new(421, "4.7.0 too many errors"), 0);
        q.observe(&Reply::new(250, "2.0.0 ok"), 10);
        assert!(matches!(q.mode(), Mode::Backoff { .. }), "not set: backoff lasts its time");
        q.settings.backoff_to_normal_after_delivery = true;
        q.observe(&Reply::new(250, "2.0.0 ok"), 20);
        assert_eq!(q.mode(), Mode::Normal);
        assert!(q.take_events().iter().any(|e| e.starts_with("mode=normal (clean delivery")));
    }

    #[test]
    fn bounce_rcpt_and_queue_actions() {
        let mut q = queue(vec![PatternAction::BounceRcpt, PatternAction::DeferQueue]);
        let out =
            q.settle(one_rcpt(), &[Reply::new(421, "4.7.0 too many errors")], &AttemptInfo::default(), Now::at_ms(10));
        assert_eq!(
            (out[0].1.clone(), out[0].2.kind),
            (Fate::Final, Kind::Bounced),
            "bounce-rcpt turns a 4xx into a bounce"
        );
        assert_eq!(q.take_queue_action(), Some(QueueAction::Defer));
        assert_eq!(q.take_queue_action(), None);
    }

    fn one_rcpt() -> Job<u32> {
        Job {
            msg: 1,
            mail_from: "a@b".into(),
            rcpts: vec![Recipient { index: 0, address: "x@b.test".into() }],
            attempts: 1,
            first_attempt_unix_ms: 0,
            queued_unix_ms: 0,
            size: 1,
            job_id: String::new(),
            drew_421: Vec::new(),
        }
    }

    #[test]
    fn skip_mx_retries_at_once_only_when_another_hop_exists() {
        let mut q = queue(vec![PatternAction::SkipMx]);
        let refused = [Reply::new(421, "4.7.0 too many connections")];
        let info = AttemptInfo { other_hop: true, ..Default::default() };
        let out = q.settle(one_rcpt(), &refused, &info, Now::at_ms(10));
        assert_eq!((out[0].1.clone(), out[0].2.kind), (Fate::Retry, Kind::Transient));
        assert_eq!((q.ready_jobs(), q.retry_jobs()), (1, 0), "back in the ready list, no retry delay");
        assert_eq!(q.take().unwrap().attempts, 1, "not counted as an attempt");
        assert_eq!(q.take_avoid(), Some(Avoid { skip_mx: true, disable_source_ip: None }));
        assert_eq!(q.take_avoid(), None);
        // The last hop: an ordinary deferral.
        q.settle(one_rcpt(), &refused, &AttemptInfo::default(), Now::at_ms(10));
        assert_eq!((q.ready_jobs(), q.retry_jobs()), (0, 1));
    }

    #[test]
    fn disable_source_ip_needs_another_source() {
        let mut q = queue(vec![PatternAction::DisableSourceIp(Duration::from_secs(90))]);
        let refused = [Reply::new(421, "4.7.0 too many from your IP")];
        let info = AttemptInfo { other_hop: true, ..Default::default() };
        q.settle(one_rcpt(), &refused, &info, Now::at_ms(10));
        assert_eq!((q.ready_jobs(), q.retry_jobs()), (0, 1), "another hop does not help a disabled IP");
        let info = AttemptInfo { other_source: true, ..Default::default() };
        q.settle(one_rcpt(), &refused, &info, Now::at_ms(10));
        assert_eq!(q.ready_jobs(), 1);
        assert_eq!(q.take_avoid().and_then(|a| a.disable_source_ip), Some(Duration::from_secs(90)));
    }
}

#[cfg(test)]
mod adaptive_tests {
    use super::*;

    #[test]
    fn aimd_follows_replies_within_the_ceiling() {
        let settings = DomainSettings {
            adaptive_rate: true,
            max_msg_rate: Some(Rate { count: 200, period: Duration::from_secs(1) }),
            ..Default::default()
        };
        let mut q: Queue<u32> = Queue::new("b.test", "default", settings);
        assert_eq!(q.adaptive_per_s(), None);
        q.observe(&Reply::new(250, "ok"), 0);
        let start = q.adaptive_per_s().unwrap();
        assert!((100.0..100.1).contains(&start), "starts at min(ceiling, 100): {start}");
        q.observe(&Reply::new(451, "4.7.1 slow down"), 0);
        assert!((q.adaptive_per_s().unwrap() - start / 2.0).abs() < 0.1, "halved on 4.7.x");
        q.observe(&Reply::new(421, "try later"), 0);
        q.observe(&Reply::new(451, "4.3.0 disk full"), 0);
        assert!((q.adaptive_per_s().unwrap() - start / 4.0).abs() < 0.1, "421 halves; a non-throttling 4xx does not");
        for _ in 0..100_000 {
            q.observe(&Reply::new(250, "ok"), 0);
        }
        assert_eq!(q.adaptive_per_s(), Some(200.0), "bounded by max-msg-rate");
        assert_eq!(q.msg_rate().map(rate_per_s), Some(200.0));
    }
}
