//! Inbound ESMTP session (RFC 5321), sans-IO: bytes in, replies and events out. The caller
//! owns the socket, the clock and the spool; `Event::Message` hands it a complete message,
//! and `message_stored` sends the reply once the bytes are durable.

use super::addr::{domain_of, parse_path, PathError};
use super::auth::{b64_decode, b64_encode, parse_plain, Users};
use super::data::DataScanner;
use super::mime;
use crate::time::rfc5322_date;
use sluice_config::{BareLf, DsnReturn, LongLines, SenderRestrictions};
use sluice_spool::codec::flags;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

/// RFC 5321 §4.5.3.1.4 allows 512 octets; SMTP extensions (SIZE, BODY, ENVID...) raise it,
/// so we take up to 1024 before answering 500.
pub const COMMAND_LINE_BYTES_MAX: usize = 1024;
/// Protocol errors tolerated before the session is closed with 421.
pub const SESSION_ERRORS_MAX: u32 = 10;
/// Replies buffered before the caller must flush (pipelined commands).
pub const OUTPUT_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct SessionPolicy {
    pub host_name: String,
    pub relay_allowed: bool,
    pub smtp_service: bool,
    pub max_message_size: u64,
    pub max_rcpt_per_message: u32,
    /// `max-message-hops` (100): a message with more `Received:` fields is refused (a loop).
    pub max_message_hops: u32,
    /// `dsn-return-default`: RET for a message whose MAIL has none (None: `system`, headers).
    pub dsn_return_default: Option<DsnReturn>,
    /// `too-many-rcpts-fails-message`: past `max_rcpt_per_message` the message is refused
    /// whole at DATA (552) instead of the extra recipients at RCPT (452).
    pub too_many_rcpts_fails_message: bool,
    /// `allow-mailmerge`: PowerMTA's mail-merge commands (XACK, XMRG, XDFN, XPRT).
    pub allow_mailmerge: bool,
    pub add_received_header: bool,
    pub hide_message_source: bool,
    /// STARTTLS is offered (a certificate is configured and `allow-starttls` is on).
    pub starttls: bool,
    /// AUTH is offered with these users (`allow-auth yes` and at least one `<smtp-user>`).
    pub auth: Option<Arc<Users>>,
    /// `require-auth yes`: no MAIL before AUTH.
    pub require_auth: bool,
    /// `require-starttls-before-auth yes`: AUTH only inside TLS (refused on a plain session).
    pub auth_needs_tls: bool,
    /// This client's address failed AUTH too often lately (`smtp-max-auth-failure-rate`).
    pub auth_blocked: bool,
    /// Failed AUTH attempts before the session is closed.
    pub auth_failures_max: u32,
    /// The spool takes no new mail (`deliver-only` on every `<spool>`): MAIL gets 452.
    pub spool_closed: bool,
    /// `allow-smtputf8` (yes): SMTPUTF8 offered, UTF-8 addresses taken (RFC 6531).
    pub smtputf8: bool,
    /// `allow-chunking` (yes): CHUNKING offered, BDAT taken (RFC 3030).
    pub chunking: bool,
    /// `relay-domain` / `relay-address`: recipients taken from any client.
    pub relay_to: Arc<sluice_config::RelayTargets>,
    /// `allow-unencrypted-plain-auth`: PLAIN and LOGIN (passwords in the clear) also
    /// outside TLS; otherwise only CRAM-MD5 there.
    pub plain_auth_in_clear: bool,
    /// `allowed-mail-from-domain` / `allowed-virtual-mta`; an authenticated user's replace
    /// its source's.
    pub restrictions: SenderRestrictions,
    /// `suppression-lists`: a recipient on one of these is refused at RCPT.
    pub suppression: Vec<Arc<crate::suppress::AddressList>>,
    /// Addresses the relay takes for itself from anyone (the report processors').
    pub local: Vec<Arc<crate::suppress::AddressList>>,
    /// `bare-lf`: LF-only line ends normalized to CRLF, or the message refused.
    pub bare_lf: BareLf,
    /// `long-lines`: lines over 998 octets wrapped losslessly, or the message refused.
    pub long_lines: LongLines,
}

impl Default for SessionPolicy {
    /// A source with no rights: no relaying, no AUTH, the default limits.
    fn default() -> Self {
        SessionPolicy {
            host_name: "localhost".into(),
            relay_allowed: false,
            smtp_service: true,
            max_message_size: 50 << 20,
            max_rcpt_per_message: 1000,
            max_message_hops: 100,
            dsn_return_default: None,
            too_many_rcpts_fails_message: false,
            allow_mailmerge: false,
            add_received_header: true,
            hide_message_source: false,
            starttls: false,
            auth: None,
            require_auth: false,
            auth_needs_tls: false,
            auth_blocked: false,
            auth_failures_max: 3,
            plain_auth_in_clear: false,
            relay_to: Default::default(),
            spool_closed: false,
            smtputf8: true,
            chunking: true,
            restrictions: SenderRestrictions::default(),
            suppression: Vec::new(),
            local: Vec::new(),
            bare_lf: BareLf::Normalize,
            long_lines: LongLines::Encode,
        }
    }
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Users(..)")
    }
}

/// Where an AUTH exchange stands (RFC 4954 §4: 334 continuations).
#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthStep {
    Plain,
    LoginUser,
    LoginPassword(String),
    Cram(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for commands (before or after HELO).
    Command,
    /// Inside DATA, receiving the message.
    Data,
    /// The message is complete; waiting for the spool to say it is durable.
    Storing,
    /// QUIT answered or fatal error sent; the caller closes after flushing.
    Closing,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A message is complete: take it with `take_message`, store it, call `message_stored`.
    Message,
    /// STARTTLS was answered 220: send the output, drop any input already received (RFC 3207
    /// §5: nothing pipelined after STARTTLS may be acted on), start TLS, call `tls_started`.
    StartTls,
    /// Flush the output and close the connection.
    Close,
}

/// A complete message: envelope and the data in transparency form (dot-stuffed, CRLF).
#[derive(Debug, Default)]
pub struct Message {
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub data: Vec<u8>,
    pub helo: String,
    /// The AUTH user who sent it (accounting's rcvSmtpUser).
    pub auth_user: Option<String>,
    /// Its job (the caller reads the `x-job:` header when the source says so).
    pub job_id: String,
    /// The DSN envelope id (`MAIL ... ENVID=`, RFC 3461 §4.4; or `X-Envid:` with
    /// `process-x-envid`), decoded from xtext.
    pub envid: String,
    /// `sluice_spool::codec::flags` for the spool: the MAIL parameters (`RET`, `BODY`,
    /// `SMTPUTF8`) and what the source asks (`verp-default`).
    pub flags: u8,
    /// Recipients' DSN parameters: (index, `NOTIFY` bits, `ORCPT` as `type;address`).
    pub rcpt_dsn: Vec<(u32, u8, String)>,
    /// A mail-merge transaction's parts and variables (`data` is then empty): one message
    /// per recipient, made with `Merge::render`.
    pub merge: Option<Box<super::merge::Merge>>,
}

