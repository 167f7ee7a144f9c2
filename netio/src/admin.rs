//! What the control plane asks of the shards on an operator's behalf (the management API
//! and the CLI): snapshots of the queues, queue and job control, HTTP injection. Each
//! command goes to every shard's mailbox; each shard answers on the command's channel.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// A message injected over HTTP, for a shard to sign, spool and queue. The answer comes on
/// `done` once it is durable (the queue id) or could not be (why).
pub struct Injection {
    pub mail_from: String,
    pub recipients: Vec<String>,
    /// The message in SMTP transparency form (CRLF lines, leading dots doubled).
    pub data: Vec<u8>,
    pub job_id: String,
    /// The HTTP client: its `<source>` policy picks the VMTA (`default-virtual-mta`,
    /// `x-virtual-mta`) as for SMTP.
    pub client_ip: std::net::IpAddr,
    pub src_mta: String,
    pub done: crossbeam_channel::Sender<Result<String, String>>,
}

/// Counters one shard keeps (relaxed atomics, written by that shard alone, on their own cache
/// line) and the control plane sums.
#[derive(Default)]
#[repr(align(128))]
pub struct ShardStats {
    pub msgs_in: AtomicU64,
    pub rcpts_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Transactions that delivered at least one recipient.
    pub msgs_out: AtomicU64,
    pub rcpts_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub rcpts_bounced: AtomicU64,
    pub rcpts_deferred: AtomicU64,
}

impl ShardStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The sums over every shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub msgs_in: u64,
    pub rcpts_in: u64,
    pub bytes_in: u64,
    pub msgs_out: u64,
    pub rcpts_out: u64,
    pub bytes_out: u64,
    pub rcpts_bounced: u64,
    pub rcpts_deferred: u64,
}

impl Totals {
    pub fn of(stats: &[ShardStats]) -> Totals {
        let mut t = Totals::default();
        for s in stats {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            t.msgs_in += get(&s.msgs_in);
            t.rcpts_in += get(&s.rcpts_in);
            t.bytes_in += get(&s.bytes_in);
            t.msgs_out += get(&s.msgs_out);
            t.rcpts_out += get(&s.rcpts_out);
            t.bytes_out += get(&s.bytes_out);
            t.rcpts_bounced += get(&s.rcpts_bounced);
            t.rcpts_deferred += get(&s.rcpts_deferred);
        }
        t
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
