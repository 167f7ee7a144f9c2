//! Outbound connections as the scheduler sees them: which queue, VMTA and source IP each
//! speaks for, when one opens (limits, pool rotation, hops set aside), what it does next
//! when ready, and what a transaction's end or a failure changes (`skip-mx`,
//! `disable-source-ip`, connect backoff, a whole queue deferred).

use super::limits::{self, Grant};
use super::{ConnId, HopState, Intent, Message, QueueId, Scheduler, CONNECT_BACKOFF_FIRST_MS, CONNECT_BACKOFF_MAX_MS};
use crate::queue::{AttemptInfo, Job};
use crate::route::{self, Hop};
use crate::smtp::client::TlsMode;
use crate::smtp::reply::Reply;
use crate::time::Now;
use sluice_config::SmtpOptions;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What a new connection is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnPlan {
    /// The queue's name, `domain/vmta`.
    pub queue: String,
    /// The VMTA it speaks for (a pool's member), and the pool if any.
    pub vmta: String,
    pub pool: String,
    /// The VMTA's `smtp-source-host` address, to bind.
    pub source_ip: Option<IpAddr>,
    /// The name it says in EHLO.
    pub ehlo: String,
    pub tls: TlsMode,
    /// Next hops to try in order (preference levels, rotated within a level), at most
    /// `mx-connection-attempts` of them.
    pub hops: Vec<Hop>,
    /// The destination's client settings: timeouts, reply rules, extensions not to use.
    pub smtp: SmtpOptions,
    /// The VMTA's proxy hosts, tried in order for each hop (none: connect directly).
    pub proxies: Vec<sluice_config::Proxy>,
}

/// The scheduler's record of a connection.
#[derive(Debug)]
pub struct ConnState {
    pub queue: QueueId,
    pub vmta: String,
    pub source_ip: Option<IpAddr>,
    /// It holds one of its source IP's `source-ip-max-smtp-out` places.
    holds_smtp_out: bool,
    /// It holds one of the fleet's `cluster-max-smtp-out` slots for its destination.
    fleet_slot: Option<Arc<limits::ClusterCell>>,
    /// The `mx-connection-limit` / `ip-connection-limit` slots of the hop it is connected to.
    hop_slots: Vec<String>,
    pub messages_sent: u32,
    /// Recipients refused on it so far (`max-errors-per-connection`).
    errors: u32,
    /// The pattern list set its host or source IP aside: no more work on it.
    leaving: bool,
    pub idle: bool,
}

