//! The inbound side of the IO room: accepted sockets driven by their connection machines
//! (`crate::conn::inbound`), and what happens to a complete message before the spool takes it
//! — VMTA and job, feedback and bounce reports, inbound authentication checks, DKIM.

use super::spool_io::Spooling;
use super::{cancel_sock, ud, Op, Shard, Sock};
use crate::admin::ShardStats;
use crate::backend::{Backend, Sub};
use crate::conn::inbound::{InEvent, Incoming};
use crate::conn::Want;
use crate::faults::PanicAt;
use crate::mailbox::ShardMsg;
use crate::sys::ip_of;
use crate::{ControlRequest, Shared};
use sluice_engine::acct::Record;
use sluice_engine::prepare::{self, Prepared, Way};
use sluice_engine::smtp::server::{Message, Session, SessionPolicy};
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

/// An untrusted address whose sessions end in too many protocol errors this many times within
/// the window is refused (421 at connect) for the rest of it.
const SOURCE_ERROR_SESSIONS_MAX: u32 = 3;
const SOURCE_ERROR_WINDOW_S: u64 = 10 * 60;
/// A message's whole DATA phase may last this many `smtp-data-timeout`s (each read gets one).
const DATA_PHASE_TIMEOUTS: u64 = 3;
/// The longest a session waits for the control plane's answer to its checks or report.
const ANSWER_WAIT_MS_MAX: u64 = 5 * 60 * 1000;

pub(super) struct InConn {
    pub sock: Sock,
    pub m: Incoming,
    pub client_ip: IpAddr,
    /// The address it came in on (`getsockname` once, at accept).
    pub local_ip: String,
    /// The message on its way to disk (its write buffers live here until the spool answers).
    pub store: Option<Box<Spooling>>,
    /// A message out for authentication checks (its data is with the control plane).
    verifying: Option<Box<(Message, String)>>,
    /// A complaint report whose suppression entry is being written: the reply waits for it.
    reporting: bool,
    /// While in DATA: when the whole DATA phase must be over (`DATA_PHASE_TIMEOUTS`).
    data_until_ms: Option<u64>,
    /// The listener it came in on (index into `Config::listeners`; its `source=` applies).
    listener: usize,
    /// Its source's `smtp-command-timeout` and `smtp-data-timeout` (the global ones else).
    command_timeout_ms: u64,
    data_timeout_ms: u64,
    /// A mail-merge transaction's messages: still to be made durable, failed, the first id.
    merge_pending: usize,
    merge_failed: usize,
    merge_first: Option<String>,
    /// The last transaction's origin (a connection's messages share one: copied, not
    /// formatted again, while its HELO and AUTH user stay).
    origin: Option<Origin>,
}

impl<B: Backend> Shard<B> {
    pub(super) fn arm_accept(&mut self, i: usize) {
        if self.stopping_since_ms.is_some() {
            return;
        }
        let (storage, len) = &mut self.accept_addrs[i];
        *len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let sub = Sub::Accept { fd: self.listeners[i], addr: storage, len };
        self.submit(sub, ud(Op::Accept, 0, i as u64));
    }

    pub(super) fn on_accept(&mut self, i: usize, result: i32) {
        if self.stopping_since_ms.is_some() {
            if result >= 0 {
                self.io.close(result); // accepted after shutdown began
            }
            return;
        }
        if result < 0 {
            if result != -libc::ECANCELED {
                tracing::warn!(shard = self.id, errno = -result, "accept failed; retrying on the next tick");
            }
            self.accept_rearm.push(i);
            return;
        }
        self.arm_accept(i);
        let fd = result;
        let ip = ip_of(&self.accept_addrs[i].0);
        // A traffic class's connections are received on its shards only, and other traffic
        // never on them: a connection accepted on the wrong shard is handed over.
        if let Some(to) = self.receiving_shard(ip, i) {
            self.outbox.push((to, ShardMsg::Accepted { fd, ip, listener: i }));
            return;
        }
        self.take_in(fd, ip, i);
    }

    /// The shard that must receive a connection from `ip` on listener `listener`, when it is
    /// not this one (its source's `traffic-class`).
    fn receiving_shard(&mut self, ip: IpAddr, listener: usize) -> Option<u32> {
        let sets = &self.shared.core.sets;
        if sets.classes.is_empty() {
            return None;
        }
        let config = &self.shared.config;
        let policy = config.policy_for(ip, &listener_source(config, listener));
        let set = sets.of(policy.traffic_class.as_deref());
        if set.contains(&self.id) {
            return None;
        }
        self.handed_over += 1;
        Some(set.start + (self.handed_over % set.len() as u64) as u32)
    }

