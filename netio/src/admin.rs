//! What the control plane asks of the shards on an operator's behalf (the management API
//! and the CLI): the scheduler's snapshots and queue and job control (each command goes to
//! every shard's mailbox; each shard answers on the command's channel), and HTTP injection.

pub use sluice_engine::sched::admin::{AdminCmd, AdminReply, JobInfo, QueueInfo, Selector, Snapshot};
pub use sluice_engine::sched::stats::{ShardStats, Totals};

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
    /// A named `<source>` over the address's (`{pickup}` for the pickup directory).
    pub source: Option<&'static str>,
    /// A mail merge's `*vmta` and `*envid` for this message (over what routing says).
    pub vmta: Option<String>,
    pub envid: Option<String>,
    pub src_mta: String,
    pub done: crossbeam_channel::Sender<Result<String, String>>,
    /// A message moved from another spool (`deliver-only`) keeps its VMTA, envelope id,
    /// flags, AUTH user, recipients' DSN parameters and signature; None for a new one.
    pub moved: Option<Moved>,
}

/// What a message moved from another spool keeps of its first injection.
pub struct Moved {
    pub vmta: String,
    pub envid: String,
    pub flags: u8,
    pub helo: String,
    /// The SMTP AUTH user who injected it (`rcvSmtpUser`).
    pub auth_user: String,
    /// Each moved recipient's DSN `NOTIFY` and `ORCPT` (RFC 3461), by its index among the
    /// moved recipients: (index, notify, orcpt).
    pub rcpt_dsn: Vec<(u32, u8, String)>,
}
