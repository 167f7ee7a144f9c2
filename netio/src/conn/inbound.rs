//! An inbound SMTP connection, sans-IO: the engine's server `Session`, TLS through rustls
//! (STARTTLS, or from the first byte on an implicit-TLS listener), the command buffer and the
//! reply buffer, each send resuming where the last short one stopped (`SendBuf`). A complete
//! message is handed to the caller, whose spool answers it later.

use super::{free_space, received_into, tls_decrypt, write_out, Transcript, Want, IN_RECV_START_BYTES, RECV_BYTES};
use sluice_engine::smtp::server::{Event, Session};
use sluice_spool::SendBuf;
use std::sync::Arc;

/// What the caller must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum InEvent {
    /// A message is complete: take it (`session_mut().take_message()`), store it, then call
    /// `message_stored` or `message_refused`.
    Message,
}

pub struct Incoming {
    session: Session,
    /// STARTTLS's server configuration (offered only with one).
    tls_config: Option<Arc<rustls::ServerConfig>>,
    tls: Option<Box<rustls::ServerConnection>>,
    inbuf: Vec<u8>,
    in_len: usize,
    /// With TLS: bytes at the front of `inbuf` that are decrypted.
    plain_len: usize,
    tls_pending: Vec<u8>,
    out: SendBuf,
    /// A message is with the caller (spool, checks): nothing is read until it answers.
    holding: bool,
    /// `log-connections` / `log-commands` / `log-data`.
    transcript: Option<Transcript>,
    /// Refusals and failures said to the client since the caller last took them (for the
    /// log: `take_refusals`), at most `REFUSALS_HELD_MAX`.
    refusals: Vec<String>,
}

/// Refusals held for the log between two turns of the shard's loop (a pipelining client
/// may draw many at once; the rest are not logged).
const REFUSALS_HELD_MAX: usize = 8;
/// Characters of a reply kept for the log line.
const REFUSAL_CHARS_MAX: usize = 200;

