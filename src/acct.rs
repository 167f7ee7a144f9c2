//! The accounting writer on the control plane: records from the shards appended to every
//! `<acct-file>` as PowerMTA writes them (User's Guide chapter 11). Each file has the
//! columns of all its record types, in `record-fields` order, with a header line first; files
//! are named `acct-YYYY-MM-DD-NNNN.csv` after the configured `acct.csv` (UTC dates) and a new
//! one starts every `move-interval` and past `max-size`; finished files go to `move-to`, or
//! are deleted after `delete-after`. `<acct-file |command>` feeds a program instead, from its
//! own thread, so a stuck program never stalls the control plane.

use sluice_config::{AcctField, AcctFile, AcctSink, Config, RecordType};
use sluice_engine::acct::{self, Record};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Lines a pipe's thread may hold while its program is slow; past that they are dropped
/// (and counted in the log), as PowerMTA gives up on a pipe that does not read.
const PIPE_BACKLOG_LINES: usize = 100_000;
/// How long a failed pipe rests before its program is started again.
const PIPE_RESTART_MS: u64 = 60_000;

/// Appends accounting records to every `<acct-file>`.
pub struct AcctWriter {
    files: Vec<AcctOut>,
}

/// A column: a field of the record, or a header of the message (an index into
/// `Config::acct_headers`, the values every record carries).
#[derive(Clone)]
enum Column {
    Field(AcctField),
    Header(usize),
}

struct AcctOut {
    conf: AcctFile,
    header_line: String,
    columns: Vec<Column>,
    /// For each record type the file writes: which columns it fills (the others are empty).
    present: HashMap<RecordType, Vec<bool>>,
    /// `map-header-to-field`: (type, header index, field), in the order written.
    maps: Vec<(RecordType, usize, AcctField)>,
    out: Out,
}

enum Out {
    File(FileOut),
    Pipe(PipeOut),
}

struct FileOut {
    w: BufWriter<File>,
    path: PathBuf,
    size: u64,
    /// When a new file is due (`move-interval`), Unix ms.
    turn_at_ms: Option<u64>,
}

struct PipeOut {
    command: String,
    tx: Option<crossbeam_channel::Sender<String>>,
    failed_at_ms: Option<u64>,
    dropped: u64,
}

impl AcctWriter {
    pub fn open(config: &Config) -> std::io::Result<AcctWriter> {
        let now = crate::clock::unix_ms();
        let files: std::io::Result<Vec<AcctOut>> =
            config.acct_files.iter().map(|a| AcctOut::open(a, &config.acct_headers, now)).collect();
        Ok(AcctWriter { files: files? })
    }

    pub fn write(&mut self, records: &[Record]) {
        let now = crate::clock::unix_ms();
        for f in &mut self.files {
            for r in records {
                if f.conf.records.contains(&r.kind) {
                    let line = f.line(r);
                    f.append(&line, now);
                }
            }
        }
    }

    /// Flushes buffered lines; starts the files a `move-interval` asks for, and failed pipes
    /// again after a rest.
    pub fn flush(&mut self) {
        let now = crate::clock::unix_ms();
        for f in &mut self.files {
            f.tick(now);
        }
    }

    /// Flushes and fsyncs every file: the rows written so far survive a crash (power loss
    /// included). Pipes are fed as lines come; nothing more to do for them.
    pub fn sync(&mut self) {
        for f in &mut self.files {
            if let Out::File(out) = &mut f.out {
                out.sync();
            }
        }
    }

    /// `sluice rotate acct`: every file starts anew now.
    pub fn rotate_all(&mut self) {
        let now = crate::clock::unix_ms();
        for f in &mut self.files {
            f.turn_over(now);
        }
    }
}

/// Work for the accounting writer besides records.
pub enum AcctCmd {
    /// A reloaded configuration: its `<acct-file>`s replace the old ones.
    Reopen(Arc<Config>),
    Rotate,
}

