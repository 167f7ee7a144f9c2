//! Crash test: drive the appender over a disk that loses unsynced sectors at random, fails
//! some writes (torn: half written) and some fsyncs (of segments and of the journal), crash at
//! random points, recover, and check that every acknowledged message comes back byte for
//! byte, no failed write or sync was acknowledged, and every journaled outcome is honoured.
//! Prints the seed that replays a failure.

use sluice_spool::codec::{self, Decoded, Envelope, FileHeader, FileKind, Outcome};
use sluice_spool::memdisk::{MemDisk, Rng};
use sluice_spool::recover;
use sluice_spool::{segment_name, Appender, FileCommit, TicketResult};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Faults injected over all seeds, to show each kind happened.
static FAILED_WRITES: AtomicU64 = AtomicU64::new(0);
static FAILED_SYNCS: AtomicU64 = AtomicU64::new(0);
static FAILED_JOURNAL_SYNCS: AtomicU64 = AtomicU64::new(0);
static REFUSED_TICKETS: AtomicU64 = AtomicU64::new(0);

const SEGMENT_BYTES: u64 = 1 << 16;
const STEPS_MAX: usize = 400;
const SEEDS: u64 = 300;

struct Pending {
    seq: u64,
    offset: u64,
    bytes: Vec<u8>,
}

fn message(rng: &mut Rng, id: u64) -> (Vec<u8>, Vec<u8>) {
    let body_len = 16 + rng.below(3000) as usize;
    let body: Vec<u8> = (0..body_len).map(|i| b'a' + ((i as u64 + id) % 26) as u8).collect();
    let rcpt = format!("r{id}@d{}.test", id % 3);
    // Half the messages carry a job id (the version 2 tail after the data).
    let job = if id % 2 == 0 { format!("job{}", id % 7) } else { String::new() };
    let env = Envelope {
        queued_unix_ms: id,
        client_ip: "127.0.0.1".parse().unwrap(),
        mail_from: "s@x.test",
        envid: "",
        vmta: "",
        recipients: vec![&rcpt, "other@x.test"],
        job_id: &job,
        extras: Default::default(),
    };
    let mut rec = Vec::new();
    codec::encode_message(&env, &body, &mut rec);
    (rec, body)
}

