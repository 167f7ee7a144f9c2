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

/// Receive buffers start at this size and double when a line or reply needs more.
pub const RECV_BYTES: usize = 64 * 1024;

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

/// The receive buffer's free space, doubling it when full.
pub(crate) fn free_space(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if len == buf.len() {
        buf.resize(buf.len() * 2, 0);
    }
    &mut buf[len..]
}
