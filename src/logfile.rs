//! `log-file PATH`: sluice's log also goes to this file (appended; reopened on SIGHUP, so
//! logrotate's copy-and-move works), besides standard error. `log-file-world-readable`
//! is not read: the file is created 0640.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Opens (or reopens) the log file; None stops writing one.
pub fn open(path: Option<&Path>) -> std::io::Result<()> {
    let file = match path {
        Some(p) => {
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            Some(std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(p)?)
        }
        None => None,
    };
    *FILE.lock().unwrap_or_else(|e| e.into_inner()) = file;
    Ok(())
}

/// The log's writer: standard error, and the log file when one is open.
pub struct Tee;

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        if let Some(f) = FILE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
