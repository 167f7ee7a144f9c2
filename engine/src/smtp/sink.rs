//! The benchmark sink's SMTP server machine, sans-IO: accepts and counts, checks each
//! message's `X-Sluice-Id` / `X-Sluice-Sum` (CRC-32C of the body, written by `sluice
//! loadgen`), and can play a receiver with scripted per-domain replies at RCPT.

use super::addr::{domain_of, parse_path};
use super::data::DataScanner;

/// Header bytes searched for the id and checksum before giving up on them.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;
pub const ID_HEADER: &str = "X-Sluice-Id";
pub const SUM_HEADER: &str = "X-Sluice-Sum";
/// When loadgen sent the message (Unix ms): the sink's delivery latency.
pub const SENT_HEADER: &str = "X-Sluice-Sent";

/// `DOMAIN[/CLIENT-IP]:REPLY:PERCENT%[@FROM-TO]`, e.g. `gmail.test:421 4.7.0 try later:5%` or
/// `*:550 5.1.1 no:1%`. With `/CLIENT-IP` the rule applies only to connections from that
/// address (a receiver that blocks one sending IP). With `@FROM-TO` it applies only to the
/// sink's RCPT commands number FROM to TO-1 (counted across all connections): a receiver
/// that starts refusing after FROM recipients and recovers at TO.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyRule {
    pub domain: String,
    pub client: Option<std::net::IpAddr>,
    pub code: u16,
    pub line: String,
    pub percent: f64,
    pub window: Option<(u64, u64)>,
}

