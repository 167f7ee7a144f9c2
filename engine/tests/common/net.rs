//! The simulations' network: TCP connections on a seeded clock, and SMTP over them.

use sluice_engine::queue::{Job, Queue};
use sluice_engine::smtp::client::{Client, ClientEvent, END_OF_DATA};
use sluice_engine::smtp::server::{Event, Session};
use sluice_spool::memdisk::Rng;
use std::collections::VecDeque;

/// Bytes in flight, each piece deliverable from a time on.
#[derive(Default)]
pub struct Pipe {
    pieces: VecDeque<(u64, Vec<u8>)>,
}

impl Pipe {
    /// Splits `bytes` into random pieces with random, increasing delivery times (TCP keeps
    /// order).
    pub fn send(&mut self, rng: &mut Rng, now: u64, mut bytes: &[u8]) {
        let mut at = self.pieces.back().map_or(now, |p| p.0).max(now);
        while !bytes.is_empty() {
            let n = (1 + rng.below(bytes.len() as u64) as usize).min(bytes.len());
            at += rng.below(20);
            self.pieces.push_back((at, bytes[..n].to_vec()));
            bytes = &bytes[n..];
        }
    }

    pub fn take_due(&mut self, now: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while self.pieces.front().is_some_and(|p| p.0 <= now) {
            out.extend(self.pieces.pop_front().expect("checked").1);
        }
        out
    }
}

/// An SMTP connection on the simulated network: the engine's client at one end, its server
/// session at the other.
pub struct Wire {
    pub client: Client,
    pub server: Session,
    to_server: Pipe,
    to_client: Pipe,
    server_in: Vec<u8>,
    client_in: Vec<u8>,
}

impl Wire {
    pub fn new(client: Client, server: Session) -> Wire {
        Wire {
            client,
            server,
            to_server: Pipe::default(),
            to_client: Pipe::default(),
            server_in: Vec::new(),
            client_in: Vec::new(),
        }
    }

    /// Both ends' output goes onto the wire.
    pub fn transmit(&mut self, rng: &mut Rng, now: u64) {
        self.to_client.send(rng, now, self.server.output());
        self.server.clear_output();
        self.to_server.send(rng, now, self.client.output());
        self.client.clear_output();
    }

    /// The server reads what has arrived and hands each event to `on_event`, which answers
    /// it (for a message: `message_stored`) and returns false to stop reading (the session
    /// waits for its store). True when the server closed the session.
    pub fn serve(&mut self, now: u64, mut on_event: impl FnMut(&mut Session, Event) -> bool) -> bool {
        let arrived = self.to_server.take_due(now);
        self.server_in.extend(arrived);
        loop {
            let (used, event) = self.server.receive(now, &self.server_in);
            self.server_in.drain(..used);
            match event {
                Some(Event::Close) => return true,
                Some(Event::StartTls) => unreachable!("not offered"),
                Some(e) => {
                    let read_on = on_event(&mut self.server, e);
                    if !read_on {
                        return false;
                    }
                }
                None if used == 0 => return false,
                None => {}
            }
        }
    }

    /// The client reads what has arrived and hands each event to `on_event`; for `SendBody`
    /// it returns the body, which goes onto the wire with the end of data.
    pub fn read(
        &mut self,
        rng: &mut Rng,
        now: u64,
        mut on_event: impl FnMut(&mut Rng, &mut Client, ClientEvent) -> Option<Vec<u8>>,
    ) {
        let arrived = self.to_client.take_due(now);
        self.client_in.extend(arrived);
        loop {
            let (used, event) = self.client.receive(&self.client_in);
            self.client_in.drain(..used);
            let Some(event) = event else {
                if used == 0 {
                    return;
                }
                continue;
            };
            assert!(!matches!(event, ClientEvent::StartTls), "not offered");
            if let Some(mut body) = on_event(rng, &mut self.client, event) {
                body.extend_from_slice(END_OF_DATA);
                self.to_server.send(rng, now, &body);
                self.client.body_sent();
            }
        }
    }
}

/// A delivery connection is ready: it starts the queue's next job (now and then it quits
/// instead, as an idle connection would), or quits when none is ready.
pub fn start_or_quit<M: Clone>(rng: &mut Rng, client: &mut Client, queue: &mut Queue<M>) -> Option<Job<M>> {
    if queue.ready_jobs() > 0 && rng.below(10) != 0 {
        let job = queue.take().expect("ready");
        let rcpts: Vec<&str> = job.rcpts.iter().map(|r| r.address.as_str()).collect();
        client.start(&job.mail_from, &rcpts, job.size);
        Some(job)
    } else {
        client.quit();
        None
    }
}
