//! An outbound SMTP connection, sans-IO: the engine's `Client`, STARTTLS through rustls, the
//! reply buffer, the command buffer and the message body, each send resuming where the last
//! short one stopped (`SendBuf`, `Resume`). The body goes out from the caller's bytes (the
//! mapped spool segment) without a copy, or encrypted into the send buffer inside TLS.

use super::{free_space, received_into, tls_decrypt, write_out, Transcript, Want, OUT_RECV_BYTES};
use sluice_engine::smtp::client::{Capabilities, Client, ClientEvent, TlsMode, TxnParams, END_OF_DATA};
use sluice_engine::smtp::reply::Reply;
use sluice_spool::{Resume, SendBuf};
use std::sync::Arc;

/// What the caller must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum OutEvent {
    /// The session is ready for a transaction (or QUIT).
    Ready,
    /// The server said 354: hand over the body with `body`.
    SendBody,
    /// The transaction finished: one reply per recipient.
    Done(Vec<Reply>),
    /// The session failed.
    Failed(Reply),
    /// QUIT was answered: close.
    Closed,
}

/// rustls for STARTTLS: the client configuration and the name the server is known by.
pub type TlsSetup = (Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>);

pub struct Outgoing {
    client: Client,
    tls_setup: Option<TlsSetup>,
    tls: Option<Box<rustls::ClientConnection>>,
    inbuf: Vec<u8>,
    in_len: usize,
    /// With TLS: bytes at the front of `inbuf` that are decrypted.
    plain_len: usize,
    tls_pending: Vec<u8>,
    out: SendBuf,
    /// The plain-text body and ".\r\n" being sent.
    body: Option<Resume>,
    /// Bytes at the front of `out` that go before `body`: the commands ending with the
    /// `BDAT n LAST` line its chunk follows (one write for both). Zero after DATA.
    before_body: usize,
    ever_ready: bool,
    /// TLS protocol and cipher once the handshake is done.
    tls_info: Option<(String, String)>,
    /// `log-connections` / `log-commands` / `log-data`.
    transcript: Option<Transcript>,
    /// What ends the body being sent: ".\r\n" after DATA, nothing after BDAT.
    body_end: &'static [u8],
}

impl Outgoing {
    pub fn new(ehlo: &str, mode: TlsMode, tls_setup: Option<TlsSetup>) -> Outgoing {
        let mut client = Client::new(ehlo);
        client.set_tls_mode(if tls_setup.is_some() { mode } else { TlsMode::Off });
        Outgoing {
            client,
            tls_setup,
            tls: None,
            inbuf: vec![0; OUT_RECV_BYTES],
            in_len: 0,
            plain_len: 0,
            tls_pending: Vec::new(),
            out: SendBuf::default(),
            body: None,
            before_body: 0,
            ever_ready: false,
            tls_info: None,
            transcript: None,
            body_end: END_OF_DATA,
        }
    }

    /// What of the session goes into the log.
    pub fn set_transcript(&mut self, transcript: Option<Transcript>) {
        self.transcript = transcript;
    }

    /// A connection event for the log (`log-connections`).
    pub fn note(&self, what: &str) {
        if let Some(t) = &self.transcript {
            t.event(what);
        }
    }

    /// The next hop being connected to: the name TLS will say (SNI).
    pub fn set_server_name(&mut self, name: rustls::pki_types::ServerName<'static>) {
        if let Some(setup) = self.tls_setup.as_mut() {
            setup.1 = name;
        }
    }

    /// See `Client::take_partial_replies`.
    pub fn take_partial_replies(&mut self) -> Option<Vec<Reply>> {
        self.client.take_partial_replies()
    }

    /// This hop failed a TLS handshake lately: opportunistic STARTTLS is not tried with it.
    pub fn without_tls(&mut self) {
        self.client.set_tls_mode(TlsMode::Off);
    }

    /// STARTTLS was answered 220 and the handshake never completed (garbage, an alert, or
    /// the server closed): the session failed because of TLS.
    pub fn tls_handshake_failed(&self) -> bool {
        self.tls.is_some() && self.tls_info.is_none()
    }