    /// A connection another shard accepted for this one's traffic class.
    pub(super) fn on_handed_over(&mut self, fd: RawFd, ip: IpAddr, listener: usize) {
        if self.stopping_since_ms.is_some() {
            return self.io.close(fd);
        }
        self.take_in(fd, ip, listener);
    }

    /// Starts the session of a connection accepted from `ip` on listener `i`.
    fn take_in(&mut self, fd: RawFd, ip: IpAddr, i: usize) {
        let config = self.shared.config.clone();
        let immediate_tls = config.listeners.get(i).is_some_and(|l| l.immediate_tls);
        let mut session = self.new_session(ip, i, immediate_tls);
        let count = self.shared.core.inbound_connections.fetch_add(1, Ordering::SeqCst);
        let policy = config.policy_for(ip, &listener_source(&config, i));
        if count >= config.total_max_smtp_in {
            session.too_busy();
        } else if !policy.always_allow_relaying && self.erring_source(ip) {
            session.refuse_erring_source();
        }
        self.io.accepted(fd);
        // Where it came in (accounting's `dlvDestinationIp` of its `r` rows): asked once.
        let local_ip = self.io.local_ip(fd).map(|ip| ip.to_string()).unwrap_or_default();
        let tls = self.shared.tls.clone();
        let transcript = crate::conn::Transcript::new(policy.log, format!("in {ip}"));
        let m = match Incoming::new(session, tls, immediate_tls, transcript) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(shard = self.id, error = %e, "cannot start TLS");
                self.io.close(fd);
                self.shared.core.inbound_connections.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        };
        let conn = InConn {
            sock: Sock::new(fd),
            m,
            client_ip: ip,
            local_ip,
            store: None,
            verifying: None,
            reporting: false,
            data_until_ms: None,
            listener: i,
            command_timeout_ms: policy.smtp_command_timeout.unwrap_or(config.smtp_command_timeout).as_millis() as u64,
            data_timeout_ms: policy.smtp_data_timeout.unwrap_or(config.smtp_data_timeout).as_millis() as u64,
            merge_pending: 0,
            merge_failed: 0,
            merge_first: None,
            origin: None,
        };
        match self.ins.insert(conn) {
            Some((slot, _)) => self.in_drive(slot),
            None => {
                tracing::error!(shard = self.id, "connection slots exhausted");
                self.shared.core.inbound_connections.fetch_sub(1, Ordering::SeqCst);
                self.io.close(fd);
            }
        }
    }

    /// A session for a client at `ip` on listener `listener`, as its `<source>` says.
    fn new_session(&mut self, ip: IpAddr, listener: usize, immediate_tls: bool) -> Session {
        let (id, number) = self.next_number();
        let session_id = (id as u64) << 48 | number;
        let shared = &self.shared;
        let policy = shared.config.policy_for(ip, &listener_source(&shared.config, listener));
        let auth = (policy.allow_auth && !shared.users.is_empty()).then(|| shared.users.clone());
        let starttls = shared.tls.is_some() && policy.allow_starttls && !immediate_tls;
        let auth_blocked = auth.is_some() && auth_failures_over(shared, ip, policy.max_auth_failure_rate, 0, self.now);
        let policy = SessionPolicy {
            host_name: shared.config.host_name.clone(),
            relay_allowed: policy.always_allow_relaying,
            smtp_service: policy.smtp_service,
            max_message_size: policy.max_message_size,
            max_rcpt_per_message: policy.max_rcpt_per_message,
            max_message_hops: policy.max_message_hops,
            dsn_return_default: policy.dsn_return_default,
            too_many_rcpts_fails_message: policy.too_many_rcpts_fails_message,
            allow_mailmerge: policy.allow_mailmerge,
            add_received_header: policy.add_received_header,
            hide_message_source: policy.hide_message_source,
            starttls,
            auth,
            require_auth: policy.require_auth,
            auth_needs_tls: policy.require_starttls_before_auth,
            auth_blocked,
            auth_failures_max: policy.max_auth_failure_rate.count,
            plain_auth_in_clear: policy.allow_unencrypted_plain_auth,
            relay_to: shared.config.relay_to.clone(),
            spool_closed: shared.config.spool_deliver_only,
            smtputf8: policy.allow_smtputf8,
            chunking: policy.allow_chunking,
            restrictions: policy.restrictions.clone(),
            suppression: policy.suppression_lists.iter().filter_map(|n| shared.lists.get(n).cloned()).collect(),
            local: [&shared.feedback, &shared.bounces].into_iter().flatten().map(|p| p.addresses.clone()).collect(),
            bare_lf: policy.bare_lf,
            long_lines: policy.long_lines,
        };
        Session::new(policy, ip, session_id)
    }

    /// Whether `ip` ended `SOURCE_ERROR_SESSIONS_MAX` sessions with protocol errors within
    /// `SOURCE_ERROR_WINDOW_S` (on any shard).
    fn erring_source(&self, ip: IpAddr) -> bool {
        let now_s = self.now.ms() / 1000;
        self.shared.core.error_sessions.get(ip, now_s, SOURCE_ERROR_WINDOW_S) >= SOURCE_ERROR_SESSIONS_MAX
    }

    pub(super) fn on_in_recv(&mut self, slot: u32, result: i32) {
        let stopping = self.stopping_since_ms.is_some();
        let c = self.ins.get_mut(slot);
        let cancelled = std::mem::take(&mut c.sock.cancelling);
        if result > 0 {
            c.m.received(result as usize);
            return self.in_drive(slot);
        }
        if result == -libc::ECANCELED || cancelled {
            // Our own cancel: an idle timeout or shutdown. Say why, then close.
            if stopping {
                c.m.shutdown();
            } else {
                c.m.timed_out();
            }
            return self.in_drive(slot);
        }
        // The client went away; anything not yet acknowledged is not ours to keep.
        if c.m.session().is_in_data() || c.store.is_some() || c.verifying.is_some() {
            let peer = c.client_ip;
            let why = if result < 0 { std::io::Error::from_raw_os_error(-result).to_string() } else { "closed".into() };
            self.log_inbound(peer, &format!("client gone in the middle of its message ({why}); nothing acknowledged"));
        }
        self.close_in(slot);
    }

    pub(super) fn on_in_send(&mut self, slot: u32, result: i32) {
        let c = self.ins.get_mut(slot);
        c.sock.cancelling = false;
        if result <= 0 {
            return self.close_in(slot);
        }
        c.m.sent(result as usize);
        self.in_drive(slot);
    }

    /// Advances a session as far as its input allows, then submits its next operation. A
    /// panic while the input is handled ends this connection only (`in_panicked`).
    pub(super) fn in_drive(&mut self, slot: u32) {
        let gen = self.ins.gen(slot);
        let Some(c) = self.ins.get_gen(slot, gen) else { return }; // closed meanwhile
        if c.sock.op.is_some() {
            return;
        }
        let fault = self.faults.panic_for(c.m.pending_input());
        if fault == Some(PanicAt::Shard) {
            panic!("fault injected (SLUICE_FAULTS=shard-panic): a panic outside any connection's handling");
        }
        let handled = crate::guard::isolated(|| {
            if fault == Some(PanicAt::Connection) {
                panic!("fault injected (SLUICE_FAULTS=conn-panic): a panic in a connection's handling");
            }
            self.in_advance(slot)
        });
        if let Err(why) = handled {
            self.in_panicked(slot, gen, why);
        }
        if let Some(c) = self.ins.get_gen(slot, gen) {
            let (peer, refusals) = (c.client_ip, c.m.take_refusals());
            for reply in refusals {
                self.log_inbound(peer, &reply);
            }
            self.in_next_op(slot);
        }
    }

    /// One info line for a refusal or failure on the receiving side (the reply as the client
    /// got it), within the shard's budget for such lines.
    fn log_inbound(&mut self, peer: IpAddr, what: &str) {
        if self.in_log_limit.allow(self.now.ms()) {
            tracing::info!(shard = self.id, %peer, reply = %what, "inbound refused");
        }
    }

    /// Handling a connection's input panicked: the connection gets 421 and closes (its
    /// message, if any, was never acknowledged); the shard goes on. Logged with the peer and
    /// counted (`connection_panics`). A panic after the spool took the message is not this
    /// connection's alone: it goes on to end the process.
    fn in_panicked(&mut self, slot: u32, gen: u16, why: String) {
        ShardStats::add(&self.stats.connection_panics, 1);
        let Some(c) = self.ins.get_gen(slot, gen) else { return };
        tracing::error!(
            shard = self.id,
            peer = %c.client_ip,
            panic = %why,
            "handling a client's input panicked: that connection is closed (421), the shard goes on"
        );
        if c.store.is_some() {
            std::panic::resume_unwind(Box::new(format!("{why} (with a message in the spool's hands)")));
        }
        c.verifying = None;
        c.reporting = false;
        if crate::guard::isolated(|| c.m.fail()).is_err() {
            // Not even the 421 could be written (a broken TLS state): close without it.
            self.close_in(slot);
        }
    }

    /// The session's part of `in_drive`: commands, data, a complete message.
    fn in_advance(&mut self, slot: u32) {
        let now = self.now;
        let c = self.ins.get_mut(slot);
        let event = c.m.advance(now.unix_ms);
        let failures = c.m.session_mut().take_auth_failures();
        if failures > 0 {
            let ip = c.client_ip;
            let rate = self.shared.config.source_policy(ip).max_auth_failure_rate;
            if auth_failures_over(&self.shared, ip, rate, failures, now) {
                self.ins.get_mut(slot).m.session_mut().block_auth();
            }
        }
        if event == Some(InEvent::Message) {
            // Stores the message, or refuses it (then the reply is in the session's output).
            self.on_message(slot);
        }
    }

    /// The socket operation the session wants next.
    fn in_next_op(&mut self, slot: u32) {
        let gen = self.ins.gen(slot);
        let now_ms = self.now.ms();
        let config = self.shared.config.clone();
        let c = self.ins.get_mut(slot);
        let (sub, op) = match c.m.want() {
            Want::Send => {
                let rest = c.m.send_buf();
                c.sock.op = Some(Op::InSend);
                (Sub::Send { fd: c.sock.fd, buf: rest.as_ptr(), len: rest.len() as u32 }, Op::InSend)
            }
            Want::Wait | Want::SendBody => {
                // The spool always answers; the control plane's answer to checks or a report
                // can be lost (a full mailbox): then the client gets 451 in time, not silence.
                if c.verifying.is_some() || c.reporting {
                    c.sock.deadline_ms = now_ms + answer_wait_ms(&config);
                }
                return;
            }
            Want::Close => return self.close_in(slot),
            Want::Recv => {
                let in_data = c.m.session().is_in_data();
                let mut timeout_ms = if in_data { c.data_timeout_ms } else { c.command_timeout_ms };
                // The whole DATA phase is bounded too, not only each read: a client trickling
                // its message a byte per read cannot hold the session for ever.
                if in_data {
                    let until = *c.data_until_ms.get_or_insert(now_ms + timeout_ms * DATA_PHASE_TIMEOUTS);
                    timeout_ms = timeout_ms.min(until.saturating_sub(now_ms).max(1));
                } else {
                    c.data_until_ms = None;
                }
                // A partial line waiting for its end keeps the deadline it had: a client
                // trickling a command byte by byte (slowloris) still has to finish it in time.
                let partial = c.m.has_partial_input() && c.sock.deadline_ms != u64::MAX && c.sock.deadline_ms > now_ms;
                if !partial {
                    c.sock.deadline_ms = now_ms + timeout_ms;
                }
                let buf = c.m.recv_buf();
                let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u32);
                c.sock.op = Some(Op::InRecv);
                (Sub::Recv { fd: c.sock.fd, buf: ptr, len }, Op::InRecv)
            }
        };
        self.submit(sub, ud(op, gen, slot as u64));
    }

    pub(super) fn close_in(&mut self, slot: u32) {
        let c = self.ins.remove(slot);
        assert!(c.sock.op.is_none(), "closing a connection with an operation in flight");
        let fd = c.sock.fd;
        self.io.close(fd);
        self.shared.core.inbound_connections.fetch_sub(1, Ordering::SeqCst);
        if c.m.session().closed_for_errors() {
            let counts = &self.shared.core.error_sessions;
            if counts.add(c.client_ip, 1, self.now.ms() / 1000, SOURCE_ERROR_WINDOW_S) == SOURCE_ERROR_SESSIONS_MAX {
                tracing::warn!(shard = self.id, ip = %c.client_ip, "address refused for a while: too many sessions ended in protocol errors");
            }
        }
    }

    /// Idle sessions past their deadline are cancelled (then told 421 and closed); a session
    /// whose checks or report never got an answer is told 451 and goes on.
    pub(super) fn in_deadlines(&mut self, now_ms: u64) {
        for slot in self.ins.slots() {
            let gen = self.ins.gen(slot);
            let c = self.ins.get_mut(slot);
            if now_ms < c.sock.deadline_ms {
                continue;
            }
            c.sock.deadline_ms = u64::MAX;
            if c.sock.op.is_none() && (c.verifying.is_some() || c.reporting) {
                tracing::warn!(shard = self.id, peer = %c.client_ip, "no answer from the message checks in time: 451");
                c.verifying = None;
                c.reporting = false;
                c.m.message_refused("451 4.3.0 The message checks did not answer in time, try again later");
                self.in_drive(slot);
                continue;
            }
            cancel_sock(&mut self.io, &mut c.sock, gen, slot);
        }
    }

    /// Sessions between commands get 421; sessions mid-message may finish.
    pub(super) fn in_shutdown(&mut self) {
        for slot in self.ins.slots() {
            let gen = self.ins.gen(slot);
            let c = self.ins.get_mut(slot);
            let between = c.store.is_none() && !c.m.session().is_in_data() && c.sock.op == Some(Op::InRecv);
            if between {
                cancel_sock(&mut self.io, &mut c.sock, gen, slot);
            }
        }
    }

    // ---- A complete message -------------------------------------------------------------

    /// A complete message: its VMTA and job, then reports taken out, inbound checks asked
    /// for, or straight to signing and the spool.
    fn on_message(&mut self, slot: u32) {
        let now = self.now;
        let shared = self.shared.clone();
        let config = &shared.config;
        let c = self.ins.get_mut(slot);
        let mut m = c.m.session_mut().take_message();
        // An authenticated session takes `{auth}` and its user's named source on top.
        let mut named = listener_source(config, c.listener);
        if let Some(user) = m.auth_user.as_deref().and_then(|u| shared.users.get(u)) {
            named.push("{auth}");
            named.push(&user.source);
        }
        let policy = config.policy_for(c.client_ip, &named);
        let policy = &*policy;
        if m.merge.is_some() {
            return self.store_merge(slot, m, policy);
        }
        let number = self.next_number();
        let prepared = {
            let restrictions = self.ins.get_mut(slot).m.session().restrictions();
            let way = Way { vmta: None, restrictions, ours_first: policy.add_received_header, number, reports: true };
            prepare::prepare(&shared.world(), policy, &mut m, &way, now.unix_ms)
        };
        let Prepared { vmta, records, suppress: suppress_add } = match prepared {
            Ok(p) => p,
            Err(reply) => return self.ins.get_mut(slot).m.message_refused(&reply),
        };
        let mut for_later = false;
        let reporter = self.ins.get_mut(slot).client_ip.to_string();
        for mut r in records {
            if r.kind == sluice_engine::acct::Kind::Feedback {
                r.rep_source_ip.clone_from(&reporter); // `repSourceIp`: who handed us the report
            }
            self.record(r);
        }
        // The report's reply waits for the first suppression entry (the others follow it).
        let mut waits = m.recipients.is_empty();
        for add in suppress_add {
            if self.suppress_complainer(slot, add, std::mem::take(&mut waits)) {
                waits = false;
                for_later = true;
            }
        }
        if for_later {
            return;
        }
        let c = self.ins.get_mut(slot);
        if m.recipients.is_empty() {
            return c.m.message_stored(true, "report");
        }
        if policy.checks_inbound() {
            return self.verify(slot, m, vmta, policy);
        }
        self.sign_and_spool(slot, m, vmta, String::new());
    }

    /// A mail-merge transaction (`XMRG` ... `XPRT n LAST`): a message for each recipient, its
    /// parts and values filled in, routed (its `*vmta`, else as any message), signed, and
    /// written as local messages; the reply waits until every one is durable.
    fn store_merge(&mut self, slot: u32, mut m: Message, policy: &sluice_config::SourcePolicy) {
        let shared = self.shared.clone();
        let config = &shared.config;
        let world = shared.world();
        let now = self.now.unix_ms;
        let merge = m.merge.take().expect("a mail-merge message");
        let date = sluice_engine::time::rfc5322_date(now);
        // Where the transaction came from: the same for every recipient's message.
        let origin = Origin::of(self.ins.get_mut(slot), &m.helo, m.auth_user.as_deref());
        let restrictions = self.ins.get_mut(slot).m.session().restrictions().clone();
        let mut stores = Vec::with_capacity(m.recipients.len());
        for (i, rcpt) in m.recipients.iter().enumerate() {
            let p = match merge.render(i, rcpt, &m.mail_from, &date, config.mailmerge_expands_undefined) {
                Ok(p) => p,
                Err(why) => return self.ins.get_mut(slot).m.message_refused(&format!("554 5.6.0 Mail merge: {why}")),
            };
            let mut one = Message {
                mail_from: p.mail_from.unwrap_or_else(|| m.mail_from.clone()),
                recipients: vec![rcpt.clone()],
                data: p.data,
                job_id: p.job_id.unwrap_or_else(|| m.job_id.clone()),
                envid: p.envid.unwrap_or_else(|| m.envid.clone()),
                flags: m.flags,
                ..Message::default()
            };
            let way = Way {
                vmta: p.vmta.as_deref(),
                restrictions: &restrictions,
                ours_first: policy.add_received_header,
                number: self.next_number(),
                reports: false,
            };
            let vmta = match prepare::prepare(&world, policy, &mut one, &way, now) {
                Ok(prepared) => prepared.vmta,
                Err(reply) => return self.ins.get_mut(slot).m.message_refused(&format!("{reply} (for {rcpt})")),
            };
            self.sign(&one.recipients, &vmta, &mut one.data);
            let mut store = Spooling::boxed(one.data, one.mail_from, one.recipients, now, vmta);
            origin.clone().into_store(&mut store);
            store.job_id = one.job_id;
            store.envid = one.envid;
            store.flags = one.flags;
            stores.push(store);
        }
        let gen = self.ins.gen(slot);
        let c = self.ins.get_mut(slot);
        (c.merge_pending, c.merge_failed, c.merge_first) = (stores.len(), 0, None);
        let client_ip = c.client_ip;
        for store in stores {
            self.write_merge_message(store, client_ip, slot, gen);
        }
    }

    /// One mail-merge message is durable (`id`) or could not be stored; the last one answers
    /// the client: 250 when all are on disk (never before), else 451 saying how many are.
    pub(super) fn merge_spooled(&mut self, slot: u32, gen: u16, id: Option<String>) {
        let Some(c) = self.ins.get_gen(slot, gen) else { return }; // the client left meanwhile
        if c.merge_pending == 0 {
            return;
        }
        c.merge_pending -= 1;
        match id {
            Some(id) => {
                c.merge_first.get_or_insert(id);
            }
            None => c.merge_failed += 1,
        }
        if c.merge_pending > 0 {
            return;
        }
        match (c.merge_failed, c.merge_first.take()) {
            (0, Some(first)) => c.m.message_stored(true, &first),
            (0, None) => c.m.message_stored(true, "mail-merge"),
            (failed, _) => c.m.message_refused(&format!(
                "451 4.3.1 {failed} of the mail-merge messages could not be stored (disk full or failing); the others are queued"
            )),
        }
        self.in_drive(slot);
    }

    /// The complainer goes into the list's file before the report is acknowledged: a crash
    /// never loses a complaint that was answered 250. Returns whether the session's reply
    /// is settled here (it waits for the entry, or is refused).
    fn suppress_complainer(&mut self, slot: u32, add: prepare::SuppressAdd, only_reports: bool) -> bool {
        let gen = self.ins.gen(slot);
        let waiting = only_reports.then_some((self.id, slot, gen));
        let sent = self.send_suppress(add, waiting);
        let c = self.ins.get_mut(slot);
        match (sent, waiting.is_some()) {
            (true, true) => {
                c.reporting = true;
                true
            }
            (false, true) => {
                c.m.message_refused("451 4.3.0 Cannot record the complaint now, try again later");
                true
            }
            (_, false) => false,
        }
    }

    /// SPF/DKIM/DMARC/ARC need DNS: the control plane checks, then `on_verified` goes on.
    /// (`spf_refusal` then says whether the SPF result refuses the message.)
    fn verify(&mut self, slot: u32, mut m: Message, vmta: String, policy: &sluice_config::SourcePolicy) {
        let gen = self.ins.gen(slot);
        let c = self.ins.get_mut(slot);
        let req = crate::VerifyRequest {
            shard: self.id,
            slot,
            gen,
            data: std::mem::take(&mut m.data),
            client_ip: c.client_ip,
            helo: m.helo.clone(),
            mail_from: m.mail_from.clone(),
            spf: policy.check_spf || policy.check_dmarc,
            dkim: policy.check_dkim || policy.check_dmarc,
            dmarc: policy.check_dmarc,
            arc: policy.check_arc || policy.arc_sign,
            seal: policy.arc_sign,
            iprev: policy.check_iprev,
        };
        match self.shared.core.control.try_send(ControlRequest::Verify(Box::new(req))) {
            Ok(()) => c.verifying = Some(Box::new((m, vmta))),
            Err(_) => c.m.message_refused("451 4.3.0 Authentication checks are busy, try again later"),
        }
    }

    /// A complaint's suppression entry is on disk (or could not be written): the report's
    /// session gets its reply.
    pub(super) fn on_report_stored(&mut self, slot: u32, gen: u16, ok: bool) {
        let Some(c) = self.ins.get_gen(slot, gen) else { return };
        if !std::mem::take(&mut c.reporting) {
            return;
        }
        if ok {
            c.m.message_stored(true, "report");
        } else {
            c.m.message_refused("451 4.3.0 Cannot record the complaint now, try again later");
        }
        self.in_drive(slot);
    }

    /// The authentication checks are done: their headers go on top, then the message is
    /// signed and spooled. A connection gone in the meantime drops it (never acknowledged).
    pub(super) fn on_verified(&mut self, slot: u32, gen: u16, data: Vec<u8>, headers: Vec<u8>, summary: String) {
        let Some(c) = self.ins.get_gen(slot, gen) else { return };
        let Some(waiting) = c.verifying.take() else { return };
        let (mut m, vmta) = *waiting;
        // `reject-spf-check-*` (the Guide's defaults: yes) with `check-spf-inbound`.
        let config = self.shared.config.clone();
        let policy = config.policy_for(c.client_ip, &listener_source(&config, c.listener));
        if let Some(refusal) =
            spf_refusal(&policy, &summary, &m.mail_from).or_else(|| iprev_refusal(&policy, &summary, c.client_ip))
        {
            tracing::info!(shard = self.id, client = %c.client_ip, from = %m.mail_from, %summary, "refused on its SPF or iprev result");
            c.m.message_refused(&refusal);
            return self.in_drive(slot);
        }
        m.data = headers;
        m.data.extend_from_slice(&data);
        // Signing reads the client's message: a panic there ends this connection only.
        if let Err(why) = crate::guard::isolated(|| self.sign_and_spool(slot, m, vmta, summary)) {
            self.in_panicked(slot, gen, why);
        }
        self.in_drive(slot);
    }

    /// Signs (DKIM) and spools an accepted message; the reply waits for its fsync.
    fn sign_and_spool(&mut self, slot: u32, mut m: Message, vmta: String, auth: String) {
        // DKIM: signed once here, before it is spooled, so no delivery attempt signs again.
        self.sign(&m.recipients, &vmta, &mut m.data);
        let gen = self.ins.gen(slot);
        let c = self.ins.get_mut(slot);
        let origin = Origin::of(c, &m.helo, m.auth_user.as_deref());
        let mut store = Spooling::boxed(m.data, m.mail_from, m.recipients, self.now.unix_ms, vmta);
        origin.into_store(&mut store);
        store.auth_results = auth;
        store.job_id = m.job_id;
        store.envid = m.envid;
        store.flags = m.flags;
        store.rcpt_dsn = m.rcpt_dsn;
        let client_ip = c.client_ip;
        let ticket = (gen as u64) << 32 | slot as u64;
        self.place_record(&mut store, client_ip, ticket, Vec::new());
        self.ins.get_mut(slot).store = Some(store);
    }

    /// The spool answered for the message on `slot`: the client's reply, and the message's
    /// jobs to their queues.
    pub(super) fn on_spooled(
        &mut self,
        slot: u32,
        gen: u16,
        durable: bool,
        at: Option<(std::sync::Arc<crate::spool_files::Segment>, u64)>,
    ) {
        let c = self.ins.get_gen(slot, gen).expect("a storing connection stays until the spool answers");
        let store = c.store.take().expect("a store in progress");
        let queue_id = match &at {
            Some((seg, offset)) => format!("{:x}.{:x}.{:x}", self.id, seg.seq, offset),
            None => String::new(),
        };
        c.m.message_stored(durable, &queue_id);
        if let (true, Some((segment, offset))) = (durable, at) {
            self.received(&store);
            self.queue_spooled(&store, segment, offset);
        }
        let c = self.ins.get_mut(slot);
        c.m.session_mut().recycle_data_buffer(store.data);
        self.in_drive(slot);
    }

    /// A durable message: its `r` records and the counters.
    pub(super) fn received(&mut self, store: &Spooling) {
        let size = store.data.len() as u64;
        ShardStats::add(&self.stats.msgs_in, 1);
        ShardStats::add(&self.stats.rcpts_in, store.recipients.len() as u64);
        ShardStats::add(&self.stats.bytes_in, size);
        let config = &self.shared.config;
        if !config.acct_records(sluice_config::RecordType::Received) {
            return;
        }
        let headers: Vec<String> = config
            .acct_headers
            .iter()
            .map(|h| sluice_engine::smtp::headers::header_value(&store.data, h).unwrap_or_default())
            .collect();
        for rcpt in &store.recipients {
            let received = sluice_engine::acct::Received {
                orig: &store.mail_from,
                src_mta: &store.src_mta,
                api: store.flags & sluice_spool::codec::flags::API != 0,
                source_ip: &store.rcv_source_ip,
                destination_ip: &store.rcv_destination_ip,
                envid: &store.envid,
                size,
                vmta: &store.vmta,
                smtp_user: &store.smtp_user,
                auth_results: &store.auth_results,
                job_id: &store.job_id,
            };
            let mut r = Record::received(store.queued_unix_ms, rcpt, &received);
            r.headers.clone_from(&headers);
            self.record(r);
        }
    }
}

