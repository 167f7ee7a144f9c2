//! Outbound ESMTP client (RFC 5321, RFC 2920 PIPELINING), sans-IO. The caller connects,
//! feeds replies in, writes `output()` out, and sends the message body (from the spool)
//! when told to; the client tracks which reply belongs to which recipient.

use super::reply::{parse_reply, Reply};
use sluice_config::SmtpOptions;
use std::collections::VecDeque;
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Not a reply: the `BDAT n LAST` line is out, the chunk must follow it at once.
    BdatBody,
    Greeting,
    Ehlo,
    Helo,
    Mail,
    Rcpt(usize),
    Data,
    Final,
    Rset,
    Quit,
    StartTls,
    /// A step of logging in (`auth-username`, `auth-password`).
    Auth(AuthStep),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthStep {
    /// `AUTH PLAIN <credentials>` is out: 235 expected.
    Plain,
    /// `AUTH LOGIN` is out: 334 for the user name, then for the password.
    LoginUser,
    LoginPassword,
    /// `AUTH CRAM-MD5` is out: 334 with the challenge.
    Cram,
    /// The last answer is out: 235 expected.
    Answered,
}

/// Credentials for the receiver (`auth-username`, `auth-password`).
struct Login {
    user: String,
    password: String,
    /// `use-unencrypted-plain-auth`: PLAIN and LOGIN outside TLS too.
    unencrypted_plain: bool,
}

#[derive(Debug, Default, Clone)]
pub struct Capabilities {
    pub pipelining: bool,
    pub size_max: Option<u64>,
    pub eight_bit_mime: bool,
    pub esmtp: bool,
    pub starttls: bool,
    /// The SASL mechanisms after AUTH (RFC 4954), upper case.
    pub auth: Vec<String>,
    /// RFC 3461, RFC 6531, RFC 3030.
    pub dsn: bool,
    pub smtputf8: bool,
    pub chunking: bool,
    /// The service extensions offered, in the server's order, as PowerMTA's
    /// `dlvEsmtpAvailable` column lists them (`PIPELINING,8BITMIME,SIZE,STARTTLS`).
    pub keywords: Vec<String>,
}

/// Service extension keywords (IANA's SMTP Service Extensions registry, plus long-standing
/// common ones): a reply's words that are none of these (the greeting, parameters) are not
/// extensions.
const EXTENSIONS: &[&str] = &[
    "8BITMIME",
    "ATRN",
    "AUTH",
    "BINARYMIME",
    "BURL",
    "CHECKPOINT",
    "CHUNKING",
    "CONNEG",
    "CONPERM",
    "DELIVERBY",
    "DSN",
    "ENHANCEDSTATUSCODES",
    "ETRN",
    "EXPN",
    "FUTURERELEASE",
    "HELP",
    "LIMITS",
    "MT-PRIORITY",
    "MTRK",
    "NO-SOLICITING",
    "ONEX",
    "PIPELINING",
    "REQUIRETLS",
    "RRVS",
    "SIZE",
    "SMTPUTF8",
    "STARTTLS",
    "SUBMITTER",
    "TURN",
    "UTF8SMTP",
    "VERB",
    "VRFY",
    "XCLIENT",
    "XEXCH50",
    "XFORWARD",
];

/// What a transaction says besides its addresses: the DSN parameters (RFC 3461), passed on
/// when the server offers DSN, SMTPUTF8 (RFC 6531), and the message's length when it goes
/// in one `BDAT n LAST` chunk (RFC 3030) instead of DATA.
#[derive(Debug, Default, Clone)]
pub struct TxnParams<'a> {
    /// `FULL` or `HDRS`.
    pub ret: Option<&'static str>,
    pub envid: &'a str,
    pub smtputf8: bool,
    /// Per recipient, in order: NOTIFY bits (`sched::notify`) and ORCPT (`type;address`).
    pub rcpt_dsn: Vec<(u8, &'a str)>,
    /// The unstuffed message's length: send it with BDAT.
    pub bdat: Option<u64>,
}

/// Outbound TLS: `use-starttls` (opportunistic, the default) and `require-starttls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    Opportunistic,
    Required,
}

/// What the caller must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Idle and ready for `start` (or `quit`).
    Ready,
    /// The server said 354: send the message body, then `.\r\n` (see `END_OF_DATA`).
    SendBody,
    /// The server said 220 to STARTTLS: run the TLS handshake, then call `tls_started`.
    StartTls,
    /// The transaction finished: one reply per recipient, in order.
    Done(Vec<Reply>),
    /// The session failed; a transaction in progress gets this reply for every recipient.
    Failed(Reply),
    /// QUIT answered; close the socket.
    Closed,
}

pub const END_OF_DATA: &[u8] = b".\r\n";

struct Txn {
    rcpts: usize,
    mail: Option<Reply>,
    rcpt_replies: Vec<Option<Reply>>,
    data: Option<Reply>,
    /// Commands not yet sent when the server does not pipeline.
    unsent: VecDeque<(String, Expect)>,
}

pub struct Client {
    ehlo_name: String,
    expect: VecDeque<Expect>,
    caps: Capabilities,
    txn: Option<Txn>,
    /// A transaction started behind the current one's body (`start_next`): it becomes the
    /// current one when the end of data is answered.
    next: Option<Txn>,
    out: Vec<u8>,
    failed: bool,
    pipelining_allowed: bool,
    tls_mode: TlsMode,
    tls: bool,
    /// The server's 220 greeting arrived.
    greeted: bool,
    /// `ignore-8bitmime`: no BODY=8BITMIME even when offered.
    ignore_8bitmime: bool,
    /// `smtp-553-means-invalid-mailbox`.
    invalid_553: bool,
    /// `ignore-dsn`, `ignore-chunking`.
    ignore_dsn: bool,
    ignore_chunking: bool,
    /// The BDAT line is out: the caller sends the chunk next.
    body_requested: bool,
    /// A 421 to a RCPT ended the session in a transaction: each recipient's own outcome
    /// (`take_partial_replies`).
    partial: Option<Vec<Reply>>,
    login: Option<Login>,
    /// The output holds credentials: not for the session log.
    secret_output: bool,
}

