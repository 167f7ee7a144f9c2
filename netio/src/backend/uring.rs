//! The io_uring backend: each `Sub` is one submission entry; `wait` submits them all and
//! waits in one `io_uring_enter`.

use super::multishot::{self, Multishot};
use super::{Backend, Sub};
use io_uring::{opcode, squeue, types, IoUring};
use sluice_engine::time::Now;
use std::os::fd::RawFd;

/// Builds an entry on `fd` as the ring knows it: its file table slot when registered, else
/// the descriptor.
macro_rules! by_fd {
    ($ring:expr, $fd:expr, |$f:ident| $build:expr) => {
        if $ring.is_fixed($fd) {
            let $f = types::Fixed($fd as u32);
            $build
        } else {
            let $f = types::Fd($fd);
            $build
        }
    };
}

/// Submission queue entries; the completion queue holds 16 times as many (a socket operation
/// per connection, spool writes); past it, `push` reaps instead.
const RING_ENTRIES: u32 = 4096;
/// With `io-uring-sqpoll`: how long the kernel's polling thread spins on an empty submission
/// queue before it sleeps (and the next submission wakes it with an `io_uring_enter`).
const SQPOLL_IDLE_MS: u32 = 10;

/// The most sockets in a ring's file table (`io-uring-registered-files`; slot = fd, so fds
/// past it go unregistered), and never more than the process may open.
const FIXED_FILES_MAX: u32 = 65_536;

/// How a ring is set up (the configuration's `io-uring-*` directives).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// `io-uring-sqpoll`: a kernel thread polls the submission queue.
    pub sqpoll: bool,
    /// `io-uring-multishot-receive`.
    pub multishot: bool,
    /// `io-uring-registered-files`: sockets in the ring's file table.
    pub registered_files: bool,
}

pub(crate) struct Uring {
    ring: IoUring,
    /// The one timer's duration (its entry points here until it completes).
    timespec: Box<types::Timespec>,
    /// Completions taken out of a full completion queue by `push` (so the kernel could post
    /// more), and `Recv`s answered at once from a stash; `wait` hands them over first, in order.
    reaped: Vec<(u64, i32)>,
    /// Sockets' receives as multishot receives (None: one `Recv` submission each).
    multishot: Option<Multishot>,
    /// Entries the multishot receives want submitted (armed again, cancelled), and completions
    /// as the kernel posted them, before they are sorted: kept for their allocations.
    own: Vec<squeue::Entry>,
    cqes: Vec<(u64, i32, u32)>,
    /// With `io-uring-registered-files`: by fd, whether the socket is in the ring's file table
    /// at that slot (its operations then name `Fixed(fd)`: no file reference taken and
    /// dropped by the kernel per operation).
    fixed: Option<Vec<bool>>,
}

/// Whether io_uring can be set up here at all.
pub(crate) fn probe() -> std::io::Result<()> {
    IoUring::new(8).map(drop)
}