pub fn parse_rule(s: &str) -> Result<ReplyRule, String> {
    let bad = || format!("`{s}` is not DOMAIN:REPLY:PERCENT% (e.g. 'gmail.test:421 4.7.0 try later:5%')");
    let (domain, rest) = s.split_once(':').ok_or_else(bad)?;
    let (domain, client) = match domain.split_once('/') {
        Some((d, ip)) => (d, Some(ip.trim().parse().map_err(|_| bad())?)),
        None => (domain, None),
    };
    let (line, odds) = rest.rsplit_once(':').ok_or_else(bad)?;
    let (percent, window) = match odds.split_once('@') {
        Some((p, w)) => {
            let (from, to) = w.split_once('-').ok_or_else(bad)?;
            (p, Some((from.trim().parse().map_err(|_| bad())?, to.trim().parse().map_err(|_| bad())?)))
        }
        None => (odds, None),
    };
    let percent: f64 = percent.trim().trim_end_matches('%').parse().map_err(|_| bad())?;
    let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    if !(200..600).contains(&code) || !(0.0..=100.0).contains(&percent) || domain.is_empty() {
        return Err(bad());
    }
    Ok(ReplyRule { domain: domain.to_ascii_lowercase(), client, code, line: line.trim().to_string(), percent, window })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// No `X-Sluice-Sum` header: not a loadgen message.
    Absent,
    Good,
    Bad,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: Option<u64>,
    /// `X-Sluice-Sent`, when loadgen sent it.
    pub sent_unix_ms: Option<u64>,
    pub checksum: Checksum,
    /// Content bytes (transparency form, without the terminator).
    pub bytes: u64,
    pub recipients: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SinkEvent {
    /// A message arrived; call `ack` (now, or after a simulated delay).
    Message(Report),
    /// Reply codes given to recipients by the scripted rules.
    Scripted(u16),
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Command,
    Data,
    /// Inside a BDAT chunk (RFC 3030): `left` bytes to come; `last`: the message ends with
    /// it; `refused`: no recipient, the chunk is read and answered 554.
    Chunk {
        left: u64,
        last: bool,
        refused: bool,
    },
    Acking,
    Closing,
}

pub struct SinkSession {
    host: String,
    rules: std::sync::Arc<Vec<ReplyRule>>,
    /// RCPT commands seen by the whole sink, for rules with a window.
    rcpt_seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// A receiver's hidden acceptance rate: RCPTs beyond it get 451 4.7.1.
    accept: Option<std::sync::Arc<(crate::shape::gcra::GcraCell, crate::shape::gcra::Limit)>>,
    /// The client's address, for rules that name one.
    client: Option<std::net::IpAddr>,
    now_ns: u64,
    rng: u64,
    state: State,
    recipients: u32,
    scanner: DataScanner,
    headers: Vec<u8>,
    in_headers: bool,
    body_crc: u32,
    bytes: u64,
    out: Vec<u8>,
    /// CHUNKING is offered (`sluice sink --chunking`).
    chunking: bool,
    /// In BDAT chunks: the next byte starts a line (to count and sum a chunk's content in
    /// the transparency form DATA's content has).
    line_start: bool,
}

impl SinkSession {
    pub fn new(
        host: &str,
        rules: std::sync::Arc<Vec<ReplyRule>>,
        rcpt_seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
        seed: u64,
    ) -> Self {
        let mut s = SinkSession {
            host: host.to_string(),
            rules,
            rcpt_seen,
            accept: None,
            client: None,
            now_ns: 0,
            rng: seed | 1,
            state: State::Command,
            recipients: 0,
            scanner: DataScanner::default(),
            headers: Vec::new(),
            in_headers: true,
            body_crc: 0,
            bytes: 0,
            out: Vec::with_capacity(256),
            chunking: false,
            line_start: true,
        };
        s.out.extend_from_slice(format!("220 {} ESMTP sluice-sink\r\n", s.host).as_bytes());
        s
    }

    /// Shares the sink-wide acceptance-rate cell with this session.
    pub fn with_accept_rate(
        mut self,
        accept: Option<std::sync::Arc<(crate::shape::gcra::GcraCell, crate::shape::gcra::Limit)>>,
    ) -> Self {
        self.accept = accept;
        self
    }

    /// Offers CHUNKING (RFC 3030): messages may come as BDAT chunks, as big receivers take them.
    pub fn with_chunking(mut self, chunking: bool) -> Self {
        self.chunking = chunking;
        self
    }

    /// The client's address, for rules that apply to one sending IP.
    pub fn with_client(mut self, client: Option<std::net::IpAddr>) -> Self {
        self.client = client;
        self
    }

    /// The caller's monotonic clock, for the acceptance rate.
    pub fn set_now(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    /// Refuses the connection at the greeting (the sink's connection cap).
    pub fn refuse(&mut self) {
        self.out.clear();
        self.out.extend_from_slice(b"421 4.7.0 too many connections\r\n");
        self.state = State::Closing;
    }

    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    pub fn is_closing(&self) -> bool {
        self.state == State::Closing
    }

    pub fn is_acking(&self) -> bool {
        self.state == State::Acking
    }

    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn roll(&mut self) -> f64 {
        // xorshift64*: reproducible per connection seed.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64 * 100.0
    }

    pub fn receive(&mut self, input: &[u8]) -> (usize, Option<SinkEvent>) {
        match self.state {
            State::Command => self.command(input),
            State::Data => self.data(input),
            State::Chunk { left, last, refused } => self.chunk(input, left, last, refused),
            State::Acking => (0, None),
            State::Closing => (0, Some(SinkEvent::Close)),
        }
    }

    fn command(&mut self, input: &[u8]) -> (usize, Option<SinkEvent>) {
        let Some(lf) = input.iter().position(|&b| b == b'\n') else {
            return (if input.len() > 4096 { input.len() } else { 0 }, None);
        };
        let line = String::from_utf8_lossy(&input[..lf]).trim_end().to_string();
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let mut event = None;
        match verb.as_str() {
            "EHLO" => self.reply(&format!(
                "250-{} greets you\r\n250-PIPELINING\r\n250-SIZE 0\r\n250-8BITMIME\r\n{}250 ENHANCEDSTATUSCODES",
                self.host,
                if self.chunking { "250-CHUNKING\r\n" } else { "" }
            )),
            "HELO" => self.reply(&format!("250 {}", self.host)),
            "MAIL" => {
                self.recipients = 0;
                self.new_content();
                self.reply("250 2.1.0 Ok");
            }
            "RCPT" => event = self.rcpt(&line),
            "DATA" if self.recipients == 0 => self.reply("554 5.5.1 No valid recipients"),
            "DATA" => {
                self.reply("354 End data with <CR><LF>.<CR><LF>");
                self.state = State::Data;
                self.new_content();
            }
            // RFC 3030 §2: `BDAT <size> [LAST]`; the chunk's bytes follow the line.
            "BDAT" if self.chunking => match bdat_args(&line) {
                Some((left, last)) => self.state = State::Chunk { left, last, refused: self.recipients == 0 },
                None => self.reply("501 5.5.4 Syntax: BDAT <size> [LAST]"),
            },
            "RSET" => {
                self.recipients = 0;
                self.reply("250 2.0.0 Ok");
            }
            "NOOP" => self.reply("250 2.0.0 Ok"),
            "QUIT" => {
                self.reply("221 2.0.0 Bye");
                self.state = State::Closing;
            }
            _ => self.reply("500 5.5.2 Command unrecognized"),
        }
        let closing = self.state == State::Closing;
        (lf + 1, event.or(closing.then_some(SinkEvent::Close)))
    }

    fn rcpt(&mut self, line: &str) -> Option<SinkEvent> {
        let arg = line.get(8..).unwrap_or("").trim_start();
        let domain = parse_path(arg, false).map(|(a, _)| domain_of(a)).unwrap_or_default();
        let rules = self.rules.clone();
        let n = self.rcpt_seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let in_window = |r: &ReplyRule| r.window.is_none_or(|(from, to)| (from..to).contains(&n));
        let client = self.client;
        let applies = |r: &ReplyRule| {
            (r.domain == "*" || r.domain == domain) && in_window(r) && r.client.is_none_or(|c| Some(c) == client)
        };
        for rule in rules.iter().filter(|r| applies(r)) {
            if self.roll() < rule.percent {
                self.reply(&rule.line);
                if rule.code == 421 {
                    self.state = State::Closing;
                }
                return Some(SinkEvent::Scripted(rule.code));
            }
        }
        if let Some(accept) = &self.accept {
            if accept.0.try_acquire(self.now_ns, accept.1).is_err() {
                self.reply("451 4.7.1 Rate limit exceeded, slow down");
                return Some(SinkEvent::Scripted(451));
            }
        }
        self.recipients += 1;
        self.reply("250 2.1.5 Ok");
        None
    }

    /// A message's content starts (at MAIL, and again at DATA).
    fn new_content(&mut self) {
        self.scanner = DataScanner::default();
        self.headers.clear();
        self.in_headers = true;
        self.body_crc = 0;
        self.bytes = 0;
        self.line_start = true;
    }

    /// A chunk's bytes as DATA would have carried them: a line starting with "." gets
    /// another (RFC 5321 §4.5.2), so that sums agree whichever way a message came.
    fn chunk_content(&mut self, mut bytes: &[u8]) {
        while let Some(&first) = bytes.first() {
            if self.line_start && first == b'.' {
                self.content(b".");
            }
            let end = bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| i + 1);
            self.content(&bytes[..end]);
            self.line_start = bytes[end - 1] == b'\n';
            bytes = &bytes[end..];
        }
    }

    /// Content of the message (without dot-stuffing): its headers kept, its body summed.
    fn content(&mut self, content: &[u8]) {
        self.bytes += content.len() as u64;
        if !self.in_headers {
            self.body_crc = crc32c::crc32c_append(self.body_crc, content);
            return;
        }
        let from = self.headers.len().saturating_sub(3);
        self.headers.extend_from_slice(content);
        if let Some(k) = find(&self.headers[from..], b"\r\n\r\n").map(|k| k + from) {
            self.in_headers = false;
            self.body_crc = crc32c::crc32c_append(self.body_crc, &self.headers[k + 4..]);
            self.headers.truncate(k + 2);
        } else if self.headers.len() > HEADER_BYTES_MAX {
            self.in_headers = false;
            self.headers.clear();
        }
    }

    fn data(&mut self, input: &[u8]) -> (usize, Option<SinkEvent>) {
        let mut scanner = std::mem::take(&mut self.scanner);
        let (used, done) = scanner.scan(input, |content| self.content(content));
        self.scanner = scanner;
        if !done {
            return (used, None);
        }
        (used, Some(self.message()))
    }

    /// Bytes of a BDAT chunk; its reply once it is whole (the message's, for the last).
    fn chunk(&mut self, input: &[u8], left: u64, last: bool, refused: bool) -> (usize, Option<SinkEvent>) {
        let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if !refused {
            self.chunk_content(&input[..n]);
        }
        let left = left - n as u64;
        if left > 0 {
            self.state = State::Chunk { left, last, refused };
            return (n, None);
        }
        self.state = State::Command;
        match (refused, last) {
            (true, _) => self.reply("554 5.5.1 No valid recipients"),
            (false, false) => self.reply("250 2.0.0 Chunk received"),
            (false, true) => return (n, Some(self.message())),
        }
        (n, None)
    }

    /// The whole message is in: its report, and the session waits for `ack`.
    fn message(&mut self) -> SinkEvent {
        let report = Report {
            id: header_value(&self.headers, ID_HEADER).and_then(|v| v.parse().ok()),
            sent_unix_ms: header_value(&self.headers, SENT_HEADER).and_then(|v| v.parse().ok()),
            checksum: match header_value(&self.headers, SUM_HEADER) {
                None => Checksum::Absent,
                Some(v) if u32::from_str_radix(v, 16) == Ok(self.body_crc) && !self.in_headers => Checksum::Good,
                Some(_) => Checksum::Bad,
            },
            bytes: self.bytes,
            recipients: self.recipients,
        };
        self.state = State::Acking;
        SinkEvent::Message(report)
    }

    /// Accepts the message that `SinkEvent::Message` reported.
    pub fn ack(&mut self) {
        assert_eq!(self.state, State::Acking);
        self.reply("250 2.0.0 Ok: queued");
        self.recipients = 0;
        self.state = State::Command;
    }
}

/// `BDAT <size> [LAST]`'s size and whether it is the last chunk.
fn bdat_args(line: &str) -> Option<(u64, bool)> {
    let mut words = line.get(5..)?.split_ascii_whitespace();
    let size = words.next()?.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header_value<'a>(headers: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(headers).ok()?;
    text.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The loadgen side: CRC-32C of a body, as written in `X-Sluice-Sum`.
pub fn body_checksum(body: &[u8]) -> u32 {
    crc32c::crc32c(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn feed(s: &mut SinkSession, input: &[u8]) -> Vec<SinkEvent> {
        let mut events = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let (used, ev) = s.receive(&input[at..]);
            at += used;
            match ev {
                Some(SinkEvent::Message(r)) => {
                    events.push(SinkEvent::Message(r));
                    s.ack();
                }
                Some(SinkEvent::Close) => {
                    events.push(SinkEvent::Close);
                    break;
                }
                Some(e) => events.push(e),
                None if used == 0 => break,
                None => {}
            }
        }
        events
    }

    /// Feeds `wire` in reads of `read` bytes (what a read left unparsed waits for the next);
    /// the messages reported, each acknowledged at once.
    fn reports_in_reads(s: &mut SinkSession, wire: &[u8], read: usize) -> Vec<Report> {
        let mut reports = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for c in wire.chunks(read) {
            pending.extend_from_slice(c);
            loop {
                let (used, ev) = s.receive(&pending);
                pending.drain(..used);
                if let Some(SinkEvent::Message(r)) = ev {
                    reports.push(r);
                    s.ack();
                } else if used == 0 || pending.is_empty() {
                    break;
                }
            }
        }
        reports
    }

    #[test]
    fn rules_parse() {
        let r = parse_rule("gmail.test:421 4.7.0 try later:5%").unwrap();
        assert_eq!(
            (r.domain.as_str(), r.code, r.line.as_str(), r.percent),
            ("gmail.test", 421, "421 4.7.0 try later", 5.0)
        );
        assert!(parse_rule("*:550 5.1.1 no such user:1%").is_ok());
        assert!(parse_rule("x:hello:5%").is_err());
        assert!(parse_rule("x:250 ok:500%").is_err());
        assert_eq!(parse_rule("b.test:421 4.7.0 too many errors:100%@10-20").unwrap().window, Some((10, 20)));
    }

    #[test]
    fn verifies_checksum_and_id() {
        let body = b"id 7\r\nhello world\r\n";
        let msg = format!(
            "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nReceived: by relay\r\n{ID_HEADER}: 7\r\n{SENT_HEADER}: 1764590000123\r\n{SUM_HEADER}: {:08x}\r\n\r\n{}.\r\n",
            body_checksum(body),
            String::from_utf8_lossy(body)
        );
        let expected_bytes = (msg.len() - msg.find("Received").unwrap() - 3) as u64;
        for chunk in [1, 2, 3, 7, 64, msg.len()] {
            let mut s = SinkSession::new("sink", Arc::new(vec![]), Default::default(), 1);
            let reports = reports_in_reads(&mut s, msg.as_bytes(), chunk);
            let want = Report {
                id: Some(7),
                sent_unix_ms: Some(1764590000123),
                checksum: Checksum::Good,
                bytes: expected_bytes,
                recipients: 1,
            };
            assert_eq!(reports, vec![want], "chunk {chunk}");
        }
        let corrupt = "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nX-Sluice-Id: 8\r\nX-Sluice-Sum: 00000000\r\n\r\nbody\r\n.\r\n";
        let mut s = SinkSession::new("sink", Arc::new(vec![]), Default::default(), 1);
        let ev = feed(&mut s, corrupt.as_bytes());
        assert!(matches!(&ev[0], SinkEvent::Message(Report { id: Some(8), checksum: Checksum::Bad, .. })), "{ev:?}");
    }

    /// RFC 3030: with `--chunking` a message may come in BDAT chunks, as it is (no dots
    /// doubled); it is counted and summed as the same message sent with DATA, however the
    /// chunks and the reads split it, and each chunk but the last is answered on its own.
    #[test]
    fn a_message_in_bdat_chunks_reports_as_with_data() {
        let stuffed = "id 7\r\n..a dot line\r\nhello\r\n";
        let raw = "id 7\r\n.a dot line\r\nhello\r\n";
        let headers = format!("{ID_HEADER}: 7\r\n{SUM_HEADER}: {:08x}\r\n\r\n", body_checksum(stuffed.as_bytes()));
        let data = format!("EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n{headers}{stuffed}.\r\n");
        let mut s = SinkSession::new("sink", Arc::new(vec![]), Default::default(), 1).with_chunking(true);
        let ev = feed(&mut s, data.as_bytes());
        let Some(SinkEvent::Message(want)) = ev.into_iter().next() else { panic!("no message") };
        assert_eq!((want.checksum, want.id), (Checksum::Good, Some(7)));
        assert!(String::from_utf8_lossy(s.output()).contains("250-CHUNKING"));
        let message = format!("{headers}{raw}");
        for split in [1, 9, 30, message.len() - 1] {
            let (first, last) = message.split_at(split);
            let wire = format!(
                "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d.test>\r\nBDAT {}\r\n{first}BDAT {} LAST\r\n{last}",
                first.len(),
                last.len()
            );
            for read in [1, 2, 5, wire.len()] {
                let mut s = SinkSession::new("sink", Arc::new(vec![]), Default::default(), 1).with_chunking(true);
                let reports = reports_in_reads(&mut s, wire.as_bytes(), read);
                assert_eq!(reports, vec![want.clone()], "split {split}, reads of {read}");
                let out = String::from_utf8_lossy(s.output()).into_owned();
                assert!(out.ends_with("250 2.0.0 Chunk received\r\n250 2.0.0 Ok: queued\r\n"), "{out}");
            }
        }
        // Without recipients the chunk is read and refused; without CHUNKING BDAT is unknown.
        let mut s = SinkSession::new("sink", Arc::new(vec![]), Default::default(), 1).with_chunking(true);
        feed(&mut s, b"EHLO x\r\nMAIL FROM:<a@b>\r\nBDAT 5 LAST\r\nhelloNOOP\r\n");
        assert!(String::from_utf8_lossy(s.output()).ends_with("554 5.5.1 No valid recipients\r\n250 2.0.0 Ok\r\n"));
        let mut s = SinkSession::new("sink", Arc::new(vec![]), Default::default(), 1);
        feed(&mut s, b"EHLO x\r\nBDAT 5 LAST\r\n");
        let out = String::from_utf8_lossy(s.output()).into_owned();
        assert!(!out.contains("CHUNKING") && out.ends_with("500 5.5.2 Command unrecognized\r\n"), "{out}");
    }

    #[test]
    fn scripted_replies_follow_their_odds() {
        let rules = Arc::new(vec![parse_rule("busy.test:451 4.7.1 later:25%").unwrap()]);
        let mut s = SinkSession::new("sink", rules, Default::default(), 42);
        let mut scripted = 0;
        feed(&mut s, b"EHLO x\r\nMAIL FROM:<a@b>\r\n");
        for _ in 0..4000 {
            let ev = feed(&mut s, b"RCPT TO:<u@busy.test>\r\nRCPT TO:<u@other.test>\r\n");
            scripted += ev.iter().filter(|e| **e == SinkEvent::Scripted(451)).count();
        }
        assert!((800..1200).contains(&scripted), "about 25% of 4000: {scripted}");
    }

    #[test]
    fn client_rules_apply_to_their_address_only() {
        let rule = parse_rule("*/127.0.0.2:421 4.7.0 [127.0.0.2] blocked:100%").unwrap();
        assert_eq!(rule.client, Some("127.0.0.2".parse().unwrap()));
        assert!(parse_rule("*/nope:421 x:100%").is_err());
        let rules = Arc::new(vec![rule]);
        for (ip, blocked) in [("127.0.0.2", true), ("127.0.0.3", false)] {
            let mut s =
                SinkSession::new("sink", rules.clone(), Default::default(), 1).with_client(Some(ip.parse().unwrap()));
            let ev = feed(&mut s, b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@x.test>\r\n");
            assert_eq!(ev.contains(&SinkEvent::Scripted(421)), blocked, "{ip}");
        }
    }
}