/// What a failed session means for its connection (PowerMTA's `bounce-upon-5xx-greeting`
/// and `smtp-421-means-mx-unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The transaction and, if the session never worked, the queue's ready mail are deferred.
    Defer,
    /// The connection moves on to its next MX (the transaction goes back to the queue).
    NextHop,
    /// A 5xx greeting: the queue's mail bounces with the greeting's reply.
    BounceQueue,
}

/// The rule for a session that failed with `reply` (`greeted`: the 220 greeting had come).
pub fn after_failure(opts: &SmtpOptions, greeted: bool, reply: &Reply) -> AfterFailure {
    if !greeted && reply.is_permanent() {
        return match opts.bounce_upon_5xx_greeting {
            true => AfterFailure::BounceQueue,
            false => AfterFailure::NextHop,
        };
    }
    if reply.code == 421 && opts.smtp_421_means_mx_unavailable {
        return AfterFailure::NextHop;
    }
    AfterFailure::Defer
}

impl Client {
    /// The name said in EHLO (or HELO), before the session starts: through a proxy, the
    /// proxy's client name.
    pub fn set_ehlo_name(&mut self, name: &str) {
        name.clone_into(&mut self.ehlo_name);
    }

    pub fn new(ehlo_name: &str) -> Self {
        Client {
            ehlo_name: ehlo_name.to_string(),
            expect: VecDeque::from([Expect::Greeting]),
            caps: Capabilities::default(),
            txn: None,
            next: None,
            out: Vec::with_capacity(1024),
            failed: false,
            pipelining_allowed: true,
            tls_mode: TlsMode::Off,
            tls: false,
            greeted: false,
            ignore_8bitmime: false,
            invalid_553: true,
            ignore_dsn: false,
            ignore_chunking: false,
            body_requested: false,
            partial: None,
            login: None,
            secret_output: false,
        }
    }

    /// The destination's rules: extensions not to use (`ignore-pipelining`,
    /// `ignore-8bitmime`) and what a reply means (`smtp-553-means-invalid-mailbox`).
    pub fn set_options(&mut self, opts: &SmtpOptions) {
        self.pipelining_allowed &= !opts.ignore_pipelining;
        self.ignore_8bitmime = opts.ignore_8bitmime;
        self.invalid_553 = opts.smtp_553_means_invalid_mailbox;
        self.ignore_dsn = opts.ignore_dsn;
        self.ignore_chunking = opts.ignore_chunking;
        let password = &opts.auth_password.0;
        self.login = (!opts.auth_username.is_empty() || !password.is_empty()).then(|| Login {
            user: opts.auth_username.clone(),
            password: password.clone(),
            unencrypted_plain: opts.use_unencrypted_plain_auth,
        });
    }

    /// The output holds credentials (an AUTH line or answer): log it as `AUTH ...` only.
    pub fn output_is_secret(&self) -> bool {
        self.secret_output
    }

    /// Whether a message goes with BDAT to this server (it offers CHUNKING, and
    /// `ignore-chunking` is off).
    pub fn uses_bdat(&self) -> bool {
        self.caps.chunking && !self.ignore_chunking
    }

    /// The `BDAT` line went out: the caller sends the chunk (the unstuffed message, no
    /// ".") next, then calls `body_sent`.
    pub fn take_body_request(&mut self) -> bool {
        std::mem::take(&mut self.body_requested)
    }

    /// The server's 220 greeting has arrived.
    pub fn greeted(&self) -> bool {
        self.greeted
    }

    /// Waiting for the greeting (its own timeout, `smtp-greeting-timeout`).
    pub fn awaiting_greeting(&self) -> bool {
        self.expect.front() == Some(&Expect::Greeting)
    }

    /// The reply to the end of data never came (`assume-delivery-upon-data-termination-
    /// timeout`): the recipients the server accepted are taken as delivered, the others keep
    /// their refusals. None when no end of data was outstanding. The session is over.
    pub fn assume_delivered(&mut self) -> Option<Vec<Reply>> {
        if self.expect.front() != Some(&Expect::Final) {
            return None;
        }
        let txn = self.txn.take()?;
        self.next = None;
        self.failed = true;
        self.expect.clear();
        let assumed = Reply::new(
            250,
            "2.0.0 assumed delivered: no reply to the end of data (assume-delivery-upon-data-termination-timeout)",
        );
        Some(results(txn, Some(assumed)))
    }

    /// Whether to ask for STARTTLS (RFC 3207) when the server offers it, or insist on it.
    pub fn set_tls_mode(&mut self, mode: TlsMode) {
        self.tls_mode = mode;
    }

