//! Shared harness for integration tests: starts the real `sluice` binary and real peers
//! (Postfix's smtp-sink, dnsmasq ...) on loopback, and reads what a user would read:
//! accounting rows, dumped messages, spool files, SMTP replies.
#![allow(dead_code)]

pub mod inject;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// The shard settings every relay scenario runs under: one shard, and the default (one per
/// CPU).
pub const SHARD_MODES: [Option<u32>; 2] = [Some(1), None];

/// A seccomp filter (classic BPF over the system call number), leaked: it outlives every child
/// that starts under it.
pub type Seccomp = &'static [libc::sock_filter];

const BPF_LD_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS: seccomp_data.nr at offset 0
const BPF_JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET: u16 = 0x06; // BPF_RET | BPF_K
const SECCOMP_ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
const SECCOMP_EPERM: u32 = 0x0005_0000 | 1; // SECCOMP_RET_ERRNO | EPERM

/// A filter answering EPERM to the calls in `listed` and allowing the rest (`refuse`), or
/// allowing the calls listed and answering EPERM to the rest.
pub fn seccomp_filter(listed: &[i64], refuse: bool) -> Seccomp {
    assert!(listed.len() < 250, "jumps fit in a byte");
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let n = listed.len();
    let mut prog = vec![f(BPF_LD_NR, 0, 0, 0)];
    // Each match jumps to the last instruction; the one before it is the default.
    for (i, nr) in listed.iter().enumerate() {
        prog.push(f(BPF_JEQ, (n - i) as u8, 0, *nr as u32));
    }
    let (matched, other) = if refuse { (SECCOMP_EPERM, SECCOMP_ALLOW) } else { (SECCOMP_ALLOW, SECCOMP_EPERM) };
    prog.push(f(BPF_RET, 0, 0, other));
    prog.push(f(BPF_RET, 0, 0, matched));
    Vec::leak(prog)
}

/// What Docker's default profile, Kubernetes' `RuntimeDefault` and gVisor do to io_uring:
/// `io_uring_setup`, `io_uring_enter` and `io_uring_register` answer EPERM.
pub fn io_uring_refused() -> Seccomp {
    static FILTER: std::sync::OnceLock<Seccomp> = std::sync::OnceLock::new();
    FILTER.get_or_init(|| {
        seccomp_filter(&[libc::SYS_io_uring_setup, libc::SYS_io_uring_enter, libc::SYS_io_uring_register], true)
    })
}

/// Makes `cmd` start under `filter` (after `PR_SET_NO_NEW_PRIVS`, as container runtimes do).
pub fn confine(cmd: &mut Command, filter: Seccomp) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    let prog = Box::leak(Box::new(prog)) as *const libc::sock_fprog as usize;
    // SAFETY: only prctl between fork and exec (async-signal-safe); the program is leaked, so
    // it outlives the child's start.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// `cmd` where io_uring is refused (`io_uring_refused`).
pub fn deny_io_uring(cmd: &mut Command) -> &mut Command {
    confine(cmd, io_uring_refused())
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "sluice-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("SLUICE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free TCP port on `ip`, never the same twice in one test process (tests in a file run
/// in parallel, and a port handed out is not bound until its server starts).
pub fn free_port(ip: &str) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(found, "`{tool}` is not installed: run scripts/install-test-deps.sh (the README's test command does)");
}

/// Polls `f` every 50 ms until it returns Some, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn wait_port(addr: SocketAddr, timeout: Duration) {
    wait_for(&format!("{addr} to accept connections"), timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok().map(|_| ())
    });
}

/// A running sluice.
pub struct Relay {
    pub dir: TempDir,
    pub port: u16,
    pub config: PathBuf,
    /// Extra environment for every (re)start, e.g. `SLUICE_FAULTS`.
    pub env: Vec<(String, String)>,
    /// Started under a seccomp filter (`confine`), as in a container.
    pub seccomp: Option<Seccomp>,
    child: Option<Child>,
}

