//! The io_uring backend: each `Sub` is one submission entry; `wait` submits them all and
//! waits in one `io_uring_enter`.

use super::{Backend, Sub};
use io_uring::{opcode, squeue, types, IoUring};
use sluice_engine::time::Now;

/// Submission queue entries; the completion queue holds 16 times as many (a socket operation
/// per connection, spool writes); past it, `push` reaps instead.
const RING_ENTRIES: u32 = 4096;
/// With `io-uring-sqpoll`: how long the kernel's polling thread spins on an empty submission
/// queue before it sleeps (and the next submission wakes it with an `io_uring_enter`).
const SQPOLL_IDLE_MS: u32 = 10;

pub(crate) struct Uring {
    ring: IoUring,
    /// The one timer's duration (its entry points here until it completes).
    timespec: Box<types::Timespec>,
    /// Completions taken out of a full completion queue by `push` (so the kernel could post
    /// more); `wait` hands them over first, in order.
    reaped: Vec<(u64, i32)>,
}

/// Whether io_uring can be set up here at all.
pub(crate) fn probe() -> std::io::Result<()> {
    IoUring::new(8).map(drop)
}

impl Uring {
    /// A ring; with `sqpoll`, a kernel thread polls its submission queue (`io-uring-sqpoll`).
    pub(crate) fn new(sqpoll: bool) -> std::io::Result<Uring> {
        Uring::with_entries(RING_ENTRIES, RING_ENTRIES * 16, sqpoll)
    }

    /// Without `sqpoll`, the ring is cooperative (`IORING_SETUP_COOP_TASKRUN`, Linux 5.19):
    /// a completion arriving while the thread runs is not forced on it with an interrupt but
    /// waits for its next `io_uring_enter`, which each turn makes anyway (`TASKRUN_FLAG`
    /// marks one pending, so that even an enter that waits for nothing takes it). The ring's
    /// one thread is the only one that waits on it, the case the flag is for. On the lab
    /// shape, with the load generator's and the sink's rings cooperative too, the machine's
    /// CPU a message fell 12% (four alternating pairs, `perf/RESULTS.md`). Older kernels: a
    /// plain ring.
    fn with_entries(sq: u32, cq: u32, sqpoll: bool) -> std::io::Result<Uring> {
        let build = |cooperative: bool| {
            let mut builder = IoUring::builder();
            builder.setup_cqsize(cq);
            if sqpoll {
                builder.setup_sqpoll(SQPOLL_IDLE_MS);
            } else if cooperative {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            builder.build(sq)
        };
        let ring = match build(true) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !sqpoll => build(false)?,
            built => built?,
        };
        Ok(Uring { ring, timespec: Box::new(types::Timespec::new()), reaped: Vec::new() })
    }

    /// Pushes an entry, submitting first when the submission queue is full.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        while self.ring.submission().push(entry).is_err() {
            self.submit_or_reap();
        }
    }

    /// Submits; when the kernel refuses because the completion queue is full (more operations
    /// in flight than it holds: EBUSY, or EAGAIN for memory), the completions waiting there are
    /// taken out for the loop to handle, never a panic.
    fn submit_or_reap(&mut self) {
        match self.ring.submit() {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)) => {
                self.reaped.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            }
            Err(e) => panic!("io_uring submit failed: {e}"),
        }
    }
}

impl Backend for Uring {
    unsafe fn submit(&mut self, sub: Sub, user_data: u64) {
        let entry = match sub {
            Sub::Accept { fd, addr, len } => {
                opcode::Accept::new(types::Fd(fd), addr.cast(), len).flags(libc::SOCK_CLOEXEC).build()
            }
            Sub::Connect { fd, addr, len } => opcode::Connect::new(types::Fd(fd), addr.cast(), len).build(),
            Sub::Recv { fd, buf, len } => opcode::Recv::new(types::Fd(fd), buf, len).build(),
            Sub::Send { fd, buf, len } => opcode::Send::new(types::Fd(fd), buf, len).flags(libc::MSG_NOSIGNAL).build(),
            Sub::SendMsg { fd, msg } => {
                opcode::SendMsg::new(types::Fd(fd), msg).flags(libc::MSG_NOSIGNAL as u32).build()
            }
            Sub::Read { fd, buf, len } => opcode::Read::new(types::Fd(fd), buf, len).build(),
            Sub::Write { fd, buf, len, offset } => opcode::Write::new(types::Fd(fd), buf, len).offset(offset).build(),
            Sub::WriteDurable { fd, buf, len, offset } => {
                opcode::Write::new(types::Fd(fd), buf, len).offset(offset).rw_flags(libc::RWF_DSYNC).build()
            }
            Sub::Fdatasync { fd } => opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build(),
            Sub::Timeout { ms } => {
                *self.timespec = types::Timespec::new().sec(ms / 1000).nsec((ms % 1000 * 1_000_000) as u32);
                opcode::Timeout::new(&*self.timespec).build()
            }
            Sub::Cancel { user_data } => opcode::AsyncCancel::new(user_data).build(),
        };
        // SAFETY: the caller keeps every pointer valid until the completion is taken.
        unsafe { self.push(&entry.user_data(user_data)) };
    }

    fn wait(&mut self, out: &mut Vec<(u64, i32)>) {
        let want = usize::from(self.reaped.is_empty());
        out.append(&mut self.reaped);
        match self.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)) => {}
            Err(e) => panic!("io_uring_enter failed: {e}"),
        }
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
    }

    fn wait_at_most(&mut self, out: &mut Vec<(u64, i32)>, limit_ns: Option<u64>) {
        let Some(limit) = limit_ns.filter(|_| self.reaped.is_empty()) else { return self.wait(out) };
        let ts = types::Timespec::new().sec(limit / 1_000_000_000).nsec((limit % 1_000_000_000) as u32);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EBUSY | libc::EAGAIN | libc::EINTR)) => {}
            Err(e) => panic!("io_uring_enter failed: {e}"),
        }
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
    }

    fn now(&self) -> Now {
        super::clock()
    }

    fn direct_spool(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More operations in flight than the completion queue holds: nothing panics and every
    /// completion is handed over exactly once (issue 22: `submit().expect` on EBUSY).
    #[test]
    fn a_full_completion_queue_loses_and_breaks_nothing() {
        let mut ring = Uring::with_entries(4, 8, false).expect("io_uring");
        const OPS: u64 = 1_000;
        for i in 0..OPS {
            // SAFETY: a NOP holds no pointer.
            unsafe { ring.push(&opcode::Nop::new().build().user_data(i)) };
        }
        let mut seen = Vec::new();
        for _ in 0..OPS {
            if seen.len() as u64 == OPS {
                break;
            }
            ring.wait(&mut seen);
        }
        let mut ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len() as u64, OPS, "every completion once");
        assert!(seen.iter().all(|(_, r)| *r == 0));
    }
}
