//! Deterministic simulation of delivery: the engine's queue and SMTP client deliver to the
//! engine's own SMTP server over a simulated network, all on a seeded clock and generator.
//! The network delivers bytes in random pieces after random delays and resets connections at
//! random moments; the receiver refuses some recipients for good (5xx), fails some messages for
//! now (451 after the data), and accepts the rest. Thousands of seeds; a failure prints the
//! seed that replays it.
//!
//! The sender also crashes now and then: its queue is lost and rebuilt from what is durable —
//! the messages, less the recipients whose final outcome reached the journal (entries become
//! durable only at the journal's next sync, as in the spool).
//!
//! The checker: every recipient ends delivered or bounced (none stuck); every recipient the
//! sender records as delivered is in a message the receiver accepted, with the exact bytes
//! sent; none refused for good is delivered; and a recipient reaches the receiver twice only
//! when a reset cut the connection after the receiver had accepted the data and before the
//! sender read that reply (the one case SMTP cannot tell apart, RFC 1047), or a crash came
//! before its delivery was journaled.

mod common;

use common::net::{start_or_quit, Wire};
use sluice_config::DomainSettings;
use sluice_engine::acct::Kind;
use sluice_engine::queue::{AttemptInfo, Fate, Job, Queue, Recipient};
use sluice_engine::smtp::client::{Client, ClientEvent};
use sluice_engine::smtp::reply::Reply;
use sluice_engine::smtp::server::{Session, SessionPolicy};
use sluice_engine::suppress::AddressList;
use sluice_spool::memdisk::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const SEEDS: u64 = 2000;
const MESSAGES: u64 = 6;
const STEPS_MAX: usize = 200_000;

struct Conn {
    wire: Wire,
    job: Option<Job<u64>>,
    /// The receiver accepted this transaction's data; the sender has not read the reply yet.
    accepted_unread: Option<u64>,
}

/// What the receiver accepted: (message id, recipient) → copies.
type Received = HashMap<(u64, String), u32>;

fn body(id: u64) -> Vec<u8> {
    // Transparency form, as the spool keeps it: CRLF lines, leading dots doubled.
    format!("Subject: message {id}\r\n\r\n..a dot line\r\n{}\r\n", "x".repeat((id as usize * 97) % 700)).into_bytes()
}

/// What a run went through, summed over seeds to show every fault was exercised.
#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    sessions: u64,
    resets: u64,
    temporary_failures: u64,
    crashes: u64,
    delivered: u64,
    bounced: u64,
    duplicates: u64,
}