impl Relay {
    /// Writes a config (listener, spool, accounting file, `shards` when given, then `body`)
    /// and starts sluice with it.
    pub fn start(body: &str, shards: Option<u32>) -> Relay {
        Relay::start_with_env(body, shards, &[])
    }

    /// As `start`, with extra environment variables for the daemon.
    pub fn start_with_env(body: &str, shards: Option<u32>, env: &[(&str, &str)]) -> Relay {
        let mut relay = Relay::prepare(body, shards, env);
        relay.spawn();
        relay
    }

    /// As `start_with_env`, not started yet (`spawn` starts it). With `SLUICE_TEST_IO_BACKEND`
    /// set (`scripts/test` runs the relay tests again with `epoll`), the config names that
    /// `io-backend` unless `body` names one.
    pub fn prepare(body: &str, shards: Option<u32>, env: &[(&str, &str)]) -> Relay {
        let dir = TempDir::new("relay");
        let port = free_port("127.0.0.1");
        let mut shards_line = shards.map(|n| format!("shards {n}\n")).unwrap_or_default();
        if let Some(backend) = std::env::var("SLUICE_TEST_IO_BACKEND").ok().filter(|_| !body.contains("io-backend")) {
            shards_line.push_str(&format!("io-backend {backend}\n"));
        }
        let config = format!(
            "host-name relay.test\nsmtp-listener 127.0.0.1:{port}\nspool {spool}\n{shards_line}<acct-file {acct}>\n  records d,b,t,tq,r,f,rb\n  record-fields f *,jobId\n  record-fields rb *,jobId\n</acct-file>\n{body}\n",
            spool = dir.path().join("spool").display(),
            acct = dir.path().join("acct.csv").display(),
        );
        let path = dir.path().join("sluice.conf");
        std::fs::write(&path, config).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Relay { dir, port, config: path, env, seccomp: None, child: None }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("sluice.log")).unwrap();
        let mut cmd = Command::new(BIN);
        if let Some(filter) = self.seccomp {
            confine(&mut cmd, filter);
        }
        let child = cmd
            .args(["run", "-c"])
            .arg(&self.config)
            .env("SLUICE_LOG", std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info".into()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sluice");
        self.child = Some(child);
        wait_port(self.addr(), Duration::from_secs(20));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default()
    }

    /// The running relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("relay running").id()
    }

    /// Sends a signal (SIGHUP: reload) to the running relay.
    pub fn signal(&self, sig: i32) {
        let c = self.child.as_ref().expect("relay running");
        // SAFETY: signalling our own child.
        unsafe { libc_kill(c.id() as i32, sig) };
    }

    /// SIGKILL: a crash at whatever instant this is.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Waits for the relay to exit by itself: its status, or None if it still runs after
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let c = self.child.as_mut().expect("relay running");
            if let Some(status) = c.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self, timeout: Duration) -> i32 {
        let mut c = self.child.take().expect("relay running");
        // SAFETY: signalling our own child.
        unsafe { libc_kill(c.id() as i32, 15) };
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if start.elapsed() > timeout {
                c.kill().unwrap();
                panic!("sluice did not exit within {timeout:?} of SIGTERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The accounting files written so far (`acct-YYYY-MM-DD-NNNN.csv`), oldest first.
    pub fn acct_files(&self) -> Vec<PathBuf> {
        acct_files_of(self.dir.path(), "acct")
    }

    /// Accounting rows (of every file) as maps from column name to value.
    pub fn acct_rows(&self) -> Vec<HashMap<String, String>> {
        self.acct_files().iter().flat_map(|f| parse_csv_rows(&std::fs::read_to_string(f).unwrap_or_default())).collect()
    }

    pub fn rows_of(&self, kind: &str) -> Vec<HashMap<String, String>> {
        self.acct_rows().into_iter().filter(|r| r["type"] == kind).collect()
    }

    /// Waits until at least `n` rows of `kind` exist.
    pub fn wait_rows(&self, kind: &str, n: usize, timeout: Duration) -> Vec<HashMap<String, String>> {
        let mut last = 0;
        let start = Instant::now();
        loop {
            let rows = self.rows_of(kind);
            if rows.len() >= n {
                return rows;
            }
            last = rows.len().max(last);
            if start.elapsed() > timeout {
                panic!("timed out waiting for {n} `{kind}` rows (have {last})\nlog:\n{}", tail(&self.log(), 40));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Segment files left in the spool.
    pub fn segments(&self) -> Vec<PathBuf> {
        segments_in(&self.dir.path().join("spool"))
    }
}

/// Segment files left in a spool directory (any sluice's).
pub fn segments_in(spool: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(spool).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "seg") {
                out.push(f.path());
            }
        }
    }
    out
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// RFC 4180 CSV with a header line → rows keyed by column.
/// The accounting files PowerMTA-style naming gives `<acct-file DIR/STEM.csv>`:
/// `DIR/STEM-YYYY-MM-DD-NNNN.csv`, in name (so time) order.
pub fn acct_files_of(dir: &Path, stem: &str) -> Vec<PathBuf> {
    let prefix = format!("{stem}-");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(&prefix) && name.ends_with(".csv") && name[prefix.len()..].starts_with("20")
        })
        .collect();
    files.sort();
    files
}

pub fn parse_csv_rows(text: &str) -> Vec<HashMap<String, String>> {
    let mut records = Vec::new();
    let mut field = String::new();
    let mut record = Vec::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => record.push(std::mem::take(&mut field)),
            ('\n', false) => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (c, _) => field.push(c),
        }
    }
    let Some((header, rows)) = records.split_first() else { return Vec::new() };
    rows.iter()
        .map(|r| {
            assert_eq!(r.len(), header.len(), "accounting row has {} fields, header {}: {r:?}", r.len(), header.len());
            header.iter().cloned().zip(r.iter().cloned()).collect()
        })
        .collect()
}

