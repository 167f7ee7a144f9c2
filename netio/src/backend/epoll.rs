//! The epoll backend: io_uring's completions made from readiness and plain system calls, for
//! hosts and containers that refuse io_uring.
//!
//! A socket operation is tried at once (non-blocking); when it would block, its descriptor is
//! armed in epoll (one-shot, for reading or writing) and the operation is tried again when the
//! descriptor is ready. Writes to journal files run at once (a write to a regular file copies
//! into the page cache and never waits for readiness; segment records are copied into their
//! mapping by the shard, no write at all); an `fdatasync` runs on the backend's sync
//! thread, which says it is done through an eventfd in the same epoll set, so the shard goes on
//! receiving and delivering while the disk works (as io_uring's worker does). The one timer is
//! the `epoll_wait` timeout.

use super::{Backend, Sub};
use sluice_engine::time::Now;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

/// Readiness events taken per `epoll_wait`.
const EVENTS_MAX: usize = 1024;

pub(crate) struct Epoll {
    epfd: OwnedFd,
    /// Completions ready to hand over, oldest first.
    ready: Vec<(u64, i32)>,
    /// Operations waiting for their descriptor's readiness.
    waiting: HashMap<RawFd, Vec<(u64, Sub)>>,
    /// Long-lived descriptors made non-blocking already (listeners, eventfds).
    nonblocking: HashSet<RawFd>,
    /// The timer: its deadline (monotonic ns) and `user_data`.
    timer: Option<(u64, u64)>,
    events: Vec<libc::epoll_event>,
    syncs: Syncer,
}

/// The `user_data` the sync thread's eventfd is registered with (never a descriptor number).
const SYNCS_DONE: u64 = u64::MAX;

/// `fdatasync`s off the shard's thread: the thread takes (descriptor, `user_data`), syncs,
/// puts the result in `done` and writes the eventfd.
struct Syncer {
    /// Dropped with the backend: the thread then ends.
    queue: crossbeam_channel::Sender<(RawFd, u64)>,
    done: Arc<Mutex<Vec<(u64, i32)>>>,
    eventfd: Arc<OwnedFd>,
    in_flight: usize,
}