impl Uring {
    /// A ring; with `sqpoll`, a kernel thread polls its submission queue (`io-uring-sqpoll`);
    /// with `multishot`, sockets receive through multishot receives where the kernel has them
    /// (6.0; before, one `Recv` submission each, said once); with `registered_files`, sockets
    /// go in its file table (5.19; before, by fd, said once).
    pub(crate) fn new(options: Options) -> std::io::Result<Uring> {
        let Options { sqpoll, multishot, registered_files } = options;
        let mut ring = Uring::with_entries(RING_ENTRIES, RING_ENTRIES * 16, sqpoll)?;
        if registered_files {
            let slots = FIXED_FILES_MAX.min(crate::sys::open_files_max());
            ring.fixed = match ring.ring.submitter().register_files_sparse(slots) {
                Ok(()) => Some(vec![false; slots as usize]),
                Err(e) => {
                    tracing::info!(error = %e, "no sparse file table here (Linux 5.19): sockets by fd");
                    None
                }
            };
        }
        if multishot {
            ring.multishot = Multishot::new(&ring.ring.submitter())
                .inspect_err(|e| {
                    tracing::info!(error = %e, "no provided buffer rings here (Linux 5.19): one receive submission a read");
                })
                .ok();
        }
        Ok(ring)
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
        Ok(Uring {
            ring,
            timespec: Box::new(types::Timespec::new()),
            reaped: Vec::new(),
            multishot: None,
            own: Vec::new(),
            cqes: Vec::new(),
            fixed: None,
        })
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
                let mut reaped = std::mem::take(&mut self.reaped);
                self.take_completions(&mut reaped);
                self.reaped = reaped;
            }
            Err(e) => panic!("io_uring submit failed: {e}"),
        }
    }

    /// Moves the posted completions into `out`, the backend's own (multishot receives, its
    /// cancels) turned into the shard's `Recv` completions or dropped; then submits what the
    /// multishot receives want (queued for the next enter).
    fn take_completions(&mut self, out: &mut Vec<(u64, i32)>) {
        self.cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        for (user_data, result, flags) in self.cqes.drain(..) {
            match &mut self.multishot {
                Some(m) if user_data & multishot::OWN_TAG == multishot::OWN_TAG => {
                    m.complete(user_data, result, flags, &mut self.own, out)
                }
                _ => out.push((user_data, result)),
            }
        }
        self.push_own();
    }

    /// Whether `fd` is in the ring's file table.
    fn is_fixed(&self, fd: RawFd) -> bool {
        self.fixed.as_ref().is_some_and(|t| usize::try_from(fd).ok().and_then(|i| t.get(i)).copied() == Some(true))
    }

    /// Puts a new socket in the ring's file table at its fd (one `io_uring_register` a
    /// socket); past the table, or refused, it stays by fd.
    fn register(&mut self, fd: RawFd) {
        let Some(table) = self.fixed.as_mut() else { return };
        let Some(slot) = usize::try_from(fd).ok().filter(|&i| i < table.len()) else { return };
        table[slot] = self.ring.submitter().register_files_update(fd as u32, &[fd]).is_ok();
    }

    /// Pushes the entries the multishot receives asked for.
    fn push_own(&mut self) {
        let own = std::mem::take(&mut self.own);
        for entry in &own {
            // SAFETY: a multishot receive points at the registered buffer ring (never unmapped);
            // a cancel holds no pointer.
            unsafe { self.push(entry) };
        }
        self.own = own;
        self.own.clear();
    }
}