impl<M: Message> Scheduler<M> {
    /// Opens a connection for the queue unless a limit says not now; returns whether it did.
    pub(super) fn open_connection(&mut self, id: QueueId, levels: &[Vec<Hop>], now: Now) -> bool {
        let name = self.st(id).q.name.clone();
        self.reenable(&name, now);
        let queue_vmta = self.st(id).q.vmta.clone();
        let avoided = self.avoided.get(&name);
        let disabled = |v: &str| avoided.is_some_and(|a| a.vmtas.iter().any(|(n, _)| n == v));
        let (vmta, pool) = match self.config.pools.get(&queue_vmta) {
            Some(members) => {
                let turn = self.pool_rotation.entry(queue_vmta.clone()).or_insert(0);
                let Some(member) = route::next_member(members, turn, disabled) else { return false }; // all disabled
                (member.to_string(), queue_vmta)
            }
            None if disabled(&queue_vmta) => return false,
            None => (queue_vmta, String::new()),
        };
        let settings = self.config.vmtas.get(&vmta);
        // The default VMTA (a name no <virtual-mta> defines) sends from the global
        // `smtp-source-host`, when there is one.
        let global = self.config.global_source.as_ref().filter(|_| settings.is_none());
        // Through proxies, the first one's client address is the source every limit counts
        // (PowerMTA: disabled source IPs are the proxy client's), its name the EHLO.
        let proxies = self.config.proxies_of(&vmta).to_vec();
        let proxied = proxies.first();
        let source_ip = match proxied {
            Some(p) => Some(p.client.ip()),
            None => settings.and_then(|v| v.source_ip).or(global.map(|g| g.0)),
        };
        let ehlo = match proxied {
            Some(p) => p.host_name.clone(),
            None => settings
                .and_then(|v| v.host_name.clone())
                .or(global.map(|g| g.1.clone()))
                .unwrap_or_else(|| self.config.host_name.clone()),
        };
        if !self.rate_grant(id, source_ip, Grant::Connect, now) {
            return false;
        }
        let priority = self.st(id).q.settings.queue_priority;
        let fleet_slot = self.st(id).cluster.clone().filter(|c| c.cap.is_some());
        if fleet_slot.as_ref().is_some_and(|c| !c.take_slot()) {
            return false;
        }
        let Some(holds_smtp_out) = limits::take_smtp_out(&self.limits, source_ip, priority, now.ms()) else {
            if let Some(c) = fleet_slot {
                c.release_slot();
            }
            return false;
        };
        let mut hops = self.ordered_hops(id, &name, levels);
        // `mx-connection-limit` / `ip-connection-limit`: hops at their limit for this source
        // are left out; with none left the queue waits, as for `max-smtp-out`.
        if self.config.has_hop_limits() {
            let (config, lim) = (&self.config, &self.limits);
            hops.retain(|h| limits::hop_room(lim, source_ip, &config.hop_limits(&h.host, h.addr.ip())));
            if hops.is_empty() {
                limits::release_smtp_out(&self.limits, source_ip, holds_smtp_out);
                if let Some(c) = fleet_slot {
                    c.release_slot();
                }
                return false;
            }
        }
        let st = self.st_mut(id);
        let smtp = st.q.settings.smtp.clone();
        hops.truncate(smtp.mx_connection_attempts as usize);
        st.q.connections += 1;
        let tls = match (st.q.settings.require_starttls, st.q.settings.use_starttls) {
            (true, _) => TlsMode::Required,
            (false, true) => TlsMode::Opportunistic,
            (false, false) => TlsMode::Off,
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        let state = ConnState {
            queue: id,
            vmta: vmta.clone(),
            source_ip,
            holds_smtp_out,
            fleet_slot,
            hop_slots: Vec::new(),
            messages_sent: 0,
            errors: 0,
            leaving: false,
            idle: false,
        };
        self.conns.insert(conn, state);
        let plan = ConnPlan { queue: name, vmta, pool, source_ip, ehlo, tls, hops, smtp, proxies };
        self.intents.push_back(Intent::Connect { conn, plan: Box::new(plan) });
        true
    }

    /// The connection is about to connect to `hop`: it takes that hop's `mx-connection-limit`
    /// and `ip-connection-limit` slots (giving back a previous hop's); false when the hop is
    /// at its limit for the connection's source IP (then try another).
    pub fn hop_slot(&mut self, conn: ConnId, hop: &Hop) -> bool {
        if !self.config.has_hop_limits() {
            return true;
        }
        let Some(c) = self.conns.get_mut(&conn) else { return true };
        limits::release_hop(&self.limits, c.source_ip, &std::mem::take(&mut c.hop_slots));
        let keys = self.config.hop_limits(&hop.host, hop.addr.ip());
        if !limits::take_hop(&self.limits, c.source_ip, &keys) {
            return false;
        }
        c.hop_slots = keys.into_iter().map(|(k, _)| k).collect();
        true
    }

    /// Preference levels in order; within a level, rotated so connections spread; hops set
    /// aside by `skip-mx` left out, unless that would leave none.
    fn ordered_hops(&mut self, id: QueueId, name: &str, levels: &[Vec<Hop>]) -> Vec<Hop> {
        let avoided = self.avoided.get(name);
        let skipped = |addr: &SocketAddr| avoided.is_some_and(|a| a.hops.iter().any(|(h, _)| h == addr));
        let all_skipped = levels.iter().flatten().all(|h| skipped(&h.addr));
        let st = self.queues[id].as_mut().expect("a live queue");
        st.rotation = st.rotation.wrapping_add(1);
        let mut hops = Vec::new();
        for level in levels.iter().filter(|l| !l.is_empty()) {
            let r = st.rotation % level.len();
            let usable = |h: &&Hop| all_skipped || !skipped(&h.addr);
            hops.extend(level[r..].iter().filter(usable).cloned());
            hops.extend(level[..r].iter().filter(usable).cloned());
        }
        hops
    }

    /// The connection's session is ready (greeting and EHLO done, or a transaction over).
    pub fn conn_ready(&mut self, conn: ConnId, now: Now) {
        let id = self.conns[&conn].queue;
        let st = self.st_mut(id);
        st.connect_failures = 0;
        st.connect_backoff_until_ms = 0;
        self.next_work(conn, now);
    }

    /// The next transaction for a ready connection, or QUIT, or wait idle.
    fn next_work(&mut self, conn: ConnId, now: Now) {
        let id = self.conns[&conn].queue;
        match self.take_work(conn, now) {
            Work::Quit => self.intents.push_back(Intent::Quit { conn }),
            Work::Job(job) => self.start(conn, id, job, now),
            Work::Idle => {
                self.conns.get_mut(&conn).expect("live").idle = true;
                self.st_mut(id).idle.push(conn);
                self.intents.push_back(Intent::Idle { conn });
            }
        }
    }

    /// A job for a connection whose body is going out, to pipeline behind it (RFC 2920
    /// §3.1): what `next_work` would start once the end of data is answered, taken now (the
    /// same limits and rate grants), or None (the connection then goes on as it would).
    /// Handed back with `job_back` if the session ends before the job is tried.
    pub fn pipeline_next(&mut self, conn: ConnId, now: Now) -> Option<(QueueId, Job<M>)> {
        let id = self.conns.get(&conn)?.queue;
        match self.take_work(conn, now) {
            Work::Job(mut job) => {
                self.claim(conn, &mut job, now);
                Some((id, job))
            }
            Work::Quit | Work::Idle => None,
        }
    }

    /// The connection takes no more transactions: a reply tripped `skip-mx`,
    /// `disable-source-ip` or `max-errors-per-connection`. A transaction already pipelined
    /// behind the body that got that reply must not go on either (`job_back` it).
    pub fn takes_no_more(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.leaving)
    }

