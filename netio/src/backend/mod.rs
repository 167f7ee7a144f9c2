//! How a shard's operations reach the kernel. The shard says what it wants done (`Sub`: accept,
//! connect, receive, send, write a spool file at an offset, make it durable, read the mailbox's
//! eventfd, a timer, a cancel) tagged with a `user_data`, and later takes completions back:
//! `(user_data, result)`, the result as io_uring gives it (bytes or a new descriptor, or a
//! negative errno). Every backend keeps that contract, so the shard's code is the same over
//! each:
//! - `uring`: io_uring (the default and the fast one);
//! - `epoll`: readiness and plain system calls, for hosts and containers that refuse io_uring
//!   (Docker's default seccomp profile, Kubernetes' `RuntimeDefault`, gVisor,
//!   `kernel.io_uring_disabled`).
//!
//! A backend also tells the time, read once per turn of the loop.

pub(crate) mod epoll;
mod multishot;
pub(crate) mod uring;

use sluice_engine::time::Now;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

/// One operation. Every pointer must stay valid until the operation's completion has been
/// taken (the shard keeps its buffers boxed in its connections and stores).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sub {
    /// `accept4(fd, addr, len, SOCK_CLOEXEC)`: the result is the new descriptor.
    Accept {
        fd: RawFd,
        addr: *mut libc::sockaddr_storage,
        len: *mut libc::socklen_t,
    },
    Connect {
        fd: RawFd,
        addr: *const libc::sockaddr_storage,
        len: libc::socklen_t,
    },
    Recv {
        fd: RawFd,
        buf: *mut u8,
        len: u32,
    },
    /// Sent with `MSG_NOSIGNAL`: a peer gone is an error, never a signal.
    Send {
        fd: RawFd,
        buf: *const u8,
        len: u32,
    },
    SendMsg {
        fd: RawFd,
        msg: *const libc::msghdr,
    },
    /// A read of a file or an eventfd at its current position.
    Read {
        fd: RawFd,
        buf: *mut u8,
        len: u32,
    },
    Write {
        fd: RawFd,
        buf: *const u8,
        len: u32,
        offset: u64,
    },
    /// A write durable when it completes (`RWF_DSYNC`): a direct segment's records.
    WriteDurable {
        fd: RawFd,
        buf: *const u8,
        len: u32,
        offset: u64,
    },
    Fdatasync {
        fd: RawFd,
    },
    /// Completes with `-ETIME` after `ms`. One at a time.
    Timeout {
        ms: u64,
    },
    /// Cancels the operation submitted with `user_data` on `fd` (it completes with
    /// `-ECANCELED`, or with its own result when it finished first).
    Cancel {
        fd: RawFd,
        user_data: u64,
    },
}

/// A shard's way to the kernel (or to the simulation's network and disk).
pub(crate) trait Backend {
    /// Queues an operation; it runs no later than the next `wait`.
    ///
    /// # Safety
    /// Every pointer in `sub` must stay valid until its completion is taken by `wait`.
    unsafe fn submit(&mut self, sub: Sub, user_data: u64);

    /// Runs what was submitted and waits until at least one completion is ready, then moves
    /// every ready one into `out`, oldest first.
    fn wait(&mut self, out: &mut Vec<(u64, i32)>);

    /// As `wait`, returning after `limit_ns` at most (None: no limit) even with nothing
    /// completed: a group commit held back is due then. A backend whose waits never block
    /// (the simulation) need not say.
    fn wait_at_most(&mut self, out: &mut Vec<(u64, i32)>, limit_ns: Option<u64>) {
        let _ = limit_ns;
        self.wait(out)
    }

    /// The clocks, read once per turn of the loop.
    fn now(&self) -> Now;

    /// Whether new segments are written directly (`Segment::create_direct`, `WriteDurable`)
    /// rather than through their mapping and an `fdatasync`: where it saves the kernel work
    /// (io_uring); elsewhere the mapping is the simpler way.
    fn direct_spool(&self) -> bool {
        false
    }

    /// A TCP socket to connect to `to`, bound to `from` when given (a VMTA's
    /// `smtp-source-host`), with TCP_NODELAY.
    fn tcp_socket(&mut self, to: SocketAddr, from: Option<IpAddr>) -> std::io::Result<RawFd> {
        plain_tcp_socket(to, from)
    }

    /// A socket an `Accept` gave: TCP_NODELAY (replies are small and must not wait).
    fn accepted(&mut self, fd: RawFd) {
        crate::sys::set_nodelay(fd);
    }

    /// Closes a socket no operation uses any more.
    fn close(&mut self, fd: RawFd) {
        crate::sys::close(fd);
    }

    /// The local address of a connected socket (once per connection: a system call).
    fn local_ip(&self, fd: RawFd) -> Option<IpAddr> {
        crate::sys::sock_local_ip(fd)
    }
}

/// `Backend::tcp_socket` as every backend starts it.
fn plain_tcp_socket(to: SocketAddr, from: Option<IpAddr>) -> std::io::Result<RawFd> {
    let fd = crate::sys::tcp_socket(to)?;
    if let Some(ip) = from {
        if let Err(e) = crate::sys::bind(fd, SocketAddr::new(ip, 0)) {
            crate::sys::close(fd);
            return Err(e);
        }
    }
    Ok(fd)
}

/// Which backend the shards run: the configuration's `io-backend`, with `auto` settled by
/// trying io_uring once (its refusal is said once, with the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    IoUring,
    Epoll,
}

impl Chosen {
    pub fn name(self) -> &'static str {
        match self {
            Chosen::IoUring => "io_uring",
            Chosen::Epoll => "epoll",
        }
    }
}

/// Settles `io-backend`: `Err` only when io_uring was asked for by name and is refused.
pub fn choose(wanted: sluice_config::IoBackend) -> Result<Chosen, std::io::Error> {
    use sluice_config::IoBackend;
    match wanted {
        IoBackend::Epoll => Ok(Chosen::Epoll),
        IoBackend::IoUring => uring::probe().map(|()| Chosen::IoUring),
        IoBackend::Auto => match uring::probe() {
            Ok(()) => Ok(Chosen::IoUring),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "io_uring is refused here (a container's seccomp profile, or kernel.io_uring_disabled); \
                     the shards use the epoll backend. For the faster io_uring backend allow io_uring_setup, \
                     io_uring_enter and io_uring_register (see the README's container section)"
                );
                Ok(Chosen::Epoll)
            }
        },
    }
}

/// The backend `auto` settles on, opened (the benchmark tools' loops: one call per operation
/// through a box costs them nothing measurable).
pub(crate) fn open_auto() -> std::io::Result<Box<dyn Backend>> {
    Ok(match choose(sluice_config::IoBackend::Auto)? {
        Chosen::IoUring => Box::new(uring::Uring::new(uring::Options::default())?),
        Chosen::Epoll => Box::new(epoll::Epoll::new()?),
    })
}

/// The real clocks (both hardware backends).
pub(crate) fn clock() -> Now {
    Now { ns: crate::sys::mono_ns(), unix_ms: crate::sys::now_ms() }
}