fn run(seed: u64) -> Stats {
    let mut stats = Stats::default();
    let mut rng = Rng::new(seed);
    let settings = DomainSettings {
        retry_after: vec![Duration::from_secs(2)],
        bounce_after: Duration::from_secs(600),
        max_rcpt_per_message: 3,
        ..DomainSettings::default()
    };
    let messages: Vec<Vec<Recipient>> = (0..MESSAGES)
        .map(|id| {
            (0..1 + rng.below(5) as u32)
                .map(|i| {
                    let bad = rng.below(6) == 0;
                    Recipient { index: i, address: format!("{}{id}-{i}@dest.test", if bad { "gone" } else { "user" }) }
                })
                .collect()
        })
        .collect();
    // What a (re)started sender queues: every recipient without a durable final outcome.
    let rebuild = |durable: &std::collections::HashSet<(u64, u32)>| {
        let mut q: Queue<u64> = Queue::new("dest.test", "default", settings.clone());
        for (id, rcpts) in messages.iter().enumerate() {
            let id = id as u64;
            let rcpts: Vec<Recipient> = rcpts.iter().filter(|r| !durable.contains(&(id, r.index))).cloned().collect();
            if !rcpts.is_empty() {
                q.push(Job {
                    msg: id,
                    mail_from: "sender@src.test".into(),
                    rcpts,
                    attempts: 1,
                    first_attempt_unix_ms: 0,
                    queued_unix_ms: 0,
                    size: body(id).len() as u64,
                    job_id: String::new(),
                    drew_421: Vec::new(),
                });
            }
        }
        q
    };
    let mut durable = std::collections::HashSet::new();
    let mut journal: Vec<(u64, u32)> = Vec::new();
    // Deliveries a crash made the sender forget (they are made again).
    let mut forgotten: HashMap<(u64, String), u32> = HashMap::new();
    let mut queue = rebuild(&durable);
    let mut refused = AddressList::new("gone");
    refused.regexes.push(regex::Regex::new("^gone").expect("valid"));
    let policy = SessionPolicy {
        relay_allowed: true,
        suppression: vec![Arc::new(refused)],
        max_rcpt_per_message: 100,
        ..SessionPolicy::default()
    };
    let mut now: u64 = 1_000;
    let mut conn: Option<Conn> = None;
    let mut received: Received = HashMap::new();
    let mut delivered: HashMap<(u64, String), u32> = HashMap::new();
    let mut bounced: Vec<String> = Vec::new();
    // Recipients whose data was accepted by the receiver while a reset hid the reply.
    let mut ambiguous: HashMap<(u64, String), u32> = HashMap::new();
    let mut sessions = 0;
    for _ in 0..STEPS_MAX {
        now += rng.below(15);
        // The journal syncs now and then: its entries become durable.
        if rng.below(20) == 0 {
            for (id, index) in journal.drain(..) {
                durable.insert((id, index));
            }
        }
        // The sender crashes: connection and memory gone; the queue comes back from disk.
        if rng.below(3000) == 0 {
            stats.crashes += 1;
            if let Some(c) = conn.take() {
                if let (Some(job), Some(id)) = (c.job, c.accepted_unread) {
                    for r in &job.rcpts {
                        *ambiguous.entry((id, r.address.clone())).or_default() += 1;
                    }
                }
            }
            for (id, index) in journal.drain(..) {
                let address = messages[id as usize][index as usize].address.clone();
                if delivered.contains_key(&(id, address.clone())) {
                    *forgotten.entry((id, address)).or_default() += 1;
                }
            }
            queue = rebuild(&durable);
            continue;
        }
        queue.promote_due(now);
        if conn.is_none() {
            if queue.ready_jobs() == 0 {
                if queue.is_empty() {
                    break;
                }
                now = queue.next_retry_ms().expect("waiting work").max(now);
                continue;
            }
            sessions += 1;
            let server = Session::new(policy.clone(), "192.0.2.7".parse().unwrap(), sessions);
            let mut client = Client::new("sender.test");
            if rng.below(2) == 0 {
                client.disable_pipelining();
            }
            conn = Some(Conn { wire: Wire::new(client, server), job: None, accepted_unread: None });
        }
        let c = conn.as_mut().expect("set above");
        c.wire.transmit(&mut rng, now);
        // A reset, now and then: both ends see the connection die.
        if rng.below(400) == 0 {
            stats.resets += 1;
            if let Some(job) = c.job.take() {
                if let Some(id) = c.accepted_unread.take() {
                    for r in &job.rcpts {
                        *ambiguous.entry((id, r.address.clone())).or_default() += 1;
                    }
                }
                let replies = vec![Reply::new(421, "4.4.2 connection reset"); job.rcpts.len()];
                settle(&mut queue, job, &replies, now, &mut delivered, &mut bounced, &mut journal);
            }
            conn = None;
            continue;
        }
        let Conn { wire, job, accepted_unread } = c;
        let mut closing = wire.serve(now, |server, _message| {
            let m = server.take_message();
            let id = job.as_ref().map(|j| j.msg).expect("a transaction in flight");
            // Strip what the receiver adds on top (its Received header) to compare.
            assert!(m.data.ends_with(&body(id)), "seed {seed}: message {id} changed in transit");
            if rng.below(8) == 0 {
                stats.temporary_failures += 1;
                server.message_stored(false, "");
            } else {
                for r in &m.recipients {
                    *received.entry((id, r.clone())).or_default() += 1;
                }
                *accepted_unread = Some(id);
                server.message_stored(true, "sim");
            }
            true
        });
        wire.read(&mut rng, now, |rng, client, event| {
            match event {
                ClientEvent::Ready => *job = start_or_quit(rng, client, &mut queue),
                ClientEvent::SendBody => return Some(body(job.as_ref().expect("in a transaction").msg)),
                ClientEvent::Done(replies) => {
                    *accepted_unread = None;
                    let j = job.take().expect("a finished transaction");
                    settle(&mut queue, j, &replies, now, &mut delivered, &mut bounced, &mut journal);
                }
                ClientEvent::Failed(reply) => {
                    if let Some(j) = job.take() {
                        let replies = vec![reply; j.rcpts.len()];
                        settle(&mut queue, j, &replies, now, &mut delivered, &mut bounced, &mut journal);
                    }
                    closing = true;
                }
                ClientEvent::Closed => closing = true,
                ClientEvent::StartTls => unreachable!("not offered"),
            }
            None
        });
        if closing {
            if let Some(job) = c.job.take() {
                let replies = vec![Reply::new(421, "4.4.2 closed"); job.rcpts.len()];
                settle(&mut queue, job, &replies, now, &mut delivered, &mut bounced, &mut journal);
            }
            conn = None;
        }
    }
    assert!(queue.is_empty(), "seed {seed}: recipients stuck in the queue");
    for (key, n) in &delivered {
        let allowed = 1 + forgotten.get(key).copied().unwrap_or(0);
        assert!(*n <= allowed, "seed {seed}: {key:?} recorded delivered {n} times, {allowed} explained by crashes");
        assert!(received.contains_key(key), "seed {seed}: {key:?} recorded delivered, never received");
        assert!(!key.1.starts_with("gone"), "seed {seed}: a refused recipient was delivered");
    }
    for (key, copies) in &received {
        let allowed = 1 + ambiguous.get(key).copied().unwrap_or(0) + forgotten.get(key).copied().unwrap_or(0);
        assert!(
            *copies <= allowed,
            "seed {seed}: {key:?} received {copies} times, {allowed} explained by resets and crashes"
        );
        assert!(
            delivered.contains_key(key) || ambiguous.contains_key(key),
            "seed {seed}: {key:?} received but the sender never learnt it"
        );
    }
    assert!(bounced.iter().all(|a| a.starts_with("gone")), "seed {seed}: a good recipient bounced: {bounced:?}");
    stats.sessions = sessions;
    stats.delivered = delivered.len() as u64;
    stats.bounced = bounced.len() as u64;
    stats.duplicates = received.values().map(|n| u64::from(n - 1)).sum();
    stats
}

