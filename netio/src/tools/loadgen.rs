//! `sluice loadgen`: an io_uring SMTP client that injects as fast as asked. Each message
//! carries `X-Sluice-Id` and `X-Sluice-Sum` (CRC-32C of the body) so `sluice sink` can find
//! corrupt and duplicate messages; connect and DATA-acknowledgement latencies go to HDR
//! histograms.

use crate::backend::{Backend, Sub};
use crate::sys::{self, now_ms};
use hdrhistogram::Histogram;
use sluice_engine::smtp::client::{Client, ClientEvent, END_OF_DATA};
use sluice_engine::smtp::reply::Reply;
use sluice_engine::smtp::sink::{body_checksum, ID_HEADER, SENT_HEADER, SUM_HEADER};
use sluice_spool::Resume;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

const RECV_BYTES: usize = 16 * 1024;
const TICK: Duration = Duration::from_millis(1);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// After a failed connect, wait this long before the next try.
const RECONNECT_DELAY_MS: u64 = 100;
/// Body lines are this long (plus CRLF); no line starts with a dot, so the body's checksum
/// is the same before and after SMTP transparency.
const BODY_LINE_BYTES: usize = 76;
const CONNECTIONS_MAX: u32 = 1 << 15;

#[derive(Debug, Clone)]
pub struct LoadgenOptions {
    pub target: SocketAddr,
    /// Stop after this many messages (and/or after `duration`).
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    pub connections: u32,
    /// Messages per connection before QUIT and reconnect (0: no limit).
    pub per_connection: u32,
    /// Message sizes with weights; one entry is a fixed size.
    pub sizes: Vec<(usize, u32)>,
    pub domains: u32,
    /// Zipf exponent of the domain mix (0: every domain alike, in turn; 1: the k-th domain
    /// gets 1/k of the first's share, as real campaigns do: a few big providers, a long tail).
    pub zipf: f64,
    pub domain_suffix: String,
    pub rcpts: u32,
    pub pipelining: bool,
    /// Open-loop target rate, messages per second.
    pub rate: Option<f64>,
    pub headers: Vec<String>,
    pub from: String,
    /// The local address connections come from (the kernel's choice when None).
    pub source: Option<std::net::IpAddr>,
    pub ehlo: String,
}

#[derive(Debug)]
pub struct LoadgenReport {
    pub messages_ok: u64,
    pub messages_failed: u64,
    pub recipients_ok: u64,
    pub recipients_failed: u64,
    pub bytes: u64,
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    pub elapsed: Duration,
    pub replies: BTreeMap<u16, u64>,
    pub connect_errors: u64,
    pub connect_us: Histogram<u64>,
    pub ack_us: Histogram<u64>,
}

