//! A delivery queue (destination domain / virtual MTA): ready jobs, the retry schedule, and
//! the decision for each recipient after an attempt. Generic over the caller's message
//! handle `M`, so the runtime decides how message bytes are reached.

use crate::acct::{Kind, Record};
use crate::bounce;
use crate::smtp::reply::Reply;
use sluice_config::DomainSettings;
use std::collections::{BTreeMap, VecDeque};

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
    pub queued_unix_ms: u64,
    pub size: u64,
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
    /// Connections open or opening for this queue.
    pub connections: u32,
    /// `<bounce-category-patterns>`, tried before the built-in rules.
    bounce_patterns: std::sync::Arc<Vec<sluice_config::BouncePattern>>,
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
            connections: 0,
            bounce_patterns: Default::default(),
        }
    }

    pub fn with_bounce_patterns(mut self, patterns: std::sync::Arc<Vec<sluice_config::BouncePattern>>) -> Self {
        self.bounce_patterns = patterns;
        self
    }

    pub fn push(&mut self, job: Job<M>) {
        self.ready.push_back(job);
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

    /// Should another connection be opened? One per ready job, up to `max-smtp-out`.
    pub fn wants_connection(&self) -> bool {
        !self.ready.is_empty()
            && self.connections < self.settings.max_smtp_out
            && (self.connections as usize) < self.ready.len()
    }

    fn txn_rcpts_max(&self) -> usize {
        match self.settings.max_rcpt_per_message {
            0 => TXN_RCPTS_MAX,
            n => n as usize,
        }
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

    /// Every job, ready or waiting: used when a queue is drained on shutdown or reload.
    pub fn drain(&mut self) -> Vec<Job<M>> {
        let mut all: Vec<Job<M>> = self.ready.drain(..).collect();
        all.extend(std::mem::take(&mut self.retry).into_values());
        all
    }

    fn schedule_retry(&mut self, mut job: Job<M>, now_ms: u64) {
        let list = &self.settings.retry_after;
        let delay = list[(job.attempts as usize).saturating_sub(1).min(list.len() - 1)];
        job.attempts += 1;
        self.retry_seq += 1;
        self.retry.insert((now_ms + delay.as_millis() as u64, self.retry_seq), job);
    }

    /// Decides each recipient's fate from its reply (RFC 5321 §4.2.1: 2yz done, 4yz retry,
    /// 5yz bounce; a 4yz past `bounce-after` expires). Returns one accounting record per
    /// recipient, with its fate.
    pub fn settle(
        &mut self,
        mut job: Job<M>,
        replies: &[Reply],
        info: &AttemptInfo,
        now_ms: u64,
    ) -> Vec<(Recipient, Fate, Record)>
    where
        M: Clone,
    {
        assert_eq!(job.rcpts.len(), replies.len());
        let expired = now_ms >= job.queued_unix_ms + self.settings.bounce_after.as_millis() as u64;
        let mut out = Vec::with_capacity(replies.len());
        let mut deferred = Vec::new();
        for (rcpt, reply) in std::mem::take(&mut job.rcpts).into_iter().zip(replies) {
            let (kind, fate, category) = if reply.is_positive() {
                (Kind::Delivered, Fate::Final, "")
            } else if reply.is_permanent() {
                (Kind::Bounced, Fate::Final, bounce::classify(reply, &self.bounce_patterns))
            } else if expired {
                (Kind::Bounced, Fate::Final, "message-expired")
            } else {
                (Kind::Transient, Fate::Retry, "")
            };
            let record = self.record(&job, &rcpt, kind, reply, category, info, now_ms);
            if fate == Fate::Retry {
                deferred.push(rcpt.clone());
            }
            out.push((rcpt, fate, record));
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
        now_ms: u64,
    ) -> Record {
        let status = reply.enhanced().map(str::to_string).unwrap_or_else(|| {
            match kind {
                Kind::Delivered => "2.0.0",
                Kind::Bounced => "5.0.0",
                Kind::Transient => "4.0.0",
            }
            .to_string()
        });
        let dsn_mta =
            if info.mx_host.is_empty() { String::new() } else { format!("{} ({})", info.mx_host, info.destination_ip) };
        Record {
            kind,
            time_logged_ms: now_ms,
            time_queued_ms: job.queued_unix_ms,
            orig: job.mail_from.clone(),
            rcpt: rcpt.address.clone(),
            dsn_status: status,
            dsn_diag: format!("smtp;{}", reply.line()),
            dsn_mta,
            bounce_cat: category.to_string(),
            src_mta: String::new(),
            dlv_source_ip: info.source_ip.clone(),
            dlv_destination_ip: info.destination_ip.clone(),
            dlv_esmtp_available: info.esmtp,
            dlv_size: job.size,
            vmta: if info.vmta.is_empty() { self.vmta.clone() } else { info.vmta.clone() },
            job_id: String::new(),
            env_id: String::new(),
            queue: self.name.clone(),
            vmta_pool: info.vmta_pool.clone(),
        }
    }
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
            queued_unix_ms: 1_000,
            size: 100,
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
        let out = q.settle(job(3), &replies, &AttemptInfo::default(), 2_000);
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
        q.settle(j, &[Reply::new(421, "4.7.0 try later")], &AttemptInfo::default(), 12_000);
        assert_eq!(q.next_retry_ms(), Some(72_000), "second retry uses the next delay");
    }

    #[test]
    fn transient_past_bounce_after_expires() {
        let mut q = queue();
        let out = q.settle(job(1), &[Reply::new(451, "4.3.0 later")], &AttemptInfo::default(), 1_000 + 3_600_000);
        assert_eq!((out[0].2.kind, out[0].2.bounce_cat.as_str()), (Kind::Bounced, "message-expired"));
        assert!(q.is_empty());
    }
}