impl AcctOut {
    fn open(conf: &AcctFile, headers: &[String], now_ms: u64) -> std::io::Result<AcctOut> {
        let header_index =
            |h: &str| headers.iter().position(|x| x.eq_ignore_ascii_case(h)).expect("the config collects them");
        let fields = conf.columns();
        let columns: Vec<Column> = fields
            .iter()
            .map(|f| match f {
                AcctField::Header(h) => Column::Header(header_index(h)),
                f => Column::Field(f.clone()),
            })
            .collect();
        let present = conf
            .records
            .iter()
            .map(|t| {
                let own = conf.fields_of(*t);
                (*t, fields.iter().map(|f| *f == AcctField::Type || own.contains(f)).collect())
            })
            .collect();
        let maps = conf.header_map.iter().map(|(t, h, f)| (*t, header_index(h), f.clone())).collect();
        let mut header_line = fields.iter().map(|f| f.name()).collect::<Vec<_>>().join(",");
        header_line.push('\n');
        let out = match &conf.sink {
            AcctSink::File(base) => Out::File(FileOut::start(conf, base, &header_line, now_ms)?),
            AcctSink::Pipe(command) => {
                Out::Pipe(PipeOut { command: command.clone(), tx: None, failed_at_ms: None, dropped: 0 })
            }
        };
        let mut a = AcctOut { conf: conf.clone(), header_line, columns, present, maps, out };
        if let Out::Pipe(p) = &mut a.out {
            p.start(&a.header_line);
        }
        Ok(a)
    }

    /// One record as a line of this file's columns.
    fn line(&self, r: &Record) -> String {
        let iso = self.conf.iso_times;
        let present = &self.present[&r.kind];
        let mut out = String::with_capacity(256);
        for (i, c) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if !present[i] {
                continue;
            }
            let value: std::borrow::Cow<str> = match c {
                Column::Header(h) => r.headers.get(*h).map_or("", String::as_str).into(),
                Column::Field(AcctField::UserString) => self.conf.user_string.as_str().into(),
                Column::Field(f) => {
                    let mapped = self
                        .maps
                        .iter()
                        .find(|(t, h, mf)| *t == r.kind && mf == f && r.headers.get(*h).is_some_and(|v| !v.is_empty()));
                    match mapped {
                        Some((_, h, _)) => r.headers[*h].as_str().into(),
                        None => r.value(f, iso),
                    }
                }
            };
            match (&self.conf.privacy_key, c) {
                (Some(key), Column::Field(AcctField::Orig | AcctField::Rcpt)) => {
                    acct::push_field(&mut out, &acct::private_address(&value, key.as_bytes()))
                }
                _ => acct::push_field(&mut out, &value),
            }
        }
        out.push('\n');
        out
    }

    fn append(&mut self, line: &str, now_ms: u64) {
        match &mut self.out {
            Out::File(f) => {
                match f.w.write_all(line.as_bytes()) {
                    Ok(()) => f.size += line.len() as u64,
                    Err(e) => tracing::error!(error = %e, file = %f.path.display(), "accounting write failed"),
                }
                if self.conf.max_size.is_some_and(|max| f.size >= max) {
                    self.turn_over(now_ms);
                }
            }
            Out::Pipe(p) => p.send(line),
        }
    }

    fn tick(&mut self, now_ms: u64) {
        match &mut self.out {
            Out::File(f) => {
                if let Err(e) = f.w.flush() {
                    tracing::error!(error = %e, file = %f.path.display(), "accounting flush failed");
                }
                if f.turn_at_ms.is_some_and(|t| now_ms >= t) {
                    self.turn_over(now_ms);
                }
            }
            Out::Pipe(p) => {
                if p.failed_at_ms.is_some_and(|t| now_ms >= t + PIPE_RESTART_MS) {
                    p.start(&self.header_line);
                }
            }
        }
    }

    /// A new file: the finished one goes to `move-to` (or stays), old ones past `delete-after`
    /// go.
    fn turn_over(&mut self, now_ms: u64) {
        let (Out::File(f), AcctSink::File(base)) = (&mut self.out, &self.conf.sink) else { return };
        f.sync();
        let finished = f.path.clone();
        match FileOut::start(&self.conf, base, &self.header_line, now_ms) {
            Ok(new) => *f = new,
            Err(e) => {
                tracing::error!(error = %e, file = %base.display(), "cannot start a new accounting file; writing on");
                return;
            }
        }
        if let Some(dir) = &self.conf.move_to {
            let to = dir.join(finished.file_name().unwrap_or_default());
            if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::rename(&finished, &to)) {
                tracing::error!(error = %e, file = %finished.display(), to = %to.display(), "cannot move the accounting file");
            }
        } else if let Some(age) = self.conf.delete_after {
            delete_old(base, &f.path, age);
        }
        tracing::info!(file = %finished.display(), "accounting file finished");
    }
}