/// How long a session waits for the control plane's checks or report (its client waits for
/// the reply to DATA: `smtp-data-timeout`, at most `ANSWER_WAIT_MS_MAX`).
fn answer_wait_ms(config: &sluice_config::Config) -> u64 {
    (config.smtp_data_timeout.as_millis() as u64).min(ANSWER_WAIT_MS_MAX)
}

/// Adds `new` AUTH failures for `ip` (counted for all shards together) and says whether it is
/// over `smtp-max-auth-failure-rate` within the rate's period.
fn auth_failures_over(
    shared: &Shared,
    ip: IpAddr,
    rate: sluice_config::Rate,
    new: u32,
    now: sluice_engine::time::Now,
) -> bool {
    let window_s = rate.period.as_secs().max(1);
    let counts = &shared.core.auth_failures;
    let now_s = now.ms() / 1000;
    let n = if new > 0 { counts.add(ip, new, now_s, window_s) } else { counts.get(ip, now_s, window_s) };
    n >= rate.count
}

/// The named source a listener's sessions take (`smtp-listener ADDR source=NAME`).
fn listener_source(config: &sluice_config::Config, listener: usize) -> Vec<&str> {
    config.listeners.get(listener).and_then(|l| l.source.as_deref()).into_iter().collect()
}

/// The refusal a message's SPF result calls for (`reject-spf-check-*`, with
/// `check-spf-inbound`): RFC 7372's codes. `summary` is the checks' `spf=WORD ...`.
fn spf_refusal(policy: &sluice_config::SourcePolicy, summary: &str, mail_from: &str) -> Option<String> {
    if !policy.check_spf {
        return None;
    }
    let word = summary.split_whitespace().find_map(|w| w.strip_prefix("spf="))?;
    let sender = if mail_from.is_empty() { "<>" } else { mail_from };
    match word {
        "fail" if policy.reject_spf_fail => {
            Some(format!("550 5.7.23 SPF check failed: this host may not send for {sender} (reject-spf-check-fail)"))
        }
        "permerror" if policy.reject_spf_permerror => {
            Some(format!("550 5.7.24 SPF record of {sender}'s domain is in error (reject-spf-check-permerror)"))
        }
        "temperror" if policy.reject_spf_temperror => Some(format!(
            "451 4.7.24 SPF check could not be completed for {sender}, try again later (reject-spf-check-temperror)"
        )),
        _ => None,
    }
}

