//! A queue's jobs past its in-memory window, in arrival order. The next few thousand stay in
//! memory; the rest are spilled, as small fixed-layout entries, to an unnamed temporary file
//! in the shard's spool directory (`O_TMPFILE`: it goes with the process; after a crash the
//! spool itself is the truth, so it is never synced). A backlog of millions costs a constant
//! amount of memory per queue. Running totals, overall and per job, answer the status pages
//! without walking the backlog.
//!
//! Nothing is ever dropped: when the file cannot be created or written (a full disk), entries
//! stay in memory; when it cannot be read, they wait for the next try.

use crate::mailbox::MsgRef;
use crate::spool_files::Segment;
use sluice_engine::queue::{Contents, Job, Recipient};
use sluice_engine::sched::backlog::Backlog;
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A job outside the window: its message in the spool and which of its recipients.
pub(crate) struct Parked {
    pub msg: MsgRef,
    pub rcpts: Box<[u32]>,
    pub attempts: u32,
    pub size: u64,
    pub queued_unix_ms: u64,
}

/// Parked jobs kept in memory, next in line for the window.
pub(crate) const FRONT_MAX: usize = 1_000;
/// Spilled entries are written, and read back, in chunks of about this size.
const CHUNK_BYTES: usize = 16 << 10;
/// shard, seq, offset, attempts, size, queued, recipient count.
const ENTRY_HEAD_BYTES: usize = 4 + 8 + 8 + 4 + 8 + 8 + 4;

pub(crate) struct ParkedList {
    /// Where a spill file goes (the shard's spool directory).
    dir: PathBuf,
    front: VecDeque<Parked>,
    /// Encoded entries newer than the file's, not yet written.
    tail: Vec<u8>,
    tail_jobs: usize,
    file: Option<File>,
    read_at: u64,
    write_at: u64,
    /// Entries in the file not yet read back.
    file_jobs: usize,
    /// The file could not be created or written (a full disk): entries stay in memory, and
    /// the next try waits until the unwritten entries have doubled.
    spill_retry_bytes: usize,
    /// Segments of encoded entries (which hold only their numbers), with entry counts.
    segments: HashMap<(u32, u64), (Arc<Segment>, usize)>,
    totals: Contents,
    per_job: HashMap<String, Contents>,
}

fn add(c: &mut Contents, p: &Parked) {
    c.add_job(p.rcpts.len() as u64, p.size, p.queued_unix_ms);
}

fn sub(c: &mut Contents, p: &Parked) {
    c.jobs -= 1;
    c.rcpts -= p.rcpts.len() as u64;
    c.bytes -= p.size * p.rcpts.len() as u64;
    if c.jobs == 0 {
        c.oldest_unix_ms = 0;
    }
}

