//! The simulation's IO backend and its driver: the product's shards, built as `sluice run`
//! builds them (`Plan::make`: the spool recovered, work handed to its owners), run one turn at
//! a time over a seeded world's network, disk faults and clock. The simulation test
//! (`netio/tests/relay_sim.rs`) plays everything outside the shards: the injecting clients and
//! the receiving servers (over this network's pipes), the control plane (the requests' channel
//! and the `Responder`), and the crashes.
//!
//! - The network: listeners, accepted and dialled connections are numbers of this module's,
//!   never sockets; every receive and send is cut short at random; the test resets
//!   connections, and a crash resets them all.
//! - The disk: spool files are real files in the spool directory (a tmpfs is best), written
//!   as the shard writes them (journal writes through `Sub::Write`, segment records through
//!   their mappings, or for a shard drawn to write directly, `Sub::WriteDurable`, durable as
//!   it completes).
//!   A `Sub::Fdatasync` makes what the file held when it was asked for
//!   durable; writes and syncs fail now and then (`EIO`, a write torn half way). At a crash
//!   (`Relay::crash`) every 512-byte sector that differs from its durable copy is kept or
//!   lost at random, as a power loss does.
//! - The clock: simulated milliseconds; a `Sub::Timeout` completes once the test has moved the
//!   clock past it.
//!
//! A world is meant to replay from its seed: one thread runs it, and every choice is the
//! seed's. The one thing outside the seed is the order of the shards' hash maps (std's random
//! hashing); runs of one seed compared so far came out the same.

use crate::backend::{Backend, Sub};
use crate::faults::Faults;
use crate::shard::Shard;
use crate::{ControlRequest, Plan, Responder, Settings, StartError};
use sluice_engine::time::Now;
use sluice_spool::memdisk::Rng;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Simulated descriptors start here, far above any real one (eventfds, spool files).
const FAKE_FD_BASE: RawFd = 1 << 24;
/// The wall clock at the simulation's time zero.
const EPOCH_UNIX_MS: u64 = 1_700_000_000_000;
/// A shard's mailbox: room for every message a small world sends (the daemon's holds 64K,
/// which costs a simulated start more than its run).
const MAILBOX_CAPACITY: usize = 4096;
/// Sectors a power loss keeps or loses one by one.
const SECTOR: usize = 512;

/// A connection between the relay and a peer the test plays.
pub type PeerId = usize;

/// How often things go wrong (one in N).
#[derive(Debug, Clone, Copy)]
pub struct Odds {
    /// A spool write or sync fails.
    pub disk_failure: u64,
    /// Copying a record into its segment fails (as a full disk fails it: the client gets 452).
    pub segment_failure: u64,
    /// A dialled connection is refused.
    pub refused: u64,
    /// At most this many bytes move in one receive or send.
    pub chunk_max: u64,
}

impl Default for Odds {
    fn default() -> Odds {
        Odds { disk_failure: 40, segment_failure: 60, refused: 30, chunk_max: 3000 }
    }
}

/// What the world did to the shards, for the test's proof that each fault happened.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub short_recvs: u64,
    pub short_sends: u64,
    pub failed_writes: u64,
    pub torn_writes: u64,
    pub failed_syncs: u64,
    pub refused: u64,
    pub lost_sectors: u64,
    /// Connections one shard accepted and another served (a traffic class's).
    pub handed_over: u64,
    /// A direct segment's `RWF_DSYNC` writes done whole, and cut short.
    pub durable_writes: u64,
    pub torn_durable_writes: u64,
}

struct Pipe {
    /// What the peer sent that the relay has not received.
    to_relay: VecDeque<u8>,
    /// What the relay sent that the peer has not read.
    to_peer: Vec<u8>,
    /// The listener's address (inbound) or the one dialled (outbound).
    addr: SocketAddr,
    /// The client's address (inbound).
    from: IpAddr,
    inbound: bool,
    accepted: bool,
    /// The shard at the relay's end: the one that accepted or dialled it, then the last one
    /// that received or sent on it (a connection may be handed to another shard).
    shard: Option<u32>,
    peer_closed: bool,
    relay_closed: bool,
    reset: bool,
}

