//! `sluice sink`: an io_uring SMTP server that accepts and counts, verifies loadgen's
//! checksums (corrupt and duplicate messages), and can play a receiver: scripted replies per
//! domain, added latency, a connection cap answered with 421.

use crate::backend::{Backend, Sub};
use crate::sys::{self, now_ms};
use sluice_engine::smtp::sink::{Checksum, ReplyRule, SinkEvent, SinkSession};
use sluice_spool::Resume;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const RECV_BYTES: usize = 64 * 1024;
/// Connection slots; far above any `--max-connections` a test uses.
const CONNS_MAX: usize = 1 << 16;
const TICK_IDLE: Duration = Duration::from_millis(50);
const TICK_LATENCY: Duration = Duration::from_millis(1);
/// On stop, how long replies already owed may take to go out.
const STOP_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub listen: SocketAddr,
    pub host_name: String,
    pub rules: Vec<ReplyRule>,
    /// Delay before the reply to the end of data.
    pub latency: Duration,
    /// Up to this much more, at random, on each delayed reply.
    pub jitter: Duration,
    /// Delay before every other reply.
    pub reply_latency: Duration,
    /// Connections beyond this get `421` at the greeting (0: no cap).
    pub max_connections: u32,
    /// A hidden acceptance rate: recipients beyond it get `451 4.7.1`.
    pub accept_rate: Option<sluice_engine::shape::gcra::Limit>,
    /// Offer CHUNKING (RFC 3030) and take messages in BDAT chunks.
    pub chunking: bool,
}