    /// The client used without PIPELINING (load generation).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    pub fn capabilities(&self) -> &Capabilities {
        self.client.capabilities()
    }

    /// The server's 220 greeting has arrived.
    pub fn greeted(&self) -> bool {
        self.client.greeted()
    }

    /// Waiting for the greeting.
    pub fn awaiting_greeting(&self) -> bool {
        self.client.awaiting_greeting()
    }

    /// No reply to the end of data came: the accepted recipients taken as delivered
    /// (`Client::assume_delivered`); the session is over.
    pub fn assume_delivered(&mut self) -> Option<Vec<Reply>> {
        self.body = None;
        self.client.assume_delivered()
    }

    /// The session was ready at least once (a failure later is not a connect failure).
    pub fn ever_ready(&self) -> bool {
        self.ever_ready
    }

    /// TLS protocol and cipher suite, once TLS is up.
    pub fn tls_info(&self) -> Option<&(String, String)> {
        self.tls_info.as_ref()
    }

    pub fn want(&self) -> Want {
        // A body goes before what is written after it (a transaction pipelined behind it).
        if self.body.is_some() {
            Want::SendBody
        } else if !self.out.is_empty() {
            Want::Send
        } else if self.client.awaiting_reply() {
            Want::Recv
        } else {
            Want::Wait
        }
    }

    /// Bytes that go out before the session's first reply is read: the PROXY protocol
    /// header on a connection to a proxy host.
    pub fn preface(&mut self, bytes: &[u8]) {
        assert!(self.out.is_empty() && self.tls.is_none(), "the preface comes before anything else");
        self.out.extend(bytes);
    }

    /// Free space to receive into.
    pub fn recv_buf(&mut self) -> &mut [u8] {
        free_space(&mut self.inbuf, self.in_len)
    }

    /// `n` bytes arrived in `recv_buf()`.
    pub fn received(&mut self, n: usize) {
        // Replies are small: the buffer grows only when one needs more (`recv_buf`).
        received_into(&mut self.inbuf, &mut self.in_len, n, OUT_RECV_BYTES);
    }

    pub fn send_buf(&self) -> &[u8] {
        self.out.rest()
    }

    /// `n` bytes of `send_buf()` went out.
    pub fn sent(&mut self, n: usize) {
        self.out.sent(n);
    }

    /// What is left to send of the commands before the plain-text body (a BDAT chunk's
    /// line), the body and its ".\r\n" from the caller's `data`, and what follows them (the
    /// commands of a transaction pipelined behind: `start_next`), to go in one write.
    pub fn body_rest<'a>(&'a self, data: &'a [u8]) -> [&'a [u8]; 4] {
        let [body, end] = self.body.as_ref().expect("a body being sent").rest([data, self.body_end]);
        let (before, after) = self.out.rest().split_at(self.before_body);
        [before, body, end, after]
    }

    /// `n` bytes of `body_rest` went out.
    pub fn body_sent(&mut self, n: usize) {
        let before = n.min(self.before_body);
        self.out.sent(before);
        self.before_body -= before;
        let n = n - before;
        if self.before_body > 0 {
            return;
        }
        let body = self.body.as_mut().expect("a body being sent");
        let of_body = n.min(body.left());
        if body.advance(of_body) {
            self.body = None;
            self.out.sent(n - of_body);
        }
    }

    /// After `SendBody`: the message in transparency form. Inside TLS it is encrypted into the
    /// send buffer now; in plain text it goes out from `data` itself (`body_rest`).
    pub fn body(&mut self, data: &[u8]) {
        assert!(self.body.is_none(), "one body at a time");
        // After DATA the 354 came, so everything written before it is out; a BDAT chunk goes
        // in the same write as its line (and the commands before it).
        assert!(self.out.is_empty() || self.body_end.is_empty(), "nothing before a body after DATA");
        if let Some(t) = &self.transcript {
            t.data('>', data);
        }
        match self.tls.as_deref_mut() {
            Some(tls) => {
                write_out(Some(&mut **tls), data, self.out.buf());
                write_out(Some(&mut **tls), self.body_end, self.out.buf());
            }
            None => {
                self.before_body = self.out.rest().len();
                self.body = Some(Resume::of([data, self.body_end]));
            }
        }
        // Its reply is read once it is out: `want` sends a body before anything else.
        self.client.body_sent();
    }

    /// Whether a transaction may start behind the body just handed over (`start_next`):
    /// the server pipelines and the body ends with ".\r\n" (not a BDAT chunk).
    pub fn can_pipeline_next(&self) -> bool {
        self.body_end == END_OF_DATA && self.client.can_pipeline_next()
    }

    /// A transaction behind the body (`Client::start_next`): its commands follow the body's
    /// end in the same write.
    pub fn start_next(&mut self, mail_from: &str, rcpts: &[&str], size: u64, params: &TxnParams) {
        self.client.start_next(mail_from, rcpts, size, params);
        self.flush_client();
    }

    /// Starts a transaction (the session is ready).
    pub fn start(&mut self, mail_from: &str, rcpts: &[&str], size: u64) {
        self.start_with(mail_from, rcpts, size, &TxnParams::default());
    }

    /// As `start`, with DSN / SMTPUTF8 parameters and BDAT (`params.bdat`: the body given to
    /// `body` is then the unstuffed message of that length).
    pub fn start_with(&mut self, mail_from: &str, rcpts: &[&str], size: u64, params: &TxnParams) {
        self.body_end = if params.bdat.is_some() { b"" } else { END_OF_DATA };
        self.client.start_with(mail_from, rcpts, size, params);
        self.flush_client();
    }

    pub fn quit(&mut self) {
        self.client.quit();
        self.flush_client();
    }

    fn flush_client(&mut self) {
        if !self.client.output().is_empty() {
            if let Some(t) = &self.transcript {
                match self.client.output_is_secret() {
                    true => t.secret('>'),
                    false => t.lines('>', self.client.output()),
                }
            }
            write_out(self.tls.as_deref_mut().map(|t| &mut **t), self.client.output(), self.out.buf());
            self.client.clear_output();
        }
    }

    /// Reads the replies that arrived; at most one event per call (call again while events
    /// come).
    pub fn advance(&mut self) -> Option<OutEvent> {
        loop {
            // BDAT: the chunk goes right behind its line, in the same write.
            if self.body.is_none() && self.client.take_body_request() {
                return Some(OutEvent::SendBody);
            }
            if let Some(tls) = self.tls.as_deref_mut() {
                let decrypted =
                    tls_decrypt(tls, &mut self.tls_pending, &mut self.inbuf, self.plain_len, &mut self.in_len);
                while tls.wants_write() && tls.write_tls(self.out.buf()).is_ok() {}
                if let Err(e) = decrypted {
                    return Some(OutEvent::Failed(Reply::new(451, format!("4.7.5 TLS with the server failed: {e}"))));
                }
                if self.tls_info.is_none() && !tls.is_handshaking() {
                    self.tls_info = Some(crate::tls::describe(tls));
                }
            }
            let (used, event) = self.client.receive(&self.inbuf[..self.in_len]);
            if let Some(t) = &self.transcript {
                t.lines('<', &self.inbuf[..used]);
            }
            self.inbuf.copy_within(used..self.in_len, 0);
            self.in_len -= used;
            self.plain_len = self.in_len;
            self.flush_client();
            match event {
                None if used == 0 || self.in_len == 0 => return None,
                None => {}
                Some(ClientEvent::StartTls) => {
                    if let Err(reply) = self.start_tls() {
                        return Some(OutEvent::Failed(reply));
                    }
                }
                Some(ClientEvent::Ready) => {
                    self.ever_ready = true;
                    return Some(OutEvent::Ready);
                }
                Some(ClientEvent::SendBody) => return Some(OutEvent::SendBody),
                Some(ClientEvent::Done(replies)) => return Some(OutEvent::Done(replies)),
                Some(ClientEvent::Failed(reply)) => return Some(OutEvent::Failed(reply)),
                Some(ClientEvent::Closed) => return Some(OutEvent::Closed),
            }
        }
    }

    /// The server said 220 to STARTTLS: the handshake starts; EHLO goes again inside TLS.
    fn start_tls(&mut self) -> Result<(), Reply> {
        let (config, name) = self.tls_setup.clone().expect("STARTTLS is asked for only with a TLS setup");
        let mut tls = rustls::ClientConnection::new(config, name)
            .map_err(|e| Reply::new(451, format!("4.7.5 cannot start TLS: {e}")))?;
        tls.set_buffer_limit(None); // a whole message may be written at once
        self.in_len = 0; // nothing the server sent in plain text after 220 counts
        self.plain_len = 0;
        while tls.wants_write() && tls.write_tls(self.out.buf()).is_ok() {}
        self.tls = Some(Box::new(tls));
        self.client.tls_started();
        self.flush_client();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(o: &mut Outgoing, bytes: &[u8]) -> Option<OutEvent> {
        o.recv_buf()[..bytes.len()].copy_from_slice(bytes);
        o.received(bytes.len());
        o.advance()
    }

    /// RFC 3030 §2: a BDAT chunk follows its command line; with PIPELINING the MAIL, RCPT and
    /// `BDAT n LAST` lines and the chunk go in one write, and a short write resumes across
    /// them in order.
    #[test]
    fn a_bdat_chunk_goes_in_one_write_with_its_commands() {
        let mut o = Outgoing::new("relay.test", TlsMode::Off, None);
        o.client_mut().set_options(&sluice_config::SmtpOptions::default());
        assert_eq!(feed(&mut o, b"220 mx\r\n"), None);
        o.sent(o.send_buf().len()); // EHLO
        assert_eq!(feed(&mut o, b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n"), Some(OutEvent::Ready));
        let data = b"Subject: x\r\n\r\n.dot\r\n";
        let params = TxnParams { bdat: Some(data.len() as u64), ..TxnParams::default() };
        o.start_with("a@src.test", &["b@dst.test"], data.len() as u64, &params);
        assert_eq!(o.advance(), Some(OutEvent::SendBody), "the chunk goes with its line");
        o.body(data);
        assert_eq!(o.want(), Want::SendBody);
        let commands: &[u8] = b"MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nBDAT 20 LAST\r\n";
        assert_eq!(o.body_rest(data), [commands, &data[..], b"", b""]);
        // Short writes: part of the commands, then into the chunk, then the rest.
        o.body_sent(10);
        assert_eq!(o.body_rest(data), [&commands[10..], &data[..], b"", b""]);
        o.body_sent(commands.len() - 10 + 3);
        assert_eq!(o.body_rest(data), [&b""[..], &data[3..], b"", b""]);
        o.body_sent(data.len() - 3);
        assert_eq!(o.want(), Want::Recv, "all out; the replies are awaited");
        assert!(o.send_buf().is_empty());
        let done = feed(&mut o, b"250 ok\r\n250 ok\r\n250 2.0.0 queued\r\n");
        let Some(OutEvent::Done(replies)) = done else { panic!("{done:?}") };
        assert_eq!(replies.iter().map(|r| r.code).collect::<Vec<_>>(), [250]);
    }

    /// After DATA the body waits for the 354 and nothing is written before it.
    #[test]
    fn a_data_body_waits_for_354() {
        let mut o = Outgoing::new("relay.test", TlsMode::Off, None);
        o.client_mut().set_options(&sluice_config::SmtpOptions::default());
        feed(&mut o, b"220 mx\r\n");
        o.sent(o.send_buf().len());
        assert_eq!(feed(&mut o, b"250-mx\r\n250 PIPELINING\r\n"), Some(OutEvent::Ready));
        o.start("a@src.test", &["b@dst.test"], 5);
        assert_eq!(o.advance(), None);
        assert_eq!(o.want(), Want::Send);
        o.sent(o.send_buf().len());
        assert_eq!(feed(&mut o, b"250 ok\r\n250 ok\r\n354 go\r\n"), Some(OutEvent::SendBody));
        o.body(b"x\r\n");
        assert_eq!(o.body_rest(b"x\r\n"), [&b""[..], b"x\r\n", b".\r\n", b""]);
    }
}