/// The refusal a client's reverse-DNS result calls for (`reject-iprev-check-*`, with
/// `check-iprev-inbound`): RFC 8601's 5.7.25.
fn iprev_refusal(policy: &sluice_config::SourcePolicy, summary: &str, client: std::net::IpAddr) -> Option<String> {
    if !policy.check_iprev {
        return None;
    }
    match summary.split_whitespace().find_map(|w| w.strip_prefix("iprev="))? {
        "fail" if policy.reject_iprev_fail => Some(format!(
            "550 5.7.25 Reverse DNS validation failed: {client}'s PTR name does not lead back to it (reject-iprev-check-fail)"
        )),
        "permerror" if policy.reject_iprev_permerror => {
            Some(format!("550 5.7.25 Reverse DNS validation failed for {client} (reject-iprev-check-permerror)"))
        }
        "temperror" if policy.reject_iprev_temperror => Some(format!(
            "451 4.7.25 Reverse DNS validation for {client} could not be completed, try again later (reject-iprev-check-temperror)"
        )),
        _ => None,
    }
}

/// What a message taken on a connection records of where it came from (accounting's
/// srcMta, rcvSourceIp, rcvDestinationIp, rcvSmtpUser): read once per transaction.
#[derive(Clone)]
struct Origin {
    src_mta: String,
    helo: String,
    source_ip: String,
    destination_ip: String,
    smtp_user: String,
}

impl Origin {
    fn of(c: &mut InConn, helo: &str, auth_user: Option<&str>) -> Origin {
        let smtp_user = auth_user.unwrap_or_default();
        if let Some(o) = c.origin.as_ref().filter(|o| o.helo == helo && o.smtp_user == smtp_user) {
            return o.clone();
        }
        let o = Origin {
            src_mta: sluice_engine::acct::src_mta(helo, c.client_ip),
            helo: helo.to_string(),
            source_ip: c.client_ip.to_string(),
            destination_ip: c.local_ip.clone(),
            smtp_user: smtp_user.to_string(),
        };
        c.origin = Some(o.clone());
        o
    }

    /// What a message of the transaction records of where it came from.
    fn into_store(self, store: &mut Spooling) {
        store.src_mta = self.src_mta;
        store.helo = self.helo;
        store.rcv_source_ip = self.source_ip;
        store.rcv_destination_ip = self.destination_ip;
        store.smtp_user = self.smtp_user;
    }
}