/// A mail-merge transaction in progress (`XMRG` to the last `XPRT`).
#[derive(Debug, Default)]
struct MergeTxn {
    merge: super::merge::Merge,
    /// `XDFN` variables waiting for their `RCPT`.
    pending: Vec<(String, String)>,
    /// The part being received: its number and whether it is the last.
    part: Option<(u32, bool)>,
}

pub struct Session {
    policy: SessionPolicy,
    /// `XACK OFF`: XDFN and RCPT are not answered (mail merge).
    xack: bool,
    merge: Option<MergeTxn>,
    client_ip: IpAddr,
    session_id: u64,
    state: State,
    helo: Option<String>,
    esmtp: bool,
    mail_from: Option<String>,
    recipients: Vec<String>,
    data: Vec<u8>,
    scanner: DataScanner,
    too_big: bool,
    errors: u32,
    /// Skipping the rest of an over-long command line.
    discarding_line: bool,
    now_unix_ms: u64,
    out: Vec<u8>,
    auth_step: Option<AuthStep>,
    auth_user: Option<String>,
    auth_failures: u32,
    /// Failures not yet taken by the caller (for its per-address failure rate).
    new_auth_failures: u32,
    /// The session runs inside TLS (after STARTTLS, or on an implicit-TLS listener).
    tls: bool,
    starting_tls: bool,
    /// Bytes of a refused BDAT chunk still to skip (RFC 3030 §2: the chunk follows its
    /// command whatever the reply; none of it may be read as commands).
    discarding_chunk: u64,
    /// More input followed the command line being handled (RFC 2920 §3.1: nothing may follow
    /// DATA before its 354).
    input_follows: bool,
    /// The transaction's DSN and extension parameters (RFC 3461, RFC 6531, RFC 6152).
    txn: TxnParams,
    /// CHUNKING (RFC 3030): bytes of the current BDAT chunk still to read, whether it is the
    /// last, and whether the next byte starts a line (for dot-stuffing into the spool's form).
    bdat: Option<Bdat>,
}

/// MAIL and RCPT parameters kept for the spool.
#[derive(Debug, Default, Clone)]
struct TxnParams {
    envid: String,
    flags: u8,
    /// (recipient index, NOTIFY bits, ORCPT as `type;address`).
    rcpt_dsn: Vec<(u32, u8, String)>,
    /// More recipients than `max-rcpt-per-message` came, with `too-many-rcpts-fails-message`:
    /// the message is refused whole at DATA or BDAT.
    too_many_rcpts: bool,
}

#[derive(Debug, Clone, Copy)]
struct Bdat {
    left: u64,
    last: bool,
    line_start: bool,
    /// The chunk's size, for its reply.
    size: u64,
}

/// A mail-merge client's `FROM:`/`TO:` argument in the form MAIL and RCPT read: a blank
/// after the colon and a path without brackets (as mailer panels write them) are taken.
fn merge_path(arg: &str, prefix: &str) -> Option<String> {
    let head = arg.get(..prefix.len()).filter(|h| h.eq_ignore_ascii_case(prefix))?;
    let rest = arg[head.len()..].trim_start();
    if rest.starts_with('<') {
        return Some(format!("{prefix}{rest}"));
    }
    let (path, params) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(format!("{prefix}<{path}> {params}").trim_end().to_string())
}

fn token(word: &[u8]) -> u32 {
    let mut t = [b' '; 4];
    for (i, b) in word.iter().take(4).enumerate() {
        t[i] = b.to_ascii_uppercase();
    }
    u32::from_le_bytes(t)
}

