//! The accounting writer on the control plane: records from the shards appended to every
//! `<acct-file>`, each with its header line once, its chosen columns (`record-fields`), its
//! privacy policy, and rotation.

use sluice_config::{Config, RecordType};
use sluice_engine::acct::{self, Kind, Record};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::Arc;

/// Appends accounting records to every `<acct-file>`, each with its header line once, its
/// chosen columns (`record-fields`), its privacy policy, and rotation by size.
pub struct AcctWriter {
    files: Vec<AcctOut>,
}

struct AcctOut {
    conf: sluice_config::AcctFile,
    columns: Vec<usize>,
    /// The names behind `header_NAME` columns.
    headers: Vec<String>,
    w: BufWriter<File>,
    /// Bytes in the current file.
    size: u64,
}

fn open_acct(path: &std::path::Path, columns: &[usize], headers: &[String]) -> std::io::Result<(BufWriter<File>, u64)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("accounting file {}: {e}", path.display())))?;
    let mut size = file.metadata()?.len();
    let mut w = BufWriter::with_capacity(256 * 1024, file);
    if size == 0 {
        let header = acct::header_line_of(columns, headers);
        w.write_all(header.as_bytes())?;
        size = header.len() as u64;
    }
    Ok((w, size))
}

impl AcctWriter {
    pub fn open(config: &Config) -> std::io::Result<AcctWriter> {
        let mut files = Vec::new();
        for a in &config.acct_files {
            let mut columns: Vec<usize> = match &a.fields {
                None => (0..acct::COLUMNS.len()).collect(),
                Some(f) if f.iter().any(|f| f == "*") => (0..acct::COLUMNS.len()).collect(),
                Some(f) => std::iter::once(0)
                    .chain((1..acct::COLUMNS.len()).filter(|&c| f.iter().any(|n| n == acct::COLUMNS[c])))
                    .collect(),
            };
            // `header_NAME` columns come last, in the order named; past `COLUMNS` they index
            // the configuration's `acct_headers`, which every record carries.
            for f in a.fields.iter().flatten() {
                if let Some(name) = f.strip_prefix("header_") {
                    let i = config.acct_headers.iter().position(|h| h.eq_ignore_ascii_case(name)).expect("collected");
                    columns.push(acct::COLUMNS.len() + i);
                }
            }
            let (w, size) = open_acct(&a.path, &columns, &config.acct_headers)?;
            files.push(AcctOut { conf: a.clone(), columns, headers: config.acct_headers.clone(), w, size });
        }
        Ok(AcctWriter { files })
    }

    pub fn write(&mut self, records: &[Record]) {
        for f in &mut self.files {
            for r in records {
                let t = match r.kind {
                    Kind::Delivered => RecordType::Delivered,
                    Kind::Bounced => RecordType::Bounced,
                    Kind::Transient => RecordType::Transient,
                    Kind::QueueEvent => RecordType::QueueEvent,
                    Kind::Received => RecordType::Received,
                    Kind::Feedback => RecordType::Feedback,
                    Kind::RemoteBounce => RecordType::RemoteBounce,
                };
                if !f.conf.records.contains(&t) {
                    continue;
                }
                let line = match &f.conf.privacy_key {
                    Some(key) => {
                        let mut private = r.clone();
                        private.orig = acct::private_address(&r.orig, key.as_bytes());
                        private.rcpt = acct::private_address(&r.rcpt, key.as_bytes());
                        private.csv_line_of(&f.columns)
                    }
                    None => r.csv_line_of(&f.columns),
                };
                match f.w.write_all(line.as_bytes()) {
                    Ok(()) => f.size += line.len() as u64,
                    Err(e) => tracing::error!(error = %e, "accounting write failed"),
                }
            }
            if f.conf.max_size.is_some_and(|max| f.size >= max) {
                if let Err(e) = rotate(f) {
                    tracing::error!(error = %e, file = %f.conf.path.display(), "accounting rotation failed");
                }
            }
        }
    }

    pub fn flush(&mut self) {
        for f in &mut self.files {
            if let Err(e) = f.w.flush() {
                tracing::error!(error = %e, "accounting flush failed");
            }
        }
    }

    /// `sluice rotate acct`: every file is rotated now.
    pub fn rotate_all(&mut self) {
        for f in &mut self.files {
            if let Err(e) = rotate(f) {
                tracing::error!(error = %e, file = %f.conf.path.display(), "accounting rotation failed");
            }
        }
    }
}

/// Work for the accounting writer besides records.
pub enum AcctCmd {
    /// A reloaded configuration: its `<acct-file>`s replace the old ones.
    Reopen(Arc<Config>),
    Rotate,
}

/// `max-size`: the file becomes `FILE.YYYYMMDDTHHMMSS.N`, a new one starts with its header;
/// `delete-after`: rotated files older than that go.
fn rotate(f: &mut AcctOut) -> std::io::Result<()> {
    f.w.flush()?;
    let path = &f.conf.path;
    let stamp = sluice_engine::time::iso8601(crate::clock::unix_ms()).replace(['-', ':', ' '], "").replace("+0000", "");
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let rotated =
        (0..).map(|n| path.with_file_name(format!("{name}.{stamp}.{n}"))).find(|p| !p.exists()).expect("a free name");
    std::fs::rename(path, &rotated)?;
    let (w, size) = open_acct(path, &f.columns, &f.headers)?;
    f.w = w;
    f.size = size;
    tracing::info!(file = %rotated.display(), "accounting file rotated");
    if let (Some(age), Some(dir)) = (f.conf.delete_after, path.parent()) {
        let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
        let prefix = format!("{name}.");
        for entry in std::fs::read_dir(dir)?.flatten() {
            let old = entry.file_name().to_string_lossy().starts_with(&prefix)
                && entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e >= age));
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}