    /// The connection's next job, if its limits and rates allow one now.
    fn take_work(&mut self, conn: ConnId, now: Now) -> Work<M> {
        let c = &self.conns[&conn];
        let (id, source_ip, sent, leaving) = (c.queue, c.source_ip, c.messages_sent, c.leaving);
        let limit = self.st(id).q.settings.max_msg_per_connection;
        let at_limit = (limit != 0 && sent >= limit) || leaving;
        if at_limit || self.stopping {
            return Work::Quit;
        }
        let st = self.st_mut(id);
        st.q.promote_due(now.ms());
        // A message starts only with a grant from the queue's and the source IP's rates.
        if st.q.has_work() && self.rate_grant(id, source_ip, Grant::Message, now) {
            return Work::Job(self.st_mut(id).q.take().expect("ready work"));
        }
        Work::Idle
    }

    /// A transaction ended with one reply per recipient (`info.hop`: the connected next
    /// hop); `ready`: the session can take another transaction.
    pub fn txn_done(
        &mut self,
        conn: ConnId,
        job: Job<M>,
        replies: &[Reply],
        mut info: AttemptInfo,
        ready: bool,
        now: Now,
    ) {
        let hop = info.hop;
        let (id, vmta) = {
            let c = &self.conns[&conn];
            (c.queue, c.vmta.clone())
        };
        (info.other_hop, info.other_source) = self.alternatives(id, hop, &vmta);
        let errors = replies.iter().filter(|r| !r.is_positive()).count() as u32;
        self.settle(id, job, replies, &info, now);
        let limit = self.st(id).q.settings.smtp.max_errors_per_connection;
        let c = self.conns.get_mut(&conn).expect("live");
        c.errors += errors;
        if limit != 0 && c.errors >= limit {
            // `max-errors-per-connection`: this session has refused enough; a new one next.
            c.leaving = true;
        }
        if self.apply_avoid(conn, hop, now) {
            // `skip-mx` / `disable-source-ip`: this connection takes no more work (the refused
            // job must not come straight back to it after RSET).
            self.conns.get_mut(&conn).expect("live").leaving = true;
        }
        if ready {
            self.next_work(conn, now);
        }
    }

    /// A job taken for a connection that went away before it started: back to the front.
    pub fn job_back(&mut self, queue: QueueId, job: Job<M>) {
        if let Some(st) = self.queues.get_mut(queue).and_then(Option::as_mut) {
            st.q.push_front(job);
            self.dirty.push(queue);
        }
    }

