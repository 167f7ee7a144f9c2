//! Shared by the engine's session tests.
#![allow(dead_code)]

pub mod net;

use sluice_engine::smtp::server::{Event, Message, Session, SessionPolicy};

/// Feeds `input` to a session (as a pipelining client sends it, or byte by byte) and returns
/// every line it wrote and the messages that completed (each stored at once as durable).
/// STARTTLS is taken as done at once (the caller would run the handshake there).
pub fn drive(policy: SessionPolicy, input: &[u8], byte_by_byte: bool) -> (Vec<String>, Vec<Vec<u8>>) {
    let chunks: Vec<&[u8]> = if byte_by_byte { input.chunks(1).collect() } else { pipelined(input) };
    drive_chunks(policy, &chunks)
}

/// `input` in the writes of a client that pipelines (RFC 2920): everything up to and
/// including a DATA line in one write, then what follows once the 354 came.
pub fn pipelined(input: &[u8]) -> Vec<&[u8]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while let Some(i) = input[at..].iter().position(|b| *b == b'\n') {
        let line = &input[at..at + i + 1];
        at += i + 1;
        if line.eq_ignore_ascii_case(b"DATA\r\n") {
            chunks.push(&input[start..at]);
            start = at;
        }
    }
    chunks.push(&input[start..]);
    chunks
}

/// Feeds the session each of `chunks` as one arrival.
pub fn drive_chunks(policy: SessionPolicy, chunks: &[&[u8]]) -> (Vec<String>, Vec<Vec<u8>>) {
    let (lines, messages) = drive_messages(policy, chunks);
    (lines, messages.into_iter().map(|m| m.data).collect())
}

/// As `drive_chunks`, with the whole messages (envelope and parameters).
pub fn drive_messages(policy: SessionPolicy, chunks: &[&[u8]]) -> (Vec<String>, Vec<Message>) {
    let mut s = Session::new(policy, "127.0.0.1".parse().unwrap(), 1);
    let mut messages = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    'outer: for chunk in chunks {
        pending.extend_from_slice(chunk);
        loop {
            let (used, ev) = s.receive(1_000, &pending);
            pending.drain(..used);
            match ev {
                Some(Event::Message) => {
                    messages.push(s.take_message());
                    s.message_stored(true, "Q1");
                }
                Some(Event::StartTls) => s.tls_started(),
                Some(Event::Close) => break 'outer,
                None if used == 0 => break,
                None => {}
            }
        }
    }
    let out = String::from_utf8(s.output().to_vec()).unwrap();
    (out.lines().map(str::to_string).collect(), messages)
}

/// The reply codes of final reply lines (`250 ...`, not `250-...`).
pub fn codes(lines: &[String]) -> Vec<u16> {
    lines.iter().filter(|l| l.len() >= 4 && &l[3..4] == " ").map(|l| l[..3].parse().unwrap()).collect()
}