fn run(seed: u64) {
    let mut rng = Rng::new(seed);
    let mut disk = MemDisk::default();
    let mut acked: HashMap<u64, Vec<u8>> = HashMap::new(); // id -> body
    let mut journaled: Vec<Outcome> = Vec::new();
    let mut first_seq = 1;
    for _round in 0..3 {
        // A fresh process: recover what the disk holds, then append more.
        let mut app = Appender::new(SEGMENT_BYTES, first_seq);
        let mut in_flight: Vec<(u64, Pending)> = Vec::new(); // ticket -> write not yet done
        let mut placed: HashMap<u64, (u64, u64, Vec<u8>)> = HashMap::new(); // ticket -> (seq, off, body)
        let mut journal = FileCommit::default();
        let mut jname = format!("j{first_seq}.jnl");
        disk.create(&jname, 0);
        disk.write(
            &jname,
            0,
            &codec::encode_file_header(FileHeader { kind: FileKind::Journal, shard: 0, seq: first_seq }),
        );
        disk.sync(&jname);
        let mut jnl_off = codec::FILE_HEADER_BYTES;
        let mut jnl_pending: Vec<(u64, Outcome)> = Vec::new();
        let mut next_ticket = first_seq * 1_000_000;
        let mut syncs: Vec<u64> = Vec::new();
        for _ in 0..rng.below(STEPS_MAX as u64) {
            match rng.below(6) {
                0 | 1 => {
                    next_ticket += 1;
                    let (rec, body) = message(&mut rng, next_ticket);
                    let p = app.place(rec.len() as u64, next_ticket);
                    if p.new_segment {
                        let name = segment_name(p.seg_seq);
                        disk.create(&name, app.segment_bytes_for(rec.len() as u64) as usize);
                        disk.write(
                            &name,
                            0,
                            &codec::encode_file_header(FileHeader {
                                kind: FileKind::Segment,
                                shard: 0,
                                seq: p.seg_seq,
                            }),
                        );
                    }
                    placed.insert(next_ticket, (p.seg_seq, p.offset, body));
                    in_flight.push((next_ticket, Pending { seq: p.seg_seq, offset: p.offset, bytes: rec }));
                }
                2 if !in_flight.is_empty() => {
                    // Writes complete in any order.
                    let (ticket, w) = in_flight.swap_remove(rng.below(in_flight.len() as u64) as usize);
                    // Now and then a write fails (EIO, ENOSPC) after writing part of it.
                    let ok = !rng.chance(3);
                    let written = if ok { w.bytes.len() } else { w.bytes.len() / 2 };
                    disk.write(&segment_name(w.seq), w.offset as usize, &w.bytes[..written]);
                    if !ok {
                        FAILED_WRITES.fetch_add(1, Ordering::Relaxed);
                    }
                    app.write_completed(w.seq, ticket, ok);
                }
                3 => {
                    app.poll_syncs(&mut syncs, 0, 0);
                    let mut out = Vec::new();
                    for seq in syncs.drain(..) {
                        // A failed fsync: the kernel may have dropped the pages; never acknowledged.
                        let ok = !rng.chance(3);
                        if ok {
                            disk.sync(&segment_name(seq));
                        } else {
                            FAILED_SYNCS.fetch_add(1, Ordering::Relaxed);
                        }
                        app.sync_completed(seq, ok, &mut out);
                    }
                    app.reap(&mut out, &mut Vec::new());
                    for (ticket, r) in out {
                        if r == TicketResult::Failed {
                            // The client got 452: this message was never acknowledged.
                            REFUSED_TICKETS.fetch_add(1, Ordering::Relaxed);
                            placed.remove(&ticket).expect("a placed message");
                            continue;
                        }
                        let (seq, off, body) = placed.remove(&ticket).unwrap();
                        acked.insert(ticket, body);
                        // Half the time, the message is delivered at once: journal it.
                        if rng.chance(50) {
                            if journal.poisoned() {
                                // As the shard does: a failed journal takes no more entries.
                                journal = FileCommit::default();
                                jname = format!("j{first_seq}-{next_ticket}.jnl");
                                disk.create(&jname, 0);
                                let header = FileHeader { kind: FileKind::Journal, shard: 0, seq: first_seq };
                                disk.write(&jname, 0, &codec::encode_file_header(header));
                                disk.sync(&jname);
                                jnl_off = codec::FILE_HEADER_BYTES;
                            }
                            next_ticket += 1;
                            let o = Outcome { seg_shard: 0, seg_seq: seq, offset: off, rcpt: 0 };
                            journal.write_submitted(next_ticket);
                            disk.write(&jname, jnl_off, &codec::encode_outcome(&o));
                            jnl_off += codec::OUTCOME_BYTES;
                            journal.write_completed(next_ticket, true);
                            jnl_pending.push((next_ticket, o));
                        }
                    }
                }
                4 if journal.poll_sync() => {
                    let ok = !rng.chance(3);
                    if ok {
                        disk.sync(&jname);
                    } else {
                        FAILED_JOURNAL_SYNCS.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut out = Vec::new();
                    journal.sync_completed(ok, &mut out);
                    for (t, r) in out {
                        let i = jnl_pending.iter().position(|(pt, _)| *pt == t).unwrap();
                        let o = jnl_pending.swap_remove(i).1;
                        // Only a durable entry is a promise; a failed one stays pending.
                        if r == TicketResult::Durable {
                            journaled.push(o);
                        }
                    }
                }
                _ => {}
            }
        }
        disk.crash(&mut rng);
        // Recovery.
        let mut segments = Vec::new();
        let mut outcomes = Vec::new();
        for name in disk.names() {
            if name.ends_with(".seg") {
                segments.extend(recover::scan_segment(disk.read(&name)).unwrap());
            } else {
                outcomes.extend(recover::scan_journal(disk.read(&name)).unwrap().2);
            }
        }
        let plan = recover::plan(&segments, &outcomes);
        let mut found: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut pending_rcpts: HashMap<u64, Vec<u32>> = HashMap::new();
        for seg in &segments {
            let bytes = disk.read(&segment_name(seg.seq));
            for m in &seg.messages {
                let Decoded::Record(view, _) = codec::decode_message(&bytes[m.offset as usize..]) else {
                    panic!("seed {seed}: rescan")
                };
                found.insert(view.envelope.queued_unix_ms, view.data.to_vec());
                let p = plan.pending.iter().find(|p| p.seg_seq == seg.seq && p.offset == m.offset);
                pending_rcpts.insert(view.envelope.queued_unix_ms, p.map(|p| p.pending.clone()).unwrap_or_default());
            }
        }
        for (id, body) in &acked {
            assert_eq!(found.get(id), Some(body), "seed {seed}: acknowledged message {id} lost or changed");
        }
        for o in &journaled {
            let seg = segments.iter().find(|s| s.seq == o.seg_seq).expect("journaled segment exists");
            let m = seg.messages.iter().find(|m| m.offset == o.offset).expect("journaled message exists");
            let Decoded::Record(view, _) =
                codec::decode_message(&disk.read(&segment_name(seg.seq))[m.offset as usize..])
            else {
                panic!()
            };
            let pend = &pending_rcpts[&view.envelope.queued_unix_ms];
            assert!(!pend.contains(&o.rcpt), "seed {seed}: durable outcome not applied");
            assert!(pend.contains(&1), "seed {seed}: recipient 1 never finished, must stay pending");
        }
        let seqs: Vec<u64> = segments.iter().map(|s| s.seq).collect();
        first_seq = recover::next_seq(&seqs, &outcomes, 0).max(first_seq) + 100;
    }
}

#[test]
fn acknowledged_messages_survive_random_crashes() {
    for seed in 1..=SEEDS {
        let result = std::panic::catch_unwind(|| run(seed));
        if result.is_err() {
            panic!("crash recovery failed; replay with seed {seed}");
        }
    }
    let faults =
        [&FAILED_WRITES, &FAILED_SYNCS, &FAILED_JOURNAL_SYNCS, &REFUSED_TICKETS].map(|c| c.load(Ordering::Relaxed));
    eprintln!(
        "spool simulation, {SEEDS} seeds: failed writes, segment fsyncs, journal fsyncs, refused messages: {faults:?}"
    );
    assert!(faults.iter().all(|&n| n > 10), "every fault kind was exercised: {faults:?}");
}
