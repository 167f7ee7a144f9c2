//! The outbound side of the IO room: the scheduler's intents carried out — connections
//! opened to next hops (binding the VMTA's source address), transactions started on them,
//! jobs handed to other shards, outcomes journaled, DSNs made — and each connection driven by
//! its machine (`crate::conn::outbound`), the body sent from the mapped segment.

use super::{cancel_sock, ud, Op, Shard, Sock};
use crate::admin::ShardStats;
use crate::backend::{Backend, Sub};
use crate::conn::outbound::{OutEvent, Outgoing};
use crate::conn::Want;
use crate::mailbox::{MsgRef, ShardMsg};
use crate::sys::sockaddr;
use crate::ControlRequest;
use sluice_engine::prepare::{for_transaction, Offered, Transaction};
use sluice_engine::queue::{AttemptInfo, Job};
use sluice_engine::route::Hop;
use sluice_engine::sched::{ConnId, ConnPlan, Intent, Message, QueueId};
use sluice_engine::smtp::client::{after_failure, AfterFailure, TlsMode, TxnParams};
use sluice_engine::smtp::proxy;
use sluice_engine::smtp::reply::Reply;
use sluice_spool::codec;
use std::time::Duration;

/// How long a host whose STARTTLS handshake failed gets plain text from opportunistic TLS.
pub(super) const TLS_FALLBACK_MS: u64 = 60 * 60 * 1000;
/// Hosts remembered so per shard (the expired ones go first when it is full).
pub(super) const TLS_FALLBACK_HOSTS_MAX: usize = 10_000;

/// RFC 5321 §4.5.3.2 suggests 5 minutes for replies other than the greeting's and the end
/// of data's (those two, the connect and each send of the body are the domain's
/// `smtp-greeting-timeout`, `smtp-data-termination-timeout`, `connect-timeout` and
/// `data-send-timeout`).
const OUT_REPLY_TIMEOUT_MS: u64 = 300_000;
/// An outbound connection with nothing to send waits this long for new work, then QUITs.
const OUT_IDLE_MS: u64 = 2_000;

const _: () = assert!(OUT_IDLE_MS < OUT_REPLY_TIMEOUT_MS);

pub(super) struct OutConn {
    pub sock: Sock,
    conn: ConnId,
    m: Outgoing,
    plan: Box<ConnPlan>,
    /// The hop being tried (`plan.hops` index + 1 once tried).
    hop_index: usize,
    /// Through proxies: the proxy to try next for this hop (0: the next hop, by the first).
    proxy_next: usize,
    /// The proxy (`plan.proxies` index) this attempt goes through.
    via: Option<usize>,
    addr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
    job: Option<Job<MsgRef>>,
    /// The job's message converted for this receiver (8-bit to quoted-printable).
    converted: Option<Vec<u8>>,
    /// A transaction pipelined behind the body going out (`pipeline_next`): the current one
    /// once the end of data is answered, given back untried if the session ends first.
    next: Option<Box<Pipelined>>,
    /// The body is out: the next reply is the end of data's (the longer timeout).
    awaiting_final: bool,
    /// Waiting for work (the scheduler said Idle).
    idle: bool,
    /// Why the last connect failed (the hop and the system's words), for the reply when no
    /// hop answers.
    connect_error: Option<String>,
    /// The body's rest, its end, and the commands pipelined behind it.
    iov: [libc::iovec; 4],
    msghdr: libc::msghdr,
    info: AttemptInfo,
}