/// Totals, readable from other threads (the stats port) while the sink runs.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub connections: AtomicU64,
    pub refused_connections: AtomicU64,
    pub messages: AtomicU64,
    pub recipients: AtomicU64,
    pub bytes: AtomicU64,
    pub corrupt: AtomicU64,
    pub duplicates: AtomicU64,
    pub without_id: AtomicU64,
    pub scripted_4xx: AtomicU64,
    pub scripted_5xx: AtomicU64,
    /// Writes of replies (a short one resumed is not another): how well the sink groups
    /// its answers to pipelined commands.
    pub reply_writes: AtomicU64,
    pub first_message_unix_ms: AtomicU64,
    pub last_message_unix_ms: AtomicU64,
    /// From loadgen's send (`X-Sluice-Sent`) to this sink's acknowledgement, in ms.
    pub latency_ms: std::sync::Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl SinkStats {
    pub fn to_json(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        let latency = match self.latency_ms.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(h) if !h.is_empty() => format!(
                ",\"latency_ms\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{}}}",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.max()
            ),
            _ => String::new(),
        };
        format!(
            "{{\"connections\":{},\"refused_connections\":{},\"messages\":{},\"recipients\":{},\"bytes\":{},\"corrupt\":{},\"duplicates\":{},\"without_id\":{},\"scripted_4xx\":{},\"scripted_5xx\":{},\"reply_writes\":{},\"first_message_unix_ms\":{},\"last_message_unix_ms\":{}{latency}}}",
            g(&self.connections),
            g(&self.refused_connections),
            g(&self.messages),
            g(&self.recipients),
            g(&self.bytes),
            g(&self.corrupt),
            g(&self.duplicates),
            g(&self.without_id),
            g(&self.scripted_4xx),
            g(&self.scripted_5xx),
            g(&self.reply_writes),
            g(&self.first_message_unix_ms),
            g(&self.last_message_unix_ms),
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Recv,
    Send,
    Tick,
}

fn ud(op: Op, slot: u32) -> u64 {
    (op as u64) << 56 | slot as u64
}

struct Conn {
    fd: RawFd,
    session: SinkSession,
    inbuf: Vec<u8>,
    in_len: usize,
    out: Vec<u8>,
    sending: Resume,
    busy: bool,
    ack_due_ms: Option<u64>,
    /// The message waiting for its (delayed) 250: counted when acknowledged.
    pending: Option<sluice_engine::smtp::sink::Report>,
    /// Other replies held back until then (`reply_latency`).
    reply_due_ms: Option<u64>,
    /// The output is a delayed acknowledgement: it goes at once.
    ack_ready: bool,
}

struct Sink {
    opts: SinkOptions,
    rules: Arc<Vec<ReplyRule>>,
    stats: Arc<SinkStats>,
    io: Box<dyn Backend>,
    listener: RawFd,
    accept_addr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
    conns: Vec<Option<Box<Conn>>>,
    free: Vec<u32>,
    open: u32,
    seen: HashSet<u64>,
    rcpt_seen: Arc<AtomicU64>,
    accept: Option<Arc<(sluice_engine::shape::gcra::GcraCell, sluice_engine::shape::gcra::Limit)>>,
    tick_ms: u64,
    seed: u64,
    /// Messages acknowledged in one pass over a connection's input (kept for its allocation).
    reports: Vec<sluice_engine::smtp::sink::Report>,
}

/// Binds `opts.listen` and serves until `stop` is set. `ready` gets the bound address.
pub fn run_sink(
    opts: SinkOptions,
    stats: Arc<SinkStats>,
    stop: Arc<AtomicBool>,
    ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let listener = sys::listen(opts.listen, false)?;
    ready(sys::bound_addr(listener.as_raw_fd()));
    let delays = !(opts.latency.is_zero() && opts.reply_latency.is_zero());
    let tick = if delays { TICK_LATENCY } else { TICK_IDLE };
    let accept_rate = opts.accept_rate;
    let mut sink = Sink {
        rules: Arc::new(opts.rules.clone()),
        opts,
        stats,
        io: crate::backend::open_auto()?,
        listener: listener.as_raw_fd(),
        // SAFETY: zeroed storage is valid.
        accept_addr: Box::new((unsafe { std::mem::zeroed() }, 0)),
        conns: Vec::new(),
        free: Vec::new(),
        open: 0,
        seen: HashSet::new(),
        rcpt_seen: Arc::new(AtomicU64::new(0)),
        accept: accept_rate.map(|l| Arc::new((sluice_engine::shape::gcra::GcraCell::new(), l))),
        tick_ms: tick.as_millis() as u64,
        seed: 0x5eed,
        reports: Vec::new(),
    };
    sink.arm_accept();
    sink.arm_tick();
    let mut completions = Vec::new();
    let mut stopping_since = None;
    loop {
        sink.io.wait(&mut completions);
        for (user_data, result) in completions.drain(..) {
            sink.complete(user_data, result);
        }
        // On stop, let replies already owed (a delayed 250, a send in flight) go out first.
        if stop.load(Ordering::SeqCst) {
            let since = *stopping_since.get_or_insert_with(std::time::Instant::now);
            let owed = sink.conns.iter().flatten().any(|c| c.ack_due_ms.is_some() || !c.out.is_empty());
            if !owed || since.elapsed() > STOP_GRACE {
                break;
            }
        }
    }
    // Operations may still reference connection buffers: never free them.
    std::mem::forget(std::mem::take(&mut sink.conns));
    drop(listener);
    Ok(())
}

impl Sink {
    fn submit(&mut self, sub: Sub, user_data: u64) {
        // SAFETY: buffers referenced by operations live in boxed connections that are never
        // freed while an operation is in flight.
        unsafe { self.io.submit(sub, user_data) };
    }

    fn arm_accept(&mut self) {
        let (storage, len) = &mut *self.accept_addr;
        *len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let sub = Sub::Accept { fd: self.listener, addr: storage, len };
        self.submit(sub, ud(Op::Accept, 0));
    }

    fn arm_tick(&mut self) {
        self.submit(Sub::Timeout { ms: self.tick_ms }, ud(Op::Tick, 0));
    }

    fn complete(&mut self, user_data: u64, result: i32) {
        let slot = (user_data & 0xffff_ffff) as u32;
        match (user_data >> 56) as u8 {
            1 => self.on_accept(result),
            2 => self.on_recv(slot, result),
            3 => self.on_send(slot, result),
            _ => {
                self.on_tick();
                self.arm_tick();
            }
        }
    }

    fn on_accept(&mut self, result: i32) {
        self.arm_accept();
        if result < 0 {
            return;
        }
        sys::set_nodelay(result);
        super::next_random(&mut self.seed);
        let mut session = SinkSession::new(&self.opts.host_name, self.rules.clone(), self.rcpt_seen.clone(), self.seed)
            .with_accept_rate(self.accept.clone())
            .with_client(sys::peer_ip(result))
            .with_chunking(self.opts.chunking);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        if self.opts.max_connections != 0 && self.open >= self.opts.max_connections {
            self.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
            session.refuse();
        }
        let conn = Box::new(Conn {
            fd: result,
            session,
            inbuf: vec![0; RECV_BYTES],
            in_len: 0,
            out: Vec::new(),
            sending: Resume::default(),
            busy: false,
            ack_due_ms: None,
            pending: None,
            reply_due_ms: None,
            ack_ready: false,
        });
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.conns.len() < CONNS_MAX => {
                self.conns.push(None);
                (self.conns.len() - 1) as u32
            }
            None => return sys::close(result),
        };
        self.conns[slot as usize] = Some(conn);
        self.open += 1;
        self.drive(slot);
    }

    fn close(&mut self, slot: u32) {
        let conn = self.conns[slot as usize].take().expect("live connection");
        sys::close(conn.fd);
        self.free.push(slot);
        self.open -= 1;
    }

    fn on_recv(&mut self, slot: u32, result: i32) {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        conn.busy = false;
        if result <= 0 {
            return self.close(slot);
        }
        conn.in_len += result as usize;
        self.drive(slot);
    }

    /// Sends what is left of the connection's output (a new send of it all when none is
    /// under way).
    fn send(&mut self, slot: u32) {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        conn.busy = true;
        if conn.sending.is_done() {
            conn.sending = Resume::new(conn.out.len());
            self.stats.reply_writes.fetch_add(1, Ordering::Relaxed);
        }
        let [rest] = conn.sending.rest([&conn.out]);
        let sub = Sub::Send { fd: conn.fd, buf: rest.as_ptr(), len: rest.len() as u32 };
        self.submit(sub, ud(Op::Send, slot));
    }

    fn on_send(&mut self, slot: u32, result: i32) {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        conn.busy = false;
        if result <= 0 {
            return self.close(slot);
        }
        if !conn.sending.advance(result as usize) {
            return self.send(slot); // the rest first: nothing is added to a send under way
        }
        conn.out.clear();
        self.drive(slot);
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        for slot in 0..self.conns.len() as u32 {
            let Some(conn) = self.conns[slot as usize].as_mut() else { continue };
            if conn.reply_due_ms.is_some_and(|t| t <= now) {
                conn.reply_due_ms = None;
                self.send(slot);
                continue;
            }
            if conn.ack_due_ms.is_some_and(|t| t <= now) {
                conn.ack_due_ms = None;
                conn.ack_ready = true;
                conn.session.ack();
                let report = conn.pending.take().expect("a delayed ack has its report");
                self.record(&report);
                self.drive(slot);
            }
        }
    }

    /// A delay with this sink's jitter on top.
    fn delay_ms(&mut self, base: Duration) -> u64 {
        let jitter = self.opts.jitter.as_millis() as u64;
        if jitter == 0 {
            return base.as_millis() as u64;
        }
        base.as_millis() as u64 + super::next_random(&mut self.seed) % (jitter + 1)
    }

    fn record(&mut self, report: &sluice_engine::smtp::sink::Report) {
        let s = &self.stats;
        let now = now_ms();
        s.messages.fetch_add(1, Ordering::Relaxed);
        s.recipients.fetch_add(report.recipients as u64, Ordering::Relaxed);
        s.bytes.fetch_add(report.bytes, Ordering::Relaxed);
        let _ = s.first_message_unix_ms.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        s.last_message_unix_ms.store(now, Ordering::SeqCst);
        if report.checksum == Checksum::Bad {
            s.corrupt.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sent) = report.sent_unix_ms {
            let mut h = s.latency_ms.lock().unwrap_or_else(|e| e.into_inner());
            let h = h.get_or_insert_with(|| hdrhistogram::Histogram::new(3).expect("3 significant digits"));
            let _ = h.record(now.saturating_sub(sent));
        }
        match report.id {
            Some(id) if !self.seen.insert(id) => {
                s.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {}
            None => {
                s.without_id.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn drive(&mut self, slot: u32) {
        let latency = self.opts.latency;
        let latency_ms = if latency.is_zero() { 0 } else { self.delay_ms(latency) };
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        if conn.busy {
            return;
        }
        let mut consumed = 0;
        let mut reports = std::mem::take(&mut self.reports);
        let mut scripted = Vec::new();
        conn.session.set_now(sys::mono_ns());
        while conn.ack_due_ms.is_none() {
            let (used, event) = conn.session.receive(&conn.inbuf[consumed..conn.in_len]);
            consumed += used;
            match event {
                Some(SinkEvent::Message(r)) => {
                    // Counted when acknowledged: a delayed ack is counted on the tick.
                    if latency_ms == 0 {
                        // Acknowledged at once, and the commands pipelined behind the end
                        // of data are answered in the same write, as a real receiver does
                        // (Postfix's smtpd flushes its replies only once its input is read).
                        conn.session.ack();
                        reports.push(r);
                        continue;
                    }
                    conn.ack_due_ms = Some(now_ms() + latency_ms);
                    conn.pending = Some(r);
                    break;
                }
                Some(SinkEvent::Scripted(code)) => scripted.push(code),
                Some(SinkEvent::Close) => break,
                None if used == 0 || consumed == conn.in_len => break,
                None => {}
            }
        }
        conn.inbuf.copy_within(consumed..conn.in_len, 0);
        conn.in_len -= consumed;
        conn.out.extend_from_slice(conn.session.output());
        conn.session.clear_output();
        let (fd, closing, waiting) = (conn.fd, conn.session.is_closing(), conn.ack_due_ms.is_some());
        for code in scripted {
            let counter = if code >= 500 { &self.stats.scripted_5xx } else { &self.stats.scripted_4xx };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        for r in reports.drain(..) {
            self.record(&r);
        }
        self.reports = reports;
        let reply_latency = self.opts.reply_latency;
        let reply_delay = if reply_latency.is_zero() { 0 } else { self.delay_ms(reply_latency) };
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        if !conn.out.is_empty() {
            // `reply_latency`: the receiver thinks before answering (not again for an
            // acknowledgement that waited its own latency).
            if reply_delay > 0 && !std::mem::take(&mut conn.ack_ready) {
                conn.reply_due_ms = Some(now_ms() + reply_delay);
                return;
            }
            return self.send(slot);
        }
        if closing {
            return self.close(slot);
        }
        if waiting {
            return;
        }
        if conn.in_len == conn.inbuf.len() {
            conn.inbuf.resize(conn.inbuf.len() * 2, 0);
        }
        conn.busy = true;
        let buf = conn.inbuf[conn.in_len..].as_mut_ptr();
        let len = (conn.inbuf.len() - conn.in_len) as u32;
        self.submit(Sub::Recv { fd, buf, len }, ud(Op::Recv, slot));
    }
}
