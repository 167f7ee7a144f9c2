//! Spool files on disk: segments (preallocated, written through io_uring, read through
//! memmap2) and outcome journals, plus start-up recovery. The byte format, the commit logic
//! and every decision of recovery live in `sluice-spool`; this module owns file descriptors,
//! mappings and names.

use memmap2::{MmapOptions, MmapRaw};
use sluice_spool::codec::{self, Decoded, FileHeader, FileKind, MessageView};
use sluice_spool::{recover, segment_name, JournalId, OldJournal, Outcome, SegmentFile, SegmentLife};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Journal file size bounds: a quarter of the segment size, within these.
pub const JOURNAL_BYTES_MAX: u64 = 16 << 20;
pub const JOURNAL_BYTES_MIN: u64 = 64 << 10;

pub fn journal_bytes(segment_bytes: u64) -> u64 {
    (segment_bytes / 4).clamp(JOURNAL_BYTES_MIN, JOURNAL_BYTES_MAX)
}

/// The least room a spool needs: for each shard its open segment and its journal, both
/// preallocated when the shard starts.
pub fn spool_bytes_min(segment_bytes: u64, shards: u64) -> u64 {
    shards * (segment_bytes + journal_bytes(segment_bytes))
}

/// The size of the filesystem that holds `dir` (or, before it exists, its nearest parent).
pub fn filesystem_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.exists() {
            let path = std::ffi::CString::new(d.as_os_str().as_bytes()).ok()?;
            // SAFETY: statvfs fills the struct we own from a NUL-terminated path.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
                return None;
            }
            return Some(st.f_blocks as u64 * st.f_frsize as u64);
        }
        at = d.parent().filter(|p| !p.as_os_str().is_empty());
    }
    None
}

/// One segment file. Shared by every shard that delivers a message stored in it; deleted by
/// the shard whose spool machine releases its last live recipient after it is sealed.
pub struct Segment {
    pub shard: u32,
    pub seq: u64,
    path: PathBuf,
    file: File,
    /// Shared and, for a segment this process created, writable: records are copied in
    /// (`append`) and made durable with the segment's `fdatasync`, no write call. Only whole
    /// records are ever read through it (`record`), each after it was written.
    /// A direct segment's (`create_direct`) is anonymous memory until `settle`; if it is
    /// dropped before, the memory is kept for the shard's next direct segment (`SPARES`).
    map: ManuallyDrop<MmapRaw>,
    /// A direct segment whose memory became the file's mapping.
    settled: AtomicBool,
    life: SegmentLife,
    /// Opened with `O_DIRECT`: records are copied into `map` and made durable by writing
    /// their blocks with `RWF_DSYNC` (`direct_range`), not by an `fdatasync`.
    direct: bool,
    /// The end of the last record copied in (the owning shard's appends).
    appended: AtomicU64,
}

/// Direct segment writes start and end on this boundary (the page size, and the largest
/// logical block size in use).
pub const DIRECT_ALIGN: u64 = 4096;
/// A direct segment's zeros are written at most this much at a time (`zero_step`).
pub const ZERO_STEP: u64 = 1 << 20;

/// How much of a direct segment of `size` bytes is written with zeros at creation, and then
/// at a time ahead of its records: a sixteenth, within `DIRECT_ALIGN..=ZERO_STEP`.
pub fn zero_step(size: u64) -> u64 {
    align_down(size / 16).clamp(DIRECT_ALIGN, ZERO_STEP)
}

/// `at` rounded down, and up, to `DIRECT_ALIGN`.
pub fn align_down(at: u64) -> u64 {
    at / DIRECT_ALIGN * DIRECT_ALIGN
}

pub fn align_up(at: u64) -> u64 {
    at.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN
}

/// The anonymous memory of direct segments dropped before they settled, at most one a shard:
/// the shard's next direct segment of the same size takes it (`create_direct`) instead of
/// fresh memory, whose every page costs a fault at its first touch (on a virtual machine the
/// host's too: about 5% of the relay's CPU on the lab shape, more on larger messages).
static SPARES: Mutex<Vec<(u32, MmapRaw)>> = Mutex::new(Vec::new());