impl<B: Backend> Shard<B> {
    /// One of the scheduler's intents.
    pub(super) fn carry_out(&mut self, intent: Intent<MsgRef>) {
        match intent {
            Intent::Resolve { domain, static_hosts } => {
                let req = ControlRequest::Resolve { shard: self.id, domain: domain.clone(), static_hosts };
                if self.shared.core.control.try_send(req).is_err() {
                    self.sched.resolve_later(&domain); // control plane busy: ask again on a tick
                }
            }
            Intent::Connect { conn, plan } => self.open(conn, plan),
            Intent::Start { conn, queue, job } => self.start(conn, queue, job),
            Intent::Idle { conn } => {
                if let Some(&slot) = self.out_slots.get(&conn) {
                    let now_ms = self.now.ms();
                    let o = self.outs.get_mut(slot);
                    o.idle = true;
                    o.sock.deadline_ms = now_ms + OUT_IDLE_MS;
                }
            }
            Intent::Quit { conn } => {
                if let Some(&slot) = self.out_slots.get(&conn) {
                    let o = self.outs.get_mut(slot);
                    o.idle = false;
                    o.m.quit();
                    self.out_drive(slot);
                }
            }
            Intent::Dispatch { shard, domain, vmta, job } => {
                self.outbox.push((shard, ShardMsg::Job { domain, vmta, job }))
            }
            Intent::Record(r) => self.record(*r),
            intent @ (Intent::Outcome { .. } | Intent::Dsn { .. }) => self.after_rows(intent),
        }
    }