impl Incoming {
    /// A session; with `immediate`, TLS from the first byte (an implicit-TLS listener);
    /// `transcript`: what of it goes into the log.
    pub fn new(
        mut session: Session,
        tls_config: Option<Arc<rustls::ServerConfig>>,
        immediate: bool,
        transcript: Option<Transcript>,
    ) -> Result<Incoming, rustls::Error> {
        let tls = match (&tls_config, immediate) {
            (Some(config), true) => {
                session.set_tls();
                Some(Box::new(rustls::ServerConnection::new(config.clone())?))
            }
            _ => None,
        };
        let mut m = Incoming {
            session,
            tls_config,
            tls,
            inbuf: vec![0; IN_RECV_START_BYTES],
            in_len: 0,
            plain_len: 0,
            tls_pending: Vec::new(),
            out: SendBuf::default(),
            holding: false,
            transcript,
            refusals: Vec::new(),
        };
        if let Some(t) = &m.transcript {
            t.event("connected");
        }
        m.flush_session(); // the greeting
        Ok(m)
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// A partial command or line waits in the buffer (a slowloris keeps its deadline).
    pub fn has_partial_input(&self) -> bool {
        self.in_len > 0
    }

    pub fn want(&self) -> Want {
        if !self.out.is_empty() {
            Want::Send
        } else if self.holding {
            Want::Wait
        } else if self.session.is_closing() {
            Want::Close
        } else {
            Want::Recv
        }
    }

    pub fn recv_buf(&mut self) -> &mut [u8] {
        free_space(&mut self.inbuf, self.in_len)
    }

    pub fn received(&mut self, n: usize) {
        received_into(&mut self.inbuf, &mut self.in_len, n, RECV_BYTES);
    }

    pub fn send_buf(&self) -> &[u8] {
        self.out.rest()
    }

    pub fn sent(&mut self, n: usize) {
        self.out.sent(n);
    }

    /// The session's replies to the send buffer (through TLS once it is up).
    pub fn flush_session(&mut self) {
        if !self.session.output().is_empty() {
            if let Some(t) = &self.transcript {
                t.lines('>', self.session.output());
            }
            for line in self.session.output().split(|b| *b == b'\n') {
                // A final reply line of a refusal or failure: `4xx ` or `5xx `.
                let refused = line.len() > 4 && matches!(line[0], b'4' | b'5') && line[3] == b' ';
                if refused && self.refusals.len() < REFUSALS_HELD_MAX {
                    let text = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
                    self.refusals.push(text.chars().take(REFUSAL_CHARS_MAX).collect());
                }
            }
            write_out(self.tls.as_deref_mut().map(|t| &mut **t), self.session.output(), self.out.buf());
            self.session.clear_output();
        }
    }

    /// Reads the commands and data that arrived, as far as the session goes.
    pub fn advance(&mut self, now_unix_ms: u64) -> Option<InEvent> {
        if self.holding {
            return None;
        }
        let mut message = false;
        let mut start_tls = false;
        loop {
            // TLS: what arrived after the waiting plaintext is ciphertext; decrypt it in place.
            if let Some(tls) = self.tls.as_deref_mut() {
                if let Err(e) =
                    tls_decrypt(tls, &mut self.tls_pending, &mut self.inbuf, self.plain_len, &mut self.in_len)
                {
                    tracing::debug!(error = %e, "TLS failed; closing");
                    if self.refusals.len() < REFUSALS_HELD_MAX {
                        self.refusals.push(format!("TLS failed: {e}"));
                    }
                    let _ = tls.write_tls(self.out.buf()); // the alert, if any
                    self.session.shutdown();
                }
                while tls.wants_write() && tls.write_tls(self.out.buf()).is_ok() {}
            }
            let consumed = self.read_session(now_unix_ms, &mut message, &mut start_tls);
            self.inbuf.copy_within(consumed..self.in_len, 0);
            self.in_len -= consumed;
            if start_tls {
                // RFC 3207 §5: anything pipelined after STARTTLS is dropped, never acted on
                // (the 2011 STARTTLS command-injection attacks).
                self.in_len = 0;
            }
            self.plain_len = self.in_len;
            // More plaintext may wait inside rustls (the buffer was full): go round again.
            let more = self.tls.as_deref_mut().is_some_and(|t| {
                let waiting = t.process_new_packets().is_ok_and(|s| s.plaintext_bytes_to_read() > 0);
                (waiting || (t.wants_read() && !self.tls_pending.is_empty())) && self.in_len < self.inbuf.len()
            });
            if message || start_tls || self.session.is_closing() || !more {
                break;
            }
        }
        self.flush_session();
        if start_tls {
            // The 220 went out above in plaintext; from here on the bytes are TLS.
            let config = self.tls_config.clone().expect("STARTTLS is offered only with a certificate");
            match rustls::ServerConnection::new(config) {
                Ok(tls) => {
                    self.tls = Some(Box::new(tls));
                    self.plain_len = 0;
                    self.session.tls_started();
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start TLS");
                    self.session.shutdown();
                    self.flush_session();
                }
            }
        }
        self.holding = message;
        message.then_some(InEvent::Message)
    }

    /// The session reads the plaintext in the buffer until an event stops it or nothing more
    /// can be read; returns the bytes it used.
    fn read_session(&mut self, now_unix_ms: u64, message: &mut bool, start_tls: &mut bool) -> usize {
        let mut consumed = 0;
        loop {
            // Commands are logged as read; an AUTH response's secrets and data lines are not.
            let is_command = self.session.reading_commands();
            let (used, event) = self.session.receive(now_unix_ms, &self.inbuf[consumed..self.in_len]);
            if let (Some(t), true) = (&self.transcript, is_command) {
                t.lines('<', &self.inbuf[consumed..consumed + used]);
            }
            consumed += used;
            match event {
                Some(Event::Message) => {
                    if let Some(t) = &self.transcript {
                        t.data('<', self.session.message_data());
                    }
                    *message = true
                }
                Some(Event::StartTls) => *start_tls = true,
                Some(Event::Close) => {}
                None if used == 0 || consumed == self.in_len => {}
                None => continue,
            }
            return consumed;
        }
    }

    /// The spool answered for the message: durable (250 with `queue_id`) or not (452).
    pub fn message_stored(&mut self, durable: bool, queue_id: &str) {
        self.holding = false;
        self.session.message_stored(durable, queue_id);
        self.flush_session();
    }

    /// The message is refused after its data: `reply` is a whole reply line.
    pub fn message_refused(&mut self, reply: &str) {
        self.holding = false;
        self.session.message_refused(reply);
        self.flush_session();
    }

    /// The client was idle past its limit, or the server is shutting down: 421 and close.
    pub fn timed_out(&mut self) {
        self.session.timed_out();
        self.flush_session();
    }

    pub fn shutdown(&mut self) {
        self.session.shutdown();
        self.flush_session();
    }

    /// Handling this connection's input failed inside sluice (a panic): whatever the
    /// session held is dropped unanswered, the client is told 421 and the connection closes.
    pub fn fail(&mut self) {
        self.holding = false;
        self.in_len = 0;
        self.session.fail_internal();
        self.flush_session();
    }

    /// The refusals and failures said to the client since the last call (reply lines).
    pub fn take_refusals(&mut self) -> Vec<String> {
        std::mem::take(&mut self.refusals)
    }

    /// The bytes read and not yet taken by the session (ciphertext under TLS).
    pub fn pending_input(&self) -> &[u8] {
        &self.inbuf[..self.in_len]
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(t) = &self.transcript {
            t.event("closed");
        }
    }
}