/// A spare of `shard`'s of `size` bytes, if one is kept.
fn take_spare(shard: u32, size: u64) -> Option<MmapRaw> {
    let mut spares = SPARES.lock().unwrap_or_else(|e| e.into_inner());
    let at = spares.iter().position(|(s, m)| *s == shard && m.len() as u64 == size)?;
    Some(spares.swap_remove(at).1)
}

/// Keeps `map` as `shard`'s spare, unless it has one as small (then `map` is unmapped): the
/// standard segment size is the smallest, so a large message's own segment never holds the
/// place a standard one would take again.
fn keep_spare(shard: u32, map: MmapRaw) {
    let mut spares = SPARES.lock().unwrap_or_else(|e| e.into_inner());
    match spares.iter_mut().find(|(s, _)| *s == shard) {
        Some((_, kept)) if map.len() < kept.len() => *kept = map,
        Some(_) => {}
        None => spares.push((shard, map)),
    }
}

/// Zeros `from..to` of `map`, which no reference covers.
fn zero(map: &MmapRaw, from: usize, to: usize) {
    assert!(from <= to && to <= map.len());
    // SAFETY: inside the mapping (asserted), writable anonymous memory; the caller holds no
    // reference into the range and nobody reads it before it is written again.
    unsafe { std::ptr::write_bytes(map.as_mut_ptr().add(from), 0, to - from) };
}