    fn open(&mut self, conn: ConnId, plan: Box<ConnPlan>) {
        let o = OutConn {
            sock: Sock::new(-1),
            conn,
            m: self.outgoing(&plan),
            plan,
            hop_index: 0,
            proxy_next: 0,
            via: None,
            // SAFETY: zeroed storage is valid.
            addr: Box::new((unsafe { std::mem::zeroed() }, 0)),
            job: None,
            converted: None,
            next: None,
            awaiting_final: false,
            idle: false,
            connect_error: None,
            iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 4],
            // SAFETY: a zeroed msghdr is valid.
            msghdr: unsafe { std::mem::zeroed() },
            info: AttemptInfo::default(),
        };
        match self.outs.insert(o) {
            Some((slot, _)) => {
                self.out_slots.insert(conn, slot);
                self.connect_next(slot);
            }
            None => {
                tracing::error!(shard = self.id, "connection slots exhausted");
                self.sched.conn_closed(conn, None);
            }
        }
    }

    /// A session machine for the plan's destination.
    fn outgoing(&self, plan: &ConnPlan) -> Outgoing {
        let tls_setup = plan.hops.first().map(|hop| (self.shared.tls_client.clone(), server_name(hop)));
        let mut m = Outgoing::new(&plan.ehlo, plan.tls, tls_setup);
        m.client_mut().set_options(&plan.smtp);
        m.set_transcript(crate::conn::Transcript::new(plan.smtp.log, format!("out {}", plan.queue)));
        m
    }

    /// Connects to the next hop in the plan (or fails the connection when none is left).
    fn connect_next(&mut self, slot: u32) {
        if !crate::FENCE.holds() {
            return self.out_fail(slot, Reply::new(451, crate::Fence::WHY));
        }
        let (gen, now_ms) = (self.outs.gen(slot), self.now.ms());
        let o = self.outs.get_mut(slot);
        if o.sock.fd >= 0 {
            self.io.close(o.sock.fd); // the failed connect is complete
            o.sock.fd = -1;
        }
        // Through proxies, the same hop again by the next proxy when connecting to the one
        // before failed (PowerMTA's `use-proxy` failover); a new hop starts with the first.
        let proxies = o.plan.proxies.len();
        if o.proxy_next == 0 || o.proxy_next >= proxies {
            if o.hop_index >= o.plan.hops.len() {
                let last = o.connect_error.take().map(|e| format!(" (last: {e})")).unwrap_or_default();
                let reply = Reply::new(451, format!("4.4.1 no answer from any host for {}{last}", o.plan.queue));
                return self.out_fail(slot, reply);
            }
            o.hop_index += 1;
            o.proxy_next = 0;
        }
        let hop = o.plan.hops[o.hop_index - 1].clone();
        // `mx-connection-limit` / `ip-connection-limit`: a hop at its limit for this source
        // (taken by another connection since the plan was made) is passed over.
        let conn = o.conn;
        if !self.sched.hop_slot(conn, &hop) {
            let o = self.outs.get_mut(slot);
            o.proxy_next = 0;
            o.connect_error = Some(format!("{} ({}): at its connection limit", hop.host, hop.addr.ip()));
            return self.connect_next(slot);
        }
        let o = self.outs.get_mut(slot);
        o.via = (proxies > 0).then_some(o.proxy_next);
        o.proxy_next += usize::from(proxies > 0);
        o.info = attempt_info(&o.plan, &hop);
        o.m.set_server_name(server_name(&hop));
        // As Postfix's `smtp_tls_security_level = may`: a host whose TLS handshake failed
        // gets this try in plain text; `require-starttls` still insists.
        if o.plan.tls == TlsMode::Opportunistic && self.tls_failed.get(&hop.addr).is_some_and(|until| *until > now_ms) {
            o.m.without_tls();
        }
        // Directly from the VMTA's source address, or to the proxy from its local address.
        let (to, bind) = match o.via.map(|i| &o.plan.proxies[i]) {
            None => (hop.addr, o.plan.source_ip),
            Some(p) => match p.server_addr {
                Some(addr) => {
                    // A proxy after a failed one speaks with its own name.
                    o.m.client_mut().set_ehlo_name(&p.host_name);
                    (addr, p.local)
                }
                None => {
                    let reply = Reply::new(451, format!("4.4.1 proxy {} ({}) has no address", p.name, p.server));
                    return self.out_fail(slot, reply);
                }
            },
        };
        *o.addr = sockaddr(to);
        // With the VMTA's `smtp-source-host`: connect from that address.
        let fd = match self.io.tcp_socket(to, bind) {
            Ok(fd) => fd,
            Err(e) => {
                let why = match bind {
                    Some(ip) => format!("4.4.1 cannot bind source address {ip}: {e}"),
                    None => format!("4.4.1 cannot create socket: {e}"),
                };
                return self.out_fail(slot, Reply::new(451, why));
            }
        };
        let o = self.outs.get_mut(slot);
        o.sock.fd = fd;
        o.sock.op = Some(Op::OutConnect);
        o.sock.deadline_ms = now_ms + ms(o.plan.smtp.connect_timeout);
        let sub = Sub::Connect { fd, addr: &o.addr.0, len: o.addr.1 };
        self.submit(sub, ud(Op::OutConnect, gen, slot as u64));
    }

    pub(super) fn on_connect(&mut self, slot: u32, result: i32) {
        let o = self.outs.get_mut(slot);
        let timed_out = std::mem::take(&mut o.sock.cancelling);
        if result < 0 {
            let why = if timed_out {
                "no answer within connect-timeout".to_string()
            } else {
                std::io::Error::from_raw_os_error(-result).to_string()
            };
            let through = o.via.map(|i| format!(" through proxy {}", o.plan.proxies[i].name)).unwrap_or_default();
            tracing::debug!(shard = self.id, queue = %o.plan.queue, host = %o.info.destination_ip, %why, "connect failed{through}; trying the next host");
            o.connect_error = Some(format!("{} ({}){through}: {why}", o.info.mx_host, o.info.destination_ip));
            return self.connect_next(slot);
        }
        match o.via.map(|i| &o.plan.proxies[i]) {
            None => {
                o.info.source_ip = self.io.local_ip(o.sock.fd).map(|ip| ip.to_string()).unwrap_or_default();
                o.m.note(&format!(
                    "connected to {} ({}) from {}",
                    o.info.mx_host, o.info.destination_ip, o.info.source_ip
                ));
            }
            Some(p) => {
                // The proxy connects from its client address to the hop: the header asks it to.
                let hop = o.info.hop.expect("an attempt has its hop");
                let Some(header) = proxy::header(p.version, p.client, hop) else {
                    o.connect_error = Some(format!(
                        "{} ({}): proxy {} sends from {}, another address family",
                        o.info.mx_host, o.info.destination_ip, p.name, p.client
                    ));
                    return self.connect_next(slot);
                };
                o.info.source_ip = p.client.ip().to_string();
                let note = format!(
                    "connected to {} ({}) through proxy {} ({}, PROXY v{}) from {}",
                    o.info.mx_host, o.info.destination_ip, p.name, p.server, p.version, o.info.source_ip
                );
                o.m.note(&note);
                o.m.preface(&header);
            }
        }
        self.out_drive(slot);
    }

    /// A transaction for a ready connection.
    fn start(&mut self, conn: ConnId, queue: QueueId, job: Job<MsgRef>) {
        let Some(&slot) = self.out_slots.get(&conn) else {
            return self.sched.job_back(queue, job); // the connection went away meanwhile
        };
        let o = self.outs.get_mut(slot);
        o.idle = false;
        if !crate::FENCE.holds() {
            // This host may no longer own its spool: the job stays queued, the session ends.
            o.m.quit();
            self.sched.job_back(queue, job);
            return self.out_drive(slot);
        }
        o.sock.deadline_ms = u64::MAX;
        if self.begin_txn(slot, job, None) {
            self.out_drive(slot);
        }
    }

    /// The body is handed over: the connection's next job, if the scheduler has one for it
    /// now, starts behind it (its commands go in the body's write; RFC 2920 §3.1), so the
    /// next message waits for no round trip. Not when the host may no longer own its spool.
    fn pipeline_next(&mut self, slot: u32) {
        let o = self.outs.get_mut(slot);
        if o.next.is_some() || !o.m.can_pipeline_next() || !crate::FENCE.holds() {
            return;
        }
        let conn = o.conn;
        if let Some((queue, job)) = self.sched.pipeline_next(conn, self.now) {
            self.begin_txn(slot, job, Some(queue));
        }
    }

    /// The session ends before the transaction pipelined behind the body was answered: its
    /// job goes back to the front of its queue, untried (before the current one is settled,
    /// which then goes in front of it).
    fn give_back_next(&mut self, slot: u32) {
        if let Some(next) = self.outs.get_mut(slot).next.take() {
            let Pipelined { queue, job, .. } = *next;
            self.sched.job_back(queue, job);
        }
    }

    /// Hands `job` to the connection's client with the message as this receiver gets it
    /// (`sluice_engine::prepare::for_transaction`); refused (553 SMTPUTF8, 554
    /// `downgrade-8bit bounce`): false, and the scheduler has its outcome. `behind`: the
    /// job's queue, when it is pipelined behind the body going out.
    fn begin_txn(&mut self, slot: u32, job: Job<MsgRef>, behind: Option<QueueId>) -> bool {
        let o = self.outs.get_mut(slot);
        let data = job.msg.data();
        let origin = job.msg.origin();
        let caps = o.m.capabilities();
        let offered = Offered {
            smtputf8: caps.smtputf8,
            eight_bit_mime: caps.eight_bit_mime,
            bdat: o.m.client_mut().uses_bdat(),
        };
        let (domain, vmta) = o.plan.queue.split_once('/').unwrap_or((&o.plan.queue, ""));
        let source = self.shared.config.source_policy(job.msg.client_ip());
        let t = Transaction {
            keys: &self.shared.dkim,
            config: &self.shared.config,
            domain,
            vmta,
            sending_vmta: &o.plan.vmta,
            source,
            remove_header: &o.plan.smtp.remove_header,
            now_unix_ms: self.now.unix_ms,
        };
        let rcpts = job.rcpts.iter().map(|r| r.address.as_str());
        let converted = match for_transaction(&t, &job.mail_from, rcpts, data, origin.flags, offered) {
            Ok(converted) => converted,
            Err(reply) => {
                let (conn, info) = (o.conn, o.info.clone());
                let replies = vec![reply; job.rcpts.len()];
                // Behind a body, the connection is not free for more until that is answered.
                self.sched.txn_done(conn, job, &replies, info, behind.is_none(), self.now);
                return false;
            }
        };
        let bdat = offered.bdat;
        let size = converted.as_ref().map_or(job.size, |c| c.len() as u64);
        let rcpts: Vec<&str> = job.rcpts.iter().map(|r| r.address.as_str()).collect();
        let rcpt_dsn: Vec<(u8, &str)> = job.rcpts.iter().map(|r| job.msg.rcpt_dsn(r.index)).collect();
        let params = TxnParams {
            ret: match origin.flags {
                f if f & codec::flags::RET_FULL != 0 => Some("FULL"),
                f if f & codec::flags::RET_HDRS != 0 => Some("HDRS"),
                _ => None,
            },
            envid: origin.envid,
            smtputf8: origin.flags & codec::flags::SMTPUTF8 != 0,
            rcpt_dsn,
            bdat: bdat.then_some(size),
        };
        match behind {
            Some(queue) => {
                o.m.start_next(&job.mail_from, &rcpts, size, &params);
                o.next = Some(Box::new(Pipelined { queue, job, converted }));
            }
            None => {
                o.m.start_with(&job.mail_from, &rcpts, size, &params);
                o.job = Some(job);
                o.converted = converted;
            }
        }
        true
    }

    /// Feeds replies to the connection's machine, acts on its events, and submits its next
    /// operation.
    pub(super) fn out_drive(&mut self, slot: u32) {
        loop {
            let o = self.outs.get_mut(slot);
            if o.sock.op.is_some() {
                return;
            }
            // The receiver's replies are parsed in here: a panic fails this connection only.
            let advanced = match crate::guard::isolated(|| o.m.advance()) {
                Ok(event) => event,
                Err(why) => return self.out_panicked(slot, why),
            };
            let o = self.outs.get_mut(slot);
            match advanced {
                None => {}
                Some(OutEvent::Ready) => {
                    o.info.esmtp = o.m.capabilities().esmtp;
                    o.info.esmtp_keywords = o.m.capabilities().keywords.join(",");
                    o.info.dsn_offered = o.m.capabilities().dsn && !o.plan.smtp.ignore_dsn;
                    if let Some((protocol, cipher)) = o.m.tls_info() {
                        (o.info.tls_protocol, o.info.tls_cipher) = (protocol.clone(), cipher.clone());
                    }
                    let conn = o.conn;
                    self.sched.conn_ready(conn, self.now);
                    continue;
                }
                Some(OutEvent::SendBody) => {
                    let data = body_of(&o.converted, &o.job);
                    o.m.body(data);
                    o.awaiting_final = true;
                    self.pipeline_next(slot);
                }
                Some(OutEvent::Done(replies)) => {
                    let job = o.job.take().expect("a transaction had a job");
                    o.converted = None;
                    o.awaiting_final = false;
                    let (conn, info, ready) = (o.conn, o.info.clone(), o.m.want() == Want::Wait);
                    self.sched.txn_done(conn, job, &replies, info, ready, self.now);
                    let o = self.outs.get_mut(slot);
                    if o.next.is_some() && self.sched.takes_no_more(conn) {
                        // The reply just settled ends this connection's work (`skip-mx`,
                        // `disable-source-ip`, `max-errors-per-connection`): the session is cut,
                        // not finished, and the transaction behind goes back untried
                        // (`give_back_next`). Its DATA may have its 354 already: neither QUIT nor
                        // an end of data may follow, and the receiver drops an unfinished message.
                        return self.close_out(slot);
                    }
                    if let Some(next) = o.next.take() {
                        // The transaction behind is the current one now.
                        let Pipelined { job, converted, .. } = *next;
                        (o.job, o.converted) = (Some(job), converted);
                    }
                    continue;
                }
                Some(OutEvent::Failed(reply)) => {
                    let after = after_failure(&o.plan.smtp, o.m.greeted(), &reply);
                    // A 421 at a RCPT that defers: the recipients' own answers settle the
                    // transaction (a 550 bounces as itself); the session then ends as for any
                    // 421. (One that sends the mail to the next MX takes the whole job there.)
                    let partial = o.m.take_partial_replies().filter(|_| after == AfterFailure::Defer);
                    // (The job is taken only when there are replies to settle it with.)
                    if let Some(job) = partial.is_some().then(|| o.job.take()).flatten() {
                        let replies = partial.expect("checked");
                        (o.converted, o.awaiting_final) = (None, false);
                        let (conn, info) = (o.conn, o.info.clone());
                        self.sched.txn_done(conn, job, &replies, info, false, self.now);
                    }
                    return match after {
                        AfterFailure::Defer => self.out_fail(slot, reply),
                        AfterFailure::NextHop => self.out_next_hop(slot, reply),
                        AfterFailure::BounceQueue => self.out_refused(slot, reply),
                    };
                }
                Some(OutEvent::Closed) => return self.close_out(slot),
            }
            return self.out_next_op(slot);
        }
    }

    fn out_next_op(&mut self, slot: u32) {
        let gen = self.outs.gen(slot);
        let now_ms = self.now.ms();
        let o = self.outs.get_mut(slot);
        let fd = o.sock.fd;
        let (sub, op) = match o.m.want() {
            Want::Send => {
                let rest = o.m.send_buf();
                o.sock.op = Some(Op::OutSend);
                let timeout = if o.awaiting_final { ms(o.plan.smtp.data_send_timeout) } else { OUT_REPLY_TIMEOUT_MS };
                o.sock.deadline_ms = now_ms + timeout;
                (Sub::Send { fd, buf: rest.as_ptr(), len: rest.len() as u32 }, Op::OutSend)
            }
            Want::SendBody => {
                // What is left of the body (from the mapped segment, no copy) and ".\r\n".
                let data = body_of(&o.converted, &o.job);
                o.iov = o.m.body_rest(data).map(|p| libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() });
                o.msghdr.msg_iov = o.iov.as_mut_ptr();
                o.msghdr.msg_iovlen = o.iov.len();
                o.sock.op = Some(Op::OutSend);
                o.sock.deadline_ms = now_ms + ms(o.plan.smtp.data_send_timeout);
                (Sub::SendMsg { fd, msg: &o.msghdr }, Op::OutSend)
            }
            Want::Recv => {
                let timeout = if o.awaiting_final {
                    ms(o.plan.smtp.data_termination_timeout)
                } else if o.m.awaiting_greeting() {
                    ms(o.plan.smtp.greeting_timeout)
                } else {
                    OUT_REPLY_TIMEOUT_MS
                };
                o.sock.deadline_ms = now_ms + timeout;
                let buf = o.m.recv_buf();
                let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u32);
                o.sock.op = Some(Op::OutRecv);
                (Sub::Recv { fd, buf: ptr, len }, Op::OutRecv)
            }
            Want::Wait | Want::Close => return,
        };
        self.submit(sub, ud(op, gen, slot as u64));
    }

    pub(super) fn on_out_recv(&mut self, slot: u32, result: i32) {
        let o = self.outs.get_mut(slot);
        let cancelled = std::mem::take(&mut o.sock.cancelling);
        if result > 0 {
            o.m.received(result as usize);
            return self.out_drive(slot);
        }
        if cancelled && o.awaiting_final && o.plan.smtp.assume_delivery_upon_data_termination_timeout {
            if let Some(replies) = o.m.assume_delivered() {
                // The session is spent either way: the outcome is the assumed delivery.
                let job = o.job.take().expect("a transaction had a job");
                (o.converted, o.awaiting_final) = (None, false);
                let (conn, info) = (o.conn, o.info.clone());
                self.sched.txn_done(conn, job, &replies, info, false, self.now);
                return self.close_out(slot);
            }
        }
        let after_data = o.awaiting_final;
        let reason = match (cancelled, after_data) {
            (true, true) => "4.4.2 timeout waiting for the server's reply to the end of data",
            (false, true) => "4.4.2 connection closed by the server before its reply to the end of data",
            (true, false) => "4.4.2 timeout waiting for the server",
            (false, false) if result < 0 => {
                let why = std::io::Error::from_raw_os_error(-result).to_string();
                return self.out_fail(slot, Reply::new(451, format!("4.4.2 connection to the server failed: {why}")));
            }
            (false, false) => "4.4.2 connection closed by the server",
        };
        if after_data {
            // As Postfix says it: the receiver may have taken the message without a word.
            let (queue, host) = (o.plan.queue.clone(), format!("{} ({})", o.info.mx_host, o.info.destination_ip));
            tracing::warn!(shard = self.id, %queue, %host, "{reason}: the message may be delivered more than once");
        }
        self.out_fail(slot, Reply::new(451, reason));
    }

    pub(super) fn on_out_send(&mut self, slot: u32, result: i32) {
        let o = self.outs.get_mut(slot);
        let timed_out = std::mem::take(&mut o.sock.cancelling);
        if result <= 0 {
            // A receiver that took nothing for the whole reply timeout: a stuck send.
            let reason =
                if timed_out { "4.4.2 timeout sending to the server" } else { "4.4.2 connection lost while sending" };
            return self.out_fail(slot, Reply::new(451, reason));
        }
        if o.m.want() == Want::SendBody {
            o.m.body_sent(result as usize);
        } else {
            o.m.sent(result as usize);
        }
        self.out_drive(slot);
    }

    /// Handling the receiver's replies panicked: logged with the peer and counted, and the
    /// connection fails as if the receiver had gone (its job is deferred); the shard goes on.
    fn out_panicked(&mut self, slot: u32, why: String) {
        ShardStats::add(&self.stats.connection_panics, 1);
        let o = self.outs.get_mut(slot);
        let peer = o.plan.hops.get(o.hop_index.saturating_sub(1)).map(|h| h.addr.to_string()).unwrap_or_default();
        tracing::error!(
            shard = self.id,
            %peer,
            panic = %why,
            "handling a receiver's reply panicked: that connection is closed, its messages deferred"
        );
        self.out_fail(slot, Reply::new(451, "4.3.0 internal error handling the server's reply"));
    }

    /// A session that failed in its TLS handshake: the reply says so, and with opportunistic
    /// STARTTLS the host's next tries (for `TLS_FALLBACK_MS`) go without TLS.
    fn tls_failure(&mut self, slot: u32, reply: Reply) -> Reply {
        let now_ms = self.now.ms();
        let o = self.outs.get_mut(slot);
        if !o.m.tls_handshake_failed() {
            return reply;
        }
        let host = format!("{} ({})", o.info.mx_host, o.info.destination_ip);
        let opportunistic = o.plan.tls == TlsMode::Opportunistic;
        let addr = o.plan.hops.get(o.hop_index.wrapping_sub(1)).map(|h| h.addr);
        let why = reply.text.split_once(' ').map_or(reply.text.as_str(), |(_, rest)| rest).to_string();
        let next = if opportunistic { "; the next try goes without TLS" } else { " (require-starttls)" };
        tracing::info!(shard = self.id, %host, reason = %why, "STARTTLS handshake failed{next}");
        if let (true, Some(addr)) = (opportunistic, addr) {
            if self.tls_failed.len() >= TLS_FALLBACK_HOSTS_MAX {
                self.tls_failed.retain(|_, until| *until > now_ms);
            }
            if self.tls_failed.len() < TLS_FALLBACK_HOSTS_MAX {
                self.tls_failed.insert(addr, now_ms + TLS_FALLBACK_MS);
            }
        }
        Reply::new(451, format!("4.7.5 TLS handshake with {host} failed: {why}{next}"))
    }

    /// The connection failed: the scheduler hears why (its job is deferred), and it closes.
    fn out_fail(&mut self, slot: u32, reply: Reply) {
        let gen = self.outs.gen(slot);
        let o = self.outs.get_mut(slot);
        if o.sock.op.is_some() {
            // The operation in flight fails first and brings us back here.
            return cancel_sock(&mut self.io, &mut o.sock, gen, slot);
        }
        self.give_back_next(slot);
        let reply = self.tls_failure(slot, reply);
        let o = self.outs.get_mut(slot);
        let (conn, job, ever_ready) = (o.conn, o.job.take(), o.m.ever_ready());
        let info = o.info.clone();
        self.sched.conn_failed(conn, job, reply, info, ever_ready, self.now);
        self.free_out(slot);
    }

    /// The session failed in a way that sends the connection to its next MX: the
    /// transaction goes back to its queue and a fresh session starts with the next hop (or
    /// the connection fails with `reply` when none is left).
    fn out_next_hop(&mut self, slot: u32, reply: Reply) {
        self.give_back_next(slot);
        let reply = self.tls_failure(slot, reply);
        let o = self.outs.get_mut(slot);
        if o.hop_index >= o.plan.hops.len() {
            return self.out_fail(slot, reply);
        }
        let plan = o.plan.clone();
        let m = self.outgoing(&plan);
        let o = self.outs.get_mut(slot);
        tracing::debug!(shard = self.id, queue = %o.plan.queue, reply = %reply.line(), "trying the next MX");
        (o.m, o.converted, o.awaiting_final, o.idle) = (m, None, false, false);
        let (conn, job) = (o.conn, o.job.take());
        o.proxy_next = 0; // the session failed, not the connect: the next hop, by the first proxy
        self.sched.conn_moving(conn, job, &reply, self.now);
        self.connect_next(slot);
    }

    /// A 5xx greeting with `bounce-upon-5xx-greeting`: the queue's mail bounces.
    fn out_refused(&mut self, slot: u32, reply: Reply) {
        self.give_back_next(slot);
        let o = self.outs.get_mut(slot);
        let (conn, job, info) = (o.conn, o.job.take(), o.info.clone());
        self.sched.conn_refused(conn, job, reply, info, self.now);
        self.free_out(slot);
    }

    /// The session ended cleanly (QUIT answered).
    fn close_out(&mut self, slot: u32) {
        self.give_back_next(slot);
        let o = self.outs.get_mut(slot);
        let (conn, job) = (o.conn, o.job.take());
        self.sched.conn_closed(conn, job);
        self.free_out(slot);
    }

    fn free_out(&mut self, slot: u32) {
        let o = self.outs.remove(slot);
        o.m.note("closed");
        assert!(o.sock.op.is_none(), "closing a connection with an operation in flight");
        if o.sock.fd >= 0 {
            self.io.close(o.sock.fd);
        }
        self.out_slots.remove(&o.conn);
    }

    /// Idle connections past their wait say QUIT; others past their deadline are cancelled.
    pub(super) fn out_deadlines(&mut self, now_ms: u64) {
        for slot in self.outs.slots() {
            let gen = self.outs.gen(slot);
            let o = self.outs.get_mut(slot);
            if now_ms < o.sock.deadline_ms {
                continue;
            }
            o.sock.deadline_ms = u64::MAX;
            if o.idle {
                o.idle = false;
                let conn = o.conn;
                self.sched.conn_idle_timeout(conn);
            } else {
                cancel_sock(&mut self.io, &mut o.sock, gen, slot);
            }
        }
    }

    /// Shutdown: idle connections close at once, busy ones are cancelled.
    pub(super) fn out_shutdown(&mut self) {
        for slot in self.outs.slots() {
            let gen = self.outs.gen(slot);
            let o = self.outs.get_mut(slot);
            if o.sock.op.is_some() {
                cancel_sock(&mut self.io, &mut o.sock, gen, slot);
            } else if o.job.is_none() {
                self.close_out(slot);
            }
        }
    }
}