impl ParkedList {
    pub fn new(dir: PathBuf) -> Self {
        ParkedList {
            dir,
            front: VecDeque::new(),
            tail: Vec::new(),
            tail_jobs: 0,
            file: None,
            read_at: 0,
            write_at: 0,
            file_jobs: 0,
            spill_retry_bytes: 0,
            segments: HashMap::new(),
            totals: Contents::default(),
            per_job: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.totals.jobs == 0
    }

    pub fn len(&self) -> usize {
        self.totals.jobs as usize
    }

    /// Jobs, recipients, bytes; the oldest arrival since the backlog last emptied.
    pub fn totals(&self) -> Contents {
        self.totals
    }

    /// The same per job (`x-job`), for jobs with parked mail.
    pub fn per_job(&self) -> impl Iterator<Item = (&String, &Contents)> {
        self.per_job.iter()
    }

    /// Entries in memory (the window's next, and those not yet written out).
    #[cfg(test)]
    pub fn in_memory(&self) -> usize {
        self.front.len() + self.tail_jobs
    }

    fn job_id(p: &Parked) -> &str {
        p.msg.segment.tail(p.msg.offset).1
    }

    fn count_in(&mut self, p: &Parked) {
        add(&mut self.totals, p);
        let job = Self::job_id(p);
        if !job.is_empty() {
            add(self.per_job.entry(job.to_string()).or_default(), p);
        }
    }

    fn count_out(&mut self, p: &Parked) {
        sub(&mut self.totals, p);
        let job = Self::job_id(p);
        if let Some(c) = self.per_job.get_mut(job) {
            sub(c, p);
            if c.jobs == 0 {
                self.per_job.remove(job);
            }
        }
    }

    /// Parks a job behind the others.
    pub fn push_back(&mut self, p: Parked) {
        self.count_in(&p);
        if self.file_jobs == 0 && self.tail_jobs == 0 && self.front.len() < FRONT_MAX {
            self.front.push_back(p);
            return;
        }
        let seg = &p.msg.segment;
        self.segments.entry((seg.shard, seg.seq)).or_insert_with(|| (seg.clone(), 0)).1 += 1;
        self.tail.extend_from_slice(&seg.shard.to_le_bytes());
        self.tail.extend_from_slice(&seg.seq.to_le_bytes());
        self.tail.extend_from_slice(&p.msg.offset.to_le_bytes());
        self.tail.extend_from_slice(&p.attempts.to_le_bytes());
        self.tail.extend_from_slice(&p.size.to_le_bytes());
        self.tail.extend_from_slice(&p.queued_unix_ms.to_le_bytes());
        self.tail.extend_from_slice(&(p.rcpts.len() as u32).to_le_bytes());
        for r in p.rcpts.iter() {
            self.tail.extend_from_slice(&r.to_le_bytes());
        }
        self.tail_jobs += 1;
        if self.tail.len() >= CHUNK_BYTES.max(self.spill_retry_bytes) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.file.is_none() {
            let dir: &Path = &self.dir;
            match OpenOptions::new().read(true).write(true).custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC).open(dir) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot spill a backlog to disk; it stays in memory");
                    self.spill_retry_bytes = 2 * self.tail.len();
                    return;
                }
            }
        }
        let file = self.file.as_ref().expect("opened above");
        match file.write_all_at(&self.tail, self.write_at) {
            Ok(()) => {
                self.write_at += self.tail.len() as u64;
                self.file_jobs += self.tail_jobs;
                self.tail.clear();
                self.tail_jobs = 0;
                self.spill_retry_bytes = 0;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot spill a backlog to disk; it stays in memory");
                self.spill_retry_bytes = 2 * self.tail.len();
            }
        }
    }

    /// Decodes whole entries from `bytes` onto the front; returns the bytes used.
    fn decode_into_front(&mut self, bytes: &[u8], max_jobs: usize) -> (usize, usize) {
        let (mut at, mut jobs) = (0, 0);
        while jobs < max_jobs && at + ENTRY_HEAD_BYTES <= bytes.len() {
            let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
            let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
            let n = u32_at(at + 40) as usize;
            let len = ENTRY_HEAD_BYTES + 4 * n;
            if at + len > bytes.len() {
                break;
            }
            let key = (u32_at(at), u64_at(at + 4));
            let (segment, count) = self.segments.get_mut(&key).expect("a parked entry's segment is held");
            let segment = segment.clone();
            *count -= 1;
            if *count == 0 {
                self.segments.remove(&key);
            }
            let rcpts = (0..n).map(|i| u32_at(at + ENTRY_HEAD_BYTES + 4 * i)).collect();
            self.front.push_back(Parked {
                msg: MsgRef { segment, offset: u64_at(at + 12) },
                attempts: u32_at(at + 20),
                size: u64_at(at + 24),
                queued_unix_ms: u64_at(at + 32),
                rcpts,
            });
            at += len;
            jobs += 1;
        }
        (at, jobs)
    }

    /// Brings spilled entries back into memory: from the file first, then (once it is read
    /// out, and emptied) those never written.
    fn refill(&mut self) {
        if self.file_jobs > 0 {
            let file = self.file.take().expect("entries in a file");
            let left = (self.write_at - self.read_at) as usize;
            let mut want = left.min(2 * CHUNK_BYTES);
            let (used, jobs) = loop {
                let mut buf = vec![0; want];
                if let Err(e) = file.read_exact_at(&mut buf, self.read_at) {
                    tracing::error!(error = %e, "cannot read a spilled backlog back; trying again later");
                    self.file = Some(file);
                    return;
                }
                match self.decode_into_front(&buf, self.file_jobs) {
                    (_, 0) if want < left => want = (want * 2).min(left), // one large entry
                    (_, 0) => panic!("a spill file ends inside an entry"),
                    done => break done,
                }
            };
            self.read_at += used as u64;
            self.file_jobs -= jobs;
            if self.file_jobs == 0 {
                if let Err(e) = file.set_len(0) {
                    tracing::warn!(error = %e, "cannot truncate a spill file");
                }
                self.read_at = 0;
                self.write_at = 0;
            }
            self.file = Some(file);
            return;
        }
        if self.tail_jobs > 0 {
            let tail = std::mem::take(&mut self.tail);
            let (used, jobs) = self.decode_into_front(&tail, usize::MAX);
            assert_eq!((used, jobs), (tail.len(), self.tail_jobs));
            self.tail_jobs = 0;
            self.tail = tail;
            self.tail.clear();
        }
    }

    /// The job next in line.
    pub fn pop_front(&mut self) -> Option<Parked> {
        if self.front.is_empty() {
            self.refill();
        }
        let p = self.front.pop_front()?;
        self.count_out(&p);
        if self.is_empty() {
            self.spill_retry_bytes = 0;
            self.tail.shrink_to(CHUNK_BYTES);
            self.front.shrink_to(FRONT_MAX);
        }
        Some(p)
    }

    /// Takes out the jobs `take` says yes to, keeping the others in order. Streams through the
    /// list (a new spill file takes the kept), so memory stays bounded.
    pub fn take_where(&mut self, mut take: impl FnMut(&Parked) -> bool) -> Vec<Parked> {
        let mut old = std::mem::replace(self, ParkedList::new(self.dir.clone()));
        let mut taken = Vec::new();
        while let Some(p) = old.pop_front() {
            if take(&p) {
                taken.push(p);
            } else {
                self.push_back(p);
            }
        }
        if !old.is_empty() {
            // A read failed: what could not be read stays, ahead of what was kept.
            tracing::error!(left = old.len(), "a spilled backlog could not be read whole");
            let mut kept = std::mem::replace(self, old);
            while let Some(p) = kept.pop_front() {
                self.push_back(p);
            }
        }
        taken
    }
}

