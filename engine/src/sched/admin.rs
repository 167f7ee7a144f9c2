//! Operator control of the queues (the management API and the CLI, through every shard):
//! pause and resume queues and jobs, retry now, change a queue's mode, delete, and the
//! snapshot the status pages are made from.

use super::stats::ShardStats;
use super::{HopState, Intent, Message, QueueId, QueueState, Scheduler, CANCELLED_JOB_HOLD_MS};
use crate::queue::{Contents, Job, Mode};
use crate::route::Resolution;
use crate::smtp::reply::Reply;
use crate::time::Now;
use std::collections::HashMap;

/// Which queues a command applies to: `domain/vmta`, where either part may be `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub domain: String,
    pub vmta: String,
}

impl Selector {
    /// `gmail.com/pool1`, `gmail.com` (every VMTA), `*/pool1`, `*/*`.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let text = text.trim().to_ascii_lowercase();
        let (domain, vmta) = text.split_once('/').unwrap_or((&text, "*"));
        if domain.is_empty() || vmta.is_empty() || domain.contains(char::is_whitespace) {
            return Err(format!("`{text}` is not a queue: write DOMAIN/VMTA, DOMAIN, or */VMTA"));
        }
        Ok(Selector { domain: domain.to_string(), vmta: vmta.to_string() })
    }

    pub fn matches(&self, domain: &str, vmta: &str) -> bool {
        (self.domain == "*" || self.domain.eq_ignore_ascii_case(domain))
            && (self.vmta == "*" || self.vmta.eq_ignore_ascii_case(vmta))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.domain, self.vmta)
    }
}

#[derive(Debug, Clone)]
pub enum AdminCmd {
    /// Every queue's contents and state, the jobs, the connections.
    Snapshot,
    Pause(Selector),
    Resume(Selector),
    /// Retry now: waiting recipients become due, connection backoff and DNS failures clear.
    Schedule(Selector),
    /// `set queue --mode=backoff|normal`.
    SetMode(Selector, bool),
    /// Deletes every queued recipient (a `b` record each, no DSN).
    Delete(Selector),
    PauseJob(String),
    ResumeJob(String),
    /// Deletes the job's queued recipients, and any that come back from a delivery attempt.
    DeleteJob(String),
}

/// One queue as an operator sees it.
#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub domain: String,
    pub vmta: String,
    pub shard: u32,
    pub jobs: u64,
    pub rcpts: u64,
    pub bytes: u64,
    pub oldest_unix_ms: u64,
    pub connections: u32,
    /// `normal`, `backoff` or `paused`.
    pub mode: &'static str,
    /// When the next waiting recipient is due (Unix ms; 0: none waiting).
    pub next_retry_unix_ms: u64,
    pub last_error: Option<String>,
    /// `resolving`, `ready`, `rolled-up into D`, `failed: ...`, or `unknown`.
    pub dns: String,
}

/// A job (`x-job:`) as an operator sees it.
#[derive(Debug, Clone, Default)]
pub struct JobInfo {
    pub id: String,
    pub rcpts: u64,
    pub bytes: u64,
    pub paused: bool,
}

/// What one shard holds.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub queues: Vec<QueueInfo>,
    pub jobs: Vec<JobInfo>,
    pub conns_out: u32,
}

#[derive(Debug, Clone)]
pub enum AdminReply {
    Snapshot(Snapshot),
    /// How many queues, or recipients (delete), or jobs the command touched.
    Affected(u64),
}

