//! Multishot receive with a provided buffer ring, behind the backend's one-`Recv`-one-completion
//! contract. A socket's first `Recv` arms one multishot receive (Linux 6.0) that stays armed:
//! each arrival takes a buffer from the ring, and its completion is copied into the `Recv`
//! waiting for it (what does not fit, or what comes while none waits, is kept in the socket's
//! stash for the next `Recv`), and the buffer goes straight back to the ring. Against one
//! `Recv` submission per read, the kernel neither prepares a request nor arms a poll each time.
//!
//! The shard never sees it: it still submits one `Recv` into its own buffer and takes one
//! completion, and it may cancel it. What it costs is one copy of each received byte (ring
//! buffer to the connection's buffer). Backpressure stays: a stash past `STASH_BYTES_MAX`
//! stops the socket's receive (cancelled) until a `Recv` drains it, so the peer meets TCP's
//! window as before.

use io_uring::{cqueue, opcode, squeue, types};
use std::os::fd::RawFd;

/// Buffers in the ring (a power of two, at most 32,768) and the bytes of each: one
/// completion carries at most one buffer. 256 × 16 KiB = 4 MiB a shard.
const BUFFERS: u16 = 256;
const BUFFER_BYTES: u32 = 16 * 1024;
/// The buffer group the ring is registered as (one ring a shard).
const GROUP: u16 = 0;
/// A socket's stash past this stops its receive until the shard has read it down: a peer
/// sending while the shard does not read meets TCP's window, not our memory.
const STASH_BYTES_MAX: usize = 256 * 1024;
/// A stash keeps its allocation for the next burst up to this size, and gives back the rest.
const STASH_KEPT_BYTES_MAX: usize = 64 * 1024;

const _: () = assert!(BUFFERS.is_power_of_two() && BUFFERS <= 32_768);
const _: () = assert!(STASH_BYTES_MAX >= 2 * BUFFER_BYTES as usize);

/// user_data's top byte for the backend's own requests; the shard's and the tools' ops use
/// small numbers there.
pub(super) const OWN_TAG: u64 = 0xFF << 56;
/// The multishot receives: `OWN_TAG | RECEIVE | generation << 32 | fd`.
const RECEIVE: u64 = 1 << 55;
/// The cancels the backend sends itself (their completions are dropped).
const OWN_CANCEL: u64 = OWN_TAG;

/// One socket's receive.
#[derive(Default)]
struct Stream {
    /// Tells this socket's completions from those of an earlier socket with the same fd.
    gen: u32,
    /// The socket is in the ring's file table at its fd (`io-uring-registered-files`).
    fixed: bool,
    /// A multishot receive is in the kernel (until a completion without `F_MORE`).
    armed: bool,
    /// Its cancel is sent (the stash is full, or the socket is closing).
    cancelling: bool,
    /// The shard's `Recv` waiting for bytes: its user_data, buffer and length.
    waiting: Option<(u64, *mut u8, u32)>,
    /// Bytes received and not yet read, from `stash_at` on.
    stash: Vec<u8>,
    stash_at: usize,
    /// How the receive ended (0: the peer's end of stream; negative: an errno), said to every
    /// `Recv` once the stash is read.
    end: Option<i32>,
}

impl Stream {
    fn stashed(&self) -> usize {
        self.stash.len() - self.stash_at
    }

    /// Copies stashed bytes into `buf`; how many.
    fn read_stash(&mut self, buf: *mut u8, len: u32) -> usize {
        let n = self.stashed().min(len as usize);
        // SAFETY: the shard keeps `buf` valid for `len` bytes until this Recv's completion.
        unsafe { std::ptr::copy_nonoverlapping(self.stash[self.stash_at..].as_ptr(), buf, n) };
        self.stash_at += n;
        if self.stash_at == self.stash.len() {
            self.stash.clear();
            self.stash_at = 0;
            if self.stash.capacity() > STASH_KEPT_BYTES_MAX {
                self.stash.shrink_to(STASH_KEPT_BYTES_MAX);
            }
        }
        n
    }

    fn user_data(&self, fd: RawFd) -> u64 {
        OWN_TAG | RECEIVE | u64::from(self.gen & 0x7F_FFFF) << 32 | fd as u32 as u64
    }
}