enum Sock {
    Listener(SocketAddr),
    Dialling(SocketAddr),
    Stream(PeerId),
}

struct Pending {
    shard: u32,
    user_data: u64,
    sub: Sub,
    /// A timer's deadline (ms).
    due_ms: u64,
    /// A sync's file: its path, inode and contents when the sync was asked for.
    snapshot: Option<(PathBuf, u64, Vec<u8>)>,
}

struct World {
    rng: Rng,
    odds: Odds,
    now_ms: u64,
    socks: HashMap<RawFd, Sock>,
    next_fd: RawFd,
    pipes: Vec<Pipe>,
    dialled: VecDeque<PeerId>,
    pending: Vec<Pending>,
    ready: Vec<Vec<(u64, i32)>>,
    /// What survives a power loss: each spool file's durable contents, by path (with its
    /// inode: a name used again is another file).
    durable: HashMap<PathBuf, (u64, Vec<u8>)>,
    spool: PathBuf,
    stats: NetStats,
}

/// The simulated world the shards' backends share (one thread: the test's).
#[derive(Clone)]
pub struct Net(Rc<RefCell<World>>);

impl Net {
    /// A world from `seed` whose spool directory is `spool` (what it holds now is durable).
    pub fn new(seed: u64, spool: &Path, odds: Odds) -> Net {
        let mut world = World {
            rng: Rng::new(seed ^ 0x5EED),
            odds,
            now_ms: 1_000,
            socks: HashMap::new(),
            next_fd: FAKE_FD_BASE,
            pipes: Vec::new(),
            dialled: VecDeque::new(),
            pending: Vec::new(),
            ready: Vec::new(),
            durable: HashMap::new(),
            spool: spool.to_path_buf(),
            stats: NetStats::default(),
        };
        world.durable = spool_files(spool).into_iter().filter_map(|p| read_file(&p).map(|f| (p, f))).collect();
        Net(Rc::new(RefCell::new(world)))
    }

    pub fn now_ms(&self) -> u64 {
        self.0.borrow().now_ms
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.borrow_mut().now_ms += ms;
    }

    /// The earliest timer any shard waits for.
    pub fn next_due_ms(&self) -> Option<u64> {
        let w = self.0.borrow();
        w.pending.iter().filter(|p| matches!(p.sub, Sub::Timeout { .. })).map(|p| p.due_ms).min()
    }

    pub fn stats(&self) -> NetStats {
        self.0.borrow().stats
    }

    // ---- The peers' side ------------------------------------------------------------------

    /// A client at `from` connects to the relay's listener at `addr` (a shard accepts it
    /// when it has an accept armed there).
    pub fn connect(&self, from: IpAddr, addr: SocketAddr) -> PeerId {
        let mut w = self.0.borrow_mut();
        w.pipes.push(Pipe { from, ..Pipe::new(addr, true) });
        w.pipes.len() - 1
    }

    /// A connection the relay dialled, and the address it dialled.
    pub fn dialled(&self) -> Option<(PeerId, SocketAddr)> {
        let mut w = self.0.borrow_mut();
        let id = w.dialled.pop_front()?;
        Some((id, w.pipes[id].addr))
    }

    pub fn send(&self, peer: PeerId, bytes: &[u8]) {
        let mut w = self.0.borrow_mut();
        let p = &mut w.pipes[peer];
        if !p.reset && !p.peer_closed {
            p.to_relay.extend(bytes);
        }
    }

    /// What the relay sent the peer since the last call.
    pub fn recv(&self, peer: PeerId) -> Vec<u8> {
        std::mem::take(&mut self.0.borrow_mut().pipes[peer].to_peer)
    }

    /// The peer closes its side: the relay reads the end of the stream.
    pub fn close(&self, peer: PeerId) {
        self.0.borrow_mut().pipes[peer].peer_closed = true;
    }

    /// The connection is reset: bytes in flight both ways are lost.
    pub fn reset(&self, peer: PeerId) {
        let mut w = self.0.borrow_mut();
        let p = &mut w.pipes[peer];
        p.reset = true;
        p.to_relay.clear();
        p.to_peer.clear();
    }

