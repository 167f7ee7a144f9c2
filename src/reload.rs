//! Reload (`sluice reload`, SIGHUP, `POST /reload`): the new configuration is read and
//! checked whole (keys, certificates, lists) first; a bad one is refused and the old one
//! stays.

use crate::acct::AcctCmd;
use sluice_netio::Responder;
use std::sync::{Arc, Mutex};

/// Puts a new configuration in force (`sluice reload`, SIGHUP, `POST /reload`): it is read
/// and checked whole (keys, certificates, lists) first; a bad one is refused and the old one
/// stays.
pub struct Reloader {
    path: Option<std::path::PathBuf>,
    responder: Responder,
    acct: crossbeam_channel::Sender<AcctCmd>,
    lock: Mutex<()>,
}

impl Reloader {
    pub fn new(
        path: Option<std::path::PathBuf>,
        responder: Responder,
        acct: crossbeam_channel::Sender<AcctCmd>,
    ) -> Reloader {
        Reloader { path, responder, acct, lock: Mutex::new(()) }
    }

    /// Returns the new configuration's warnings, or why it was refused.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let _one_at_a_time = self.lock.lock().expect("not poisoned");
        let config = Arc::new(crate::load_config(self.path.as_deref()).map_err(|e| e.to_string())?);
        let settings = crate::load_settings(config.clone()).map_err(|e| e.to_string())?;
        let old = self.responder.config();
        let mut warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
        // Which shard owns a queue, and which receives a connection, stays as it was at start.
        let classes = |c: &sluice_config::Config| {
            let vmtas: Vec<(String, Option<String>)> =
                c.vmtas.iter().map(|(n, v)| (n.clone(), v.traffic_class.clone())).collect();
            (c.traffic_classes.clone(), vmtas)
        };
        let restart = [
            (classes(&old) != classes(&config), "traffic-class"),
            (old.listeners != config.listeners, "smtp-listener"),
            (old.spool_dir != config.spool_dir, "spool"),
            (old.shards != config.shards, "shards"),
            (old.cluster != config.cluster, "<cluster>"),
            (old.source_ip_limits != config.source_ip_limits, "source-ip limits"),
            (old.mgmt.as_ref().map(|m| m.listen) != config.mgmt.as_ref().map(|m| m.listen), "http-mgmt-port"),
        ];
        for (changed, what) in restart {
            if changed {
                warnings.push(format!("{what} changes take effect at the next restart"));
            }
        }
        // Refusal counters go on across the reload, and so do the addresses lists were given
        // while running (a shared set's members, complainers): no gap until they are read again.
        let old_lists = self.responder.lists();
        for (name, list) in &settings.lists {
            if let Some(old) = old_lists.get(name) {
                list.hits.fetch_add(old.hits(), std::sync::atomic::Ordering::Relaxed);
                list.carry_added(old);
            }
        }
        self.responder.reload(settings);
        let _ = self.acct.send(AcctCmd::Reopen(config));
        for w in &warnings {
            tracing::warn!("reload: {w}");
        }
        tracing::info!("configuration reloaded");
        Ok(warnings)
    }

    pub fn rotate_acct(&self) {
        let _ = self.acct.send(AcctCmd::Rotate);
    }
}