    /// The connection failed (`reply` says why; `ever_ready`: its session had been ready).
    /// Its job is deferred; if the queue has no connection left that ever worked, the whole
    /// ready list is deferred too. The connection is gone.
    pub fn conn_failed(
        &mut self,
        conn: ConnId,
        job: Option<Job<M>>,
        reply: Reply,
        mut info: AttemptInfo,
        ever_ready: bool,
        now: Now,
    ) {
        let hop = info.hop;
        let (id, vmta) = {
            let c = &self.conns[&conn];
            (c.queue, c.vmta.clone())
        };
        (info.other_hop, info.other_source) = self.alternatives(id, hop, &vmta);
        // The pattern list sees the receiver's own words (a 421 greeting, say).
        self.st_mut(id).q.observe(&reply, now.ms());
        self.queue_events(id, now);
        let transient = if reply.is_transient() { reply } else { Reply::new(451, format!("4.4.0 {}", reply.line())) };
        let name = self.st(id).q.name.clone();
        // A connection that had done its work and was waiting for more, then closed by the
        // server (after a big message, say), is no failure: a debug line, not "connection
        // failed".
        match (&job, ever_ready) {
            (None, false) => self.log_failure(&name, &info, &transient, now),
            (None, true) => {
                tracing::debug!(shard = self.shard, queue = %name, reply = %transient.line(), "an idle connection ended")
            }
            (Some(_), _) => {}
        }
        if let Some(job) = job {
            let replies = vec![transient.clone(); job.rcpts.len()];
            self.settle(id, job, &replies, &info, now);
        }
        // `skip-mx` / `disable-source-ip` on this reply, with somewhere else to go: the next
        // connection goes there at once, without a backoff or deferring the queue.
        let elsewhere = self.apply_avoid(conn, hop, now) && (info.other_hop || info.other_source);
        self.conn_closed(conn, None);
        if elsewhere {
            self.dirty.push(id);
            return;
        }
        let st = self.st_mut(id);
        if !ever_ready {
            let backoff = (CONNECT_BACKOFF_FIRST_MS << st.connect_failures.min(16)).min(CONNECT_BACKOFF_MAX_MS);
            st.connect_failures += 1;
            st.connect_backoff_until_ms = now.ms() + backoff;
        }
        if !ever_ready && st.q.connections == 0 && !self.stopping {
            tracing::debug!(shard = self.shard, queue = %name, reply = %transient.line(), "deferring the queue's ready mail");
            self.fail_ready(id, &transient, &info, now);
        }
    }

    /// The connection's session failed and it moves on to its next MX
    /// (`smtp-421-means-mx-unavailable`, or a 5xx greeting without `bounce-upon-5xx-greeting`):
    /// the pattern list sees the reply, the transaction in progress goes back to the front of
    /// its queue without counting as an attempt, and the connection stays the queue's.
    pub fn conn_moving(&mut self, conn: ConnId, job: Option<Job<M>>, reply: &Reply, now: Now) {
        let id = self.conns[&conn].queue;
        self.st_mut(id).q.observe(reply, now.ms());
        self.queue_events(id, now);
        let c = self.conns.get_mut(&conn).expect("live");
        c.idle = false;
        self.st_mut(id).idle.retain(|s| *s != conn);
        if let Some(job) = job {
            self.job_back(id, job);
        }
    }

    /// A 5xx greeting with `bounce-upon-5xx-greeting` (PowerMTA's default, as RFC 5321 §3.1
    /// has it): the transaction and the queue's ready mail bounce with the greeting's words.
    pub fn conn_refused(&mut self, conn: ConnId, job: Option<Job<M>>, reply: Reply, info: AttemptInfo, now: Now) {
        let id = self.conns[&conn].queue;
        self.st_mut(id).q.observe(&reply, now.ms());
        self.queue_events(id, now);
        if let Some(job) = job {
            let replies = vec![reply.clone(); job.rcpts.len()];
            self.settle(id, job, &replies, &info, now);
        }
        self.conn_closed(conn, None);
        let name = self.st(id).q.name.clone();
        tracing::info!(shard = self.shard, queue = %name, reply = %reply.line(), "5xx greeting: bouncing the queue's ready mail");
        self.fail_ready(id, &reply, &info, now);
    }

    /// The connection is closed (after QUIT, or by the server while idle). A job still on it
    /// (none, by construction) goes back to its queue.
    pub fn conn_closed(&mut self, conn: ConnId, job: Option<Job<M>>) {
        let Some(c) = self.conns.remove(&conn) else { return };
        limits::release_smtp_out(&self.limits, c.source_ip, c.holds_smtp_out);
        limits::release_hop(&self.limits, c.source_ip, &c.hop_slots);
        if let Some(cell) = &c.fleet_slot {
            cell.release_slot();
        }
        if let Some(st) = self.queues.get_mut(c.queue).and_then(Option::as_mut) {
            st.q.connections -= 1;
            st.idle.retain(|s| *s != conn);
            if let Some(job) = job {
                st.q.push(job);
            }
            self.dirty.push(c.queue);
        }
    }