impl<M: Message> Scheduler<M> {
    /// An operator's command (`Snapshot` is `snapshot`).
    pub fn on_admin(&mut self, cmd: AdminCmd, now: Now) -> AdminReply {
        let affected = match cmd {
            AdminCmd::Snapshot => return AdminReply::Snapshot(self.snapshot(now)),
            AdminCmd::Pause(sel) => {
                if !self.paused_queues.contains(&sel) {
                    self.paused_queues.push(sel);
                }
                self.apply_pauses(now)
            }
            AdminCmd::Resume(sel) => {
                self.paused_queues.retain(|p| !(p == &sel || sel.matches(&p.domain, &p.vmta)));
                self.apply_pauses(now)
            }
            AdminCmd::Schedule(sel) => self.schedule(&sel),
            AdminCmd::SetMode(sel, backoff) => {
                let ids = self.matching(&sel);
                for &id in &ids {
                    self.st_mut(id).q.set_mode(backoff, now.ms());
                    self.queue_events(id, now);
                    self.dirty.push(id);
                }
                ids.len() as u64
            }
            AdminCmd::Delete(sel) => {
                let mut jobs = Vec::new();
                for id in self.matching(&sel) {
                    jobs.extend(self.take_jobs(id, &mut |_| true));
                }
                let (held, kept): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.held).into_iter().partition(|(d, v, _)| sel.matches(d, v));
                self.held = kept;
                jobs.extend(held);
                self.delete_jobs(jobs, now)
            }
            AdminCmd::PauseJob(job) => self.pause_job(job),
            AdminCmd::ResumeJob(job) => {
                self.paused_jobs.remove(&job);
                let (back, kept): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.held).into_iter().partition(|(_, _, j)| j.job_id == job);
                self.held = kept;
                let n = back.iter().map(|(_, _, j)| j.rcpts.len() as u64).sum();
                for (domain, vmta, j) in back {
                    self.enqueue(&domain, &vmta, j);
                }
                n
            }
            AdminCmd::DeleteJob(job) => {
                self.paused_jobs.remove(&job);
                // A transaction in flight ends within its timeouts; until then, what comes
                // back of the job is deleted.
                self.cancelled_jobs.insert(job.clone(), now.ms() + CANCELLED_JOB_HOLD_MS);
                let mut jobs = Vec::new();
                for id in 0..self.queues.len() {
                    if self.queues[id].is_some() {
                        jobs.extend(self.take_jobs(id, &mut |j| j.job_id == job));
                    }
                }
                let (held, kept): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.held).into_iter().partition(|(_, _, j)| j.job_id == job);
                self.held = kept;
                jobs.extend(held);
                self.delete_jobs(jobs, now)
            }
        };
        AdminReply::Affected(affected)
    }

    fn matching(&self, sel: &Selector) -> Vec<QueueId> {
        (0..self.queues.len())
            .filter(|&id| self.queues[id].as_ref().is_some_and(|st| sel.matches(&st.q.domain, &st.q.vmta)))
            .collect()
    }

    /// Every job of the queue (window and backlog) that `pred` picks, with its queue.
    fn take_jobs(&mut self, id: QueueId, pred: &mut dyn FnMut(&Job<M>) -> bool) -> Vec<(String, String, Job<M>)> {
        let st = self.st_mut(id);
        let (d, v) = (st.q.domain.clone(), st.q.vmta.clone());
        let mut jobs: Vec<Job<M>> = st.q.take_where(&mut *pred);
        jobs.extend(st.backlog.take_where(pred));
        jobs.into_iter().map(|j| (d.clone(), v.clone(), j)).collect()
    }

    /// Retry now: waiting recipients become due, connection backoff and DNS failures clear.
    fn schedule(&mut self, sel: &Selector) -> u64 {
        let ids = self.matching(sel);
        for &id in &ids {
            let st = self.st_mut(id);
            st.q.retry_now();
            st.connect_failures = 0;
            st.connect_backoff_until_ms = 0;
            if matches!(st.hops, HopState::Failed { .. }) {
                st.hops = HopState::Unknown;
            }
            self.dirty.push(id);
        }
        ids.len() as u64
    }

    /// The job's mail is held on this shard, new mail too, until it is resumed.
    fn pause_job(&mut self, job: String) -> u64 {
        self.paused_jobs.insert(job.clone());
        let mut n = 0;
        for id in 0..self.queues.len() {
            if self.queues[id].is_none() {
                continue;
            }
            for held in self.take_jobs(id, &mut |j| j.job_id == job) {
                n += held.2.rcpts.len() as u64;
                self.held.push(held);
            }
        }
        if n > 0 {
            tracing::info!(shard = self.shard, %job, recipients = n, "job paused");
        }
        n
    }

    /// Sets each queue's paused flag from the selectors; returns how many changed.
    fn apply_pauses(&mut self, now: Now) -> u64 {
        let mut changed = Vec::new();
        for (id, st) in self.queues.iter_mut().enumerate() {
            let Some(st) = st.as_mut() else { continue };
            let paused = self.paused_queues.iter().any(|s| s.matches(&st.q.domain, &st.q.vmta));
            if st.q.paused() != paused {
                st.q.set_paused(paused);
                changed.push(id);
            }
        }
        for &id in &changed {
            self.queue_events(id, now);
            self.dirty.push(id);
        }
        changed.len() as u64
    }

    /// An operator deleted these jobs: a `b` record for each recipient, and a journal entry
    /// (they are final; no DSN is made). Returns the recipients deleted.
    pub(super) fn delete_jobs(&mut self, jobs: Vec<(String, String, Job<M>)>, now: Now) -> u64 {
        let reply = Reply::new(550, "5.0.0 deleted by an operator");
        let mut n = 0;
        for (domain, vmta, job) in jobs {
            let headers = self.acct_header_values(job.msg.data());
            let id = self.queue_for(&domain, &vmta);
            let mut records = self.st(id).q.deleted_records(&job, &reply, now.unix_ms);
            for (r, rcpt) in records.iter_mut().zip(&job.rcpts) {
                r.headers.clone_from(&headers);
                super::stamp(r, &job.msg, rcpt.index);
            }
            n += records.len() as u64;
            // Rows first: their outcomes are journaled once they are durable.
            for r in records {
                self.record(r);
            }
            for rcpt in &job.rcpts {
                self.intents.push_back(Intent::Outcome { msg: job.msg.clone(), rcpt: rcpt.index });
            }
            self.dirty.push(id);
        }
        ShardStats::add(&self.stats.rcpts_bounced, n);
        if n > 0 {
            tracing::info!(shard = self.shard, recipients = n, "recipients deleted by an operator");
        }
        n
    }

    /// Every queue's contents and state, the jobs, the connections (times as Unix ms).
    pub fn snapshot(&self, now: Now) -> Snapshot {
        let mut jobs: HashMap<String, Contents> = HashMap::new();
        let mut queues = Vec::new();
        for st in self.queues.iter().flatten() {
            let mut c = st.q.contents(Some(&mut jobs));
            c.merge(&st.backlog.totals());
            for (job, parked) in st.backlog.per_job() {
                jobs.entry(job).or_default().merge(&parked);
            }
            if c.jobs == 0 && st.q.connections == 0 && !st.q.paused() {
                continue; // emptied; forgotten on the next tick
            }
            queues.push(self.queue_info(st, c, now));
        }
        let mut out: Vec<JobInfo> = jobs
            .into_iter()
            .map(|(id, c)| JobInfo { paused: self.paused_jobs.contains(&id), id, rcpts: c.rcpts, bytes: c.bytes })
            .collect();
        for (_, _, job) in &self.held {
            let n = job.rcpts.len() as u64;
            match out.iter_mut().find(|j| j.id == job.job_id) {
                Some(j) => {
                    j.rcpts += n;
                    j.bytes += job.size * n;
                }
                None => out.push(JobInfo { id: job.job_id.clone(), rcpts: n, bytes: job.size * n, paused: true }),
            }
        }
        for id in &self.paused_jobs {
            if !out.iter().any(|j| j.id == *id) {
                out.push(JobInfo { id: id.clone(), paused: true, ..Default::default() });
            }
        }
        Snapshot { queues, jobs: out, conns_out: self.conns.len() as u32 }
    }

    fn queue_info(&self, st: &QueueState<M>, c: Contents, now: Now) -> QueueInfo {
        let mode = if st.q.paused() {
            "paused"
        } else {
            match st.q.mode() {
                Mode::Normal => "normal",
                Mode::Backoff { .. } => "backoff",
            }
        };
        let dns = match &st.hops {
            HopState::Unknown => "unknown".to_string(),
            HopState::Resolving { .. } => "resolving".to_string(),
            HopState::Ready { levels, .. } => format!("ready ({} hosts)", levels.iter().map(Vec::len).sum::<usize>()),
            HopState::RolledUp { into, .. } => format!("rolled up into {into}"),
            HopState::Failed { resolution: Resolution::Permanent(r) | Resolution::Temporary(r), .. } => {
                format!("failed: {}", r.line())
            }
            HopState::Failed { .. } => "failed".to_string(),
        };
        QueueInfo {
            domain: st.q.domain.clone(),
            vmta: st.q.vmta.clone(),
            shard: self.shard,
            jobs: c.jobs,
            rcpts: c.rcpts,
            bytes: c.bytes,
            oldest_unix_ms: c.oldest_unix_ms,
            connections: st.q.connections,
            mode,
            next_retry_unix_ms: st.q.next_retry_ms().map_or(0, |t| now.unix_of(t)),
            last_error: st.q.last_error.clone(),
            dns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_domain_and_vmta_with_wildcards() {
        let s = Selector::parse("Gmail.com/pool1").unwrap();
        assert!(s.matches("gmail.com", "pool1"));
        assert!(!s.matches("gmail.com", "pool2"));
        assert!(!s.matches("yahoo.com", "pool1"));
        let every_vmta = Selector::parse("gmail.com").unwrap();
        assert!(every_vmta.matches("gmail.com", "default") && every_vmta.matches("gmail.com", "pool2"));
        let every_domain = Selector::parse("*/pool1").unwrap();
        assert!(every_domain.matches("a.test", "pool1") && !every_domain.matches("a.test", "pool2"));
        assert!(Selector::parse("/x").is_err());
        assert!(Selector::parse("a b/x").is_err());
    }
}