/// `ZERO_STEP` zero bytes, page-aligned, for direct writes of zeros.
pub fn zeros() -> &'static [u8] {
    static ZEROS: std::sync::OnceLock<memmap2::Mmap> = std::sync::OnceLock::new();
    ZEROS.get_or_init(|| {
        MmapOptions::new()
            .len(ZERO_STEP as usize)
            .map_anon()
            .and_then(|m| m.make_read_only())
            .expect("1 MiB of anonymous memory")
    })
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn preallocate(file: &File, size: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an owned descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Segment {
    /// Creates, preallocates (so ENOSPC shows here, not in a later write) and maps a new
    /// segment, writes its header, and makes its directory entry durable.
    pub fn create(dir: &Path, shard: u32, seq: u64, size: u64) -> io::Result<Arc<Segment>> {
        Segment::create_as(dir, shard, seq, size, false)
    }

    fn new(shard: u32, seq: u64, path: PathBuf, file: File, map: MmapRaw, direct: bool) -> Segment {
        let appended = AtomicU64::new(codec::FILE_HEADER_BYTES as u64);
        let (map, settled) = (ManuallyDrop::new(map), AtomicBool::new(false));
        Segment { shard, seq, path, file, map, settled, life: SegmentLife::default(), direct, appended }
    }

    /// As `create`, for direct writes (issue 24): the file is opened with `O_DIRECT` and its
    /// records are gathered in anonymous memory, then written block-aligned with `RWF_DSYNC`
    /// (`direct_range`), which io_uring completes without a kernel worker thread when the
    /// blocks were written before (an `fdatasync` is always handed to one, and writing into
    /// preallocated but never written blocks converts them, in a journal commit). So the
    /// file's first `zero_step` bytes are written here (header and zeros), and the owning
    /// shard writes zeros ahead of its records (`zeros`). The memory may be a spare, a dropped
    /// segment's (`SPARES`): every byte of it that reaches the file is then a header, a record
    /// or zero, as from fresh memory (zeroed here up to `zero_step`, between records by
    /// `append`, past the records by `zero_tail`). Err(EINVAL): the filesystem takes no
    /// `O_DIRECT` (use `create`).
    pub fn create_direct(dir: &Path, shard: u32, seq: u64, size: u64) -> io::Result<Arc<Segment>> {
        Segment::create_as(dir, shard, seq, size, true)
    }

    fn create_as(dir: &Path, shard: u32, seq: u64, size: u64, direct: bool) -> io::Result<Arc<Segment>> {
        let path = dir.join(segment_name(seq));
        let flags = libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 };
        let file = OpenOptions::new().read(true).write(true).create_new(true).custom_flags(flags).open(&path)?;
        let result = (|| {
            preallocate(&file, size)?;
            let header = codec::encode_file_header(FileHeader { kind: FileKind::Segment, shard, seq });
            let map = if direct {
                let first = zero_step(size).min(size) as usize;
                let map = match take_spare(shard, size) {
                    Some(spare) => {
                        zero(&spare, 0, first);
                        spare
                    }
                    None => MmapRaw::from(MmapOptions::new().len(size as usize).map_anon()?),
                };
                // SAFETY: the new mapping is ours alone, `first` long at least (a whole number
                // of pages, page-aligned: an O_DIRECT write).
                let head = unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr(), first) };
                head[..header.len()].copy_from_slice(&header);
                // The header's block from the memory (written above), the zeros after it from
                // `zeros()`: a write reads the memory it writes from, and fresh memory read
                // before it is written maps the shared zero page, so that each later record's
                // first touch of it is a copy-on-write fault with a TLB flush on every CPU the
                // process runs on (2.3% of the relay's CPU on the campaign shape).
                let block = DIRECT_ALIGN as usize;
                file.write_all_at(&head[..block], 0)?;
                if first > block {
                    file.write_all_at(&zeros()[..first - block], block as u64)?;
                }
                map
            } else {
                file.write_all_at(&header, 0)?;
                // The file is ours; other processes must not truncate spool files
                // (preallocated: a page written through the map never waits for room).
                MmapOptions::new().len(size as usize).map_raw(&file)?
            };
            fsync_dir(dir)?;
            Ok(map)
        })();
        match result {
            Ok(map) => Ok(Arc::new(Segment::new(shard, seq, path, file, map, direct))),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Zeros a direct segment's memory from its records' end to `to` (before a write of the
    /// blocks up to `to`: past the records they hold zeros, whatever the memory held before).
    pub fn zero_tail(&self, to: u64) {
        assert!(self.direct);
        let from = self.appended() as usize;
        zero(&self.map, from, (to as usize).max(from));
    }

    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The end of the last record copied in.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// The memory of `from..to` (a direct segment's, both `DIRECT_ALIGN`ed), to write to the
    /// file at `from`. Valid while the segment lives; its bytes change only past `appended`.
    pub fn direct_range(&self, from: u64, to: u64) -> (*const u8, u32) {
        assert!(self.direct && from <= to && to <= self.map.len() as u64);
        assert!(from % DIRECT_ALIGN == 0 && to % DIRECT_ALIGN == 0);
        // SAFETY: inside the mapping (asserted).
        (unsafe { self.map.as_ptr().add(from as usize) }, (to - from) as u32)
    }

    /// A sealed direct segment whose every record is durable: its anonymous memory is
    /// replaced by a read-only mapping of the file at the same address, so that a backlog
    /// of sealed segments is page cache the kernel may reclaim, not memory held.
    pub fn settle(&self) {
        if !self.direct || self.map.len() == 0 {
            return;
        }
        // SAFETY: MAP_FIXED over this segment's own mapping, same length: the file holds, for
        // every record ever read through the mapping, the same bytes (all durable: written
        // with RWF_DSYNC before the segment was sealed), so a reader on another shard sees
        // no byte change; the mapping is released by `map`'s drop as before.
        let p = unsafe {
            libc::mmap(
                self.map.as_mut_ptr().cast(),
                self.map.len(),
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            tracing::warn!(seq = self.seq, error = %io::Error::last_os_error(), "cannot map a sealed segment; kept in memory");
        } else {
            self.settled.store(true, Ordering::Relaxed);
        }
    }

    /// Opens a segment found at recovery; the caller adds its owed recipients, then seals it.
    fn open(path: &Path, shard: u32, seq: u64) -> io::Result<Arc<Segment>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let map = MmapOptions::new().map_raw_read_only(&file)?;
        Ok(Arc::new(Segment::new(shard, seq, path.to_path_buf(), file, map, false)))
    }

    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Copies a record's parts into the mapping at `offset` (where the spool machine placed
    /// it): false when they do not fit. Durable once the segment's next `fdatasync` returns.
    pub(crate) fn append(&self, offset: u64, parts: [&[u8]; 3]) -> bool {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let at = offset as usize;
        if at.checked_add(total).is_none_or(|end| end > self.map.len()) {
            return false;
        }
        let records_end = self.appended() as usize;
        if self.direct && records_end < at {
            // The padding before the record: zeros, as a spare's memory may not hold.
            zero(&self.map, records_end, at);
        }
        let mut to = at;
        for part in parts {
            // SAFETY: `at..at + total` is inside the mapping (checked above), past every record
            // handed out (the spool machine places each record once, after the previous), so no
            // reference into it exists; the map is writable (`create`: only created segments
            // take records).
            unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), self.map.as_mut_ptr().add(to), part.len()) };
            to += part.len();
        }
        self.appended.fetch_max(to as u64, Ordering::Relaxed);
        true
    }

    /// The record at `offset`, as long as its header says (never past the mapping).
    fn record(&self, offset: u64) -> &[u8] {
        let at = (offset as usize).min(self.map.len());
        let header_end = (at + codec::RECORD_HEADER_BYTES).min(self.map.len());
        // SAFETY: inside the mapping; a record is read only once written, and never written
        // again, so these bytes do not change while the slice lives.
        let header = unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(at), header_end - at) };
        let end = codec::record_bytes(header).map_or(header_end, |n| (at + n).min(self.map.len()));
        // SAFETY: as above, `at..end` is inside the mapping and written.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(at), end - at) }
    }

    /// The message at `offset` (a record written durably by this process, or recovered:
    /// its checksum was verified then).
    pub fn message(&self, offset: u64) -> MessageView<'_> {
        match codec::decode_verified_message(self.record(offset)) {
            Decoded::Record(view, _) => view,
            other => panic!("segment {}/{} offset {offset}: expected a record, found {other:?}", self.shard, self.seq),
        }
    }

    /// The data of the message at `offset` (as `message`, reading only that part).
    pub fn data(&self, offset: u64) -> &[u8] {
        codec::part::data(self.record(offset)).unwrap_or_else(|| self.not_a_record(offset))
    }

    /// The client's address and the envelope sender of the message at `offset`.
    pub fn origin(&self, offset: u64) -> (std::net::IpAddr, &str) {
        codec::part::origin(self.record(offset)).unwrap_or_else(|| self.not_a_record(offset))
    }

    /// The client's address, sender, DSN envelope id and extras of the message at `offset`.
    pub fn summary(&self, offset: u64) -> (std::net::IpAddr, &str, &str, codec::Extras<'_>) {
        codec::part::summary(self.record(offset)).unwrap_or_else(|| self.not_a_record(offset))
    }

    /// The DSN envelope id, job id and extras of the message at `offset`.
    pub fn tail(&self, offset: u64) -> (&str, &str, codec::Extras<'_>) {
        codec::part::tail(self.record(offset)).unwrap_or_else(|| self.not_a_record(offset))
    }

    fn not_a_record(&self, offset: u64) -> ! {
        panic!("segment {}/{} offset {offset}: expected a record", self.shard, self.seq)
    }

    /// Unlinks the file (its work is done; the spool machine said so). Journals with entries
    /// for it may go once it is gone, not before: a file that stays keeps them.
    pub fn delete(&self) {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot delete finished segment")
            }
            _ => self.life.unlinked(),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.life.is_deleted()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: taken once, here; nothing uses `map` after.
        let map = unsafe { ManuallyDrop::take(&mut self.map) };
        if self.direct && !*self.settled.get_mut() && map.len() > 0 {
            keep_spare(self.shard, map);
        }
    }
}