impl Syncer {
    fn start() -> std::io::Result<Syncer> {
        // SAFETY: a plain system call; the descriptor is ours.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and ours.
        let eventfd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let done = Arc::new(Mutex::new(Vec::new()));
        let (queue, work) = crossbeam_channel::unbounded::<(RawFd, u64)>();
        let (thread_done, thread_eventfd) = (done.clone(), eventfd.clone());
        std::thread::Builder::new().name("sluice-sync".into()).spawn(move || {
            for (fd, user_data) in work {
                // SAFETY: fdatasync on a descriptor the shard keeps open until this completes.
                let r = result(unsafe { libc::fdatasync(fd) } as isize);
                thread_done.lock().expect("not poisoned").push((user_data, r));
                let one: u64 = 1;
                // SAFETY: writing 8 bytes to our eventfd.
                unsafe { libc::write(thread_eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
            }
        })?;
        Ok(Syncer { queue, done, eventfd, in_flight: 0 })
    }

    fn submit(&mut self, fd: RawFd, user_data: u64) {
        self.in_flight += 1;
        self.queue.send((fd, user_data)).expect("the sync thread runs while we do");
    }

    /// Moves finished syncs into `ready`.
    fn take(&mut self, ready: &mut Vec<(u64, i32)>) {
        let mut count: u64 = 0;
        // SAFETY: reading 8 bytes from our non-blocking eventfd.
        unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        let mut done = self.done.lock().expect("not poisoned");
        self.in_flight -= done.len();
        ready.append(&mut done);
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// A system call's result as io_uring gives it: the value, or the negative errno.
fn result(r: isize) -> i32 {
    if r < 0 {
        -errno()
    } else {
        r as i32
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor the shard owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 && flags & libc::O_NONBLOCK == 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// The readiness an operation waits for.
fn interest(sub: &Sub) -> u32 {
    match sub {
        Sub::Send { .. } | Sub::SendMsg { .. } | Sub::Connect { .. } => libc::EPOLLOUT as u32,
        _ => libc::EPOLLIN as u32,
    }
}

/// Tries an operation once: `None` when it would block. A `Connect` here is one already under
/// way: its outcome is the socket's pending error.
///
/// # Safety
/// The pointers in `sub` are valid (the `Backend::submit` contract).
unsafe fn attempt(sub: &Sub) -> Option<i32> {
    loop {
        // SAFETY: the caller's contract: every pointer is valid for its length.
        let r = unsafe {
            match *sub {
                Sub::Accept { fd, addr, len } => libc::accept4(fd, addr.cast(), len, libc::SOCK_CLOEXEC) as isize,
                Sub::Recv { fd, buf, len } => libc::recv(fd, buf.cast(), len as usize, libc::MSG_DONTWAIT),
                Sub::Send { fd, buf, len } => {
                    libc::send(fd, buf.cast(), len as usize, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                }
                Sub::SendMsg { fd, msg } => libc::sendmsg(fd, msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL),
                Sub::Read { fd, buf, len } => libc::read(fd, buf.cast(), len as usize),
                Sub::Write { fd, buf, len, offset } => libc::pwrite(fd, buf.cast(), len as usize, offset as i64),
                // Not asked for here (`direct_spool` is false); done inline, as the contract says.
                Sub::WriteDurable { fd, buf, len, offset } => {
                    let n = libc::pwrite(fd, buf.cast(), len as usize, offset as i64);
                    match n >= 0 && libc::fdatasync(fd) < 0 {
                        true => -1,
                        false => n,
                    }
                }
                Sub::Connect { fd, .. } => {
                    let mut err: libc::c_int = 0;
                    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                    let r = libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&mut err as *mut libc::c_int).cast(),
                        &mut len,
                    );
                    return Some(if r < 0 { -errno() } else { -err });
                }
                Sub::Timeout { .. } | Sub::Cancel { .. } => unreachable!("not a system call"),
                Sub::Fdatasync { .. } => unreachable!("on the sync thread (`Syncer`)"),
            }
        };
        let r = result(r);
        match -r {
            libc::EINTR => continue,
            libc::EAGAIN | libc::EINPROGRESS => return None,
            _ => return Some(r),
        }
    }
}

impl Epoll {
    pub(crate) fn new() -> std::io::Result<Epoll> {
        // SAFETY: a plain system call; the descriptor is ours.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and ours.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let syncs = Syncer::start()?;
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: SYNCS_DONE };
        // SAFETY: epoll_ctl on our descriptors with a valid event.
        if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, syncs.eventfd.as_raw_fd(), &mut ev) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Epoll {
            epfd,
            ready: Vec::new(),
            waiting: HashMap::new(),
            nonblocking: HashSet::new(),
            timer: None,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX],
            syncs,
        })
    }

    /// Waits (one-shot) for what `fd`'s waiting operations need.
    fn arm(&mut self, fd: RawFd) {
        let events = self.waiting[&fd].iter().fold(0, |e, (_, sub)| e | interest(sub));
        let mut ev = libc::epoll_event { events: events | libc::EPOLLONESHOT as u32, u64: fd as u64 };
        let epfd = self.epfd.as_raw_fd();
        // SAFETY: epoll_ctl on our epoll descriptor with a valid event.
        let r = unsafe {
            match libc::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) {
                0 => 0,
                _ if errno() == libc::ENOENT => libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev),
                r => r,
            }
        };
        if r != 0 {
            // Never waits for ever: the operations fail instead (a descriptor epoll cannot
            // watch).
            let e = errno();
            for (user_data, _) in self.waiting.remove(&fd).unwrap_or_default() {
                self.ready.push((user_data, -e));
            }
        }
    }

    fn cancel(&mut self, target: u64) -> bool {
        if self.timer.is_some_and(|(_, user_data)| user_data == target) {
            self.timer = None;
            self.ready.push((target, -libc::ECANCELED));
            return true;
        }
        let found = self
            .waiting
            .iter()
            .find_map(|(fd, ops)| ops.iter().position(|(user_data, _)| *user_data == target).map(|i| (*fd, i)));
        let Some((fd, i)) = found else { return false };
        let ops = self.waiting.get_mut(&fd).expect("found");
        ops.remove(i);
        if ops.is_empty() {
            self.waiting.remove(&fd);
        }
        self.ready.push((target, -libc::ECANCELED));
        true
    }

    /// Milliseconds `epoll_wait` may sleep: none with completions ready, until the timer
    /// otherwise (for ever without one).
    fn sleep_ms(&self) -> i32 {
        if !self.ready.is_empty() {
            return 0;
        }
        match self.timer {
            Some((deadline, _)) => {
                deadline.saturating_sub(crate::sys::mono_ns()).div_ceil(1_000_000).min(60_000) as i32
            }
            None => -1,
        }
    }
}