impl LoadgenReport {
    pub fn messages_per_second(&self) -> f64 {
        (self.messages_ok + self.messages_failed) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn to_json(&self) -> String {
        let pct = |h: &Histogram<u64>| {
            format!(
                "{{\"count\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            )
        };
        let replies: Vec<String> = self.replies.iter().map(|(c, n)| format!("\"{c}\":{n}")).collect();
        format!(
            "{{\"messages_ok\":{},\"messages_failed\":{},\"recipients_ok\":{},\"recipients_failed\":{},\"bytes\":{},\"elapsed_s\":{:.3},\"messages_per_s\":{:.1},\"bytes_per_s\":{:.0},\"start_unix_ms\":{},\"end_unix_ms\":{},\"connect_errors\":{},\"replies\":{{{}}},\"connect\":{},\"data_ack\":{}}}",
            self.messages_ok,
            self.messages_failed,
            self.recipients_ok,
            self.recipients_failed,
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.messages_per_second(),
            self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.start_unix_ms,
            self.end_unix_ms,
            self.connect_errors,
            replies.join(","),
            pct(&self.connect_us),
            pct(&self.ack_us),
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Connect = 1,
    Recv,
    Send,
    Tick,
}

fn ud(op: Op, slot: u32) -> u64 {
    (op as u64) << 56 | slot as u64
}

struct Conn {
    fd: RawFd,
    client: Client,
    addr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
    inbuf: Vec<u8>,
    in_len: usize,
    out: Vec<u8>,
    sending: Resume,
    body: Vec<u8>,
    busy: bool,
    sending_body: bool,
    sent_here: u32,
    /// Waiting for the rate limiter (ready, no transaction).
    parked: bool,
    /// The server greeted and answered EHLO at least once on this connection.
    ready_once: bool,
    started_at: Instant,
    body_done_at: Instant,
    message_bytes: u64,
}

struct Loadgen {
    opts: LoadgenOptions,
    io: Box<dyn Backend>,
    conns: Vec<Option<Box<Conn>>>,
    filler: Vec<u8>,
    started: u64,
    done: u64,
    reconnect_at: Vec<u64>,
    start: Instant,
    deadline: Option<Instant>,
    tick_ms: u64,
    size_pick: u64,
    /// With `zipf`: each domain's cumulative share, to pick from.
    domain_cdf: Vec<f64>,
    domain_pick: u64,
    report: LoadgenReport,
}

/// Cumulative shares of `n` domains under a Zipf law with exponent `s` (empty for s = 0).
fn zipf_cdf(n: u32, s: f64) -> Vec<f64> {
    if s <= 0.0 || n <= 1 {
        return Vec::new();
    }
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

fn filler(bytes: usize) -> Vec<u8> {
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut out = Vec::with_capacity(bytes + BODY_LINE_BYTES + 2);
    let mut i = 0usize;
    while out.len() < bytes {
        for _ in 0..BODY_LINE_BYTES {
            out.push(alphabet[i % alphabet.len()]);
            i = i.wrapping_mul(31).wrapping_add(7);
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Runs the load. `progress(done, elapsed)` is called about once a second.
pub fn run_loadgen(opts: LoadgenOptions, mut progress: impl FnMut(u64, Duration)) -> std::io::Result<LoadgenReport> {
    assert!(opts.connections >= 1 && opts.connections <= CONNECTIONS_MAX && opts.rcpts >= 1 && opts.domains >= 1);
    assert!(opts.messages.is_some() || opts.duration.is_some(), "bounded by count or time");
    let largest = opts.sizes.iter().map(|s| s.0).max().unwrap_or(1024);
    let start = Instant::now();
    let mut lg = Loadgen {
        filler: filler(largest),
        io: crate::backend::open_auto()?,
        conns: Vec::new(),
        started: 0,
        done: 0,
        reconnect_at: Vec::new(),
        start,
        deadline: opts.duration.map(|d| start + d),
        tick_ms: TICK.as_millis() as u64,
        size_pick: 0,
        domain_cdf: zipf_cdf(opts.domains, opts.zipf),
        domain_pick: 0x9e3779b97f4a7c15,
        report: LoadgenReport {
            messages_ok: 0,
            messages_failed: 0,
            recipients_ok: 0,
            recipients_failed: 0,
            bytes: 0,
            start_unix_ms: now_ms(),
            end_unix_ms: 0,
            elapsed: Duration::ZERO,
            replies: BTreeMap::new(),
            connect_errors: 0,
            connect_us: Histogram::new(3).expect("histogram"),
            ack_us: Histogram::new(3).expect("histogram"),
        },
        opts,
    };
    for _ in 0..lg.opts.connections {
        lg.conns.push(None);
    }
    for slot in 0..lg.opts.connections {
        lg.connect(slot);
    }
    lg.arm_tick();
    let mut completions = Vec::new();
    let mut last_progress = Instant::now();
    while lg.conns.iter().any(Option::is_some) || (lg.more_work() && !lg.reconnect_at.is_empty()) {
        lg.io.wait(&mut completions);
        for (user_data, result) in completions.drain(..) {
            lg.complete(user_data, result);
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            progress(lg.done, lg.start.elapsed());
        }
    }
    lg.report.elapsed = lg.start.elapsed();
    lg.report.end_unix_ms = now_ms();
    std::mem::forget(std::mem::take(&mut lg.conns));
    Ok(lg.report)
}

impl Loadgen {
    fn submit(&mut self, sub: Sub, user_data: u64) {
        // SAFETY: buffers referenced by operations live in boxed connections that are never
        // freed while an operation is in flight.
        unsafe { self.io.submit(sub, user_data) };
    }

    fn arm_tick(&mut self) {
        self.submit(Sub::Timeout { ms: self.tick_ms }, ud(Op::Tick, 0));
    }

    fn more_work(&self) -> bool {
        let by_count = self.opts.messages.is_none_or(|m| self.started < m);
        let by_time = self.deadline.is_none_or(|d| Instant::now() < d);
        by_count && by_time
    }

    fn rate_allows(&self) -> bool {
        self.opts.rate.is_none_or(|r| (self.started as f64) < r * self.start.elapsed().as_secs_f64() + 1.0)
    }

    fn connect(&mut self, slot: u32) {
        let fd = match self.io.tcp_socket(self.opts.target, self.opts.source) {
            Ok(fd) => fd,
            Err(_) => {
                self.report.connect_errors += 1;
                self.reconnect_at.push(now_ms() + RECONNECT_DELAY_MS);
                return;
            }
        };
        let mut client = Client::new(&self.opts.ehlo);
        if !self.opts.pipelining {
            client.disable_pipelining();
        }
        let conn = Box::new(Conn {
            fd,
            client,
            addr: Box::new(sys::sockaddr(self.opts.target)),
            inbuf: vec![0; RECV_BYTES],
            in_len: 0,
            out: Vec::with_capacity(4096),
            sending: Resume::default(),
            body: Vec::new(),
            busy: true,
            sending_body: false,
            sent_here: 0,
            parked: false,
            ready_once: false,
            started_at: Instant::now(),
            body_done_at: Instant::now(),
            message_bytes: 0,
        });
        let sub = Sub::Connect { fd, addr: &conn.addr.0, len: conn.addr.1 };
        self.conns[slot as usize] = Some(conn);
        self.submit(sub, ud(Op::Connect, slot));
    }

    fn complete(&mut self, user_data: u64, result: i32) {
        let slot = (user_data & 0xffff_ffff) as u32;
        match (user_data >> 56) as u8 {
            1 => self.on_connect(slot, result),
            2 => self.on_recv(slot, result),
            3 => self.on_send(slot, result),
            _ => {
                self.on_tick();
                self.arm_tick();
            }
        }
    }

    fn close(&mut self, slot: u32) {
        let conn = self.conns[slot as usize].take().expect("live connection");
        sys::close(conn.fd);
        if self.more_work() {
            self.connect(slot);
        }
    }

    fn on_connect(&mut self, slot: u32, result: i32) {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        conn.busy = false;
        if result < 0 {
            self.report.connect_errors += 1;
            let conn = self.conns[slot as usize].take().expect("live connection");
            sys::close(conn.fd);
            self.reconnect_at.push(now_ms() + RECONNECT_DELAY_MS);
            return;
        }
        let us = conn.started_at.elapsed().as_micros() as u64;
        let _ = self.report.connect_us.record(us.max(1));
        self.recv(slot);
    }

    fn recv(&mut self, slot: u32) {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        if conn.in_len == conn.inbuf.len() {
            conn.inbuf.resize(conn.inbuf.len() * 2, 0);
        }
        conn.busy = true;
        let sub = Sub::Recv {
            fd: conn.fd,
            buf: conn.inbuf[conn.in_len..].as_mut_ptr(),
            len: (conn.inbuf.len() - conn.in_len) as u32,
        };
        self.submit(sub, ud(Op::Recv, slot));
    }

    fn send(&mut self, slot: u32) {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        conn.busy = true;
        if conn.sending.is_done() {
            conn.sending = Resume::new(conn.out.len());
        }
        let [rest] = conn.sending.rest([&conn.out]);
        let sub = Sub::Send { fd: conn.fd, buf: rest.as_ptr(), len: rest.len() as u32 };
        self.submit(sub, ud(Op::Send, slot));
    }

    fn on_recv(&mut self, slot: u32, result: i32) {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        conn.busy = false;
        if result <= 0 {
            return self.fail(slot, Reply::new(421, "connection closed"));
        }
        conn.in_len += result as usize;
        self.drive(slot);
    }

    fn on_send(&mut self, slot: u32, result: i32) {
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        conn.busy = false;
        if result <= 0 {
            return self.fail(slot, Reply::new(421, "connection lost while sending"));
        }
        if !conn.sending.advance(result as usize) {
            return self.send(slot);
        }
        conn.out.clear();
        if std::mem::take(&mut conn.sending_body) {
            conn.client.body_sent();
            conn.body_done_at = Instant::now();
        }
        self.drive(slot);
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        let due = self.reconnect_at.iter().filter(|t| **t <= now).count();
        self.reconnect_at.retain(|t| *t > now);
        for _ in 0..due {
            if let Some(slot) = self.conns.iter().position(Option::is_none) {
                if self.more_work() {
                    self.connect(slot as u32);
                }
            }
        }
        for slot in 0..self.conns.len() as u32 {
            if self.conns[slot as usize].as_ref().is_some_and(|c| c.parked) {
                self.conns[slot as usize].as_mut().expect("checked").parked = false;
                self.next_work(slot);
                let conn = self.conns[slot as usize].as_ref().expect("live connection");
                if !conn.busy && !conn.out.is_empty() {
                    self.send(slot);
                }
            }
        }
    }

    /// The session failed (or the server closed): count the message in flight as failed.
    fn fail(&mut self, slot: u32, reply: Reply) {
        let conn = self.conns[slot as usize].as_ref().expect("live connection");
        if conn.client.in_transaction() {
            self.done += 1;
            self.report.messages_failed += 1;
            self.report.recipients_failed += self.opts.rcpts as u64;
            *self.report.replies.entry(reply.code).or_default() += self.opts.rcpts as u64;
        }
        if !conn.ready_once {
            // Refused before EHLO (a 421 greeting): back off instead of hammering.
            self.report.connect_errors += 1;
            let conn = self.conns[slot as usize].take().expect("live connection");
            sys::close(conn.fd);
            self.reconnect_at.push(now_ms() + RECONNECT_DELAY_MS);
            return;
        }
        self.close(slot);
    }

    fn drive(&mut self, slot: u32) {
        loop {
            let conn = self.conns[slot as usize].as_mut().expect("live connection");
            if conn.busy || conn.parked {
                return;
            }
            let (used, event) = conn.client.receive(&conn.inbuf[..conn.in_len]);
            conn.inbuf.copy_within(used..conn.in_len, 0);
            conn.in_len -= used;
            conn.out.extend_from_slice(conn.client.output());
            conn.client.clear_output();
            let progressed = used > 0 || event.is_some();
            match event {
                None => {}
                Some(ClientEvent::Ready) => {
                    conn.ready_once = true;
                    self.next_work(slot)
                }
                Some(ClientEvent::SendBody) => {
                    assert!(conn.out.is_empty(), "the client writes nothing before the body");
                    std::mem::swap(&mut conn.out, &mut conn.body);
                    conn.sending_body = true;
                    return self.send(slot);
                }
                Some(ClientEvent::Done(replies)) => {
                    let us = conn.body_done_at.elapsed().as_micros() as u64;
                    let idle = conn.client.is_idle();
                    let bytes = conn.message_bytes;
                    let _ = self.report.ack_us.record(us.max(1));
                    self.done += 1;
                    let all_ok = replies.iter().all(Reply::is_positive);
                    for r in &replies {
                        *self.report.replies.entry(r.code).or_default() += 1;
                        if r.is_positive() {
                            self.report.recipients_ok += 1;
                        } else {
                            self.report.recipients_failed += 1;
                        }
                    }
                    if all_ok {
                        self.report.messages_ok += 1;
                        self.report.bytes += bytes;
                    } else {
                        self.report.messages_failed += 1;
                    }
                    if idle {
                        self.next_work(slot);
                    }
                }
                Some(ClientEvent::Failed(reply)) => return self.fail(slot, reply),
                Some(ClientEvent::StartTls) => unreachable!("loadgen never asks for STARTTLS"),
                Some(ClientEvent::Closed) => return self.close(slot),
            }
            let conn = self.conns[slot as usize].as_mut().expect("live connection");
            if !conn.out.is_empty() {
                return self.send(slot);
            }
            if conn.parked {
                return;
            }
            if !progressed || conn.in_len == 0 {
                if conn.client.awaiting_reply() {
                    self.recv(slot);
                }
                return;
            }
        }
    }

    fn pick_size(&mut self) -> usize {
        let total: u64 = self.opts.sizes.iter().map(|s| s.1 as u64).sum();
        let mut roll = super::next_random(&mut self.size_pick) % total.max(1);
        for (size, weight) in &self.opts.sizes {
            if roll < *weight as u64 {
                return *size;
            }
            roll -= *weight as u64;
        }
        self.opts.sizes[0].0
    }

    /// Starts the next message on a ready connection, parks it for the rate limiter, or QUITs.
    fn next_work(&mut self, slot: u32) {
        let limit = self.opts.per_connection;
        let sent_here = self.conns[slot as usize].as_ref().expect("live connection").sent_here;
        if !self.more_work() || (limit != 0 && sent_here >= limit) {
            let conn = self.conns[slot as usize].as_mut().expect("live connection");
            conn.client.quit();
            conn.out.extend_from_slice(conn.client.output());
            conn.client.clear_output();
            return;
        }
        if !self.rate_allows() {
            self.conns[slot as usize].as_mut().expect("live connection").parked = true;
            return;
        }
        let n = self.started;
        self.started += 1;
        let size = self.pick_size();
        let rcpts: Vec<String> = (0..self.opts.rcpts)
            .map(|j| {
                let d = match self.domain_cdf.is_empty() {
                    true => (n * self.opts.rcpts as u64 + j as u64) % self.opts.domains as u64,
                    false => {
                        let roll = super::next_random(&mut self.domain_pick) as f64 / (1u64 << 31) as f64;
                        self.domain_cdf.partition_point(|c| *c < roll).min(self.domain_cdf.len() - 1) as u64
                    }
                };
                let domain = if self.opts.domains == 1 {
                    self.opts.domain_suffix.clone()
                } else {
                    format!("d{d}.{}", self.opts.domain_suffix)
                };
                format!("u{n}.{j}@{domain}")
            })
            .collect();
        let first_line = format!("id {n}\r\n");
        let filler_len = size.saturating_sub(first_line.len());
        let lines = filler_len.div_ceil(BODY_LINE_BYTES + 2);
        let filler = &self.filler[..(lines * (BODY_LINE_BYTES + 2)).min(self.filler.len())];
        let sum = crc32c::crc32c_append(body_checksum(first_line.as_bytes()), filler);
        let mut extra = String::new();
        for h in &self.opts.headers {
            extra.push_str(h);
            extra.push_str("\r\n");
        }
        // When it was sent: the sink measures delivery latency from it.
        let head = format!(
            "From: <{from}>\r\nTo: <{to}>\r\nSubject: sluice loadgen {n}\r\nMessage-Id: <{n}.{t}@loadgen.sluice>\r\n{ID_HEADER}: {n}\r\n{SUM_HEADER}: {sum:08x}\r\n{SENT_HEADER}: {sent}\r\n{extra}\r\n",
            from = self.opts.from,
            to = rcpts[0],
            t = self.report.start_unix_ms,
            sent = crate::sys::now_ms(),
        );
        let conn = self.conns[slot as usize].as_mut().expect("live connection");
        conn.sent_here += 1;
        let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let total = head.len() + first_line.len() + filler.len();
        conn.message_bytes = total as u64;
        conn.client.start(&self.opts.from, &rcpt_refs, total as u64);
        conn.out.extend_from_slice(conn.client.output());
        conn.client.clear_output();
        // The body waits in its own buffer until the server says 354.
        conn.body.clear();
        conn.body.extend_from_slice(head.as_bytes());
        conn.body.extend_from_slice(first_line.as_bytes());
        conn.body.extend_from_slice(filler);
        conn.body.extend_from_slice(END_OF_DATA);
    }
}