impl SegmentFile for Segment {
    fn life(&self) -> &SegmentLife {
        &self.life
    }
    fn shard(&self) -> u32 {
        self.shard
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// A shard's outcome journal file (its entries and commit are the spool machine's).
pub struct JournalFile {
    file: File,
}

impl JournalFile {
    /// Creates, preallocates, headers and syncs a journal, and makes its name durable.
    pub fn create(dir: &Path, id: JournalId, size: u64) -> io::Result<JournalFile> {
        let path = dir.join(sluice_spool::journal_name(id.seq));
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).custom_flags(libc::O_CLOEXEC).open(&path)?;
        let result = (|| {
            preallocate(&file, size)?;
            let header = FileHeader { kind: FileKind::Journal, shard: id.shard, seq: id.seq };
            file.write_all_at(&codec::encode_file_header(header), 0)?;
            file.sync_data()?;
            fsync_dir(dir)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(JournalFile { file })
    }

    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

/// Marks recipients of a spool this process does not run as final: one new journal, synced,
/// in the spool's shard directory `shard` with number `seq` (above every file there:
/// `Recovered::next_seq`). A message moved to another spool is so marked there, so that a
/// recovery of the old spool after a crash does not move it again.
pub fn journal_final(spool: &Path, shard: u32, seq: u64, outcomes: &[Outcome]) -> io::Result<()> {
    let dir = shard_dir(spool, shard);
    fs::create_dir_all(&dir)?;
    let bytes = (codec::FILE_HEADER_BYTES + outcomes.len() * codec::OUTCOME_BYTES) as u64;
    let journal = JournalFile::create(&dir, JournalId { shard, seq }, bytes)?;
    let entries: Vec<u8> = outcomes.iter().flat_map(codec::encode_outcome).collect();
    journal.file.write_all_at(&entries, codec::FILE_HEADER_BYTES as u64)?;
    journal.file.sync_data()
}

/// Unlinks a journal whose segments are all gone.
pub fn delete_journal(spool: &Path, id: JournalId) {
    let path = shard_dir(spool, id.shard).join(sluice_spool::journal_name(id.seq));
    if let Err(e) = fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot delete retired journal");
    }
}

/// A message found on disk at start-up with recipients still owed.
pub struct RecoveredMessage {
    pub segment: Arc<Segment>,
    pub offset: u64,
    pub pending: Vec<u32>,
}

pub struct Recovered {
    pub messages: Vec<RecoveredMessage>,
    /// Next free segment and journal sequence per shard directory.
    pub next_seq: HashMap<u32, u64>,
    /// Journals from before the restart, to retire once their segments are gone.
    pub old_journals: Vec<OldJournal>,
    pub torn_records: usize,
}

pub fn shard_dir(spool: &Path, shard: u32) -> PathBuf {
    spool.join(shard.to_string())
}

/// How far the spool recovery of this process has got, for status pages while it runs.
#[derive(Default)]
pub struct RecoveryProgress {
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
}

pub static RECOVERY: RecoveryProgress =
    RecoveryProgress { files_total: AtomicU64::new(0), files_done: AtomicU64::new(0), bytes_done: AtomicU64::new(0) };

/// Scans every shard directory under `spool`, applies the journals, deletes segments with
/// nothing left to deliver, and returns the rest.
pub fn recover(spool: &Path) -> io::Result<Recovered> {
    fs::create_dir_all(spool)?;
    let mut segments: Vec<(Arc<Segment>, recover::ScannedSegment)> = Vec::new();
    let mut journals: Vec<(PathBuf, u32, u64, Vec<Outcome>)> = Vec::new();
    let mut file_seqs: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut torn_records = 0;
    // Progress for the log: a large backlog takes a while to scan.
    let started = std::time::Instant::now();
    let mut reported = started;
    let mut files_done = 0usize;
    let mut bytes_done = 0u64;
    let mut dirs = Vec::new();
    for entry in fs::read_dir(spool)? {
        let entry = entry?;
        let Some(dir_shard) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let files: Vec<PathBuf> =
            fs::read_dir(entry.path())?.map(|f| f.map(|f| f.path())).collect::<io::Result<_>>()?;
        dirs.push((dir_shard, files));
    }
    let files_total: usize = dirs.iter().map(|(_, f)| f.len()).sum();
    RECOVERY.files_total.store(files_total as u64, Ordering::Relaxed);
    for (dir_shard, files) in dirs {
        for path in files {
            files_done += 1;
            if reported.elapsed() >= std::time::Duration::from_secs(2) {
                reported = std::time::Instant::now();
                tracing::info!(files_done, files_total, mib = bytes_done >> 20, "spool recovery in progress");
            }
            let Some(seq) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| u64::from_str_radix(s, 16).ok())
            else {
                continue;
            };
            file_seqs.entry(dir_shard).or_default().push(seq);
            let bytes = fs::read(&path)?;
            bytes_done += bytes.len() as u64;
            RECOVERY.files_done.store(files_done as u64, Ordering::Relaxed);
            RECOVERY.bytes_done.store(bytes_done, Ordering::Relaxed);
            match path.extension().and_then(|e| e.to_str()) {
                Some("seg") => match recover::scan_segment(&bytes)
                    .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?
                {
                    Some(scanned) => {
                        torn_records += usize::from(scanned.torn_at.is_some());
                        let seg = Segment::open(&path, scanned.shard, scanned.seq)?;
                        segments.push((seg, scanned));
                    }
                    None => fs::remove_file(&path)?,
                },
                Some("jnl") => {
                    let (shard, jseq, outcomes) = recover::scan_journal(&bytes)
                        .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
                    journals.push((path, shard, jseq, outcomes));
                }
                _ => {}
            }
        }
    }
    let found = recover::Found {
        segments,
        journals: journals.into_iter().map(|(_, shard, seq, outcomes)| (JournalId { shard, seq }, outcomes)).collect(),
        file_seqs,
    };
    let r = recover::assemble(found);
    for seg in &r.delete_segments {
        seg.delete();
    }
    for id in &r.delete_journals {
        delete_journal(spool, *id);
    }
    let messages = r
        .messages
        .into_iter()
        .map(|(segment, offset, pending)| RecoveredMessage { segment, offset, pending })
        .collect();
    let (next_seq, old_journals) = (r.next_seq, r.old_journals);
    Ok(Recovered { messages, next_seq, old_journals, torn_records })
}

/// A spool record of a small message to `recipients`, of job `job_id` (tests).
#[cfg(test)]
pub(crate) fn test_record(recipients: Vec<&str>, job_id: &str) -> Vec<u8> {
    test_record_of(&test_envelope(recipients, job_id))
}

/// The envelope `test_record` writes (tests change what they need).
#[cfg(test)]
pub(crate) fn test_envelope<'a>(recipients: Vec<&'a str>, job_id: &'a str) -> codec::Envelope<'a> {
    codec::Envelope {
        queued_unix_ms: 1,
        client_ip: "127.0.0.1".parse().unwrap(),
        mail_from: "s@x.test",
        envid: "",
        vmta: "",
        recipients,
        job_id,
        extras: Default::default(),
    }
}

/// The spool record of a small message with this envelope (tests).
#[cfg(test)]
pub(crate) fn test_record_of(env: &codec::Envelope) -> Vec<u8> {
    let mut rec = Vec::new();
    codec::encode_message(env, b"Subject: x\r\n\r\nbody\r\n", &mut rec);
    rec
}

#[cfg(test)]
impl Segment {
    /// Writes encoded records one after another from the header on; returns their offsets.
    pub(crate) fn write_records_for_test(&self, records: &[Vec<u8>]) -> Vec<u64> {
        let mut at = codec::FILE_HEADER_BYTES as u64;
        let mut offsets = Vec::new();
        for r in records {
            self.file.write_all_at(r, at).unwrap();
            offsets.push(at);
            at += sluice_spool::Appender::aligned(r.len() as u64);
        }
        offsets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restart must never give a new segment a number an old journal still names: the
    /// journal's entries would mark the new segment's recipients done (found by the relay
    /// simulation, `netio/tests/relay_sim.rs`).
    #[test]
    fn restart_never_reuses_a_segment_number_a_journal_names() {
        let spool = std::env::temp_dir().join(format!("sluice-store-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&spool);
        let dir = shard_dir(&spool, 0);
        fs::create_dir_all(&dir).unwrap();
        // Segment 1 holds a message still owed to its second recipient.
        let seg = Segment::create(&dir, 0, 1, 1 << 16).unwrap();
        seg.write_records_for_test(&[test_record(vec!["a@y.test", "b@y.test"], "")]);
        // Journal 1 says so, and names segment 7 (finished and deleted before the restart).
        let j = JournalFile::create(&dir, JournalId { shard: 0, seq: 1 }, JOURNAL_BYTES_MIN).unwrap();
        let entries: Vec<u8> = [(1, 0), (7, 0), (7, 1)]
            .iter()
            .flat_map(|&(seg_seq, rcpt)| {
                codec::encode_outcome(&Outcome { seg_shard: 0, seg_seq, offset: codec::FILE_HEADER_BYTES as u64, rcpt })
            })
            .collect();
        j.file.write_all_at(&entries, codec::FILE_HEADER_BYTES as u64).unwrap();
        drop((seg, j));
        let recovered = recover(&spool).unwrap();
        assert_eq!(recovered.messages.len(), 1);
        assert_eq!(recovered.messages[0].pending, vec![1]);
        assert_eq!(recovered.old_journals.len(), 1, "the journal still matters for segment 1");
        assert_eq!(recovered.next_seq[&0], 8, "new segments start above every number the journal names");
        fs::remove_dir_all(&spool).unwrap();
    }

    /// A direct segment (issue 24): records written from its memory with RWF_DSYNC read the
    /// same once its memory is swapped for the file's mapping (`settle`, under readers), and
    /// a restart finds them in the file. Written the way the shard writes them: a second
    /// write starts at the first one's last block, which it writes again.
    #[test]
    fn a_direct_segment_reads_the_same_after_settling_and_after_a_restart() {
        let spool = std::env::temp_dir().join(format!("sluice-direct-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&spool);
        let dir = shard_dir(&spool, 0);
        fs::create_dir_all(&dir).unwrap();
        let seg = match Segment::create_direct(&dir, 0, 1, 2 * ZERO_STEP) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!("{}: no O_DIRECT on this filesystem; nothing to check", dir.display());
                return;
            }
            created => created.unwrap(),
        };
        let write_durable = |from: u64| {
            let (buf, len) = seg.direct_range(align_down(from), align_up(seg.appended()));
            let at = align_down(from) as libc::off_t;
            let iov = libc::iovec { iov_base: buf as *mut libc::c_void, iov_len: len as usize };
            // SAFETY: one iovec over the segment's memory (aligned: `direct_range`).
            let n = unsafe { libc::pwritev2(seg.fd(), &iov, 1, at, libc::RWF_DSYNC) };
            assert_eq!(n, len as isize, "{}", io::Error::last_os_error());
        };
        let first = test_record(vec!["a@y.test"], "j1");
        let at1 = codec::FILE_HEADER_BYTES as u64;
        assert!(seg.append(at1, [&first, b"", b""]));
        write_durable(0);
        let at2 = at1 + sluice_spool::Appender::aligned(first.len() as u64);
        let second = test_record(vec!["b@y.test", "c@y.test"], "j2");
        assert!(seg.append(at2, [&second, b"", b""]));
        write_durable(at2);
        let data_before = seg.data(at2).to_vec();
        let held = seg.data(at1); // a reader's borrow across the swap
        let mapped_file = |seg: &Segment| {
            let start = format!("{:x}-", seg.map.as_ptr() as usize);
            let maps = fs::read_to_string("/proc/self/maps").unwrap();
            maps.lines().find(|l| l.starts_with(&start)).is_some_and(|l| l.ends_with(&segment_name(1)))
        };
        assert!(!mapped_file(&seg), "anonymous memory while written");
        seg.settle();
        assert!(mapped_file(&seg), "the file's mapping once settled");
        assert_eq!(held, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(seg.data(at2), &data_before[..]);
        assert_eq!(seg.tail(at2).1, "j2");
        drop(seg);
        let recovered = recover(&spool).unwrap();
        let mut pending: Vec<(u64, Vec<u32>)> =
            recovered.messages.iter().map(|m| (m.offset, m.pending.clone())).collect();
        pending.sort();
        assert_eq!(pending, vec![(at1, vec![0]), (at2, vec![0, 1])]);
        assert_eq!(recovered.torn_records, 0);
        fs::remove_dir_all(&spool).unwrap();
    }

    /// A direct segment's memory kept after it was dropped unsettled (`SPARES`) serves the
    /// shard's next one, and none of the old records reaches the new file: a restart finds
    /// only the new segment's records, though the old ones lay in the very memory it wrote
    /// from, past its records and between them.
    #[test]
    fn a_spare_segments_memory_writes_none_of_its_old_records() {
        let spool = std::env::temp_dir().join(format!("sluice-spare-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&spool);
        let shard = 77; // no other test's: the spares are the process's
        let dir = shard_dir(&spool, shard);
        fs::create_dir_all(&dir).unwrap();
        let size = 2 * ZERO_STEP;
        let Ok(old) = Segment::create_direct(&dir, shard, 1, size) else {
            eprintln!("{}: no O_DIRECT on this filesystem; nothing to check", dir.display());
            return;
        };
        let write_durable = |seg: &Segment, from: u64| {
            let to = align_up(seg.appended());
            seg.zero_tail(to);
            let (buf, len) = seg.direct_range(align_down(from), to);
            let iov = libc::iovec { iov_base: buf as *mut libc::c_void, iov_len: len as usize };
            // SAFETY: one iovec over the segment's memory (aligned: `direct_range`).
            let n = unsafe { libc::pwritev2(seg.fd(), &iov, 1, align_down(from) as libc::off_t, libc::RWF_DSYNC) };
            assert_eq!(n, len as isize, "{}", io::Error::last_os_error());
        };
        // The old segment: four records, one after another.
        let mut at = codec::FILE_HEADER_BYTES as u64;
        for i in 0..4 {
            let record = test_record(vec!["old@y.test"], &format!("old{i}"));
            assert!(old.append(at, [&record, b"", b""]));
            at += sluice_spool::Appender::aligned(record.len() as u64);
        }
        write_durable(&old, 0);
        let old_memory = old.map.as_ptr() as usize;
        old.delete();
        drop(old);
        fs::remove_file(dir.join(segment_name(1))).ok();

        let new = Segment::create_direct(&dir, shard, 2, size).unwrap();
        assert_eq!(new.map.as_ptr() as usize, old_memory, "the spare's memory was not taken");
        // A longer first record (its end falls inside the old second one), then a short one
        // after the first's alignment padding (over old bytes).
        let first = (0..8)
            .map(|n| test_record(vec!["new1@y.test", "new2@y.test", "new3@y.test"], &"f".repeat(n + 1)))
            .find(|r| sluice_spool::Appender::aligned(r.len() as u64) != r.len() as u64)
            .unwrap();
        let at1 = codec::FILE_HEADER_BYTES as u64;
        assert!(new.append(at1, [&first, b"", b""]));
        write_durable(&new, 0);
        let second = test_record(vec!["n@y.test"], "new-second");
        let at2 = at1 + sluice_spool::Appender::aligned(first.len() as u64);
        assert!(at2 > at1 + first.len() as u64, "no padding to check");
        assert!(new.append(at2, [&second, b"", b""]));
        write_durable(&new, at1);
        drop(new);

        let recovered = recover(&spool).unwrap();
        let mut found: Vec<(u64, usize)> = recovered.messages.iter().map(|m| (m.offset, m.pending.len())).collect();
        found.sort();
        assert_eq!(found, vec![(at1, 3), (at2, 1)]);
        assert_eq!(recovered.torn_records, 0);
        let file = fs::read(dir.join(segment_name(2))).unwrap();
        let records_end = (at2 as usize) + second.len();
        assert!(file[records_end..].iter().all(|&b| b == 0), "old bytes past the records");
        let padding = at1 as usize + first.len()..at2 as usize;
        assert!(file[padding].iter().all(|&b| b == 0), "old bytes between the records");
        fs::remove_dir_all(&spool).unwrap();
    }

    /// A shard keeps one spare, the smallest: a large message's own segment dropped first
    /// gives way to a standard one, and does not take its place after it.
    #[test]
    fn a_shards_spare_is_its_smallest_dropped_memory() {
        let shard = 78; // no other test's: the spares are the process's
        let anon = |len: usize| MmapRaw::from(MmapOptions::new().len(len).map_anon().unwrap());
        keep_spare(shard, anon(8 << 20));
        keep_spare(shard, anon(4 << 20));
        keep_spare(shard, anon(8 << 20));
        assert!(take_spare(shard, 8 << 20).is_none());
        assert!(take_spare(shard, 4 << 20).is_some());
        assert!(take_spare(shard, 4 << 20).is_none());
    }
}