/// The provided buffer ring and every socket's receive.
pub(super) struct Multishot {
    /// The ring's entries (page-aligned, registered) and the buffers they lend.
    entries: *mut types::BufRingEntry,
    buffers: *mut u8,
    /// The ring's tail as this side has written it.
    tail: u16,
    /// By fd.
    streams: Vec<Stream>,
    next_gen: u32,
}

impl Multishot {
    /// Registers the buffer ring with `ring`, or says why not (a kernel before 5.19).
    pub(super) fn new(submitter: &io_uring::Submitter<'_>) -> std::io::Result<Multishot> {
        let entries_bytes = BUFFERS as usize * std::mem::size_of::<types::BufRingEntry>();
        let buffers_bytes = BUFFERS as usize * BUFFER_BYTES as usize;
        // The memory is never unmapped: a receive the kernel finishes while its ring is being
        // torn down must never find it gone or reused. One ring a shard, for the process's life.
        let entries = map(entries_bytes)?.cast::<types::BufRingEntry>();
        let buffers = map(buffers_bytes)?;
        // SAFETY: `entries` is page-aligned, BUFFERS entries long, and never unmapped.
        unsafe { submitter.register_buf_ring_with_flags(entries as u64, BUFFERS, GROUP, 0)? };
        let mut m = Multishot { entries, buffers, tail: 0, streams: Vec::new(), next_gen: 0 };
        for bid in 0..BUFFERS {
            m.give_back(bid);
        }
        Ok(m)
    }

    /// How many bytes `fd`'s stash holds.
    #[cfg(test)]
    pub(super) fn stashed(&self, fd: RawFd) -> usize {
        self.streams.get(fd as usize).map_or(0, Stream::stashed)
    }