const fn tok(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

const EHLO: u32 = tok(b"EHLO");
const HELO: u32 = tok(b"HELO");
const MAIL: u32 = tok(b"MAIL");
const RCPT: u32 = tok(b"RCPT");
const DATA: u32 = tok(b"DATA");
const RSET: u32 = tok(b"RSET");
const NOOP: u32 = tok(b"NOOP");
const QUIT: u32 = tok(b"QUIT");
const VRFY: u32 = tok(b"VRFY");
const EXPN: u32 = tok(b"EXPN");
const HELP: u32 = tok(b"HELP");
const AUTH: u32 = tok(b"AUTH");
const BDAT: u32 = tok(b"BDAT");
const XACK: u32 = tok(b"XACK");
const XMRG: u32 = tok(b"XMRG");
const XDFN: u32 = tok(b"XDFN");
const XPRT: u32 = tok(b"XPRT");
/// A BDAT chunk size we read past (larger: the connection is closed instead).
pub const BDAT_CHUNK_BYTES_MAX: u64 = 1 << 40;

impl Session {
    /// Starts a session and writes the greeting (RFC 5321 §4.3.1: 220, or 554 when the
    /// source may not use the service).
    pub fn new(policy: SessionPolicy, client_ip: IpAddr, session_id: u64) -> Self {
        let mut s = Session {
            policy,
            xack: true,
            merge: None,
            client_ip,
            session_id,
            state: State::Command,
            helo: None,
            esmtp: false,
            mail_from: None,
            recipients: Vec::new(),
            data: Vec::new(),
            scanner: DataScanner::default(),
            too_big: false,
            errors: 0,
            discarding_line: false,
            now_unix_ms: 0,
            out: Vec::with_capacity(512),
            auth_step: None,
            auth_user: None,
            auth_failures: 0,
            new_auth_failures: 0,
            tls: false,
            starting_tls: false,
            discarding_chunk: 0,
            input_follows: false,
            txn: TxnParams::default(),
            bdat: None,
        };
        if s.policy.smtp_service {
            let greeting = format!("220 {} ESMTP sluice\r\n", s.policy.host_name);
            s.out.extend_from_slice(greeting.as_bytes());
        } else {
            s.reply(&format!("554 5.7.1 {} does not accept mail from you", s.policy.host_name));
            s.state = State::Closing;
        }
        s
    }

    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// The next input is a command line: not message data, a chunk being skipped, or the
    /// response to an AUTH challenge (a secret, never logged).
    pub fn reading_commands(&self) -> bool {
        self.state == State::Command
            && self.auth_step.is_none()
            && self.discarding_chunk == 0
            && self.bdat.is_none_or(|b| b.left == 0)
    }

    /// The message read so far (complete after `Event::Message`, before `take_message`).
    pub fn message_data(&self) -> &[u8] {
        &self.data
    }

    pub fn is_in_data(&self) -> bool {
        self.state == State::Data
    }

    pub fn is_closing(&self) -> bool {
        self.state == State::Closing
    }

    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn error(&mut self, line: &str) {
        self.reply(line);
        self.errors += 1;
        if self.errors >= SESSION_ERRORS_MAX {
            self.reply("421 4.7.0 Too many errors, closing connection");
            self.state = State::Closing;
        }
    }

    fn reset_transaction(&mut self) {
        self.merge = None;
        self.mail_from = None;
        self.recipients.clear();
        self.data.clear();
        self.txn = TxnParams::default();
        self.bdat = None;
    }

    /// Consumes input. Returns how many bytes were used and an event, if any. Call again with
    /// the rest while it makes progress and returns no event.
    pub fn receive(&mut self, now_unix_ms: u64, input: &[u8]) -> (usize, Option<Event>) {
        self.now_unix_ms = now_unix_ms;
        if self.discarding_chunk > 0 {
            let n = (self.discarding_chunk).min(input.len() as u64);
            self.discarding_chunk -= n;
            return (n as usize, None);
        }
        if self.state == State::Command && self.bdat.is_some_and(|b| b.left > 0) {
            return self.receive_chunk(input);
        }
        match self.state {
            State::Command => self.receive_command(input),
            State::Data => self.receive_data(input),
            State::Storing => (0, None),
            State::Closing => (0, Some(Event::Close)),
        }
    }

    fn receive_command(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        let Some(lf) = input.iter().position(|&b| b == b'\n') else {
            if input.len() >= COMMAND_LINE_BYTES_MAX {
                if !self.discarding_line {
                    self.error("500 5.5.2 Line too long (RFC 5321 4.5.3.1.4)");
                }
                self.discarding_line = true;
                return (input.len(), None);
            }
            return (0, None);
        };
        let used = lf + 1;
        if self.discarding_line {
            self.discarding_line = false;
            return (used, None);
        }
        if used > COMMAND_LINE_BYTES_MAX {
            self.error("500 5.5.2 Line too long (RFC 5321 4.5.3.1.4)");
            return (used, None);
        }
        let line = &input[..lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.input_follows = input.len() > used;
        if self.auth_step.is_some() {
            self.auth_response(line);
        } else {
            self.command(line);
        }
        let event = if self.state == State::Closing {
            Some(Event::Close)
        } else if std::mem::take(&mut self.starting_tls) {
            Some(Event::StartTls)
        } else {
            None
        };
        (used, event)
    }

    fn command(&mut self, line: &[u8]) {
        let Ok(line) = std::str::from_utf8(line) else {
            return self.error("500 5.5.2 Command contains invalid bytes");
        };
        if line.bytes().any(|b| b == 0 || b == b'\r') {
            return self.error("500 5.5.2 Command contains NUL or bare CR");
        }
        if !line.is_ascii() {
            // RFC 5321 §2.4: commands are US-ASCII; RFC 6531 §3.4 lets MAIL and RCPT carry
            // UTF-8 addresses in a transaction that says SMTPUTF8.
            let verb = line.get(..4).unwrap_or("");
            let mail = verb.eq_ignore_ascii_case("MAIL");
            let rcpt = verb.eq_ignore_ascii_case("RCPT");
            let declared = (mail && line.to_ascii_uppercase().split_ascii_whitespace().any(|w| w == "SMTPUTF8"))
                || (rcpt && self.txn.flags & flags::SMTPUTF8 != 0);
            if !(self.policy.smtputf8 && declared) {
                return self.error(match (mail || rcpt, self.policy.smtputf8) {
                    (true, true) => "553 5.6.7 Non-ASCII address: say SMTPUTF8 in MAIL (RFC 6531)",
                    (true, false) => "553 5.6.7 Non-ASCII address: SMTPUTF8 (RFC 6531) is not offered",
                    (false, _) => "500 5.5.2 Command contains non-ASCII bytes (RFC 5321 2.4)",
                });
            }
        }
        let (verb, arg) = match line.find(' ') {
            Some(i) => (&line[..i], line[i + 1..].trim()),
            None => (line, ""),
        };
        if verb.eq_ignore_ascii_case("STARTTLS") {
            return self.starttls(arg);
        }
        if verb.len() != 4 {
            return self.error("500 5.5.2 Command unrecognized");
        }
        match token(verb.as_bytes()) {
            EHLO => self.helo(arg, true),
            HELO => self.helo(arg, false),
            MAIL => self.mail(arg),
            RCPT if self.merge.is_some() => self.merge_rcpt(arg),
            RCPT => self.rcpt(arg),
            DATA if self.merge.is_some() => self.error("503 5.5.1 XPRT, not DATA, in a mail-merge transaction"),
            DATA => self.data_command(arg),
            RSET => {
                self.reset_transaction();
                self.reply("250 2.0.0 Reset");
            }
            NOOP => self.reply("250 2.0.0 OK"),
            QUIT => {
                self.reply(&format!("221 2.0.0 {} closing connection", self.policy.host_name));
                self.state = State::Closing;
            }
            // RFC 5321 §3.5.3: 252 when we will not verify but would try delivery.
            VRFY => self.reply("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
            EXPN => self.reply("502 5.5.1 EXPN not available"),
            HELP => self.reply("214 2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"),
            AUTH => self.auth(arg),
            BDAT if self.merge.is_some() => self.error("503 5.5.1 XPRT, not BDAT, in a mail-merge transaction"),
            BDAT => self.bdat(arg),
            XACK | XMRG | XDFN | XPRT if !self.policy.allow_mailmerge => {
                self.error("502 5.5.1 Mail merge is not allowed from here (allow-mailmerge)")
            }
            XACK => self.xack_command(arg),
            XMRG => self.xmrg(arg),
            XDFN => self.xdfn(arg),
            XPRT => self.xprt(arg),
            _ => self.error("500 5.5.2 Command unrecognized"),
        }
    }

    /// `XACK ON|OFF`: whether XDFN and RCPT are answered.
    fn xack_command(&mut self, arg: &str) {
        match arg.to_ascii_uppercase().as_str() {
            "ON" => self.xack = true,
            "OFF" => self.xack = false,
            _ => return self.error("501 5.5.4 Syntax: XACK ON|OFF"),
        }
        self.reply(&format!("250 2.0.0 XACK {}", arg.to_ascii_uppercase()));
    }

    /// `XMRG FROM:<sender> [VERP] [VERSION=n] [MAIL parameters]`: MAIL for a mail-merge
    /// transaction.
    fn xmrg(&mut self, arg: &str) {
        let mut verp = false;
        let kept: Vec<&str> = arg
            .split_ascii_whitespace()
            .filter(|w| {
                let upper = w.to_ascii_uppercase();
                verp |= upper == "VERP";
                upper != "VERP" && !upper.starts_with("VERSION=")
            })
            .collect();
        // `FROM: <a@b>` and `FROM: a@b` (as mailer panels write them) are taken too.
        let Some(line) = merge_path(&kept.join(" "), "FROM:") else {
            return self.error("501 5.5.4 Syntax: XMRG FROM:<reverse-path> [VERP]");
        };
        self.mail(&line);
        if self.mail_from.is_some() {
            if verp {
                self.txn.flags |= flags::VERP;
            }
            self.merge = Some(MergeTxn::default());
        }
    }

    /// `XDFN name="value" ...`: variables for the next RCPT.
    fn xdfn(&mut self, arg: &str) {
        let Some(m) = self.merge.as_mut() else {
            return self.error("503 5.5.1 XDFN outside a mail-merge transaction (XMRG first)");
        };
        match super::merge::parse_xdfn(arg) {
            Ok(vars) if m.pending.len() + vars.len() <= super::merge::VARS_MAX => {
                m.pending.extend(vars);
                if self.xack {
                    self.reply("250 2.0.0 Ok");
                }
            }
            Ok(_) => self.error(&format!("552 5.3.4 Over {} variables for one recipient", super::merge::VARS_MAX)),
            Err(why) => self.error(&format!("501 5.5.4 XDFN: {why}")),
        }
    }

    /// RCPT in a mail-merge transaction: the recipient takes the variables defined since the
    /// last one; with `XACK OFF` the reply is not sent.
    fn merge_rcpt(&mut self, arg: &str) {
        let (before, mark) = (self.recipients.len(), self.out.len());
        match merge_path(arg, "TO:") {
            Some(line) => self.rcpt(&line),
            None => self.error("501 5.5.4 Syntax: RCPT TO:<forward-path>"),
        }
        let m = self.merge.as_mut().expect("in a mail-merge transaction");
        let vars = std::mem::take(&mut m.pending);
        if self.recipients.len() > before {
            m.merge.vars.push(vars);
        }
        if !self.xack {
            self.out.truncate(mark);
        }
    }

    /// `XPRT n [LAST]`: part n of the message follows (354), ended by `.`.
    fn xprt(&mut self, arg: &str) {
        let mut words = arg.split_ascii_whitespace();
        let n = words.next().and_then(|w| w.parse::<u32>().ok()).filter(|n| *n >= 1);
        let last = match words.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case("LAST") => Some(true),
            Some(_) => None,
        };
        let (Some(n), Some(last), None) = (n, last, words.next()) else {
            return self.error("501 5.5.4 Syntax: XPRT part-number [LAST]");
        };
        if self.merge.is_none() {
            return self.error("503 5.5.1 XPRT outside a mail-merge transaction (XMRG first)");
        }
        if self.recipients.is_empty() {
            return self.error("554 5.5.1 No valid recipients");
        }
        self.data.clear();
        if n == 1 && self.policy.add_received_header {
            self.prepend_received();
        }
        self.merge.as_mut().expect("checked").part = Some((n, last));
        self.scanner = DataScanner::new(self.policy.bare_lf == BareLf::Normalize);
        self.too_big = false;
        self.state = State::Data;
        self.reply("354 Send part, end with <CR><LF>.<CR><LF>");
    }

    fn helo(&mut self, arg: &str, esmtp: bool) {
        if arg.is_empty() || arg.contains(' ') {
            let verb = if esmtp { "EHLO" } else { "HELO" };
            return self.error(&format!("501 5.5.4 Syntax: {verb} hostname"));
        }
        self.reset_transaction();
        self.helo = Some(arg.to_string());
        self.esmtp = esmtp;
        let host = self.policy.host_name.clone();
        if esmtp {
            let size = self.policy.max_message_size;
            // RFC 4954 §3: AUTH is advertised only where it may be used.
            let auth = match (self.auth_offered(), self.tls || self.policy.plain_auth_in_clear) {
                (true, true) => "250-AUTH PLAIN LOGIN CRAM-MD5\r\n",
                (true, false) => "250-AUTH CRAM-MD5\r\n",
                (false, _) => "",
            };
            let tls = if self.policy.starttls && !self.tls { "250-STARTTLS\r\n" } else { "" };
            let utf8 = if self.policy.smtputf8 { "250-SMTPUTF8\r\n" } else { "" };
            let chunking = if self.policy.chunking { "250-CHUNKING\r\n" } else { "" };
            self.reply(&format!("250-{host} Hello {arg}\r\n250-PIPELINING\r\n250-SIZE {size}\r\n250-8BITMIME\r\n250-DSN\r\n{utf8}{chunking}{tls}{auth}250 ENHANCEDSTATUSCODES"));
        } else {
            self.reply(&format!("250 {host} Hello {arg}"));
        }
    }

    fn mail(&mut self, arg: &str) {
        if self.helo.is_none() {
            return self.error("503 5.5.1 Send EHLO or HELO first");
        }
        if self.mail_from.is_some() {
            return self.error("503 5.5.1 Nested MAIL command");
        }
        if self.policy.require_auth && self.auth_user.is_none() {
            return self.reply("530 5.7.0 Authentication required");
        }
        if self.policy.spool_closed {
            return self.reply("452 4.3.1 Not accepting new mail: the spool is deliver-only");
        }
        let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
            return self.error("501 5.5.4 Syntax: MAIL FROM:<reverse-path> [parameters]");
        };
        let (path, params) = match parse_path(rest.trim_start(), true) {
            Ok(v) => v,
            Err(e) => return self.error(&path_error_reply(e, "MAIL FROM:<reverse-path> [parameters]")),
        };
        let mut txn = TxnParams::default();
        for param in params.split_ascii_whitespace() {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                // RFC 1870 §6: a declared size over the limit is refused at MAIL.
                "SIZE" => match value.parse::<u64>() {
                    Ok(n) if n > self.policy.max_message_size => {
                        return self.reply("552 5.3.4 Message size exceeds fixed maximum message size");
                    }
                    Ok(_) => {}
                    Err(_) => return self.error("501 5.5.4 Syntax: SIZE=<size>"),
                },
                "BODY" if value.eq_ignore_ascii_case("8BITMIME") => txn.flags |= flags::BODY_8BIT,
                "BODY" if value.eq_ignore_ascii_case("7BIT") => {}
                // RFC 3461 §4.3 and §4.4.
                "RET" if value.eq_ignore_ascii_case("FULL") => txn.flags |= flags::RET_FULL,
                "RET" if value.eq_ignore_ascii_case("HDRS") => txn.flags |= flags::RET_HDRS,
                "RET" => return self.error("501 5.5.4 Syntax: RET=FULL or RET=HDRS"),
                "ENVID" => match xtext_decode(value) {
                    Some(id) if !id.is_empty() && id.len() <= 100 => txn.envid = id,
                    _ => return self.error("501 5.5.4 Syntax: ENVID=<xtext, at most 100 characters>"),
                },
                // RFC 6531 §3.4.
                "SMTPUTF8" if value.is_empty() && self.policy.smtputf8 => txn.flags |= flags::SMTPUTF8,
                _ => return self.error(&format!("555 5.5.4 Unsupported MAIL parameter {key}")),
            }
        }
        // Sender restrictions: the domain must be an allowed one (or under one).
        let restrictions = &self.policy.restrictions;
        if !restrictions.mail_from_domains.is_empty()
            && (path.is_empty() || !restrictions.mail_from_allowed(&domain_of(path)))
        {
            let sender = if path.is_empty() { "<>".to_string() } else { path.to_string() };
            return self.reply(&format!("550 5.7.1 Sender {sender} is not allowed here (allowed-mail-from-domain)"));
        }
        // `dsn-return-default`: what a DSN returns when the client did not say (RET).
        if txn.flags & (flags::RET_FULL | flags::RET_HDRS) == 0 {
            txn.flags |= match self.policy.dsn_return_default {
                Some(DsnReturn::Full) => flags::RET_FULL,
                Some(DsnReturn::Headers) => flags::RET_HDRS,
                None => 0,
            };
        }
        self.mail_from = Some(path.to_string());
        self.txn = txn;
        self.reply("250 2.1.0 Sender OK");
    }

    fn rcpt(&mut self, arg: &str) {
        if self.mail_from.is_none() {
            return self.error("503 5.5.1 Need MAIL before RCPT");
        }
        let Some(rest) = strip_prefix_ci(arg, "TO:") else {
            return self.error("501 5.5.4 Syntax: RCPT TO:<forward-path> [parameters]");
        };
        let (path, params) = match parse_path(rest.trim_start(), false) {
            Ok(v) => v,
            Err(e) => return self.error(&path_error_reply(e, "RCPT TO:<forward-path> [parameters]")),
        };
        let (mut notify, mut orcpt) = (0u8, String::new());
        for param in params.split_ascii_whitespace() {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                // RFC 3461 §4.1: NEVER alone, or any of SUCCESS, FAILURE, DELAY.
                "NOTIFY" => match parse_notify(value) {
                    Some(bits) => notify = bits,
                    None => return self.error("501 5.5.4 Syntax: NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY"),
                },
                // RFC 3461 §4.2: `addr-type;xtext`.
                "ORCPT" => match value.split_once(';').and_then(|(t, a)| Some((t, xtext_decode(a)?))) {
                    Some((kind, addr)) if !kind.is_empty() && !addr.is_empty() && addr.len() <= 500 => {
                        orcpt = format!("{kind};{addr}")
                    }
                    _ => return self.error("501 5.5.4 Syntax: ORCPT=addr-type;xtext"),
                },
                _ => return self.error(&format!("555 5.5.4 Unsupported RCPT parameter {key}")),
            }
        }
        let local = self.policy.local.iter().any(|l| l.contains(path)) || self.policy.relay_to.covers(path);
        if !self.policy.relay_allowed && !local {
            return self.reply("550 5.7.1 Relaying denied");
        }
        if let Some(list) = self.policy.suppression.iter().find(|l| l.suppresses(path)) {
            let reply = format!("550 5.7.1 <{path}> is suppressed (address-list {})", list.name);
            return self.reply(&reply);
        }
        // RFC 5321 §4.5.3.1.10: too many recipients is answered 452 and the client retries.
        if self.recipients.len() >= self.policy.max_rcpt_per_message as usize {
            if self.policy.too_many_rcpts_fails_message {
                self.txn.too_many_rcpts = true;
                return self.reply("250 2.1.5 Recipient OK");
            }
            return self.reply("452 4.5.3 Too many recipients");
        }
        if notify != 0 || !orcpt.is_empty() {
            self.txn.rcpt_dsn.push((self.recipients.len() as u32, notify, orcpt));
        }
        self.recipients.push(path.to_string());
        self.reply("250 2.1.5 Recipient OK");
    }

    fn data_command(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.error("501 5.5.4 Syntax: DATA");
        }
        if self.input_follows {
            // Message text sent before the 354 (RFC 2920 §3.1: DATA ends a pipelined group).
            // As Postfix's smtpd_forbid_unauth_pipelining: refused, and the session ends.
            self.reply("554 5.5.0 Error: SMTP protocol synchronization (text sent before the 354 reply)");
            self.errors = SESSION_ERRORS_MAX;
            self.state = State::Closing;
            return;
        }
        if self.mail_from.is_none() {
            return self.error("503 5.5.1 Need MAIL command");
        }
        if self.recipients.is_empty() {
            return self.error("554 5.5.1 No valid recipients");
        }
        if self.bdat.is_some() {
            return self.error("503 5.5.1 DATA after BDAT in one transaction (RFC 3030 3)");
        }
        if self.txn.too_many_rcpts {
            self.reset_transaction();
            return self.reply(&self.too_many_rcpts());
        }
        self.data.clear();
        if self.policy.add_received_header {
            self.prepend_received();
        }
        self.scanner = DataScanner::new(self.policy.bare_lf == BareLf::Normalize);
        self.too_big = false;
        self.state = State::Data;
        self.reply("354 End data with <CR><LF>.<CR><LF>");
    }

    /// `BDAT size [LAST]` (RFC 3030). With CHUNKING offered and a transaction ready, the
    /// chunk's bytes are read as message content (dot-stuffed into the spool's transparency
    /// form); otherwise the command is refused and the chunk skipped, never read as commands.
    /// A size that cannot be read leaves no way to find the chunk's end: the session closes.
    fn bdat(&mut self, arg: &str) {
        let mut words = arg.split_ascii_whitespace();
        let size = words.next().and_then(|w| w.parse::<u64>().ok());
        let last = words.next().map(|w| w.eq_ignore_ascii_case("LAST"));
        let syntax_ok = last != Some(false) && words.next().is_none();
        let Some(n) = size.filter(|n| syntax_ok && *n <= BDAT_CHUNK_BYTES_MAX) else {
            self.reply("501 5.5.4 Syntax: BDAT chunk-size [LAST]; closing, the chunk's end is unknown");
            self.state = State::Closing;
            return;
        };
        let refusal = if !self.policy.chunking {
            Some("503 5.5.1 BDAT: CHUNKING (RFC 3030) is not offered; the chunk was discarded")
        } else if self.mail_from.is_none() {
            Some("503 5.5.1 Need MAIL command; the chunk was discarded")
        } else if self.recipients.is_empty() {
            Some("554 5.5.1 No valid recipients; the chunk was discarded")
        } else {
            None
        };
        if let Some(reply) = refusal {
            self.discarding_chunk = n;
            self.reset_transaction();
            return self.error(reply);
        }
        if self.txn.too_many_rcpts {
            self.discarding_chunk = n;
            self.reset_transaction();
            return self.reply(&self.too_many_rcpts());
        }
        if self.bdat.is_none() {
            self.data.clear();
            if self.policy.add_received_header {
                self.prepend_received();
            }
            self.too_big = false;
        }
        let line_start = self.bdat.is_none_or(|b| b.line_start);
        self.bdat = Some(Bdat { left: n, last: last == Some(true), line_start, size: n });
        if n == 0 {
            self.chunk_done();
        }
    }

    /// Bytes of the current BDAT chunk, into the message.
    fn receive_chunk(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        let mut b = self.bdat.expect("in a chunk");
        let n = (b.left as usize).min(input.len());
        if !self.too_big {
            // Transparency form: a line starting with "." gets another (RFC 5321 4.5.2).
            for &byte in &input[..n] {
                if b.line_start && byte == b'.' {
                    self.data.push(b'.');
                }
                self.data.push(byte);
                b.line_start = byte == b'\n';
            }
            if self.data.len() as u64 > self.policy.max_message_size {
                self.too_big = true;
                self.data = Vec::new();
            }
        }
        b.left -= n as u64;
        self.bdat = Some(b);
        let event = if b.left == 0 { self.chunk_done() } else { None };
        (n, event)
    }

    /// A chunk is in: 250 for it, or for the last one the message is complete.
    fn chunk_done(&mut self) -> Option<Event> {
        let b = self.bdat.expect("in a chunk");
        if !b.last {
            return match self.too_big {
                true => {
                    self.reset_transaction();
                    self.reply("552 5.3.4 Message size exceeds fixed maximum message size");
                    None
                }
                false => {
                    self.reply(&format!("250 2.0.0 {} octets received", b.size));
                    None
                }
            };
        }
        if self.too_big {
            self.reset_transaction();
            self.reply("552 5.3.4 Message size exceeds fixed maximum message size");
            return None;
        }
        // The spool's form ends with a line end (DATA's does): a last line without one gets it.
        if !self.data.ends_with(b"\r\n") {
            self.data.extend_from_slice(b"\r\n");
        }
        if let Some(refusal) = self.looping() {
            self.reset_transaction();
            self.reply(&refusal);
            return None;
        }
        self.state = State::Storing;
        Some(Event::Message)
    }

    fn too_many_rcpts(&self) -> String {
        let max = self.policy.max_rcpt_per_message;
        format!("552 5.5.3 Too many recipients: over {max} for one message (too-many-rcpts-fails-message)")
    }

    /// RFC 5321 §6.3: a message that passed more hosts than `max-message-hops` is looping.
    fn looping(&self) -> Option<String> {
        let ours = usize::from(self.policy.add_received_header);
        let hops = super::headers::count_fields(&self.data, "Received").saturating_sub(ours);
        let max = self.policy.max_message_hops as usize;
        (hops > max).then(|| format!("554 5.4.6 Too many hops: {hops} Received fields, over {max} (a mail loop?)"))
    }

    fn prepend_received(&mut self) {
        let helo = self.helo.as_deref().unwrap_or("unknown");
        // RFC 3848: ESMTPS inside TLS, ESMTPA when authenticated, ESMTPSA both.
        let with = match (self.esmtp, self.tls, self.auth_user.is_some()) {
            (true, true, true) => "ESMTPSA",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, false, false) => "ESMTP",
            (false, _, _) => "SMTP",
        };
        // Written straight into the message (the shard does this for every message), piece
        // by piece: the formatting machinery cost more than the copies.
        let d = &mut self.data;
        if self.policy.hide_message_source {
            d.extend_from_slice(b"Received: by ");
        } else {
            d.extend_from_slice(b"Received: from ");
            d.extend_from_slice(helo.as_bytes());
            let _ = write!(d, " ([{}])\r\n\tby ", self.client_ip);
        }
        d.extend_from_slice(self.policy.host_name.as_bytes());
        d.extend_from_slice(b" (sluice) with ");
        d.extend_from_slice(with.as_bytes());
        d.extend_from_slice(b" id ");
        d.extend_from_slice(&hex16(self.session_id));
        if let [only] = &self.recipients[..] {
            d.extend_from_slice(b"\r\n\tfor <");
            d.extend_from_slice(only.as_bytes());
            d.push(b'>');
        }
        d.extend_from_slice(b";\r\n\t");
        d.extend_from_slice(rfc5322_date(self.now_unix_ms).as_bytes());
        d.extend_from_slice(b"\r\n");
    }

    fn receive_data(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        let max = self.policy.max_message_size;
        let (data, too_big) = (&mut self.data, &mut self.too_big);
        let (used, done) = self.scanner.scan(input, |content| {
            if *too_big {
                return;
            }
            data.extend_from_slice(content);
            if data.len() as u64 > max {
                *too_big = true;
                *data = Vec::new();
            }
        });
        (used, if done { self.finish_data() } else { None })
    }

    /// End of data: a faulty message is refused and the session goes on; a good one waits
    /// for the spool.
    fn finish_data(&mut self) -> Option<Event> {
        let sc = &self.scanner;
        let too_big = self.too_big;
        // Bare CR, and a lone "." next to a bare LF, are SMTP smuggling forms: always refused.
        let bare = sc.bare_cr || sc.smuggling || (sc.bare_lf && self.policy.bare_lf == BareLf::Reject);
        let nul = sc.nul;
        let long = sc.long_line && self.policy.long_lines == LongLines::Reject;
        if sc.long_line && !(too_big || bare || nul || long) {
            // RFC 5322 §2.1.1: wrapped so that no line exceeds 998 octets, the decoded text
            // unchanged.
            let what = mime::Convert { eight_bit: false, long_lines: true };
            self.data = mime::convert_stuffed(&self.data, what);
        }
        let looping = if too_big || bare || long || nul { None } else { self.looping() };
        if let Some(refusal) = looping {
            self.reset_transaction();
            self.state = State::Command;
            self.reply(&refusal);
            return None;
        }
        if too_big || bare || long || nul {
            self.reset_transaction();
            self.state = State::Command;
            if too_big {
                self.reply("552 5.3.4 Message size exceeds fixed maximum message size");
            } else if bare {
                self.reply("550 5.6.0 Message contains bare CR or LF (RFC 5321 2.3.8); use CRLF line endings");
            } else if nul {
                // Never passed on: a receiver that drops NULs could see an end of data in
                // "CRLF NUL . CRLF" and read the rest as commands (smuggling on the next hop).
                self.reply("550 5.6.0 Message contains NUL bytes (RFC 5322 3.5)");
            } else {
                self.reply("550 5.6.0 Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6)");
            }
            return None;
        }
        // A mail-merge part: kept; the transaction goes on until the last one.
        if let Some(m) = self.merge.as_mut() {
            let (n, last) = m.part.take().expect("XPRT started the part");
            m.merge.parts.insert(n, std::mem::take(&mut self.data));
            if !last {
                self.state = State::Command;
                self.reply(&format!("250 2.0.0 Part {n} received"));
                return None;
            }
        }
        self.state = State::Storing;
        Some(Event::Message)
    }

    /// Hands over the complete message (call after `Event::Message`).
    pub fn take_message(&mut self) -> Message {
        assert_eq!(self.state, State::Storing);
        Message {
            mail_from: self.mail_from.take().unwrap_or_default(),
            recipients: std::mem::take(&mut self.recipients),
            data: std::mem::take(&mut self.data),
            helo: self.helo.clone().unwrap_or_default(),
            auth_user: self.auth_user.clone(),
            job_id: String::new(),
            envid: std::mem::take(&mut self.txn.envid),
            flags: self.txn.flags,
            rcpt_dsn: std::mem::take(&mut self.txn.rcpt_dsn),
            merge: self.merge.take().map(|m| Box::new(m.merge)),
        }
    }

    /// The authenticated user, if any.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// The restrictions in force (the user's once authenticated).
    pub fn restrictions(&self) -> &SenderRestrictions {
        &self.policy.restrictions
    }

    /// AUTH failures since the last call, for the caller's per-address failure rate.
    pub fn take_auth_failures(&mut self) -> u32 {
        std::mem::take(&mut self.new_auth_failures)
    }

    /// The client's address is over its failure rate: further AUTH gets 454.
    pub fn block_auth(&mut self) {
        self.policy.auth_blocked = true;
    }

    fn auth_offered(&self) -> bool {
        self.policy.auth.is_some() && (self.tls || !self.policy.auth_needs_tls) && self.auth_user.is_none()
    }

    /// RFC 3207 §4: `STARTTLS` (no parameters), then the handshake.
    fn starttls(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.error("501 5.5.4 Syntax: STARTTLS");
        }
        if !self.policy.starttls || self.tls {
            return self.error("502 5.5.1 STARTTLS not available");
        }
        self.reply("220 2.0.0 Ready to start TLS");
        self.starting_tls = true;
    }

    /// TLS is up (after STARTTLS): RFC 3207 §4.2, the client must start over with EHLO, and
    /// nothing learnt before (HELO name, transaction, authentication) is kept.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.auth_user = None;
        self.auth_step = None;
        self.reset_transaction();
    }

    /// An implicit-TLS listener: the whole session is inside TLS from the start.
    pub fn set_tls(&mut self) {
        self.tls = true;
    }

    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    fn auth(&mut self, arg: &str) {
        if self.policy.auth.is_none() {
            return self.error("503 5.5.1 AUTH not available");
        }
        if self.policy.auth_needs_tls && !self.tls {
            return self.reply("538 5.7.11 Encryption required for requested authentication mechanism");
        }
        if self.helo.is_none() {
            return self.error("503 5.5.1 Send EHLO first");
        }
        if self.auth_user.is_some() {
            return self.error("503 5.5.1 Already authenticated");
        }
        if self.mail_from.is_some() {
            return self.error("503 5.5.1 AUTH not permitted during a mail transaction");
        }
        if self.policy.auth_blocked {
            return self.reply("454 4.7.0 Too many authentication failures from your address, try again later");
        }
        let (mechanism, initial) = match arg.split_once(' ') {
            Some((m, i)) => (m, Some(i.trim())),
            None => (arg, None),
        };
        let clear_text = ["PLAIN", "LOGIN"].iter().any(|m| mechanism.eq_ignore_ascii_case(m));
        if clear_text && !self.tls && !self.policy.plain_auth_in_clear {
            // RFC 4954 §6 (allow-unencrypted-plain-auth no, PowerMTA's default).
            return self.reply("538 5.7.11 Encryption required for requested authentication mechanism");
        }
        match (mechanism.to_ascii_uppercase().as_str(), initial) {
            ("PLAIN", None) => {
                self.auth_step = Some(AuthStep::Plain);
                self.reply("334 ");
            }
            // RFC 4954 §4: "=" is an empty initial response.
            ("PLAIN", Some(i)) => self.auth_answer(AuthStep::Plain, if i == "=" { "" } else { i }),
            ("LOGIN", None) => {
                self.auth_step = Some(AuthStep::LoginUser);
                self.reply("334 VXNlcm5hbWU6"); // "Username:"
            }
            ("LOGIN", Some(i)) => self.auth_answer(AuthStep::LoginUser, i),
            ("CRAM-MD5", None) => {
                let challenge =
                    format!("<{:x}.{}@{}>", self.session_id, self.now_unix_ms, self.policy.host_name).into_bytes();
                self.reply(&format!("334 {}", b64_encode(&challenge)));
                self.auth_step = Some(AuthStep::Cram(challenge));
            }
            _ => self.error("504 5.5.4 Unrecognized authentication mechanism"),
        }
    }

    fn auth_response(&mut self, line: &[u8]) {
        let step = self.auth_step.take().expect("in an AUTH exchange");
        if line == b"*" {
            return self.error("501 5.7.0 Authentication cancelled");
        }
        match std::str::from_utf8(line) {
            Ok(text) => self.auth_answer(step, text),
            Err(_) => self.error("501 5.5.2 Invalid base64 data"),
        }
    }

    fn auth_answer(&mut self, step: AuthStep, text: &str) {
        let Some(data) = b64_decode(text) else { return self.error("501 5.5.2 Invalid base64 data") };
        let users = self.policy.auth.clone().expect("AUTH offered");
        let outcome = match step {
            AuthStep::Plain => parse_plain(&data).and_then(|(name, pw)| users.check(&name, &pw).map(|u| (name, u))),
            AuthStep::LoginUser => {
                let name = String::from_utf8_lossy(&data).into_owned();
                self.auth_step = Some(AuthStep::LoginPassword(name));
                return self.reply("334 UGFzc3dvcmQ6"); // "Password:"
            }
            AuthStep::LoginPassword(name) => users.check(&name, &data).map(|u| (name, u)),
            AuthStep::Cram(challenge) => users.check_cram(&challenge, &data).map(|(n, u)| (n.to_string(), u)),
        };
        match outcome {
            Some((name, user)) => {
                self.policy.relay_allowed = user.relay_allowed;
                self.policy.restrictions = user.restrictions.clone();
                self.auth_user = Some(name);
                self.reply("235 2.7.0 Authentication successful");
            }
            None => {
                self.auth_failures += 1;
                self.new_auth_failures += 1;
                self.reply("535 5.7.8 Authentication credentials invalid");
                if self.auth_failures >= self.policy.auth_failures_max.max(1) {
                    self.reply("421 4.7.0 Too many authentication failures, closing connection");
                    self.state = State::Closing;
                }
            }
        }
    }

    /// The spool answered: durable (250) or not (452), per RFC 5321 §4.2.5 the reply to the
    /// end of data comes only now.
    pub fn message_stored(&mut self, durable: bool, queue_id: &str) {
        assert_eq!(self.state, State::Storing);
        self.state = State::Command;
        self.reset_transaction();
        if durable {
            self.reply(&format!("250 2.0.0 Ok: queued as {queue_id}"));
        } else {
            self.reply("452 4.3.1 Insufficient system storage, try again later");
        }
    }

    /// The message is refused after its data (e.g. an unknown virtual MTA): `reply` is a
    /// whole reply line such as `550 5.7.1 ...`.
    pub fn message_refused(&mut self, reply: &str) {
        assert_eq!(self.state, State::Storing);
        self.state = State::Command;
        self.reset_transaction();
        self.reply(reply);
    }

    /// The client was idle past the limit (RFC 5321 §4.5.3.2).
    pub fn timed_out(&mut self) {
        self.reply("421 4.4.2 Timeout, closing connection");
        self.state = State::Closing;
    }

    /// The server is at its connection limit (`total-max-smtp-in`): RFC 5321 §3.8 421.
    /// The session ended because of `SESSION_ERRORS_MAX` protocol errors.
    pub fn closed_for_errors(&self) -> bool {
        self.errors >= SESSION_ERRORS_MAX
    }

    /// The client's address ended too many sessions with errors lately: 421 at once.
    pub fn refuse_erring_source(&mut self) {
        self.out.clear();
        self.reply(&format!(
            "421 4.7.0 {} too many protocol errors from your address, try again later",
            self.policy.host_name
        ));
        self.state = State::Closing;
    }

    pub fn too_busy(&mut self) {
        self.out.clear();
        self.reply(&format!("421 4.7.0 {} too many connections, try again later", self.policy.host_name));
        self.state = State::Closing;
    }

    /// The server is shutting down.
    pub fn shutdown(&mut self) {
        if self.state != State::Closing {
            self.reply(&format!("421 4.3.2 {} shutting down", self.policy.host_name));
            self.state = State::Closing;
        }
    }

    /// sluice failed while handling this session's input (a panic, caught by the caller):
    /// replies not yet sent are dropped, the client is told 421 (RFC 5321 §3.8) and the
    /// session ends. Nothing it sent in this transaction was acknowledged.
    pub fn fail_internal(&mut self) {
        self.out.clear();
        self.reply(&format!("421 4.3.0 {} internal error; closing connection, try again later", self.policy.host_name));
        self.state = State::Closing;
    }

    /// Gives back a spent data buffer so its capacity is reused for the next message.
    pub fn recycle_data_buffer(&mut self, mut buf: Vec<u8>) {
        if self.data.capacity() == 0 {
            buf.clear();
            self.data = buf;
        }
    }
}