impl Backend for Epoll {
    unsafe fn submit(&mut self, sub: Sub, user_data: u64) {
        match sub {
            Sub::Timeout { ms } => {
                self.timer = Some((crate::sys::mono_ns() + ms * 1_000_000, user_data));
                return;
            }
            Sub::Cancel { user_data: target, .. } => {
                let found = self.cancel(target);
                self.ready.push((user_data, if found { 0 } else { -libc::ENOENT }));
                return;
            }
            Sub::Accept { fd, .. } | Sub::Read { fd, .. } if self.nonblocking.insert(fd) => set_nonblocking(fd),
            Sub::Fdatasync { fd } => return self.syncs.submit(fd, user_data),
            Sub::Connect { fd, addr, len } => {
                set_nonblocking(fd);
                // SAFETY: the caller's contract: addr is valid for len.
                let r = result(unsafe { libc::connect(fd, addr.cast(), len) } as isize);
                if r != -libc::EINPROGRESS {
                    self.ready.push((user_data, r));
                    return;
                }
                // Under way: its outcome comes with writability.
                self.waiting.entry(fd).or_default().push((user_data, sub));
                return self.arm(fd);
            }
            _ => {}
        }
        // SAFETY: the caller's contract.
        match unsafe { attempt(&sub) } {
            Some(r) => self.ready.push((user_data, r)),
            None => {
                let fd = match sub {
                    Sub::Accept { fd, .. } | Sub::Recv { fd, .. } | Sub::Send { fd, .. } => fd,
                    Sub::SendMsg { fd, .. } | Sub::Read { fd, .. } => fd,
                    // A regular file never blocks; a full pipe or socket written as a file
                    // would: fail it rather than wait without readiness.
                    _ => return self.ready.push((user_data, -libc::EAGAIN)),
                };
                self.waiting.entry(fd).or_default().push((user_data, sub));
                self.arm(fd);
            }
        }
    }

    fn wait(&mut self, out: &mut Vec<(u64, i32)>) {
        self.wait_at_most(out, None)
    }

    fn wait_at_most(&mut self, out: &mut Vec<(u64, i32)>, limit_ns: Option<u64>) {
        if !self.ready.is_empty() && self.waiting.is_empty() && self.syncs.in_flight == 0 {
            out.append(&mut self.ready);
            return;
        }
        let sleep_ms = match (self.sleep_ms(), limit_ns.map(|ns| ns.div_ceil(1_000_000).min(60_000) as i32)) {
            (-1, Some(l)) => l,
            (s, Some(l)) => s.min(l),
            (s, None) => s,
        };
        // SAFETY: the events buffer holds EVENTS_MAX entries.
        let n =
            unsafe { libc::epoll_wait(self.epfd.as_raw_fd(), self.events.as_mut_ptr(), EVENTS_MAX as i32, sleep_ms) };
        for i in 0..n.max(0) as usize {
            if self.events[i].u64 == SYNCS_DONE {
                self.syncs.take(&mut self.ready);
                continue;
            }
            let fd = self.events[i].u64 as RawFd;
            let Some(ops) = self.waiting.remove(&fd) else { continue };
            let mut still = Vec::new();
            for (user_data, sub) in ops {
                // SAFETY: submitted under the `submit` contract and not completed yet.
                match unsafe { attempt(&sub) } {
                    Some(r) => self.ready.push((user_data, r)),
                    None => still.push((user_data, sub)),
                }
            }
            if !still.is_empty() {
                self.waiting.insert(fd, still);
                self.arm(fd);
            }
        }
        if let Some((deadline, user_data)) = self.timer {
            if crate::sys::mono_ns() >= deadline {
                self.timer = None;
                self.ready.push((user_data, -libc::ETIME));
            }
        }
        out.append(&mut self.ready);
    }

