//! Connection machines, sans-IO: an SMTP session (the engine's server `Session` or client
//! `Client`), its rustls state and its byte buffers — what arrived, what is to be sent and
//! where each send resumes. The shard maps their wants to io_uring operations on sockets;
//! the relay simulation moves their bytes over a simulated network that cuts every send and
//! receive short at random. Neither touches a socket or a clock.

pub mod inbound;
pub mod outbound;

/// What a connection's next socket operation must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Send `send_buf()` (or the body, `SendBody`), all of it, resuming after short sends.
    Send,
    SendBody,
    /// Receive into `recv_buf()`.
    Recv,
    /// Nothing for now: a message is being stored, or an outbound session waits idle.
    Wait,
    /// Close the socket.
    Close,
}

/// Inbound receive buffers start small (a connection that only sends commands, or waits,
/// costs little) and double, up to `RECV_BYTES`, while reads fill them: a message's data
/// then comes in few reads. They also double when a line needs more.
pub const IN_RECV_START_BYTES: usize = 4 * 1024;
pub const RECV_BYTES: usize = 64 * 1024;
/// Outbound connections read replies only (a few hundred bytes): a small start keeps 10,000
/// connections to slow receivers cheap.
pub const OUT_RECV_BYTES: usize = 4 * 1024;

/// Feeds the ciphertext after `plain_len` in `buf` (and any left from before) to rustls and
/// writes the plaintext it yields back into `buf` from `plain_len` on; `len` ends as the
/// plaintext's end. Ciphertext rustls cannot take yet waits in `pending`.
pub(crate) fn tls_decrypt<D>(
    tls: &mut rustls::ConnectionCommon<D>,
    pending: &mut Vec<u8>,
    buf: &mut [u8],
    plain_len: usize,
    len: &mut usize,
) -> Result<(), rustls::Error> {
    use std::io::Read;
    pending.extend_from_slice(&buf[plain_len..*len]);
    *len = plain_len;
    let mut fed = 0;
    loop {
        // Plaintext out first, so rustls has room for more ciphertext.
        loop {
            match tls.reader().read(&mut buf[*len..]) {
                Ok(0) => break, // clean close_notify, or no room: the session sees what it has
                Ok(n) => *len += n,
                Err(_) => break, // WouldBlock: nothing more decrypted yet
            }
        }
        if fed == pending.len() || !tls.wants_read() {
            break;
        }
        let mut rd = &pending[fed..];
        match tls.read_tls(&mut rd) {
            Ok(0) | Err(_) => break, // rustls is full: the rest waits
            Ok(n) => fed += n,
        }
        tls.process_new_packets()?;
    }
    pending.drain(..fed);
    Ok(())
}

/// Plaintext through rustls into the send buffer (or straight into it without TLS).
pub(crate) fn write_out<D>(tls: Option<&mut rustls::ConnectionCommon<D>>, plain: &[u8], out: &mut Vec<u8>) {
    match tls {
        Some(tls) => {
            use std::io::Write;
            let _ = tls.writer().write_all(plain); // no buffer limit: never short
            while tls.wants_write() && tls.write_tls(out).is_ok() {}
        }
        None => out.extend_from_slice(plain),
    }
}

/// `n` bytes arrived in the free space after `len` (`len` moves on). A read that filled all
/// of it says more is waiting: the buffer doubles for the next one, up to `grow_to`.
pub(crate) fn received_into(buf: &mut Vec<u8>, len: &mut usize, n: usize, grow_to: usize) {
    assert!(*len + n <= buf.len());
    *len += n;
    if n > 0 && *len == buf.len() && buf.len() < grow_to {
        buf.resize((buf.len() * 2).min(grow_to), 0);
    }
}

/// The receive buffer's free space, doubling it when full.
pub(crate) fn free_space(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if len == buf.len() {
        buf.resize(buf.len() * 2, 0);
    }
    &mut buf[len..]
}

/// `log-connections`, `log-commands`, `log-data`: a session's plaintext into sluice's log
/// (target `sluice::session`), a line per command or reply line, prefixed by the direction
/// (`>` what we sent, `<` what the peer sent), with the peer and a session number.
pub struct Transcript {
    pub log: sluice_config::SessionLog,
    /// `in 127.0.0.1:51234` or `out example.com/vmta1 192.0.2.1:25`.
    pub peer: String,
}

/// A message's data is logged up to this much.
const LOGGED_DATA_BYTES: usize = 64 * 1024;

impl Transcript {
    pub fn new(log: sluice_config::SessionLog, peer: String) -> Option<Transcript> {
        log.any().then_some(Transcript { log, peer })
    }

    pub fn event(&self, what: &str) {
        if self.log.connections {
            tracing::info!(target: "sluice::session", peer = %self.peer, "{what}");
        }
    }

    /// Command or reply lines (`dir`: `>` or `<`). An AUTH exchange's secrets are not
    /// written.
    pub fn lines(&self, dir: char, bytes: &[u8]) {
        if !self.log.commands {
            return;
        }
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
            let shown = match line.get(..5) {
                Some(w) if w.eq_ignore_ascii_case("AUTH ") => {
                    format!("{} ***", line.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                }
                _ => line.into_owned(),
            };
            tracing::info!(target: "sluice::session", peer = %self.peer, "{dir} {shown}");
        }
    }

    /// Lines that carry credentials (our AUTH answers): that they went, not what they said.
    pub fn secret(&self, dir: char) {
        if self.log.commands {
            tracing::info!(target: "sluice::session", peer = %self.peer, "{dir} (credentials, not logged)");
        }
    }

    /// A message's data (first `LOGGED_DATA_BYTES`).
    pub fn data(&self, dir: char, bytes: &[u8]) {
        if !self.log.data {
            return;
        }
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(LOGGED_DATA_BYTES)]);
        let more = bytes.len().saturating_sub(LOGGED_DATA_BYTES);
        let tail = if more > 0 { format!(" [{more} more bytes not logged]") } else { String::new() };
        tracing::info!(target: "sluice::session", peer = %self.peer, "{dir} data ({} bytes):\n{shown}{tail}", bytes.len());
    }
}