    /// An idle connection waited long enough: QUIT (RFC 5321 §4.1.1.10).
    pub fn conn_idle_timeout(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| c.idle) else { return };
        c.idle = false;
        let id = c.queue;
        self.st_mut(id).idle.retain(|s| *s != conn);
        self.intents.push_back(Intent::Quit { conn });
    }

    /// Drops the queue's `skip-mx` and `disable-source-ip` marks whose time is up; a source
    /// IP coming back is written as a `tq` record.
    fn reenable(&mut self, name: &str, now: Now) {
        let Some(a) = self.avoided.get_mut(name) else { return };
        let now_ms = now.ms();
        a.hops.retain(|(_, until)| *until > now_ms);
        let (kept, back): (Vec<_>, Vec<_>) = std::mem::take(&mut a.vmtas).into_iter().partition(|(_, t)| *t > now_ms);
        a.vmtas = kept;
        if a.hops.is_empty() && a.vmtas.is_empty() {
            self.avoided.remove(name);
        }
        for (vmta, _) in back {
            let text = self.source_ip_text(&vmta);
            self.queue_note(name, &vmta, format!("source-ip re-enabled: {vmta} ({text})"), now);
        }
    }

    fn source_ip_text(&self, vmta: &str) -> String {
        let ip = match (self.config.proxies_of(vmta).first(), self.config.vmtas.get(vmta)) {
            (Some(p), _) => Some(p.client.ip()),
            (None, Some(v)) => v.source_ip,
            (None, None) => self.config.global_source.as_ref().map(|g| g.0),
        };
        ip.map(|ip| ip.to_string()).unwrap_or_else(|| "default source".into())
    }

    /// Could a recipient refused on this connection go out at once another way: another
    /// next hop not skipped (for `skip-mx`), another pool member not disabled (for
    /// `disable-source-ip`)?
    fn alternatives(&self, id: QueueId, hop: Option<SocketAddr>, vmta: &str) -> (bool, bool) {
        // No pattern list, no skip-mx or disable-source-ip: nothing to look up per transaction.
        let st = self.st(id);
        if !st.q.has_patterns() {
            return (false, false);
        }
        let avoided = self.avoided.get(&st.q.name);
        let other_hop = match &st.hops {
            HopState::Ready { levels, .. } => levels
                .iter()
                .flatten()
                .any(|h| Some(h.addr) != hop && !avoided.is_some_and(|a| a.hops.iter().any(|(s, _)| *s == h.addr))),
            _ => false,
        };
        let other_source = self.config.pools.get(&st.q.vmta).is_some_and(|members| {
            members.iter().any(|m| m != vmta && !avoided.is_some_and(|a| a.vmtas.iter().any(|(d, _)| d == m)))
        });
        (other_hop, other_source)
    }

    /// Applies what the queue's pattern list asked to stop using after a reply on the
    /// connection; returns whether it did (the connection then leaves).
    fn apply_avoid(&mut self, conn: ConnId, hop: Option<SocketAddr>, now: Now) -> bool {
        let (id, vmta) = {
            let c = &self.conns[&conn];
            (c.queue, c.vmta.clone())
        };
        let st = self.st_mut(id);
        let Some(avoid) = st.q.take_avoid() else { return false };
        let name = st.q.name.clone();
        let skip_ms =
            st.q.settings.retry_after.first().map_or(600_000, |d| d.as_millis() as u64).clamp(1_000, 3_600_000);
        let host = self.hop_host(id, hop);
        let now_ms = now.ms();
        let entry = self.avoided.entry(name.clone()).or_default();
        let mut notes = Vec::new();
        if let (true, Some(addr)) = (avoid.skip_mx, hop) {
            entry.hops.retain(|(a, _)| *a != addr);
            entry.hops.push((addr, now_ms + skip_ms));
            notes.push(format!("skip-mx: {host} ({}) skipped for {}s", addr.ip(), skip_ms / 1000));
        }
        if let Some(d) = avoid.disable_source_ip {
            entry.vmtas.retain(|(v, _)| *v != vmta);
            entry.vmtas.push((vmta.clone(), now_ms + d.as_millis() as u64));
            let text = self.source_ip_text(&vmta);
            notes.push(format!("source-ip disabled: {vmta} ({text}) for {}s", d.as_secs()));
        }
        for note in notes {
            self.queue_note(&name, &vmta, note, now);
        }
        true
    }

    /// The host name of a queue's next hop at `addr`, for notes.
    fn hop_host(&self, id: QueueId, addr: Option<SocketAddr>) -> String {
        let HopState::Ready { levels, .. } = &self.st(id).hops else { return String::new() };
        levels.iter().flatten().find(|h| Some(h.addr) == addr).map(|h| h.host.clone()).unwrap_or_default()
    }
}

/// What a connection does next (`take_work`).
enum Work<M> {
    Quit,
    Job(Job<M>),
    /// No job it may take now: it waits, idle.
    Idle,
}