    fn now(&self) -> Now {
        super::clock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair into a two-element array.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors are fresh and ours.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn wait_for(io: &mut Epoll, user_data: u64) -> i32 {
        let mut out = Vec::new();
        for _ in 0..100 {
            io.wait(&mut out);
            if let Some(&(_, r)) = out.iter().find(|(u, _)| *u == user_data) {
                return r;
            }
        }
        panic!("no completion for {user_data}");
    }

    /// A receive with nothing to read waits for readiness, then completes with the bytes;
    /// a cancelled one completes with ECANCELED and the cancel itself with 0.
    #[test]
    fn a_receive_waits_for_its_bytes_and_a_cancel_ends_it() {
        let mut io = Epoll::new().expect("epoll");
        let (a, b) = pair();
        let mut buf = [0u8; 16];
        // SAFETY: buf outlives the operation (waited for below).
        unsafe { io.submit(Sub::Recv { fd: a.as_raw_fd(), buf: buf.as_mut_ptr(), len: 16 }, 1) };
        io.submit_timer_for_test(20);
        let mut out = Vec::new();
        io.wait(&mut out);
        assert_eq!(out, vec![(99, -libc::ETIME)], "only the timer: nothing was sent");
        // SAFETY: a valid buffer of 5 bytes.
        unsafe { libc::send(b.as_raw_fd(), b"hello".as_ptr().cast(), 5, 0) };
        assert_eq!(wait_for(&mut io, 1), 5);
        assert_eq!(&buf[..5], b"hello");

        // SAFETY: as above.
        unsafe { io.submit(Sub::Recv { fd: a.as_raw_fd(), buf: buf.as_mut_ptr(), len: 16 }, 2) };
        // SAFETY: a cancel holds no pointer.
        unsafe { io.submit(Sub::Cancel { fd: a.as_raw_fd(), user_data: 2 }, 3) };
        let mut out = Vec::new();
        io.wait(&mut out);
        assert_eq!(out, vec![(2, -libc::ECANCELED), (3, 0)]);
        // SAFETY: as above.
        unsafe { io.submit(Sub::Cancel { fd: a.as_raw_fd(), user_data: 2 }, 4) };
        assert_eq!(wait_for(&mut io, 4), -libc::ENOENT, "nothing left to cancel");
    }

    /// A send into a full socket buffer is short or waits; every byte arrives, in order.
    #[test]
    fn sends_larger_than_the_socket_buffer_complete_short_and_resume() {
        let mut io = Epoll::new().expect("epoll");
        let (a, b) = pair();
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let (mut sent, mut sending, mut receiving) = (0usize, false, false);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut rounds = 0;
        while got.len() < data.len() {
            rounds += 1;
            assert!(rounds < 100_000, "stuck at {} of {}", got.len(), data.len());
            if !sending && sent < data.len() {
                let rest = &data[sent..];
                sending = true;
                // SAFETY: data outlives the operation (waited for below).
                unsafe { io.submit(Sub::Send { fd: a.as_raw_fd(), buf: rest.as_ptr(), len: rest.len() as u32 }, 7) };
            }
            if !receiving {
                receiving = true;
                // SAFETY: buf outlives the operation.
                unsafe { io.submit(Sub::Recv { fd: b.as_raw_fd(), buf: buf.as_mut_ptr(), len: buf.len() as u32 }, 8) };
            }
            let mut out = Vec::new();
            io.wait(&mut out);
            for (user_data, r) in out {
                assert!(r > 0, "{user_data}: {r}");
                match user_data {
                    7 => (sent, sending) = (sent + r as usize, false),
                    _ => {
                        got.extend_from_slice(&buf[..r as usize]);
                        receiving = false;
                    }
                }
            }
        }
        assert!(rounds > 2, "short sends and receives: the data is larger than the socket buffers");
        assert!(got == data, "every byte, in order");
    }

    impl Epoll {
        fn submit_timer_for_test(&mut self, ms: u64) {
            // SAFETY: a timer holds no pointer.
            unsafe { self.submit(Sub::Timeout { ms }, 99) };
        }
    }
}
