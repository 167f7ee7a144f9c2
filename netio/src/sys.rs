//! Small system helpers shared by the shards and the benchmark tools: socket addresses,
//! sockets and the clocks.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

pub(crate) fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

pub(crate) fn ip_of(storage: &libc::sockaddr_storage) -> IpAddr {
    // SAFETY: the family field says which struct the kernel wrote.
    unsafe {
        match storage.ss_family as i32 {
            libc::AF_INET => {
                let sin = &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes())
            }
            libc::AF_INET6 => {
                let sin6 = &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                let v6 = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
            }
            _ => IpAddr::from([0, 0, 0, 0]),
        }
    }
}

pub(crate) fn sock_local_ip(fd: RawFd) -> Option<IpAddr> {
    sock_ip(fd, libc::getsockname)
}

/// The address of the other end of a connected socket.
pub(crate) fn peer_ip(fd: RawFd) -> Option<std::net::IpAddr> {
    sock_ip(fd, libc::getpeername)
}

type SockNameFn = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn sock_ip(fd: RawFd, call: SockNameFn) -> Option<std::net::IpAddr> {
    // SAFETY: getsockname/getpeername into a zeroed storage of the right size.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if call(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len) != 0 {
            return None;
        }
        Some(ip_of(&storage))
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Monotonic nanoseconds since the first call: the clock of every rate limiter, the same
/// for all shards.
pub(crate) fn mono_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}

pub(crate) fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a descriptor the caller owns.
    unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&one as *const libc::c_int).cast(), 4) };
}

/// A TCP socket for `addr`'s family (blocking: io_uring drives it).
pub(crate) fn tcp_socket(addr: SocketAddr) -> std::io::Result<RawFd> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket syscall.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    set_nodelay(fd);
    Ok(fd)
}

/// Binds a socket to `addr` (SO_REUSEADDR, no SO_REUSEPORT) and closes it, never listening:
/// EADDRINUSE when anything listens there already.
pub(crate) fn bind_only(addr: SocketAddr) -> std::io::Result<()> {
    let fd = tcp_socket(addr)?;
    // SAFETY: fd is fresh and ours (closed when `_owned` drops); plain socket syscalls.
    let _owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_reuse(fd, false);
    bind(fd, addr)
}

/// Binds a socket to `addr` (port 0: any free one).
pub(crate) fn bind(fd: RawFd, addr: SocketAddr) -> std::io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: bind on a descriptor the caller owns, with a valid address.
    if unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// SO_REUSEADDR, and SO_REUSEPORT with `port`.
fn set_reuse(fd: RawFd, port: bool) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a descriptor the caller owns.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), 4);
        if port {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, (&one as *const libc::c_int).cast(), 4);
        }
    }
}

/// A listening socket; `reuse_port` lets every shard bind the same address.
pub(crate) fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<OwnedFd> {
    let fd = tcp_socket(addr)?;
    // SAFETY: fd is fresh and ours.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_reuse(fd, reuse_port);
    bind(fd, addr)?;
    // SAFETY: listen on our bound descriptor.
    if unsafe { libc::listen(fd, 4096) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(owned)
}

/// The address a listening socket got (for port 0).
pub(crate) fn bound_addr(fd: RawFd) -> SocketAddr {
    // SAFETY: getsockname into zeroed storage of the right size.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        libc::getsockname(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len);
        let port = match storage.ss_family as i32 {
            libc::AF_INET => {
                u16::from_be((*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()).sin_port)
            }
            _ => u16::from_be((*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()).sin6_port),
        };
        SocketAddr::new(ip_of(&storage), port)
    }
}

pub(crate) fn close(fd: RawFd) {
    // SAFETY: the caller owns fd and no operation uses it any more.
    unsafe { libc::close(fd) };
}

/// Lowers the calling thread's scheduling priority to niceness `nice` (raising it needs no
/// privilege; a failure leaves it as it was).
pub(crate) fn lower_priority(nice: i32) {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

/// How many files the process may have open (`RLIMIT_NOFILE`'s soft limit; 1024 if unread).
pub(crate) fn open_files_max() -> u32 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } {
        0 => u32::try_from(lim.rlim_cur).unwrap_or(u32::MAX),
        _ => 1024,
    }
}