impl Backend for Uring {
    unsafe fn submit(&mut self, sub: Sub, user_data: u64) {
        let entry = match sub {
            Sub::Accept { fd, addr, len } => {
                opcode::Accept::new(types::Fd(fd), addr.cast(), len).flags(libc::SOCK_CLOEXEC).build()
            }
            Sub::Connect { fd, addr, len } => {
                by_fd!(self, fd, |f| opcode::Connect::new(f, addr.cast(), len).build())
            }
            Sub::Recv { fd, buf, len } => {
                let fixed = self.is_fixed(fd);
                match &mut self.multishot {
                    Some(m) => {
                        m.recv((fd, fixed), (user_data, buf, len), &mut self.own, &mut self.reaped);
                        return self.push_own();
                    }
                    None => by_fd!(self, fd, |f| opcode::Recv::new(f, buf, len).build()),
                }
            }
            Sub::Send { fd, buf, len } => {
                by_fd!(self, fd, |f| opcode::Send::new(f, buf, len).flags(libc::MSG_NOSIGNAL).build())
            }
            Sub::SendMsg { fd, msg } => {
                by_fd!(self, fd, |f| opcode::SendMsg::new(f, msg).flags(libc::MSG_NOSIGNAL as u32).build())
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
            Sub::Cancel { fd, user_data: target } => {
                if let Some(m) = &mut self.multishot {
                    if m.cancel(fd, target, user_data, &mut self.reaped) {
                        return;
                    }
                }
                opcode::AsyncCancel::new(target).build()
            }
        };
        // SAFETY: the caller keeps every pointer valid until the completion is taken.
        unsafe { self.push(&entry.user_data(user_data)) };
    }

    fn wait(&mut self, out: &mut Vec<(u64, i32)>) {
        let want = usize::from(self.reaped.is_empty());
        out.append(&mut self.reaped);
        // The backend's own completions alone (bytes stashed for no waiting Recv) are no reason
        // to return; bounded by the shard's own operations, one of which completes in the end.
        let before = out.len();
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)) => {}
                Err(e) => panic!("io_uring_enter failed: {e}"),
            }
            self.take_completions(out);
            out.append(&mut self.reaped);
            if want == 0 || out.len() > before {
                return;
            }
        }
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
        self.take_completions(out);
        out.append(&mut self.reaped);
    }

    fn tcp_socket(&mut self, to: std::net::SocketAddr, from: Option<std::net::IpAddr>) -> std::io::Result<RawFd> {
        let fd = super::plain_tcp_socket(to, from)?;
        self.register(fd);
        Ok(fd)
    }

    fn accepted(&mut self, fd: RawFd) {
        crate::sys::set_nodelay(fd);
        self.register(fd);
    }

    fn close(&mut self, fd: RawFd) {
        if self.is_fixed(fd) {
            // Operations still in flight keep their own reference to the socket.
            let _ = self.ring.submitter().register_files_update(fd as u32, &[-1]);
            self.fixed.as_mut().expect("a file table")[fd as usize] = false;
        }
        if let Some(m) = &mut self.multishot {
            m.close(fd, &mut self.own);
            self.push_own();
        }
        crate::sys::close(fd);
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
    use std::os::fd::{AsRawFd, IntoRawFd};

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

    /// A TCP connection on loopback: (the side the ring reads, the peer that writes).
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let peer = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (ours, _) = l.accept().expect("accept");
        (ours, peer)
    }

    /// Submits a Recv and waits for its completion (others that come are kept in `other`).
    fn recv(ring: &mut Uring, fd: i32, buf: &mut [u8], ud: u64, other: &mut Vec<(u64, i32)>) -> i32 {
        // SAFETY: `buf` outlives the completion, taken below.
        unsafe { ring.submit(Sub::Recv { fd, buf: buf.as_mut_ptr(), len: buf.len() as u32 }, ud) };
        for _ in 0..10_000 {
            let mut out = Vec::new();
            ring.wait(&mut out);
            let mut found = None;
            for (u, r) in out {
                if u == ud {
                    found = Some(r);
                } else {
                    other.push((u, r));
                }
            }
            if let Some(r) = found {
                return r;
            }
        }
        panic!("no completion for Recv {ud}");
    }

    /// Lets the ring take what the kernel posted for `ms` with no Recv waiting (the bytes go to
    /// the stash).
    fn idle(ring: &mut Uring, ms: u64) {
        // SAFETY: a timeout points at the ring's own timespec.
        unsafe { ring.submit(Sub::Timeout { ms }, 999) };
        let mut out = Vec::new();
        while !out.iter().any(|(u, _)| *u == 999) {
            ring.wait(&mut out);
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Multishot receive behind the one-Recv contract: 3 MiB sent in odd pieces arrive whole
    /// and in order through Recvs of odd sizes, with the stash filled past its bound while no
    /// Recv waited (the receive cancelled, then armed again); then the peer's end of stream
    /// is 0 for every later Recv.
    #[test]
    fn multishot_receive_keeps_every_byte_in_order() {
        let mut ring = Uring::new(Options { multishot: true, ..Options::default() }).expect("io_uring");
        assert!(ring.multishot.is_some(), "this kernel has provided buffer rings");
        let (ours, mut peer) = pair();
        let sent = pattern(3 << 20);
        let writer = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut at = 0;
                let mut step = 1;
                while at < sent.len() {
                    let n = (step * 977 % 70_000 + 1).min(sent.len() - at);
                    peer.write_all(&sent[at..at + n]).expect("write");
                    at += n;
                    step += 1;
                }
            })
        };
        let fd = ours.as_raw_fd();
        let mut got = Vec::with_capacity(sent.len());
        let mut buf = vec![0u8; 100_000];
        let mut other = Vec::new();
        let mut ud = 1;
        let mut idled = false;
        while got.len() < sent.len() {
            let len = [1, 13, 4096, 100_000, 555][ud as usize % 5];
            let n = recv(&mut ring, fd, &mut buf[..len], ud, &mut other);
            assert!(n > 0, "Recv {ud}: {n} before the end ({} of {})", got.len(), sent.len());
            got.extend_from_slice(&buf[..n as usize]);
            ud += 1;
            if !idled && got.len() > 10_000 {
                idled = true;
                idle(&mut ring, 300);
                let stashed = ring.multishot.as_ref().expect("multishot").stashed(fd);
                assert!(stashed > 256 * 1024, "the stash filled while no Recv waited: {stashed}");
            }
        }
        writer.join().expect("writer");
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "every byte, in order");
        assert!(other.iter().all(|(u, _)| *u == 999), "no stray completion: {other:?}");
        assert_eq!(recv(&mut ring, fd, &mut buf[..10], 9_001, &mut other), 0, "the end of stream");
        assert_eq!(recv(&mut ring, fd, &mut buf[..10], 9_002, &mut other), 0, "and again");
        ring.close(ours.into_raw_fd());
    }

    /// A cancelled Recv completes cancelled and loses nothing: bytes that come after it are
    /// the next Recv's. A closed socket's receive never feeds the next socket on its fd.
    #[test]
    fn multishot_receive_cancel_and_fd_reuse() {
        use std::io::Write;
        let mut ring = Uring::new(Options { multishot: true, ..Options::default() }).expect("io_uring");
        let (a, mut pa) = pair();
        let fd = a.as_raw_fd();
        let mut buf = vec![0u8; 64];
        let mut other = Vec::new();
        pa.write_all(b"one").expect("write");
        assert_eq!(recv(&mut ring, fd, &mut buf, 1, &mut other), 3);
        // SAFETY: `buf` outlives the completion, taken below.
        unsafe { ring.submit(Sub::Recv { fd, buf: buf.as_mut_ptr(), len: 64 }, 2) };
        // SAFETY: a cancel holds no pointer.
        unsafe { ring.submit(Sub::Cancel { fd, user_data: 2 }, 3) };
        let mut out = Vec::new();
        ring.wait(&mut out);
        assert_eq!(out, vec![(2, -libc::ECANCELED), (3, 0)]);
        pa.write_all(b"two").expect("write");
        assert_eq!(recv(&mut ring, fd, &mut buf, 4, &mut other), 3);
        assert_eq!(&buf[..3], b"two");

        // A's receive is still armed when A closes; bytes sent to A then are nobody's.
        pa.write_all(b"late").expect("write");
        let (b, mut pb) = pair();
        // What `close` does, with B put on A's fd in the same step (dup2), so that no socket of
        // a test running beside this one can land there in between.
        let a = a.into_raw_fd();
        ring.multishot.as_mut().expect("multishot").close(a, &mut ring.own);
        ring.push_own();
        // SAFETY: both are open descriptors this test owns.
        assert_eq!(unsafe { libc::dup2(b.as_raw_fd(), a) }, a);
        drop(b);
        idle(&mut ring, 50);
        pb.write_all(b"bee").expect("write");
        assert_eq!(recv(&mut ring, fd, &mut buf, 5, &mut other), 3);
        assert_eq!(&buf[..3], b"bee");
        assert!(other.iter().all(|(u, _)| *u == 999), "no stray completion: {other:?}");
        ring.close(fd);
        drop(pa);
    }

    /// `io-uring-registered-files`: an accepted socket goes in the file table at its fd, its
    /// receives and sends name the slot and carry its bytes (with and without multishot
    /// receive), and closing it empties the slot.
    #[test]
    fn registered_sockets_send_and_receive_by_slot() {
        use std::io::{Read, Write};
        for multishot in [false, true] {
            let mut ring =
                Uring::new(Options { registered_files: true, multishot, ..Options::default() }).expect("io_uring");
            let (ours, mut peer) = pair();
            let fd = ours.into_raw_fd();
            ring.accepted(fd);
            assert!(ring.is_fixed(fd), "in the file table");
            peer.write_all(b"ping").expect("write");
            let mut buf = [0u8; 16];
            let mut other = Vec::new();
            assert_eq!(recv(&mut ring, fd, &mut buf, 1, &mut other), 4);
            assert_eq!(&buf[..4], b"ping");
            // SAFETY: the bytes are static.
            unsafe { ring.submit(Sub::Send { fd, buf: b"pong".as_ptr(), len: 4 }, 2) };
            let mut out = Vec::new();
            while !out.iter().any(|(u, _)| *u == 2) {
                ring.wait(&mut out);
            }
            assert!(out.contains(&(2, 4)), "{out:?}");
            let mut got = [0u8; 4];
            peer.read_exact(&mut got).expect("read");
            assert_eq!(&got, b"pong");
            ring.close(fd);
            assert!(!ring.is_fixed(fd), "the slot is emptied");
            // The shard's next turn submits the multishot receive's cancel; so does this.
            idle(&mut ring, 10);
            peer.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
            let mut rest = Vec::new();
            assert_eq!(peer.read_to_end(&mut rest).expect("the peer sees the end"), 0);
        }
    }
}