impl Parked {
    /// A job outside the window: its addresses are left in the spool.
    pub fn of(job: Job<MsgRef>) -> Parked {
        Parked {
            rcpts: job.rcpts.iter().map(|r| r.index).collect(),
            attempts: job.attempts,
            size: job.size,
            queued_unix_ms: job.queued_unix_ms,
            msg: job.msg,
        }
    }

    /// Back as a whole job, its addresses read from the spool.
    pub fn job(&self) -> Job<MsgRef> {
        let view = self.msg.segment.message(self.msg.offset);
        let env = &view.envelope;
        let mail_from = match (env.extras.flags & sluice_spool::codec::flags::VERP != 0, &*self.rcpts) {
            (true, [one]) => sluice_engine::smtp::addr::verp(env.mail_from, env.recipients[*one as usize]),
            _ => env.mail_from.to_string(),
        };
        Job {
            msg: self.msg.clone(),
            mail_from,
            rcpts: self
                .rcpts
                .iter()
                .map(|&i| Recipient { index: i, address: env.recipients[i as usize].to_string() })
                .collect(),
            attempts: self.attempts,
            first_attempt_unix_ms: 0,
            queued_unix_ms: env.queued_unix_ms,
            size: self.size,
            job_id: env.job_id.to_string(),
            drew_421: Vec::new(),
        }
    }
}

impl Backlog<MsgRef> for ParkedList {
    fn push_back(&mut self, job: Job<MsgRef>) {
        ParkedList::push_back(self, Parked::of(job));
    }

    fn pop_front(&mut self) -> Option<Job<MsgRef>> {
        ParkedList::pop_front(self).map(|p| p.job())
    }

    fn is_empty(&self) -> bool {
        ParkedList::is_empty(self)
    }

    fn take_where(&mut self, pred: &mut dyn FnMut(&Job<MsgRef>) -> bool) -> Vec<Job<MsgRef>> {
        ParkedList::take_where(self, |p| pred(&p.job())).iter().map(Parked::job).collect()
    }

    fn totals(&self) -> Contents {
        ParkedList::totals(self)
    }