/// Postfix's smtp-sink on `ip:port`, optionally dumping every message into `dump_dir`.
pub struct SmtpSink {
    pub addr: SocketAddr,
    child: Child,
    pub dump: Option<TempDir>,
}

impl SmtpSink {
    pub fn start(ip: &str, port: u16, extra: &[&str], dump: bool) -> SmtpSink {
        require("smtp-sink");
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let dump = dump.then(|| {
            let d = TempDir::new("sink");
            // smtp-sink drops to `nobody` before writing dumps.
            Command::new("chmod").arg("777").arg(d.path()).status().unwrap();
            d
        });
        let mut cmd = Command::new("smtp-sink");
        cmd.args(["-u", "nobody", "-m", "1000"]);
        if let Some(d) = &dump {
            cmd.arg("-d").arg(d.path().join("%Y%m%d%H%M%S.").to_str().unwrap());
        }
        cmd.args(extra).arg(addr.to_string()).arg("1024").stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().expect("start smtp-sink");
        wait_port(addr, Duration::from_secs(10));
        SmtpSink { addr, child, dump }
    }

    /// Messages dumped so far (each file: smtp-sink's envelope lines, then the message).
    pub fn messages(&self) -> Vec<String> {
        let d = self.dump.as_ref().expect("sink started with dump");
        let mut out = Vec::new();
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            if let Ok(s) = std::fs::read_to_string(f.path()) {
                out.push(s);
            }
        }
        out
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message from `mail_from` (`""`: the null sender) to `rcpt`, through `Talk`; panics
/// unless every reply is the expected one and the message gets 250.
pub fn talk_send(relay: &Relay, mail_from: &str, rcpt: &str) {
    talk_send_data(relay, mail_from, rcpt, &format!("Subject: to {rcpt}\r\n\r\nhello\r\n.\r\n"));
}

/// As `talk_send`, with the message's data as sent (transparency form, ending ".\r\n").
pub fn talk_send_data(relay: &Relay, mail_from: &str, rcpt: &str, data: &str) {
    let (mut t, greeting) = Talk::connect(relay.addr());
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(t.cmd("EHLO c.example").starts_with("250"));
    assert!(t.cmd(&format!("MAIL FROM:<{mail_from}>")).starts_with("250"));
    assert!(t.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(t.cmd("DATA").starts_with("354"));
    t.send(data.as_bytes());
    let reply = t.reply();
    assert!(reply.starts_with("250"), "{reply}");
    t.cmd("QUIT");
}

/// A minimal SMTP client for asserting replies: sends one line, returns the reply.
pub struct Talk {
    stream: BufReader<TcpStream>,
}

impl Talk {
    pub fn connect(addr: SocketAddr) -> (Talk, String) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut t = Talk { stream: BufReader::new(s) };
        let greeting = t.reply();
        (t, greeting)
    }

    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).unwrap() == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return all;
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).unwrap();
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    pub fn rest(&mut self) -> String {
        let mut s = String::new();
        let _ = self.stream.read_to_string(&mut s);
        s
    }
}

