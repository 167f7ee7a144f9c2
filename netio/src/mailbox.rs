//! Cross-shard and control-plane → shard messages: a bounded lock-free queue per shard and
//! an eventfd the shard's ring keeps a read armed on. A wake is written only when the shard
//! may be asleep (the `notified` flag), so a burst of hand-offs costs one syscall.

use crate::spool_files::Segment;
use crossbeam_queue::ArrayQueue;
use sluice_engine::queue::Job;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Messages waiting for one shard before senders must hold theirs back.
pub const MAILBOX_CAPACITY: usize = 64 * 1024;

pub use sluice_engine::route::{Hop, Resolution};

/// A message in a segment: what a queued job refers to.
#[derive(Clone)]
pub struct MsgRef {
    pub segment: Arc<Segment>,
    pub offset: u64,
}

impl std::fmt::Debug for MsgRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.segment.shard, self.segment.seq, self.offset)
    }
}

impl sluice_engine::sched::Message for MsgRef {
    // Each reads only its part of the record: delivery asks for them many times a message.
    fn data(&self) -> &[u8] {
        self.segment.data(self.offset)
    }
    fn sender(&self) -> &str {
        self.segment.origin(self.offset).1
    }
    fn client_ip(&self) -> std::net::IpAddr {
        self.segment.origin(self.offset).0
    }
    fn origin(&self) -> sluice_engine::sched::Origin<'_> {
        let (envid, _, extras) = self.segment.tail(self.offset);
        origin_of(envid, &extras)
    }
    fn rcpt_dsn(&self, index: u32) -> (u8, &str) {
        self.segment.tail(self.offset).2.rcpt(index).map_or((0, ""), |r| (r.notify, r.orcpt))
    }
    fn stamped(&self, index: u32) -> sluice_engine::sched::Stamped<'_> {
        let (client_ip, sender, envid, extras) = self.segment.summary(self.offset);
        let orcpt = extras.rcpt(index).map_or("", |r| r.orcpt);
        sluice_engine::sched::Stamped { origin: origin_of(envid, &extras), sender, client_ip, orcpt }
    }
}

fn origin_of<'a>(envid: &'a str, extras: &sluice_spool::codec::Extras<'a>) -> sluice_engine::sched::Origin<'a> {
    let flags = extras.flags;
    sluice_engine::sched::Origin {
        helo: extras.helo,
        auth_user: extras.auth_user,
        api: flags & sluice_spool::codec::flags::API != 0,
        envid,
        ret_hdrs: flags & sluice_spool::codec::flags::RET_HDRS != 0,
        flags,
    }
}

pub enum ShardMsg {
    Job {
        domain: String,
        vmta: String,
        job: Job<MsgRef>,
    },
    /// Next hops for a domain; with `rollup`, the domain whose queue its mail joins instead
    /// (its MX hosts and settings are the same: MX rollup).
    Resolved {
        domain: String,
        resolution: Resolution,
        ttl_ms: u64,
        rollup: Option<String>,
    },
    /// A message back from the authentication checks, with the headers to prepend.
    Verified {
        slot: u32,
        gen: u16,
        data: Vec<u8>,
        headers: Vec<u8>,
        summary: String,
    },
    /// An operator's command; the answer goes on the channel, tagged with the shard.
    Admin(crate::admin::AdminCmd, crossbeam_channel::Sender<crate::admin::AdminReply>),
    /// A complaint report's suppression entry is durable (or failed): reply to its session.
    ReportStored {
        slot: u32,
        gen: u16,
        ok: bool,
    },
    /// A reloaded configuration to put in force.
    Reload(Arc<crate::Shared>),
    /// A message injected over HTTP.
    Inject(Box<crate::admin::Injection>),
    /// A connection another shard accepted for this one's traffic class (`<traffic-class>`):
    /// its descriptor, client and listener.
    Accepted {
        fd: std::os::fd::RawFd,
        ip: std::net::IpAddr,
        listener: usize,
    },
}

pub struct Mailbox {
    queue: ArrayQueue<ShardMsg>,
    notified: AtomicBool,
    eventfd: OwnedFd,
}

impl Mailbox {
    /// A mailbox holding up to `capacity` messages (`MAILBOX_CAPACITY` in the daemon).
    pub fn new(capacity: usize) -> std::io::Result<Mailbox> {
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Mailbox { queue: ArrayQueue::new(capacity), notified: AtomicBool::new(false), eventfd })
    }

    /// Pushes a message; gives it back when the mailbox is full (rare: the caller keeps it
    /// in its outbox), so the large `Err` costs nothing on the common path and saves a box.
    #[allow(clippy::result_large_err)]
    pub fn send(&self, msg: ShardMsg) -> Result<(), ShardMsg> {
        self.queue.push(msg)?;
        self.wake();
        Ok(())
    }

    pub fn wake(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes to an eventfd we own.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Called by the owning shard when its eventfd read completes, before draining.
    pub fn clear_notified(&self) {
        self.notified.store(false, Ordering::SeqCst);
    }

    pub fn pop(&self) -> Option<ShardMsg> {
        self.queue.pop()
    }

    pub fn eventfd(&self) -> i32 {
        self.eventfd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::sched::Message;
    use sluice_spool::codec;

    /// The one read a delivery row takes gives what the four separate reads give.
    #[test]
    fn stamped_reads_what_the_four_reads_read() {
        let dir = std::env::temp_dir().join(format!("sluice-mailbox-stamped-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let extras = codec::Extras {
            helo: "app1.x.test",
            auth_user: "injector",
            flags: codec::flags::API,
            rcpt_dsn: vec![codec::RcptDsn { index: 1, notify: 6, orcpt: "rfc822;b@y.test" }],
        };
        let mut env = crate::spool_files::test_envelope(vec!["a@y.test", "b@y.test"], "job-1");
        (env.client_ip, env.mail_from, env.envid, env.extras) =
            ("192.0.2.9".parse().unwrap(), "bounces@x.test", "ENV-9", extras);
        let rec = crate::spool_files::test_record_of(&env);
        let seg = crate::spool_files::Segment::create(&dir, 0, 1, 1 << 16).unwrap();
        let offset = seg.write_records_for_test(&[rec])[0];
        let msg = MsgRef { segment: seg, offset };
        for index in 0..2 {
            let s = msg.stamped(index);
            assert_eq!((s.sender, s.client_ip, s.orcpt), (msg.sender(), msg.client_ip(), msg.rcpt_dsn(index).1));
            let (o, each) = (s.origin, msg.origin());
            assert_eq!(
                (o.helo, o.auth_user, o.api, o.envid, o.flags),
                (each.helo, each.auth_user, each.api, each.envid, each.flags)
            );
        }
        assert_eq!((msg.stamped(1).orcpt, msg.stamped(0).orcpt), ("rfc822;b@y.test", ""));
        assert_eq!(msg.stamped(0).origin.helo, "app1.x.test");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