    /// Puts buffer `bid` back in the ring for the kernel.
    fn give_back(&mut self, bid: u16) {
        assert!(bid < BUFFERS);
        let at = usize::from(self.tail & (BUFFERS - 1));
        // SAFETY: `at` is within the ring; the kernel reads an entry only once the tail says so.
        unsafe {
            let e = &mut *self.entries.add(at);
            e.set_addr(self.buffers.add(usize::from(bid) * BUFFER_BYTES as usize) as u64);
            e.set_len(BUFFER_BYTES);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the u16 in entry 0's reserved field; the kernel reads it atomically.
        let tail = unsafe { &*types::BufRingEntry::tail(self.entries).cast::<std::sync::atomic::AtomicU16>() };
        tail.store(self.tail, std::sync::atomic::Ordering::Release);
    }

    fn stream(&mut self, fd: RawFd) -> &mut Stream {
        let i = usize::try_from(fd).expect("a socket's fd");
        if i >= self.streams.len() {
            self.streams.resize_with(i + 1, Stream::default);
        }
        &mut self.streams[i]
    }

    /// The shard's `Recv` (its user_data, buffer and length): answered now from the stash
    /// (into `done`), or left waiting for the socket's multishot receive (armed through
    /// `push` if it is not). `fixed`: the socket is in the ring's file table.
    pub(super) fn recv(
        &mut self,
        (fd, fixed): (RawFd, bool),
        (user_data, buf, len): (u64, *mut u8, u32),
        push: &mut Vec<squeue::Entry>,
        done: &mut Vec<(u64, i32)>,
    ) {
        let s = self.stream(fd);
        assert!(s.waiting.is_none(), "one Recv at a time on a socket");
        s.fixed = fixed;
        if s.stashed() > 0 {
            let n = s.read_stash(buf, len);
            return done.push((user_data, n as i32));
        }
        if let Some(end) = s.end {
            return done.push((user_data, end));
        }
        s.waiting = Some((user_data, buf, len));
        if !s.armed {
            self.arm(fd, push);
        }
    }

    fn arm(&mut self, fd: RawFd, push: &mut Vec<squeue::Entry>) {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let s = self.stream(fd);
        if s.gen == 0 {
            s.gen = gen;
        }
        s.armed = true;
        let entry = match s.fixed {
            true => opcode::RecvMulti::new(types::Fixed(fd as u32), GROUP).build(),
            false => opcode::RecvMulti::new(types::Fd(fd), GROUP).build(),
        };
        push.push(entry.user_data(s.user_data(fd)));
    }

    /// The shard cancels an operation on `fd`: a `Recv` waiting here completes cancelled now
    /// (and the cancel itself with 0). False: not one of ours, for the kernel.
    pub(super) fn cancel(&mut self, fd: RawFd, target: u64, user_data: u64, done: &mut Vec<(u64, i32)>) -> bool {
        let s = usize::try_from(fd).ok().and_then(|i| self.streams.get_mut(i));
        let Some(s) = s.filter(|s| s.waiting.is_some_and(|(ud, ..)| ud == target)) else {
            return false;
        };
        s.waiting = None;
        done.push((target, -libc::ECANCELED));
        done.push((user_data, 0));
        true
    }

    /// The socket is being closed: its receive is cancelled and forgotten (a completion still to
    /// come finds a new generation, or none, and is dropped).
    pub(super) fn close(&mut self, fd: RawFd, push: &mut Vec<squeue::Entry>) {
        let Some(s) = usize::try_from(fd).ok().and_then(|i| self.streams.get_mut(i)) else { return };
        assert!(s.waiting.is_none(), "closing a socket with a Recv waiting");
        if s.armed && !s.cancelling {
            push.push(opcode::AsyncCancel::new(s.user_data(fd)).build().user_data(OWN_CANCEL));
        }
        // The next socket on this fd starts afresh, with a generation of its own.
        *s = Stream::default();
    }

    /// A completion with the backend's own tag: a multishot receive's (its bytes go to the
    /// waiting `Recv` or the stash, and its buffer back to the ring) or an own cancel's.
    pub(super) fn complete(
        &mut self,
        user_data: u64,
        result: i32,
        flags: u32,
        push: &mut Vec<squeue::Entry>,
        done: &mut Vec<(u64, i32)>,
    ) {
        debug_assert_eq!(user_data & OWN_TAG, OWN_TAG);
        let bid = cqueue::buffer_select(flags);
        let data = bid.filter(|_| result > 0).map(|bid| {
            // SAFETY: the kernel wrote `result` bytes into buffer `bid`, which is ours until given back.
            unsafe {
                std::slice::from_raw_parts(self.buffers.add(usize::from(bid) * BUFFER_BYTES as usize), result as usize)
            }
        });
        if user_data & RECEIVE != 0 {
            let fd = (user_data & 0xFFFF_FFFF) as RawFd;
            let gen = ((user_data >> 32) & 0x7F_FFFF) as u32;
            let s = self.stream(fd);
            if s.gen & 0x7F_FFFF == gen && s.armed {
                s.take(result, data, cqueue::more(flags), done);
                if s.stashed() > STASH_BYTES_MAX && s.armed && !s.cancelling {
                    s.cancelling = true;
                    push.push(opcode::AsyncCancel::new(s.user_data(fd)).build().user_data(OWN_CANCEL));
                }
                // Ended for want of buffers, or cancelled for a full stash: armed again when a
                // Recv is left waiting with nothing stashed.
                if !s.armed && s.waiting.is_some() && s.end.is_none() {
                    self.arm(fd, push);
                }
            }
        }
        if let Some(bid) = bid {
            self.give_back(bid);
        }
    }
}

impl Stream {
    /// One completion of this socket's multishot receive.
    fn take(&mut self, result: i32, data: Option<&[u8]>, more: bool, done: &mut Vec<(u64, i32)>) {
        if !more {
            self.armed = false;
            self.cancelling = false;
        }
        if let Some(mut data) = data {
            if let Some((ud, buf, len)) = self.waiting.take() {
                debug_assert_eq!(self.stashed(), 0, "a Recv waits only on an empty stash");
                let n = data.len().min(len as usize);
                // SAFETY: the shard keeps `buf` valid for `len` bytes until this completion.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf, n) };
                done.push((ud, n as i32));
                data = &data[n..];
            }
            self.stash.extend_from_slice(data);
        } else if result <= 0 && !matches!(-result, libc::ENOBUFS | libc::ECANCELED) {
            // The peer's end of stream, or the socket's error: for this Recv and every later one.
            self.end = Some(result);
            if let Some((ud, ..)) = self.waiting.take() {
                done.push((ud, result));
            }
        }
    }
}

/// Anonymous, page-aligned memory for the kernel to read and write.
fn map(bytes: usize) -> std::io::Result<*mut u8> {
    // SAFETY: a fresh anonymous private mapping, no file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p.cast())
}