/// `{:016x}`, without the formatting machinery.
fn hex16(v: u64) -> [u8; 16] {
    let mut out = [0; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = b"0123456789abcdef"[(v >> (60 - 4 * i)) as usize & 0xf];
    }
    out
}

/// `s` without `prefix` (ASCII, any case). Compares bytes: a `str` slice at `prefix.len()`
/// would panic when that offset falls inside a multi-byte character of the peer's input.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    debug_assert!(prefix.is_ascii());
    let head = s.as_bytes().get(..prefix.len())?;
    // An ASCII prefix matched byte for byte ends on a character boundary, so `get` succeeds.
    head.eq_ignore_ascii_case(prefix.as_bytes()).then(|| s.get(prefix.len()..)).flatten()
}

fn path_error_reply(e: PathError, syntax: &str) -> String {
    match e {
        PathError::TooLong => "501 5.1.3 Path too long (RFC 5321 4.5.3.1.3)".into(),
        PathError::BadDomain => "501 5.1.2 Bad destination domain syntax".into(),
        PathError::Syntax => format!("501 5.1.3 Syntax: {syntax}"),
    }
}

/// RFC 3461 §4: xtext, `+XX` standing for a byte; None when malformed.
fn xtext_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(crate::http::hex_byte(bytes.get(i + 1..i + 3)?)?);
                i += 3;
            }
            b'!'..=b'~' if bytes[i] != b'=' => {
                out.push(bytes[i]);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// `NOTIFY=` (RFC 3461 §4.1) as `sched::notify` bits.
fn parse_notify(v: &str) -> Option<u8> {
    use crate::sched::notify;
    if v.eq_ignore_ascii_case("NEVER") {
        return Some(notify::NEVER);
    }
    let mut bits = 0;
    for word in v.split(',') {
        bits |= match word.to_ascii_uppercase().as_str() {
            "SUCCESS" => notify::SUCCESS,
            "FAILURE" => notify::FAILURE,
            "DELAY" => notify::DELAY,
            _ => return None,
        };
    }
    Some(bits)
}

#[cfg(test)]
mod tests {
    use super::{hex16, xtext_decode};

    #[test]
    fn hex16_is_the_formatted_id() {
        for v in [0, 1, 0xdead_beef, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(hex16(v), format!("{v:016x}").as_bytes());
        }
    }

    /// RFC 3461 xtext: `+XX` is a byte in hex, exactly two digits; anything else is malformed.
    #[test]
    fn xtext_decodes_hex_pairs_only() {
        assert_eq!(xtext_decode("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
        assert_eq!(xtext_decode("rfc822+3Ba@b.example").as_deref(), Some("rfc822;a@b.example"));
        for bad in ["++1", "+-1", "+2", "+ 1", "a=b", "+zz", "é"] {
            assert_eq!(xtext_decode(bad), None, "{bad:?}");
        }
    }
}