    fn per_job(&self) -> Vec<(String, Contents)> {
        ParkedList::per_job(self).map(|(j, c)| (j.clone(), *c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-park-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A segment with three two-recipient messages, of jobs "a", "b" and none.
    fn segment(dir: &Path) -> (Arc<Segment>, Vec<u64>) {
        let seg = Segment::create(dir, 0, 1, 1 << 16).unwrap();
        let records: Vec<Vec<u8>> = ["a", "b", ""]
            .iter()
            .map(|job| crate::spool_files::test_record(vec!["r0@y.test", "r1@y.test"], job))
            .collect();
        let offsets = seg.write_records_for_test(&records);
        (seg, offsets)
    }

    fn parked(seg: &Arc<Segment>, offsets: &[u64], i: u64) -> Parked {
        Parked {
            msg: MsgRef { segment: seg.clone(), offset: offsets[i as usize % 3] },
            rcpts: if i % 2 == 0 { vec![0].into() } else { vec![0, 1].into() },
            attempts: i as u32,
            size: 10,
            queued_unix_ms: 1_000 + i,
        }
    }

    const JOBS: u64 = 50_000;

    #[test]
    fn a_large_backlog_spills_and_comes_back_in_order() {
        let dir = spool("order");
        let (seg, offsets) = segment(&dir);
        let mut list = ParkedList::new(dir.clone());
        for i in 0..JOBS {
            list.push_back(parked(&seg, &offsets, i));
            assert!(list.in_memory() <= FRONT_MAX + CHUNK_BYTES / ENTRY_HEAD_BYTES + 1, "memory bounded");
        }
        assert!(list.file_jobs > 40_000, "most of the backlog is in the file");
        let t = list.totals();
        assert_eq!((t.jobs, t.rcpts, t.oldest_unix_ms), (JOBS, JOBS * 3 / 2, 1_000));
        let per_job: HashMap<&String, u64> = list.per_job().map(|(j, c)| (j, c.jobs)).collect();
        assert_eq!(per_job.len(), 2, "jobs a and b; none for the message without one");
        assert_eq!(per_job.values().sum::<u64>(), JOBS * 2 / 3 + 1);
        // An operator deletes every seventh: the rest keep their order.
        let taken = list.take_where(|p| p.attempts % 7 == 0);
        assert_eq!(taken.len() as u64, JOBS.div_ceil(7));
        assert_eq!(list.len() as u64, JOBS - JOBS.div_ceil(7));
        let mut expect = (0..JOBS).filter(|i| i % 7 != 0);
        // New arrivals go behind.
        list.push_back(parked(&seg, &offsets, JOBS));
        while let Some(p) = list.pop_front() {
            let want = expect.next().unwrap_or(JOBS);
            assert_eq!(u64::from(p.attempts), want);
            assert_eq!(p.queued_unix_ms, 1_000 + want);
            assert_eq!(p.rcpts.len(), if want % 2 == 0 { 1 } else { 2 });
            assert_eq!(p.msg.offset, offsets[want as usize % 3]);
        }
        assert!(expect.next().is_none());
        assert_eq!(list.totals().jobs, 0);
        assert_eq!(list.per_job().count(), 0);
        assert!(list.segments.is_empty(), "no segment held once the backlog is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_spill_file_the_backlog_stays_in_memory_until_there_is_one() {
        let dir = spool("nofile");
        let (seg, offsets) = segment(&dir);
        // A directory that does not exist: the spill file cannot be created.
        let mut list = ParkedList::new(dir.join("gone"));
        for i in 0..10_000 {
            list.push_back(parked(&seg, &offsets, i));
        }
        assert_eq!(list.in_memory(), 10_000);
        // Space comes back (here: the directory): the next try, once the unwritten entries
        // have doubled, spills them.
        std::fs::create_dir_all(dir.join("gone")).unwrap();
        for i in 10_000..30_000 {
            list.push_back(parked(&seg, &offsets, i));
        }
        assert!(list.in_memory() < 30_000, "spilling again: {} in memory", list.in_memory());
        for i in 0..30_000 {
            assert_eq!(list.pop_front().map(|p| p.attempts), Some(i), "nothing lost, order kept");
        }
        assert!(list.pop_front().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