/// Runs a command and returns (status code, stdout+stderr).
pub fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run command");
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// `sluice sink` on a free loopback port, writing its totals as JSON when it exits.
pub struct SluiceSink {
    child: Child,
    pub port: u16,
    json: PathBuf,
    _dir: TempDir,
}

impl SluiceSink {
    /// Starts the sink with extra `args`; it exits by itself after `exit_after` messages.
    pub fn start(args: &[&str], exit_after: u64) -> SluiceSink {
        SluiceSink::start_on(&format!("127.0.0.1:{}", free_port("127.0.0.1")), args, exit_after)
    }

    /// As `start`, listening on `addr` (`IP:PORT`).
    pub fn start_on(addr: &str, args: &[&str], exit_after: u64) -> SluiceSink {
        SluiceSink::spawn(addr, args, "--exit-after", exit_after)
    }

    /// As `start`, exiting once `outcomes` messages arrived or were refused with a scripted 5xx.
    pub fn start_final(args: &[&str], outcomes: u64) -> SluiceSink {
        SluiceSink::spawn(&format!("127.0.0.1:{}", free_port("127.0.0.1")), args, "--exit-after-final", outcomes)
    }

    fn spawn(addr: &str, args: &[&str], exit_flag: &str, count: u64) -> SluiceSink {
        let dir = TempDir::new("sink");
        let json = dir.path().join("sink.json");
        let child = Command::new(BIN)
            .args(["sink", "--listen", addr, exit_flag, &count.to_string(), "--json"])
            .arg(&json)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = addr.parse().unwrap();
        wait_port(addr, Duration::from_secs(10));
        SluiceSink { child, port: addr.port(), json, _dir: dir }
    }

    /// Waits for the sink to exit by itself and returns its totals.
    pub fn finish(mut self) -> String {
        let status = wait_for("the sink to exit", Duration::from_secs(60), || self.child.try_wait().unwrap());
        assert!(status.success());
        std::fs::read_to_string(&self.json).unwrap()
    }

    /// Stops the sink with SIGTERM (it writes its totals on the way out).
    pub fn terminate(self) -> String {
        // SAFETY: signalling our own child.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        self.finish()
    }
}

impl Drop for SluiceSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A number from the tools' flat JSON summaries.
pub fn json_u64(json: &str, key: &str) -> u64 {
    let at = json.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("{key} in {json}")) + key.len() + 3;
    json[at..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap()
}

/// One message through swaks from `s@src.test` to `rcpt`; panics unless swaks succeeds.
pub fn swaks_send(relay: &Relay, rcpt: &str) {
    let (code, out) = swaks(&relay.addr().to_string(), rcpt, &[]);
    assert_eq!(code, 0, "swaks to {rcpt}: {out}");
}

/// Runs swaks against `server` (IP:PORT) from `s@src.test` to `to` (comma-separated), with
/// `extra` options (AUTH, TLS ...); returns its status and transcript.
pub fn swaks(server: &str, to: &str, extra: &[&str]) -> (i32, String) {
    require("swaks");
    run(Command::new("swaks").args(["--server", server, "--from", "s@src.test", "--to", to]).args(extra))
}

/// A tmpfs mounted on `dir` (needs root, as CI has), unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let (code, out) =
            run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir));
        assert_eq!(code, 0, "mounting a tmpfs needs root: {out}");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// dnsmasq answering on 127.0.0.1:`port` from `records` only (no upstream, no hosts file).