    /// TLS is up: say EHLO again (RFC 3207 §4.2), inside TLS.
    pub fn tls_started(&mut self) {
        self.tls = true;
        let line = format!("EHLO {}", self.ehlo_name);
        self.send(&line, Expect::Ehlo);
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Never pipeline, even when the server offers it (load generation without PIPELINING).
    pub fn disable_pipelining(&mut self) {
        self.pipelining_allowed = false;
    }

    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn clear_output(&mut self) {
        self.out.clear();
        self.secret_output = false;
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// No transaction and no reply outstanding: ready for `start` or `quit`.
    pub fn is_idle(&self) -> bool {
        self.txn.is_none() && self.next.is_none() && self.expect.is_empty() && !self.failed
    }

    /// Whether a transaction may start behind the current one (`start_next`): the server
    /// pipelines, the body is handed over (only the end of data's reply is awaited) and no
    /// transaction waits behind it yet.
    pub fn can_pipeline_next(&self) -> bool {
        self.caps.pipelining
            && !self.failed
            && self.txn.is_some()
            && self.next.is_none()
            && self.expect.len() == 1
            && self.expect.front() == Some(&Expect::Final)
    }

    /// Replies are outstanding: the caller should be reading.
    pub fn awaiting_reply(&self) -> bool {
        !self.expect.is_empty()
    }

    fn send(&mut self, line: &str, expect: Expect) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        match expect {
            // The chunk follows the line; its reply is awaited once it is sent.
            Expect::BdatBody => self.body_requested = true,
            e => self.expect.push_back(e),
        }
    }

    /// Starts a transaction. With PIPELINING, MAIL, every RCPT and DATA go in one write.
    pub fn start(&mut self, mail_from: &str, rcpts: &[&str], size: u64) {
        self.start_with(mail_from, rcpts, size, &TxnParams::default());
    }

    /// As `start`, with the message's DSN and SMTPUTF8 parameters, and BDAT for DATA when
    /// `params.bdat` says so (the caller checked `uses_bdat`).
    pub fn start_with(&mut self, mail_from: &str, rcpts: &[&str], size: u64, params: &TxnParams) {
        assert!(self.txn.is_none() && self.expect.is_empty() && !rcpts.is_empty());
        let mut txn = self.transaction(mail_from, rcpts, size, params);
        if self.caps.pipelining {
            for (line, e) in txn.unsent.drain(..) {
                self.send(&line, e);
            }
        } else if let Some((line, e)) = txn.unsent.pop_front() {
            self.send(&line, e);
        }
        self.txn = Some(txn);
    }

    /// Starts a transaction behind the body just handed over (`can_pipeline_next`): its
    /// MAIL, RCPT and DATA go right after the end of data, in the same write (RFC 2920 §3.1:
    /// the message content may be the first "command" of a group, DATA its last), so the
    /// next message waits for no round trip. Its replies follow the end of data's; a session
    /// that fails before them fails both (the caller gives the second one back untried).
    pub fn start_next(&mut self, mail_from: &str, rcpts: &[&str], size: u64, params: &TxnParams) {
        assert!(self.can_pipeline_next() && params.bdat.is_none() && !rcpts.is_empty());
        let mut txn = self.transaction(mail_from, rcpts, size, params);
        for (line, e) in txn.unsent.drain(..) {
            self.send(&line, e);
        }
        self.next = Some(txn);
    }

    /// A transaction's commands: MAIL with its parameters, a RCPT for each recipient, then
    /// DATA or `BDAT n LAST`.
    fn transaction(&self, mail_from: &str, rcpts: &[&str], size: u64, params: &TxnParams) -> Txn {
        let dsn = self.caps.dsn && !self.ignore_dsn;
        let mut cmds = VecDeque::new();
        // Built in place (a transaction per message: no formatted pieces to copy).
        let mut mail = String::with_capacity(48 + mail_from.len());
        mail.push_str("MAIL FROM:<");
        mail.push_str(mail_from);
        mail.push('>');
        if self.caps.size_max.is_some() {
            let _ = write!(mail, " SIZE={size}");
        }
        if self.caps.eight_bit_mime && !self.ignore_8bitmime {
            mail.push_str(" BODY=8BITMIME");
        }
        if params.smtputf8 && self.caps.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if dsn {
            if let Some(ret) = params.ret {
                mail.push_str(&format!(" RET={ret}"));
            }
            if !params.envid.is_empty() {
                mail.push_str(&format!(" ENVID={}", xtext_encode(params.envid)));
            }
        }
        cmds.push_back((mail, Expect::Mail));
        for (i, r) in rcpts.iter().enumerate() {
            let mut line = String::with_capacity(12 + r.len());
            line.push_str("RCPT TO:<");
            line.push_str(r);
            line.push('>');
            if let (true, Some(&(notify, orcpt))) = (dsn, params.rcpt_dsn.get(i)) {
                if notify != 0 {
                    line.push_str(&format!(" NOTIFY={}", notify_words(notify)));
                }
                if let Some((kind, addr)) = orcpt.split_once(';') {
                    line.push_str(&format!(" ORCPT={kind};{}", xtext_encode(addr)));
                }
            }
            cmds.push_back((line, Expect::Rcpt(i)));
        }
        match params.bdat {
            Some(n) => cmds.push_back((format!("BDAT {n} LAST"), Expect::BdatBody)),
            None => cmds.push_back(("DATA".to_string(), Expect::Data)),
        }
        Txn { rcpts: rcpts.len(), mail: None, rcpt_replies: vec![None; rcpts.len()], data: None, unsent: cmds }
    }

    /// The body and `.\r\n` were sent.
    pub fn body_sent(&mut self) {
        self.expect.push_back(Expect::Final);
    }

    pub fn quit(&mut self) {
        assert!(self.txn.is_none());
        self.send("QUIT", Expect::Quit);
    }

    /// After `Failed` for a 421 to a RCPT: one reply per recipient of the transaction that
    /// ended — a final answer a recipient already had stands (its bounce is its own), the
    /// recipient the 421 answered gets it, the others a deferral that names it.
    pub fn take_partial_replies(&mut self) -> Option<Vec<Reply>> {
        self.partial.take()
    }

    /// Consumes replies from `input`; returns bytes used and at most one event.
    pub fn receive(&mut self, input: &[u8]) -> (usize, Option<ClientEvent>) {
        if self.failed {
            return (input.len(), None);
        }
        let (reply, used) = match parse_reply(input) {
            Ok(Some(v)) => v,
            Ok(None) => return (0, None),
            Err(e) => {
                return (
                    input.len(),
                    Some(self.fail(Reply::new(421, format!("4.4.0 malformed reply from server ({e:?})")))),
                )
            }
        };
        let Some(expect) = self.expect.pop_front() else {
            return (
                used,
                Some(self.fail(Reply::new(421, format!("4.4.0 unexpected reply from server: {}", reply.line())))),
            );
        };
        (used, self.on_reply(expect, reply))
    }

    fn fail(&mut self, reply: Reply) -> ClientEvent {
        self.failed = true;
        self.txn = None;
        self.next = None;
        self.expect.clear();
        ClientEvent::Failed(reply)
    }

    fn on_reply(&mut self, expect: Expect, reply: Reply) -> Option<ClientEvent> {
        // RFC 5321 §3.8: 421 means the server is closing the channel, whatever the command;
        // the session ends with the server's own words (backoff patterns match them).
        if reply.code == 421 && expect != Expect::Quit {
            if let (Expect::Rcpt(i), Some(txn)) = (expect, self.txn.as_ref()) {
                self.partial = Some(replies_after_421(txn, i, &reply));
            }
            return Some(self.fail(reply));
        }
        match expect {
            Expect::Greeting if reply.code == 220 => {
                self.greeted = true;
                let line = format!("EHLO {}", self.ehlo_name);
                self.send(&line, Expect::Ehlo);
                None
            }
            Expect::Greeting => Some(self.fail(reply)),
            Expect::Ehlo if reply.code == 250 => {
                self.caps = parse_ehlo(&reply.text);
                self.caps.pipelining &= self.pipelining_allowed;
                if !self.tls && self.tls_mode != TlsMode::Off && self.caps.starttls {
                    self.send("STARTTLS", Expect::StartTls);
                    return None;
                }
                if !self.tls && self.tls_mode == TlsMode::Required {
                    return Some(self.fail(Reply::new(451, "4.7.10 TLS required (require-starttls) but not offered")));
                }
                self.log_in_or_ready()
            }
            Expect::StartTls if reply.code == 220 => Some(ClientEvent::StartTls),
            // Opportunistic: a refused STARTTLS leaves the session in plain text.
            Expect::StartTls if self.tls_mode == TlsMode::Opportunistic => {
                tracing::info!(reply = %reply.line(), "STARTTLS refused by the receiver: going on without TLS");
                self.log_in_or_ready()
            }
            Expect::Auth(step) => self.auth_reply(step, reply),
            Expect::StartTls => Some(self.fail(reply)),
            // RFC 5321 §3.2: fall back to HELO when EHLO is not understood.
            Expect::Ehlo if reply.is_permanent() => {
                let line = format!("HELO {}", self.ehlo_name);
                self.send(&line, Expect::Helo);
                None
            }
            Expect::Ehlo | Expect::Helo if reply.code != 250 => Some(self.fail(reply)),
            Expect::Helo => Some(ClientEvent::Ready),
            Expect::Mail | Expect::Rcpt(_) | Expect::Data => self.txn_reply(expect, reply),
            Expect::Final => {
                let txn = self.txn.take().expect("final reply inside a transaction");
                self.txn = self.next.take();
                Some(ClientEvent::Done(results(txn, Some(reply))))
            }
            Expect::Rset if reply.code == 250 => Some(ClientEvent::Ready),
            Expect::Rset => Some(self.fail(reply)),
            Expect::Quit => Some(ClientEvent::Closed),
            Expect::Ehlo => unreachable!("covered above"),
            Expect::BdatBody => unreachable!("never awaited"),
        }
    }

    /// With credentials and an AUTH the receiver offers (RFC 4954): log in, else Ready.
    /// PLAIN or LOGIN only inside TLS (or `use-unencrypted-plain-auth`), CRAM-MD5 anywhere;
    /// with none usable the session goes on without (PowerMTA's rule: AUTH is tried when the
    /// receiver offers a mechanism it supports).
    fn log_in_or_ready(&mut self) -> Option<ClientEvent> {
        let Some(login) = &self.login else { return Some(ClientEvent::Ready) };
        let offers = |m: &str| self.caps.auth.iter().any(|a| a == m);
        let clear = self.tls || login.unencrypted_plain;
        if clear && offers("PLAIN") {
            let message = format!("\0{}\0{}", login.user, login.password);
            let line = format!("AUTH PLAIN {}", super::auth::b64_encode(message.as_bytes()));
            self.send_secret(&line, AuthStep::Plain);
        } else if clear && offers("LOGIN") {
            self.send("AUTH LOGIN", Expect::Auth(AuthStep::LoginUser));
        } else if offers("CRAM-MD5") {
            self.send("AUTH CRAM-MD5", Expect::Auth(AuthStep::Cram));
        } else {
            tracing::info!(
                offered = %self.caps.auth.join(" "),
                tls = self.tls,
                "auth-username is set but the receiver offers no AUTH mechanism usable here: sending without logging in"
            );
            return Some(ClientEvent::Ready);
        }
        None
    }

    fn send_secret(&mut self, line: &str, step: AuthStep) {
        self.secret_output = true;
        self.send(line, Expect::Auth(step));
    }

    /// The receiver's answer to a step of AUTH. A refusal defers the mail (a 4xx naming the
    /// receiver's words): wrong credentials are the sender's to fix, not the recipients' to
    /// bounce for.
    fn auth_reply(&mut self, step: AuthStep, reply: Reply) -> Option<ClientEvent> {
        let login = self.login.as_ref().expect("AUTH only with credentials");
        let b64 = |b: &[u8]| super::auth::b64_encode(b);
        match step {
            AuthStep::Plain | AuthStep::Answered if reply.code == 235 => return Some(ClientEvent::Ready),
            AuthStep::LoginUser if reply.code == 334 => {
                let line = b64(login.user.as_bytes());
                self.send_secret(&line, AuthStep::LoginPassword);
                return None;
            }
            AuthStep::LoginPassword if reply.code == 334 => {
                let line = b64(login.password.as_bytes());
                self.send_secret(&line, AuthStep::Answered);
                return None;
            }
            AuthStep::Cram if reply.code == 334 => {
                if let Some(challenge) = super::auth::b64_decode(&reply.text) {
                    let answer = format!("{} {}", login.user, super::auth::cram_digest(&login.password, &challenge));
                    let line = b64(answer.as_bytes());
                    self.send_secret(&line, AuthStep::Answered);
                    return None;
                }
            }
            _ => {}
        }
        let why =
            format!("4.7.0 the receiver refused our AUTH ({}): check auth-username and auth-password", reply.line());
        Some(self.fail(Reply::new(454, why)))
    }

    fn txn_reply(&mut self, expect: Expect, reply: Reply) -> Option<ClientEvent> {
        let txn = self.txn.as_mut().expect("transaction reply inside a transaction");
        // RFC 5321 names 553 "mailbox name not allowed"; receivers that say it without an
        // enhanced code to RCPT nearly always mean the mailbox does not exist.
        let reply = match expect {
            Expect::Rcpt(_) if self.invalid_553 && reply.code == 553 && reply.enhanced().is_none() => {
                Reply::new(553, format!("5.1.1 {}", reply.text))
            }
            _ => reply,
        };
        match expect {
            Expect::Mail => txn.mail = Some(reply.clone()),
            Expect::Rcpt(i) => txn.rcpt_replies[i] = Some(reply.clone()),
            Expect::Data => txn.data = Some(reply.clone()),
            _ => unreachable!(),
        }
        if expect == Expect::Data {
            if reply.code == 354 {
                return Some(ClientEvent::SendBody);
            }
            // DATA refused (no accepted recipient, or the server failed): reset and go on.
            let txn = self.txn.take().expect("checked");
            self.send("RSET", Expect::Rset);
            return Some(ClientEvent::Done(results(txn, None)));
        }
        // Without pipelining: a failed MAIL ends the transaction; otherwise send the next.
        if expect == Expect::Mail && !reply.is_positive() && !self.caps.pipelining {
            let txn = self.txn.take().expect("checked");
            self.send("RSET", Expect::Rset);
            return Some(ClientEvent::Done(results(txn, None)));
        }
        let all_rcpts_failed = matches!(expect, Expect::Rcpt(i) if i + 1 == txn.rcpts)
            && txn.rcpt_replies.iter().all(|r| r.as_ref().is_some_and(|r| !r.is_positive()));
        if all_rcpts_failed && !self.caps.pipelining {
            let txn = self.txn.take().expect("checked");
            self.send("RSET", Expect::Rset);
            return Some(ClientEvent::Done(results(txn, None)));
        }
        if let Some((line, e)) = txn.unsent.pop_front() {
            self.send(&line, e);
        }
        None
    }
}

/// The outcomes of a transaction a 421 to recipient `at`'s RCPT ended (RFC 5321 §3.8).
fn replies_after_421(txn: &Txn, at: usize, reply: &Reply) -> Vec<Reply> {
    let closed = Reply::new(
        451,
        format!("4.4.2 not sent: the server closed the session at another recipient ({})", reply.line()),
    );
    (0..txn.rcpts)
        .map(|j| match (&txn.mail, txn.rcpt_replies.get(j).and_then(Option::as_ref)) {
            (Some(m), _) if m.is_permanent() => m.clone(),
            (_, Some(r)) if r.is_permanent() => r.clone(),
            _ if j == at => reply.clone(),
            _ => closed.clone(),
        })
        .collect()
}

/// Each recipient's outcome: MAIL's failure, else its RCPT's failure, else DATA's, else the
/// reply to the end of data.
fn results(txn: Txn, last: Option<Reply>) -> Vec<Reply> {
    let fallback = || Reply::new(451, "4.4.0 transaction ended before a reply");
    txn.rcpt_replies
        .into_iter()
        .map(|rcpt| {
            if let Some(m) = txn.mail.as_ref().filter(|m| !m.is_positive()) {
                return m.clone();
            }
            match rcpt {
                Some(r) if !r.is_positive() => r,
                None => fallback(),
                Some(_) => match (&txn.data, &last) {
                    (Some(d), _) if d.code != 354 => d.clone(),
                    (_, Some(l)) => l.clone(),
                    _ => fallback(),
                },
            }
        })
        .collect()
}

/// RFC 3461 §4: xtext, `+XX` for "+", "=" and bytes outside "!" to "~".
pub fn xtext_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'!'..=b'~' if b != b'+' && b != b'=' => out.push(b as char),
            _ => out.push_str(&format!("+{b:02X}")),
        }
    }
    out
}

