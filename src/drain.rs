//! `<spool DIR> deliver-only yes` beside the spool sluice writes to: a spool attached from
//! another sluice host (a failed one, say). At start-up its undelivered recipients are moved
//! into this host's spool, each message as it was (envelope, VMTA, envelope id, flags; not
//! signed again), and once every one is durable here the attached spool's files are removed.
//! A crash in between moves again the batch that was in flight (each batch durable here is
//! marked final there): a recipient may then get a message twice, never none.

use sluice_netio::admin::{Injection, Moved};
use sluice_netio::Responder;
use sluice_spool::Outcome;
use std::path::Path;
use std::time::Duration;

/// Moves the mail of every deliver-only spool in the background; a spool that cannot be
/// moved now (this spool full, say) is tried again a minute later.
pub fn start(dirs: Vec<std::path::PathBuf>, responder: Responder) {
    if dirs.is_empty() {
        return;
    }
    std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            for dir in dirs {
                loop {
                    match drain(&dir, &responder) {
                        Ok(n) => {
                            tracing::info!(spool = %dir.display(), messages = n, "deliver-only spool moved into this spool");
                            break;
                        }
                        Err(e) => {
                            tracing::error!(spool = %dir.display(), error = %e, "deliver-only spool not moved yet; trying again in a minute");
                            std::thread::sleep(Duration::from_secs(60));
                        }
                    }
                }
            }
        })
        .expect("spawn the drain thread");
}

/// Messages moved at once: injected, waited for, then marked final in the old spool.
const BATCH: usize = 256;

/// Moves one spool's undelivered recipients; returns how many messages. The spool's files go
/// once every message is durable here; before that, each batch that is durable here is marked
/// final there (a journal of its own), so that a crash of this host part way through moves
/// again at most the batch in flight. Used by `deliver-only` and by `spool-takeover`.
pub fn drain(dir: &Path, responder: &Responder) -> Result<usize, String> {
    if !dir.exists() {
        return Ok(0);
    }
    let recovered = sluice_netio::spool_files::recover(dir).map_err(|e| format!("cannot read it: {e}"))?;
    let shard = recovered.next_seq.keys().min().copied().unwrap_or(0);
    let first = recovered.next_seq.get(&shard).copied().unwrap_or(1);
    for (seq, (b, batch)) in (first..).zip(recovered.messages.chunks(BATCH).enumerate()) {
        if !sluice_netio::FENCE.holds() {
            return Err("this host's spool-takeover lease lapsed: stopped moving".into());
        }
        let mut waits = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            waits.push(inject(responder, (b * BATCH + i) as u64, m)?);
        }
        for wait in &waits {
            match wait.recv_timeout(Duration::from_secs(120)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("a message was not taken: {e}")),
                Err(_) => return Err("no answer from the spool".into()),
            }
        }
        let outcomes: Vec<Outcome> = batch
            .iter()
            .flat_map(|m| {
                m.pending.iter().map(|&rcpt| Outcome {
                    seg_shard: m.segment.shard,
                    seg_seq: m.segment.seq,
                    offset: m.offset,
                    rcpt,
                })
            })
            .collect();
        sluice_netio::spool_files::journal_final(dir, shard, seq, &outcomes)
            .map_err(|e| format!("moved, but cannot mark them moved there: {e}"))?;
    }
    // Every message is durable here: the old spool's files go, segments before journals (a
    // crash between them must not leave a segment without the entries that say it moved: it
    // would be moved again).
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()) {
            for f in std::fs::read_dir(entry.path()).map_err(|e| e.to_string())?.flatten() {
                let path = f.path();
                match path.extension().and_then(|e| e.to_str()) {
                    Some("seg") => files.push((0, path)),
                    Some("jnl") => files.push((1, path)),
                    _ => {}
                }
            }
        }
    }
    files.sort();
    for (_, path) in files {
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(recovered.messages.len())
}

/// Hands one recovered message to a shard as it was (envelope, VMTA, envelope id, flags, AUTH
/// user, each recipient's DSN parameters; not signed again); returns where its answer comes.
fn inject(
    responder: &Responder,
    n: u64,
    m: &sluice_netio::spool_files::RecoveredMessage,
) -> Result<crossbeam_channel::Receiver<Result<String, String>>, String> {
    let view = m.segment.message(m.offset);
    let env = &view.envelope;
    let (done, wait) = crossbeam_channel::bounded(1);
    let injection = || Injection {
        mail_from: env.mail_from.to_string(),
        recipients: m.pending.iter().map(|&i| env.recipients[i as usize].to_string()).collect(),
        data: view.data.to_vec(),
        job_id: env.job_id.to_string(),
        client_ip: env.client_ip,
        source: None,
        vmta: None,
        envid: None,
        src_mta: format!("{} ({})", env.extras.helo, env.client_ip),
        done: done.clone(),
        moved: Some(Moved {
            vmta: env.vmta.to_string(),
            envid: env.envid.to_string(),
            flags: env.extras.flags,
            helo: env.extras.helo.to_string(),
            auth_user: env.extras.auth_user.to_string(),
            // The moved recipients are numbered anew, from 0 in `pending`'s order.
            rcpt_dsn: (0..)
                .zip(&m.pending)
                .filter_map(|(new, &old)| env.extras.rcpt(old).map(|d| (new, d.notify, d.orcpt.to_string())))
                .collect(),
        }),
    };
    // A shard's mailbox may be full for a moment: retry for a while.
    for _ in 0..600 {
        if responder.inject(n, injection()).is_ok() {
            return Ok(wait);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("the shards took no message for a minute".into())
}