/// It is authoritative for `.test` (`--local`): a name it does not know is NXDOMAIN, a type
/// it has no record of is NODATA, as a real zone answers (without, dnsmasq says REFUSED,
/// which a resolver must take as a failure, not as "none").
pub struct Dnsmasq(Child);

impl Dnsmasq {
    pub fn start(port: u16, records: &[String]) -> Dnsmasq {
        require("dnsmasq");
        let child = Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--local=/test/",
            ])
            .arg(format!("--port={port}"))
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        std::thread::sleep(Duration::from_millis(300));
        Dnsmasq(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

extern "C" {
    fn geteuid() -> u32;
}

/// Panics unless the test runs as root (CI does), saying why it must.
pub fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { geteuid() }, 0, "{why}, so it must run as root (CI does)");
}

/// The test venv's Python (dkimpy, PyNaCl, aiosmtpd), installed by scripts/install-test-deps.sh.
pub const VENV_PYTHON: &str = "/opt/sluice-test-venv/bin/python";

/// A script in tests/py.
pub fn py_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py").join(name)
}

/// A byte-exact receiver (tests/py/receiver.py on aiosmtpd): messages land in `dir` as received.
pub struct PyReceiver {
    pub addr: SocketAddr,
    pub dir: TempDir,
    child: Child,
}

impl PyReceiver {
    pub fn start() -> PyReceiver {
        PyReceiver::start_with(&[])
    }

    /// As `start`, with receiver.py's options (`--rcvbuf N`, `--tls CERT KEY`, `--max-rcpt N`,
    /// `--no-8bitmime`).
    pub fn start_with(options: &[&str]) -> PyReceiver {
        PyReceiver::start_at(free_port("127.0.0.1"), options)
    }

    /// On a port chosen before (a receiver that comes up after the relay tried it).
    pub fn start_on(port: u16) -> PyReceiver {
        PyReceiver::start_at(port, &[])
    }

    /// On a port chosen before, with receiver.py's options.
    pub fn start_at(port: u16, options: &[&str]) -> PyReceiver {
        assert!(Path::new(VENV_PYTHON).exists(), "{VENV_PYTHON} missing: run scripts/install-test-deps.sh");
        let dir = TempDir::new("received");
        let child = Command::new(VENV_PYTHON)
            .arg(py_script("receiver.py"))
            .args(["127.0.0.1", &port.to_string()])
            .arg(dir.path())
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start receiver.py");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_port(addr, Duration::from_secs(20));
        PyReceiver { addr, dir, child }
    }

    /// The received message files, in arrival order.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort();
        files
    }
}

impl Drop for PyReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for `cn` and its key, made with openssl in `dir`: the PEM files'
/// paths (cert.pem, key.pem).
pub fn self_signed(dir: &Path, cn: &str) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let subject = format!("/CN={cn}");
    let (code, out) = run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject, "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert_eq!(code, 0, "{out}");
    (cert.display().to_string(), key.display().to_string())
}

/// A DKIM key pair made with openssl: the private key file and the TXT record to publish.
/// `kind`: "rsa-pkcs1", "rsa-pkcs8" or "ed25519".
pub fn dkim_keypair(dir: &Path, name: &str, kind: &str) -> (PathBuf, String) {
    let pem = dir.join(format!("{name}.pem"));
    let make = match kind {
        "rsa-pkcs1" => format!("openssl genrsa -traditional -out {} 2048", pem.display()),
        "rsa-pkcs8" => format!("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {}", pem.display()),
        "ed25519" => format!("openssl genpkey -algorithm ed25519 -out {}", pem.display()),
        _ => panic!("unknown key kind {kind}"),
    };
    let (code, out) = run(Command::new("sh").arg("-c").arg(format!("{make} 2>&1")));
    assert_eq!(code, 0, "{out}");
    // RFC 6376 §3.6.1: p= is the SubjectPublicKeyInfo for RSA; RFC 8463: the raw 32 bytes.
    let (k, raw) = if kind == "ed25519" { ("ed25519", "| tail -c 32") } else { ("rsa", "") };
    let (code, p) = run(Command::new("sh")
        .arg("-c")
        .arg(format!("openssl pkey -in {} -pubout -outform DER {raw} | base64 -w0", pem.display())));
    assert_eq!(code, 0, "{p}");
    (pem, format!("v=DKIM1; k={k}; p={}", p.trim()))
}