/// `NOTIFY=` words for `sched::notify` bits.
fn notify_words(bits: u8) -> String {
    use crate::sched::notify;
    if bits & notify::NEVER != 0 {
        return "NEVER".into();
    }
    let words = [(notify::SUCCESS, "SUCCESS"), (notify::FAILURE, "FAILURE"), (notify::DELAY, "DELAY")];
    words.iter().filter(|(b, _)| bits & b != 0).map(|(_, w)| *w).collect::<Vec<_>>().join(",")
}

fn parse_ehlo(text: &str) -> Capabilities {
    let words: Vec<String> = text.split_ascii_whitespace().map(|w| w.to_ascii_uppercase()).collect();
    let mut caps = Capabilities { esmtp: true, ..Default::default() };
    let mut in_auth = false;
    for (i, w) in words.iter().enumerate() {
        let extension = EXTENSIONS.contains(&w.as_str());
        if extension && !caps.keywords.contains(w) {
            caps.keywords.push(w.clone());
        }
        // `AUTH PLAIN LOGIN` (and the old `AUTH=LOGIN`): the words up to the next extension.
        if let Some(first) = w.strip_prefix("AUTH=") {
            caps.auth.push(first.to_string());
            in_auth = true;
            continue;
        }
        if w == "AUTH" {
            in_auth = true;
            continue;
        }
        if in_auth && !extension && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            if !caps.auth.contains(w) {
                caps.auth.push(w.clone());
            }
            continue;
        }
        in_auth = false;
        match w.as_str() {
            "PIPELINING" => caps.pipelining = true,
            "8BITMIME" => caps.eight_bit_mime = true,
            "STARTTLS" => caps.starttls = true,
            "DSN" => caps.dsn = true,
            "SMTPUTF8" => caps.smtputf8 = true,
            "CHUNKING" => caps.chunking = true,
            "SIZE" => caps.size_max = Some(words.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(0)),
            _ => {}
        }
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(c: &mut Client, s: &str) -> Option<ClientEvent> {
        let (used, ev) = c.receive(s.as_bytes());
        assert_eq!(used, s.len(), "whole reply consumed: {s:?}");
        ev
    }

    /// A client with credentials, greeted, its EHLO answered with `ehlo`.
    fn logging_in(ehlo: &str, unencrypted_plain: bool) -> (Client, Option<ClientEvent>) {
        let mut c = Client::new("me.test");
        let opts = SmtpOptions {
            auth_username: "tim".into(),
            auth_password: sluice_config::Secret("tanstaaftanstaaf".into()),
            use_unencrypted_plain_auth: unencrypted_plain,
            ..SmtpOptions::default()
        };
        c.set_options(&opts);
        feed(&mut c, "220 hi\r\n");
        c.clear_output();
        let ev = feed(&mut c, ehlo);
        (c, ev)
    }

    #[test]
    fn auth_mechanisms_as_powermta_chooses_them() {
        // Plain text: CRAM-MD5 only (RFC 2195's example exchange).
        let (mut c, ev) = logging_in("250-x\r\n250-AUTH LOGIN PLAIN CRAM-MD5\r\n250 SIZE 100\r\n", false);
        assert_eq!((ev, c.output()), (None, b"AUTH CRAM-MD5\r\n".as_slice()));
        assert!(!c.output_is_secret());
        c.clear_output();
        assert_eq!(feed(&mut c, "334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n"), None);
        assert_eq!(c.output(), b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n");
        assert!(c.output_is_secret());
        c.clear_output();
        assert_eq!(feed(&mut c, "235 2.7.0 ok\r\n"), Some(ClientEvent::Ready));
        assert_eq!(c.capabilities().auth, ["LOGIN", "PLAIN", "CRAM-MD5"]);
        // use-unencrypted-plain-auth: PLAIN first, then LOGIN (the old `AUTH=` form too).
        let (c, _) = logging_in("250-x\r\n250-AUTH=LOGIN PLAIN\r\n250 8BITMIME\r\n", true);
        assert_eq!(c.output(), b"AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n");
        assert!(c.capabilities().eight_bit_mime, "the next extension ends the list");
        let (mut c, _) = logging_in("250-x\r\n250 AUTH LOGIN\r\n", true);
        assert_eq!(c.output(), b"AUTH LOGIN\r\n");
        c.clear_output();
        feed(&mut c, "334 VXNlcm5hbWU6\r\n");
        assert_eq!(c.output(), b"dGlt\r\n");
        c.clear_output();
        feed(&mut c, "334 UGFzc3dvcmQ6\r\n");
        assert_eq!(c.output(), b"dGFuc3RhYWZ0YW5zdGFhZg==\r\n");
        // No usable mechanism (PLAIN outside TLS, not allowed): on without logging in.
        let (c, ev) = logging_in("250-x\r\n250 AUTH PLAIN LOGIN\r\n", false);
        assert_eq!((ev, c.output()), (Some(ClientEvent::Ready), b"".as_slice()));
    }

    #[test]
    fn a_refused_login_defers() {
        let (mut c, _) = logging_in("250-x\r\n250 AUTH CRAM-MD5\r\n", false);
        match feed(&mut c, "535 5.7.8 Authentication credentials invalid\r\n") {
            Some(ClientEvent::Failed(r)) => {
                assert_eq!(r.code, 454);
                assert!(r.text.contains("535 5.7.8 Authentication credentials invalid"), "{r:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    fn ready(pipelining: bool) -> Client {
        let mut c = Client::new("me.test");
        assert_eq!(feed(&mut c, "220 hi\r\n"), None);
        assert_eq!(c.output(), b"EHLO me.test\r\n");
        c.clear_output();
        let ehlo = if pipelining { "250-x\r\n250-PIPELINING\r\n250 SIZE 100\r\n" } else { "250-x\r\n250 SIZE 100\r\n" };
        assert_eq!(feed(&mut c, ehlo), Some(ClientEvent::Ready));
        c
    }

    #[test]
    fn pipelined_transaction_maps_replies_to_recipients() {
        let mut c = ready(true);
        c.start("s@a.test", &["x@b.test", "y@b.test"], 42);
        assert_eq!(c.output(), b"MAIL FROM:<s@a.test> SIZE=42\r\nRCPT TO:<x@b.test>\r\nRCPT TO:<y@b.test>\r\nDATA\r\n");
        assert_eq!(feed(&mut c, "250 ok\r\n"), None);
        assert_eq!(feed(&mut c, "250 ok\r\n"), None);
        assert_eq!(feed(&mut c, "550 5.1.1 no such user\r\n"), None);
        assert_eq!(feed(&mut c, "354 go\r\n"), Some(ClientEvent::SendBody));
        c.body_sent();
        let done = feed(&mut c, "250 2.0.0 queued\r\n");
        assert_eq!(
            done,
            Some(ClientEvent::Done(vec![Reply::new(250, "2.0.0 queued"), Reply::new(550, "5.1.1 no such user")]))
        );
    }

    /// RFC 2920 §3.1: the next transaction goes right behind the end of data; its replies
    /// follow the end of data's, each settles its own transaction.
    #[test]
    fn the_next_transaction_rides_behind_the_body() {
        let mut c = ready(true);
        c.start("s@a.test", &["x@b.test"], 10);
        c.clear_output();
        assert!(!c.can_pipeline_next(), "not before the body");
        feed(&mut c, "250 ok\r\n");
        feed(&mut c, "250 ok\r\n");
        assert_eq!(feed(&mut c, "354 go\r\n"), Some(ClientEvent::SendBody));
        c.body_sent();
        assert!(c.can_pipeline_next());
        c.start_next("s@a.test", &["y@b.test", "z@b.test"], 20, &TxnParams::default());
        assert!(!c.can_pipeline_next(), "one behind at a time");
        assert_eq!(c.output(), b"MAIL FROM:<s@a.test> SIZE=20\r\nRCPT TO:<y@b.test>\r\nRCPT TO:<z@b.test>\r\nDATA\r\n");
        c.clear_output();
        // All the replies in one read: the first transaction's end, then the second's.
        let replies = b"250 2.0.0 first queued\r\n250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n354 go\r\n";
        let (used, ev) = c.receive(replies);
        assert_eq!(ev, Some(ClientEvent::Done(vec![Reply::new(250, "2.0.0 first queued")])));
        assert!(c.in_transaction() && !c.is_idle());
        let mut at = used;
        let mut events = Vec::new();
        while at < replies.len() {
            let (used, ev) = c.receive(&replies[at..]);
            at += used;
            events.extend(ev);
        }
        assert_eq!(events, [ClientEvent::SendBody]);
        c.body_sent();
        assert_eq!(
            feed(&mut c, "250 2.0.0 second queued\r\n"),
            Some(ClientEvent::Done(vec![
                Reply::new(550, "5.1.1 no such user"),
                Reply::new(250, "2.0.0 second queued")
            ]))
        );
        assert!(c.is_idle());
    }

    /// A session that ends at the end of data ends the transaction behind it too: the
    /// caller gets Failed (and gives that one back untried); nothing of it is reported done.
    #[test]
    fn a_421_to_the_end_of_data_takes_the_next_transaction_down_too() {
        let mut c = body_out(true);
        c.start_next("s@a.test", &["y@b.test"], 20, &TxnParams::default());
        assert_eq!(
            feed(&mut c, "421 4.3.2 shutting down\r\n"),
            Some(ClientEvent::Failed(Reply::new(421, "4.3.2 shutting down")))
        );
        assert!(!c.in_transaction());
        assert_eq!(c.receive(b"250 ok\r\n").1, None, "a failed session takes nothing more");
    }

    /// Without PIPELINING nothing rides behind.
    #[test]
    fn no_next_transaction_without_pipelining() {
        assert!(!body_out(false).can_pipeline_next());
    }

    /// A one-recipient transaction with its body handed over (the end of data unanswered).
    fn body_out(pipelining: bool) -> Client {
        let mut c = ready(pipelining);
        c.start("s@a.test", &["x@b.test"], 10);
        feed(&mut c, "250 ok\r\n");
        feed(&mut c, "250 ok\r\n");
        assert_eq!(feed(&mut c, "354 go\r\n"), Some(ClientEvent::SendBody));
        c.body_sent();
        c
    }

    #[test]
    fn all_recipients_refused_resets() {
        let mut c = ready(true);
        c.start("s@a.test", &["x@b.test"], 1);
        c.clear_output();
        feed(&mut c, "250 ok\r\n");
        feed(&mut c, "450 4.2.1 later\r\n");
        let ev = feed(&mut c, "554 5.5.1 no valid recipients\r\n");
        assert_eq!(ev, Some(ClientEvent::Done(vec![Reply::new(450, "4.2.1 later")])));
        assert_eq!(c.output(), b"RSET\r\n");
        assert_eq!(feed(&mut c, "250 ok\r\n"), Some(ClientEvent::Ready));
    }

    #[test]
    fn without_pipelining_one_command_at_a_time() {
        let mut c = ready(false);
        c.start("s@a.test", &["x@b.test"], 1);
        assert_eq!(c.output(), b"MAIL FROM:<s@a.test> SIZE=1\r\n");
        c.clear_output();
        feed(&mut c, "250 ok\r\n");
        assert_eq!(c.output(), b"RCPT TO:<x@b.test>\r\n");
        c.clear_output();
        feed(&mut c, "250 ok\r\n");
        assert_eq!(c.output(), b"DATA\r\n");
    }

    #[test]
    fn a_421_anywhere_ends_the_session_with_its_text() {
        let mut c = ready(true);
        c.start("s@a.test", &["x@b.test"], 1);
        feed(&mut c, "250 ok\r\n");
        let ev = feed(&mut c, "421 4.7.0 too many errors\r\n");
        assert_eq!(ev, Some(ClientEvent::Failed(Reply::new(421, "4.7.0 too many errors"))));
        assert!(!c.in_transaction());
    }

    #[test]
    fn greeting_refusal_fails_session() {
        let mut c = Client::new("me.test");
        assert_eq!(feed(&mut c, "554 go away\r\n"), Some(ClientEvent::Failed(Reply::new(554, "go away"))));
    }

    #[test]
    fn mail_refusal_applies_to_every_recipient() {
        let mut c = ready(true);
        c.start("s@a.test", &["x@b.test", "y@b.test"], 1);
        feed(&mut c, "550 5.7.1 sender refused\r\n");
        feed(&mut c, "503 5.5.1 need mail\r\n");
        feed(&mut c, "503 5.5.1 need mail\r\n");
        let ev = feed(&mut c, "503 5.5.1 need mail\r\n");
        let r = Reply::new(550, "5.7.1 sender refused");
        assert_eq!(ev, Some(ClientEvent::Done(vec![r.clone(), r])));
    }

    #[test]
    fn starttls_rfc3207() {
        let ehlo = "250-x\r\n250-STARTTLS\r\n250 PIPELINING\r\n";
        for mode in [TlsMode::Opportunistic, TlsMode::Required] {
            let mut c = Client::new("me.test");
            c.set_tls_mode(mode);
            feed(&mut c, "220 hi\r\n");
            c.clear_output();
            assert_eq!(feed(&mut c, ehlo), None);
            assert_eq!(c.output(), b"STARTTLS\r\n");
            c.clear_output();
            assert_eq!(feed(&mut c, "220 go ahead\r\n"), Some(ClientEvent::StartTls));
            c.tls_started();
            assert_eq!(c.output(), b"EHLO me.test\r\n", "EHLO again inside TLS");
            c.clear_output();
            assert_eq!(feed(&mut c, ehlo), Some(ClientEvent::Ready), "no second STARTTLS");
            assert!(c.is_tls());
        }
        // Not offered: opportunistic goes on in plain text, required fails with 4.7.10.
        let plain = "250-x\r\n250 PIPELINING\r\n";
        let mut c = Client::new("me.test");
        c.set_tls_mode(TlsMode::Opportunistic);
        feed(&mut c, "220 hi\r\n");
        assert_eq!(feed(&mut c, plain), Some(ClientEvent::Ready));
        let mut c = Client::new("me.test");
        c.set_tls_mode(TlsMode::Required);
        feed(&mut c, "220 hi\r\n");
        assert!(matches!(feed(&mut c, plain), Some(ClientEvent::Failed(r)) if r.enhanced() == Some("4.7.10")));
        // Refused STARTTLS: opportunistic carries on.
        let mut c = Client::new("me.test");
        c.set_tls_mode(TlsMode::Opportunistic);
        feed(&mut c, "220 hi\r\n");
        feed(&mut c, ehlo);
        assert_eq!(feed(&mut c, "454 4.7.0 TLS not available\r\n"), Some(ClientEvent::Ready));
    }

    #[test]
    fn domain_rules_553_8bitmime_and_the_greeting() {
        let opts = SmtpOptions { ignore_8bitmime: true, ..Default::default() };
        let mut c = Client::new("me.test");
        c.set_options(&opts);
        feed(&mut c, "220 hi\r\n");
        assert!(c.greeted());
        feed(&mut c, "250-x\r\n250-8BITMIME\r\n250 PIPELINING\r\n");
        c.clear_output();
        c.start("s@a.test", &["x@b.test", "y@b.test"], 1);
        assert_eq!(c.output(), b"MAIL FROM:<s@a.test>\r\nRCPT TO:<x@b.test>\r\nRCPT TO:<y@b.test>\r\nDATA\r\n");
        feed(&mut c, "250 ok\r\n");
        feed(&mut c, "553 no such mailbox\r\n");
        feed(&mut c, "250 ok\r\n");
        assert_eq!(feed(&mut c, "354 go\r\n"), Some(ClientEvent::SendBody));
        c.body_sent();
        // No reply to the end of data: the accepted recipient is taken as delivered.
        let replies = c.assume_delivered().expect("awaiting the end of data");
        assert_eq!(replies[0], Reply::new(553, "5.1.1 no such mailbox"), "553 without a code is 5.1.1");
        assert_eq!(replies[1].code, 250);
        assert!(c.assume_delivered().is_none());

        // A 5xx greeting: bounce by default, the next MX when told; a 421 likewise.
        let refused = Reply::new(554, "go away");
        assert_eq!(after_failure(&SmtpOptions::default(), false, &refused), AfterFailure::BounceQueue);
        let lenient =
            SmtpOptions { bounce_upon_5xx_greeting: false, smtp_421_means_mx_unavailable: true, ..Default::default() };
        assert_eq!(after_failure(&lenient, false, &refused), AfterFailure::NextHop);
        let closing = Reply::new(421, "4.7.0 bye");
        assert_eq!(after_failure(&SmtpOptions::default(), true, &closing), AfterFailure::Defer);
        assert_eq!(after_failure(&lenient, true, &closing), AfterFailure::NextHop);
        assert_eq!(after_failure(&SmtpOptions::default(), true, &Reply::new(554, "x")), AfterFailure::Defer);
    }
}