    /// The relay closed the connection (or it was reset) and the peer has read everything.
    pub fn ended(&self, peer: PeerId) -> bool {
        let w = self.0.borrow();
        let p = &w.pipes[peer];
        (p.relay_closed || p.reset) && p.to_peer.is_empty()
    }

    /// The shard at the relay's end of a connection (once accepted).
    pub fn shard_of(&self, peer: PeerId) -> Option<u32> {
        self.0.borrow().pipes[peer].shard
    }

    // ---- Completing operations ------------------------------------------------------------

    /// Completes what can complete (each possible completion happens with even odds, so
    /// operations finish in any order); the number completed.
    pub fn run_io(&self) -> usize {
        let mut w = self.0.borrow_mut();
        let pending = std::mem::take(&mut w.pending);
        let mut done = 0;
        let mut kept = Vec::with_capacity(pending.len());
        let mut cancels = Vec::new();
        for p in pending {
            if let Sub::Cancel { user_data, .. } = p.sub {
                cancels.push((p.shard, p.user_data, user_data));
                continue;
            }
            match w.try_complete(&p) {
                Some(result) => {
                    done += 1;
                    w.ready[p.shard as usize].push((p.user_data, result));
                }
                None => kept.push(p),
            }
        }
        for (shard, cancel_ud, target) in cancels {
            let found = kept.iter().position(|p| p.shard == shard && p.user_data == target);
            let result = match found {
                Some(i) => {
                    let p = kept.remove(i);
                    w.ready[shard as usize].push((p.user_data, -libc::ECANCELED));
                    0
                }
                None => -libc::ENOENT,
            };
            w.ready[shard as usize].push((cancel_ud, result));
            done += 1;
        }
        kept.append(&mut w.pending);
        w.pending = kept;
        done
    }

    fn listener(&self, addr: SocketAddr) -> RawFd {
        self.0.borrow_mut().new_fd(Sock::Listener(addr))
    }

    /// A power loss: every operation in flight is gone, every connection reset, and every
    /// unsynced sector of the spool kept or lost at random.
    fn power_loss(&self) {
        let mut w = self.0.borrow_mut();
        w.pending.clear();
        w.ready.clear();
        w.socks.clear();
        w.dialled.clear();
        for p in &mut w.pipes {
            p.reset = true;
            p.to_relay.clear();
        }
        let spool = w.spool.clone();
        let synced = std::mem::take(&mut w.durable);
        let mut durable = HashMap::new();
        for path in spool_files(&spool) {
            let Some((ino, mut now)) = read_file(&path) else { continue };
            // A file never synced since it was made: what survives is what was there before
            // anything was written (zeros: spool files are preallocated).
            let zeros = vec![0; now.len()];
            let before = match synced.get(&path) {
                Some((i, bytes)) if *i == ino => bytes,
                _ => &zeros,
            };
            let mut lost = 0;
            for (at, sector) in now.chunks_mut(SECTOR).enumerate() {
                let from = at * SECTOR;
                let old = before.get(from..from + sector.len()).unwrap_or(&zeros[from..from + sector.len()]);
                if sector != old && w.rng.below(2) == 0 {
                    sector.copy_from_slice(old);
                    lost += 1;
                }
            }
            w.stats.lost_sectors += lost;
            if lost > 0 {
                std::fs::write(&path, &now).expect("the simulation's spool is writable");
            }
            durable.insert(path, (ino, now));
        }
        w.durable = durable;
    }
}

impl Pipe {
    fn new(addr: SocketAddr, inbound: bool) -> Pipe {
        Pipe {
            to_relay: VecDeque::new(),
            to_peer: Vec::new(),
            addr,
            from: IpAddr::from([127, 0, 0, 1]),
            inbound,
            accepted: false,
            shard: None,
            peer_closed: false,
            relay_closed: false,
            reset: false,
        }
    }
}

impl World {
    fn new_fd(&mut self, sock: Sock) -> RawFd {
        let fd = self.next_fd;
        self.next_fd += 1;
        self.socks.insert(fd, sock);
        fd
    }

    /// How many bytes of `len` move: all, or (often) fewer.
    fn chunk(&mut self, len: usize) -> usize {
        let n = (1 + self.rng.below(self.odds.chunk_max) as usize).min(len);
        n.max(1).min(len)
    }