/// A transaction pipelined behind a body (`OutConn::next`).
struct Pipelined {
    queue: QueueId,
    job: Job<MsgRef>,
    converted: Option<Vec<u8>>,
}

/// What an attempt's accounting records say of it, for a hop about to be tried.
fn attempt_info(plan: &ConnPlan, hop: &Hop) -> AttemptInfo {
    AttemptInfo {
        source_ip: String::new(),
        destination_ip: hop.addr.ip().to_string(),
        mx_host: hop.host.clone(),
        esmtp: false,
        esmtp_keywords: String::new(),
        vmta: plan.vmta.clone(),
        vmta_pool: plan.pool.clone(),
        other_hop: false,
        other_source: false,
        tls_protocol: String::new(),
        tls_cipher: String::new(),
        hop: Some(hop.addr),
        dsn_offered: false,
    }
}

/// The name a next hop is known by for TLS (its host name, or its address).
fn server_name(hop: &Hop) -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from(hop.host.clone())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(hop.addr.ip().into()))
}

/// The body the connection's transaction sends: the spooled message, or its conversion.
fn body_of<'a>(converted: &'a Option<Vec<u8>>, job: &'a Option<Job<MsgRef>>) -> &'a [u8] {
    match converted {
        Some(c) => c,
        None => job.as_ref().expect("a body belongs to a job").msg.data(),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}