impl FileOut {
    fn sync(&mut self) {
        let synced = self.w.flush().and_then(|()| self.w.get_ref().sync_data());
        if let Err(e) = synced {
            tracing::error!(error = %e, file = %self.path.display(), "accounting flush failed");
        }
    }

    /// Opens the next file for `base` (`dir/acct.csv` → `dir/acct-2026-12-01-0003.csv`) and
    /// writes its header line.
    fn start(conf: &AcctFile, base: &Path, header_line: &str, now_ms: u64) -> std::io::Result<FileOut> {
        let dir = base.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let date = &sluice_engine::time::iso8601(now_ms)[..10];
        let (stem, ext) = stem_ext(base);
        let prefix = format!("{stem}-{date}-");
        let mut seq = 0;
        for d in std::iter::once(dir).chain(conf.move_to.as_deref()) {
            for name in std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.file_name()) {
                let name = name.to_string_lossy();
                let number =
                    name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(&ext)).and_then(|n| n.parse::<u32>().ok());
                if let Some(n) = number {
                    seq = seq.max(n + 1);
                }
            }
        }
        let path = dir.join(format!("{prefix}{seq:04}{ext}"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(if conf.world_readable { 0o644 } else { 0o640 })
            .open(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("accounting file {}: {e}", path.display())))?;
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        w.write_all(header_line.as_bytes())?;
        w.flush()?;
        let turn_at_ms = conf.move_interval.map(|i| {
            let i = i.as_millis().max(1_000) as u64;
            (now_ms / i + 1) * i
        });
        Ok(FileOut { w, path, size: header_line.len() as u64, turn_at_ms })
    }
}

/// `acct.csv` → (`acct`, `.csv`); `acct` → (`acct`, ``).
fn stem_ext(base: &Path) -> (String, String) {
    let name = base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "acct".into());
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem.to_string(), format!(".{ext}")),
        _ => (name, String::new()),
    }
}

/// Finished files of `base` (`acct-*.csv` beside it) older than `age` are deleted.
fn delete_old(base: &Path, current: &Path, age: Duration) {
    let dir = base.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (stem, ext) = stem_ext(base);
    let prefix = format!("{stem}-");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(&prefix) && name.ends_with(&ext) && entry.path() != current;
        let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|e| e >= age));
        if ours && old {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = %entry.path().display(), "old accounting file deleted (delete-after)"),
                Err(e) => {
                    tracing::error!(error = %e, file = %entry.path().display(), "cannot delete an old accounting file")
                }
            }
        }
    }
}

impl PipeOut {
    /// Starts the program (`sh -c COMMAND`) and its feeding thread; the header line first.
    fn start(&mut self, header_line: &str) {
        let child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(command = %self.command, error = %e, "Error starting accounting pipe");
                self.failed_at_ms = Some(crate::clock::unix_ms());
                return;
            }
        };
        let mut stdin = BufWriter::new(child.stdin.take().expect("piped"));
        let (tx, rx) = crossbeam_channel::bounded::<String>(PIPE_BACKLOG_LINES);
        let command = self.command.clone();
        let header = header_line.to_string();
        let fed = std::thread::Builder::new().name("acct-pipe".into()).spawn(move || {
            let mut result = stdin.write_all(header.as_bytes());
            while result.is_ok() {
                let Ok(line) = rx.recv() else { break };
                result = stdin.write_all(line.as_bytes());
                // Flushed whenever the backlog is empty: the program sees records promptly.
                if result.is_ok() && rx.is_empty() {
                    result = stdin.flush();
                }
            }
            if let Err(e) = result {
                tracing::error!(%command, error = %e, "Error writing to accounting pipe");
            }
            drop(stdin);
            let _ = child.wait();
        });
        match fed {
            Ok(_) => {
                self.tx = Some(tx);
                self.failed_at_ms = None;
                tracing::info!(command = %self.command, "accounting pipe started");
            }
            Err(e) => {
                tracing::error!(command = %self.command, error = %e, "Error starting accounting pipe");
                self.failed_at_ms = Some(crate::clock::unix_ms());
            }
        }
    }

    fn send(&mut self, line: &str) {
        let Some(tx) = &self.tx else {
            self.dropped += 1;
            return;
        };
        match tx.try_send(line.to_string()) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    tracing::error!(command = %self.command, dropped = self.dropped, "accounting pipe is not reading; records for it dropped");
                }
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                self.tx = None;
                self.dropped += 1;
                self.failed_at_ms = Some(crate::clock::unix_ms());
            }
        }
    }
}