/// Sends `message` (bytes as a client writes them; smtplib dot-stuffs) through the relay with
/// Python's smtplib, from `source_ip`; returns `sent`, or `refused ...` with the error.
pub fn smtplib_send(relay: &Relay, source_ip: &str, from: &str, rcpts: &[&str], message: &[u8]) -> String {
    let rcpts: Vec<String> = rcpts.iter().map(|r| format!("'{r}'")).collect();
    let script = format!(
        "import smtplib,sys\nm=sys.stdin.buffer.read()\ntry:\n    with smtplib.SMTP('127.0.0.1', {}, source_address=('{source_ip}', 0)) as s:\n        s.sendmail('{from}', [{}], m)\n    print('sent')\nexcept smtplib.SMTPException as e:\n    print('refused', e)\n",
        relay.port,
        rcpts.join(",")
    );
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().expect("stdin").write_all(message).expect("write the message");
    let out = child.wait_with_output().expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One HTTP request to a management API: (status, body as JSON, or as a string when it is not).
pub fn http(addr: SocketAddr, method: &str, target: &str, key: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the management API");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let key = key.map(|k| format!("X-API-Key: {k}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: sluice\r\n{key}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or_else(|_| serde_json::Value::String(body.to_string())))
}

/// `sluice ARGS -c CONFIG`: (status, stdout+stderr).
pub fn sluice_cli(config: &Path, args: &[&str]) -> (i32, String) {
    run(Command::new(BIN).args(args).arg("-c").arg(config))
}

/// `sluice loadgen` against 127.0.0.1:`target` with `args`, bounded to 60 s; its JSON summary.
pub fn loadgen(target: u16, args: &[&str]) -> String {
    let dir = TempDir::new("lg");
    let json = dir.path().join("lg.json");
    let (code, out) = run(Command::new(BIN)
        // Bounded in time as well as count, so a fault can never hang the suite.
        .args(["loadgen", "--quiet", "--duration", "60s", "--target", &format!("127.0.0.1:{target}"), "--json"])
        .arg(&json)
        .args(args));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("data-ack  p50"), "{out}");
    std::fs::read_to_string(json).unwrap()
}

/// How a `ScriptedMx` behaves: its greeting, EHLO keywords, the reply to each RCPT and the
/// end of data (after a delay).
#[derive(Clone)]
pub struct MxScript {
    pub greeting: String,
    pub ehlo: Vec<String>,
    pub rcpt: fn(&str) -> String,
    pub final_reply: String,
    pub final_delay: Duration,
    pub greeting_delay: Duration,
}

impl Default for MxScript {
    fn default() -> Self {
        MxScript {
            greeting: "220 mx.test ESMTP".into(),
            ehlo: ["PIPELINING", "8BITMIME", "SIZE 100000000"].map(String::from).to_vec(),
            rcpt: |_| "250 2.1.5 ok".into(),
            final_reply: "250 2.0.0 queued".into(),
            final_delay: Duration::ZERO,
            greeting_delay: Duration::ZERO,
        }
    }
}

/// A receiver that follows an `MxScript`, for the replies real receivers give that the
/// others here cannot be made to (5xx greetings, 553 without an enhanced code, a reply to
/// the end of data that never comes). It keeps every command it was sent and counts
/// connections and messages.
pub struct ScriptedMx {
    pub addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Sessions open now, and the most at once.
    open: std::sync::Arc<[std::sync::atomic::AtomicUsize; 2]>,
}