fn settle(
    queue: &mut Queue<u64>,
    job: Job<u64>,
    replies: &[Reply],
    now: u64,
    delivered: &mut HashMap<(u64, String), u32>,
    bounced: &mut Vec<String>,
    journal: &mut Vec<(u64, u32)>,
) {
    let id = job.msg;
    for (rcpt, fate, record) in
        queue.settle(job, replies, &AttemptInfo::default(), sluice_engine::time::Now::at_ms(now))
    {
        if fate == Fate::Final {
            journal.push((id, rcpt.index));
            match record.kind {
                Kind::Delivered => *delivered.entry((id, rcpt.address)).or_default() += 1,
                _ => bounced.push(rcpt.address),
            }
        }
    }
}

#[test]
fn delivery_survives_random_networks() {
    let mut total = Stats::default();
    for seed in 1..=SEEDS {
        let Ok(s) = std::panic::catch_unwind(|| run(seed)) else {
            panic!("delivery simulation failed; replay with seed {seed}");
        };
        total.sessions += s.sessions;
        total.resets += s.resets;
        total.temporary_failures += s.temporary_failures;
        total.crashes += s.crashes;
        total.delivered += s.delivered;
        total.bounced += s.bounced;
        total.duplicates += s.duplicates;
    }
    eprintln!("delivery simulation, {SEEDS} seeds: {total:?}");
    // Every fault happened somewhere, or the simulation proves nothing.
    assert!(total.resets > 100 && total.temporary_failures > 100 && total.bounced > 100, "{total:?}");
    assert!(total.crashes > 100, "sender crashes were exercised: {total:?}");
    assert!(total.duplicates > 0, "resets after an accepted DATA were exercised: {total:?}");
}
