//! `<spool DIR> deliver-only yes` beside the spool sluice writes to: a spool attached from
//! another sluice host (a failed one, say). At start-up its undelivered recipients are moved
//! into this host's spool, each message as it was (envelope, VMTA, envelope id, flags; not
//! signed again), and once every one is durable here the attached spool's files are removed.
//! A crash in between moves them again on the next start: a recipient may then get a message
//! twice, never none.

use sluice_netio::admin::{Injection, Moved};
use sluice_netio::Responder;
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

/// Moves one spool's undelivered recipients; returns how many messages.
fn drain(dir: &Path, responder: &Responder) -> Result<usize, String> {
    if !dir.exists() {
        return Ok(0);
    }
    let recovered = sluice_netio::spool_files::recover(dir).map_err(|e| format!("cannot read it: {e}"))?;
    let mut waits = Vec::new();
    for (n, m) in recovered.messages.iter().enumerate() {
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
            }),
        };
        // A shard's mailbox may be full for a moment: retry for a while.
        let mut sent = false;
        for _ in 0..600 {
            if responder.inject(n as u64, injection()).is_ok() {
                sent = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !sent {
            return Err("the shards took no message for a minute".into());
        }
        waits.push(wait);
    }
    for wait in &waits {
        match wait.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("a message was not taken: {e}")),
            Err(_) => return Err("no answer from the spool".into()),
        }
    }
    // Every message is durable here: the attached spool's files go.
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()) {
            for f in std::fs::read_dir(entry.path()).map_err(|e| e.to_string())?.flatten() {
                let path = f.path();
                if matches!(path.extension().and_then(|e| e.to_str()), Some("seg" | "jnl")) {
                    std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
        }
    }
    Ok(recovered.messages.len())
}