impl ScriptedMx {
    pub fn start(ip: &str, script: MxScript) -> ScriptedMx {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new([std::sync::atomic::AtomicUsize::new(0), std::sync::atomic::AtomicUsize::new(0)]);
        let (l, st, o) = (log.clone(), stop.clone(), open.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (script, log, open) = (script.clone(), l.clone(), o.clone());
                        let now = open[0].fetch_add(1, Ordering::SeqCst) + 1;
                        open[1].fetch_max(now, Ordering::SeqCst);
                        std::thread::spawn(move || {
                            let _ = serve_script(s, &script, &log);
                            open[0].fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ScriptedMx { addr, log, stop, open }
    }

    /// The most sessions it had open at once.
    pub fn max_open(&self) -> usize {
        self.open[1].load(Ordering::SeqCst)
    }

    /// Every line received (commands; `MESSAGE n` for a message of n bytes, then `BODY` and
    /// the message as sent; `CONNECT`).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.log().iter().filter(|l| l.starts_with(prefix)).count()
    }
}

impl Drop for ScriptedMx {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_script(s: TcpStream, script: &MxScript, log: &std::sync::Mutex<Vec<String>>) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    log.lock().unwrap().push("CONNECT".into());
    std::thread::sleep(script.greeting_delay);
    w.write_all(format!("{}\r\n", script.greeting).as_bytes())?;
    if !script.greeting.starts_with('2') {
        // A refusing greeting; RFC 5321 §3.1: wait for QUIT (or the client to leave).
        let mut line = String::new();
        while r.read_line(&mut line)? > 0 {
            log.lock().unwrap().push(line.trim_end().to_string());
            if line.to_ascii_uppercase().starts_with("QUIT") {
                w.write_all(b"221 bye\r\n")?;
                break;
            }
            w.write_all(b"503 5.5.1 no\r\n")?;
            line.clear();
        }
        return Ok(());
    }
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        log.lock().unwrap().push(cmd.clone());
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("MAIL") && !r.buffer().is_empty() {
            log.lock().unwrap().push("PIPELINED".into()); // more commands came with MAIL
        }
        let reply = if upper.starts_with("EHLO") {
            let mut lines = vec!["250-mx.test".to_string()];
            lines.extend(script.ehlo.iter().map(|k| format!("250-{k}")));
            let last = lines.pop().unwrap().replacen("250-", "250 ", 1);
            lines.push(last);
            lines.join("\r\n")
        } else if upper.starts_with("HELO") || upper.starts_with("MAIL") || upper.starts_with("RSET") {
            "250 ok".into()
        } else if upper.starts_with("RCPT") {
            (script.rcpt)(&cmd)
        } else if upper.starts_with("DATA") {
            w.write_all(b"354 go\r\n")?;
            let mut body = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                body.push_str(&line);
            }
            log.lock().unwrap().push(format!("MESSAGE {}", body.len()));
            log.lock().unwrap().push(format!("BODY {body}"));
            std::thread::sleep(script.final_delay);
            script.final_reply.clone()
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            "502 5.5.2 not here".into()
        };
        w.write_all(format!("{reply}\r\n").as_bytes())?;
    }
}

/// A loopback address that takes no connection: a listener with a backlog of 0 whose queue
/// is already full, so a connect there waits until the client gives up. Keep the value.
pub fn unanswering_listener(ip: &str) -> (SocketAddr, Vec<TcpStream>, TcpListener) {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    // SAFETY: listen(2) on the listener's own descriptor.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 0) };
    let addr = listener.local_addr().unwrap();
    let fillers = (0..3).filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()).collect();
    (addr, fillers, listener)
}

/// A private `redis-server` on a free loopback port (no persistence), for the fleet tests.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// A server with more options (`--rename-command CONFIG ""`, as managed Redis services do).
    pub fn start_with(args: &[&str]) -> Redis {
        require("redis-server");
        let mut r =
            Redis { port: free_port("127.0.0.1"), child: None, args: args.iter().map(|a| a.to_string()).collect() };
        r.spawn();
        r
    }

    pub fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_port(SocketAddr::from(([127, 0, 0, 1], self.port)), Duration::from_secs(10));
    }

    /// Runs one command (as any other client of the server would) and gives its reply as
    /// `redis-cli` prints it.
    pub fn cli(&self, args: &[&str]) -> String {
        let out =
            Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().expect("redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Kills it (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