    fn fails(&mut self) -> bool {
        self.rng.below(self.odds.disk_failure) == 0
    }

    fn stream(&self, fd: RawFd) -> Option<PeerId> {
        match self.socks.get(&fd) {
            Some(Sock::Stream(id)) => Some(*id),
            _ => None,
        }
    }

    /// The result of `p` if it completes now.
    fn try_complete(&mut self, p: &Pending) -> Option<i32> {
        match p.sub {
            Sub::Timeout { .. } => (self.now_ms >= p.due_ms).then_some(-libc::ETIME),
            Sub::Accept { fd, addr, len } => {
                let Some(Sock::Listener(at)) = self.socks.get(&fd) else { return Some(-libc::EBADF) };
                let at = *at;
                let id = self.pipes.iter().position(|c| c.inbound && !c.accepted && c.addr == at && !c.reset)?;
                if self.rng.below(2) == 0 {
                    return None; // another shard's accept may take it
                }
                self.pipes[id].accepted = true;
                self.pipes[id].shard = Some(p.shard);
                let peer = SocketAddr::new(self.pipes[id].from, 10_000 + (id % 50_000) as u16);
                let (storage, n) = crate::sys::sockaddr(peer);
                // SAFETY: the shard keeps the address buffers alive until the accept completes.
                unsafe {
                    *addr = storage;
                    *len = n;
                }
                Some(self.new_fd(Sock::Stream(id)))
            }
            Sub::Connect { fd, .. } => {
                let Some(Sock::Dialling(to)) = self.socks.get(&fd) else { return Some(-libc::EBADF) };
                let to = *to;
                if self.rng.below(self.odds.refused) == 0 {
                    self.stats.refused += 1;
                    return Some(-libc::ECONNREFUSED);
                }
                self.pipes.push(Pipe::new(to, false));
                let id = self.pipes.len() - 1;
                self.pipes[id].shard = Some(p.shard);
                self.dialled.push_back(id);
                self.socks.insert(fd, Sock::Stream(id));
                Some(0)
            }
            Sub::Recv { fd, buf, len } => {
                let Some(id) = self.stream(fd) else { return Some(-libc::EBADF) };
                self.serves(id, p.shard);
                let pipe = &self.pipes[id];
                if pipe.reset {
                    return Some(-libc::ECONNRESET);
                }
                if pipe.to_relay.is_empty() {
                    return pipe.peer_closed.then_some(0);
                }
                let avail = pipe.to_relay.len().min(len as usize);
                let n = self.chunk(avail);
                self.stats.short_recvs += u64::from(n < avail);
                let pipe = &mut self.pipes[id];
                for (i, b) in pipe.to_relay.drain(..n).enumerate() {
                    // SAFETY: the shard keeps `buf` (its connection's buffer, `len` bytes) alive
                    // until the receive completes; `i < n <= len`.
                    unsafe { *buf.add(i) = b };
                }
                Some(n as i32)
            }
            Sub::Send { fd, buf, len } => {
                if let Some(id) = self.stream(fd) {
                    self.serves(id, p.shard);
                }
                // SAFETY: the shard keeps `buf` alive and unchanged until the send completes.
                let bytes = unsafe { std::slice::from_raw_parts(buf, len as usize) }.to_vec();
                Some(self.send(fd, &[&bytes]))
            }
            Sub::SendMsg { fd, msg } => {
                // SAFETY: the shard keeps the msghdr and the buffers it points to alive until
                // the send completes.
                let parts: Vec<Vec<u8>> = unsafe {
                    let m = &*msg;
                    (0..m.msg_iovlen)
                        .map(|i| {
                            let iov = &*m.msg_iov.add(i);
                            std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len).to_vec()
                        })
                        .collect()
                };
                let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                Some(self.send(fd, &parts))
            }
            Sub::Read { fd, buf, len } => {
                // A real eventfd (a shard's mailbox): complete once it has been written.
                let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: a poll of one descriptor, not waiting.
                if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
                    return None;
                }
                // SAFETY: the shard keeps `buf` alive until the read completes.
                let n = unsafe { libc::read(fd, buf.cast(), len as usize) };
                Some(if n < 0 { -errno() } else { n as i32 })
            }
            Sub::Write { fd, buf, len, offset } | Sub::WriteDurable { fd, buf, len, offset } => {
                if self.rng.below(2) == 0 {
                    return None; // the disk is slow now and then
                }
                // SAFETY: the shard keeps the batch alive until the write completes.
                let bytes = unsafe { std::slice::from_raw_parts(buf, len as usize) };
                // A file opened with O_DIRECT (a direct segment) is written, and torn, in whole
                // 512-byte sectors, as a disk does.
                // SAFETY: a plain fcntl on a descriptor the shard holds open.
                let sector = match unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_DIRECT {
                    0 => 1,
                    _ => 512,
                };
                let durable = matches!(p.sub, Sub::WriteDurable { .. });
                let (n, result) = if self.fails() {
                    self.stats.failed_writes += 1;
                    (bytes.len() / 2 / sector * sector, -libc::EIO)
                } else if self.rng.below(8) == 0 && bytes.len() > sector {
                    self.stats.torn_writes += 1;
                    self.stats.torn_durable_writes += u64::from(durable);
                    let n = (1 + self.rng.below((bytes.len() / sector) as u64 - 1) as usize) * sector;
                    (n, n as i32)
                } else {
                    self.stats.durable_writes += u64::from(durable);
                    (bytes.len(), bytes.len() as i32)
                };
                // SAFETY: a positioned write to a spool file the shard holds open.
                let wrote = unsafe { libc::pwrite(fd, bytes.as_ptr().cast(), n, offset as libc::off_t) };
                if wrote >= 0 && result >= 0 && durable {
                    // Durable as it completes: what the file holds now survives a crash.
                    if let Some((path, ino, bytes)) = snapshot(fd) {
                        self.durable.insert(path, (ino, bytes));
                    }
                }
                Some(if wrote < 0 { -errno() } else { result })
            }
            Sub::Fdatasync { .. } => {
                if self.rng.below(2) == 0 {
                    return None;
                }
                if self.fails() {
                    self.stats.failed_syncs += 1;
                    return Some(-libc::EIO);
                }
                if let Some((path, ino, bytes)) = &p.snapshot {
                    self.durable.insert(path.clone(), (*ino, bytes.clone()));
                }
                Some(0)
            }
            Sub::Cancel { .. } => unreachable!("cancels are matched with their targets in run_io"),
        }
    }

    /// `shard` works on connection `id` (another shard's until now: it was handed over).
    fn serves(&mut self, id: PeerId, shard: u32) {
        let was = self.pipes[id].shard.replace(shard);
        self.stats.handed_over += u64::from(was.is_some_and(|w| w != shard));
    }

    fn send(&mut self, fd: RawFd, parts: &[&[u8]]) -> i32 {
        let Some(id) = self.stream(fd) else { return -libc::EBADF };
        if self.pipes[id].reset || self.pipes[id].peer_closed {
            return -libc::EPIPE;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let n = self.chunk(total);
        self.stats.short_sends += u64::from(n < total);
        let mut left = n;
        for part in parts {
            let take = left.min(part.len());
            self.pipes[id].to_peer.extend_from_slice(&part[..take]);
            left -= take;
        }
        n as i32
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Every spool file (segments and journals) under `spool`.
fn spool_files(spool: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(dirs) = std::fs::read_dir(spool) else { return files };
    for dir in dirs.flatten() {
        let Ok(entries) = std::fs::read_dir(dir.path()) else { continue };
        for f in entries.flatten() {
            let path = f.path();
            if matches!(path.extension().and_then(|e| e.to_str()), Some("seg" | "jnl")) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The path, inode and bytes of the spool file open as `fd`.
fn snapshot(fd: RawFd) -> Option<(PathBuf, u64, Vec<u8>)> {
    let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("a spool file's descriptor");
    read_file(&path).map(|(ino, bytes)| (path, ino, bytes))
}

fn read_file(path: &Path) -> Option<(u64, Vec<u8>)> {
    let ino = std::fs::metadata(path).ok()?.ino();
    Some((ino, std::fs::read(path).ok()?))
}

/// One shard's way to the simulated world.
pub(crate) struct SimIo {
    net: Net,
    shard: u32,
    /// Whether this shard writes its segments directly (`Backend::direct_spool`): drawn from
    /// the seed at each start, so that a world runs both ways.
    direct: bool,
}

impl Backend for SimIo {
    unsafe fn submit(&mut self, sub: Sub, user_data: u64) {
        let mut w = self.net.0.borrow_mut();
        let due_ms = match sub {
            Sub::Timeout { ms } => w.now_ms + ms,
            _ => 0,
        };
        let snapshot = match sub {
            Sub::Fdatasync { fd } => snapshot(fd),
            _ => None,
        };
        w.pending.push(Pending { shard: self.shard, user_data, sub, due_ms, snapshot });
    }

    fn wait(&mut self, out: &mut Vec<(u64, i32)>) {
        let mut w = self.net.0.borrow_mut();
        out.append(&mut w.ready[self.shard as usize]);
    }

    fn direct_spool(&self) -> bool {
        self.direct
    }

    fn now(&self) -> Now {
        let ms = self.net.now_ms();
        Now { ns: ms * 1_000_000, unix_ms: EPOCH_UNIX_MS + ms }
    }

    fn tcp_socket(&mut self, to: SocketAddr, _from: Option<IpAddr>) -> std::io::Result<RawFd> {
        Ok(self.net.0.borrow_mut().new_fd(Sock::Dialling(to)))
    }

    fn accepted(&mut self, _fd: RawFd) {}

    fn close(&mut self, fd: RawFd) {
        let mut w = self.net.0.borrow_mut();
        if let Some(Sock::Stream(id)) = w.socks.remove(&fd) {
            w.pipes[id].relay_closed = true;
        }
    }

    fn local_ip(&self, _fd: RawFd) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, 1]))
    }
}

/// The product's shards on a simulated world: built as `sluice run` builds them, stepped by
/// the test.
pub struct Relay {
    net: Net,
    shards: Vec<Shard<SimIo>>,
    /// Messages the spool held at start, still owed to someone.
    pub recovered_messages: usize,
}

impl Relay {
    /// Recovers the spool (the configuration's `spool`) and starts `shards` shards on `net`;
    /// the requests they make of the control plane arrive on `control`'s other end, and the
    /// `Responder` answers them.
    pub fn start(
        settings: Settings,
        control: crossbeam_channel::Sender<ControlRequest>,
        net: &Net,
        shards: u32,
    ) -> Result<(Relay, Responder), StartError> {
        net.0.borrow_mut().ready = (0..shards).map(|_| Vec::new()).collect();
        let plan = Plan::make(settings, control, shards, MAILBOX_CAPACITY, |addr| Ok(net.listener(addr)))?;
        let responder = plan.responder();
        let recovered_messages = plan.recovered_messages;
        let mut built = Vec::new();
        for mut start in plan.starts {
            let (odds, seed, direct) = {
                let mut w = net.0.borrow_mut();
                (w.odds, w.rng.next_u64(), w.rng.below(2) == 0)
            };
            start.faults = Faults::from_spec(Some(&format!("seg-write={}", odds.segment_failure)), seed);
            let io = SimIo { net: net.clone(), shard: start.id, direct };
            let mut shard = Shard::new(io, start).map_err(StartError::Thread)?;
            shard.arm();
            built.push(shard);
        }
        Ok((Relay { net: net.clone(), shards: built, recovered_messages }, responder))
    }

    /// Runs one turn of every shard with completions waiting; how many ran.
    pub fn turn(&mut self) -> usize {
        let mut ran = 0;
        for shard in &mut self.shards {
            let waiting = !self.net.0.borrow().ready[shard.id() as usize].is_empty();
            if waiting {
                shard.turn();
                ran += 1;
            }
        }
        ran
    }

    /// The power goes: the shards' memory is gone (their operations with it), every
    /// connection is reset, and the spool keeps what a power loss keeps.
    pub fn crash(self) {
        let Relay { net, shards, .. } = self;
        // Nothing runs the operations any more: the buffers they point to may go.
        drop(shards);
        net.power_loss();
    }
}
