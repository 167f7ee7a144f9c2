//! Clients that inject messages over SMTP while a test crashes or restarts the relay: each
//! thread keeps a session open, sends numbered messages, notes which got 250, and connects
//! again after any failure, until stopped or bounded.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Message `id`: its recipients and its text (headers and body, CRLF, without the final dot).
pub type Compose = fn(u64) -> (Vec<String>, String);

/// How the injectors run.
pub struct Plan {
    pub threads: usize,
    /// At most this many messages in all; at most this long.
    pub messages_max: u64,
    pub time_max: Duration,
    /// A pause after each message (zero: as fast as the relay answers).
    pub pace: Duration,
    pub mail_from: &'static str,
    pub compose: Compose,
}

pub struct Injectors {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashSet<u64>>>,
    threads: Vec<JoinHandle<()>>,
}

/// One SMTP reply (the last line of a multi-line one).
pub fn read_reply(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.len() < 4 || line.as_bytes()[3] == b' ' {
            return Ok(line);
        }
    }
}

impl Injectors {
    pub fn start(addr: SocketAddr, plan: Plan) -> Injectors {
        let plan = Arc::new(plan);
        let next = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = (0..plan.threads)
            .map(|_| {
                let (plan, next, acked, stop) = (plan.clone(), next.clone(), acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) && started.elapsed() < plan.time_max {
                        if session(addr, &plan, &next, &acked, &stop).is_err() {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        Injectors { stop, acked, threads }
    }

    /// Whether they stopped by themselves (every message sent, or out of time).
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Stops them; the ids of the messages that got 250.
    pub fn finish(self) -> HashSet<u64> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// One session: messages until an error or the end.
fn session(
    addr: SocketAddr,
    plan: &Plan,
    next: &AtomicU64,
    acked: &Mutex<HashSet<u64>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    read_reply(&mut r)?;
    w.write_all(b"EHLO inject.test\r\n")?;
    read_reply(&mut r)?;
    while !stop.load(Ordering::SeqCst) {
        let id = next.fetch_add(1, Ordering::SeqCst);
        if id >= plan.messages_max {
            stop.store(true, Ordering::SeqCst);
            break;
        }
        let (rcpts, text) = (plan.compose)(id);
        let mut envelope = format!("MAIL FROM:<{}>\r\n", plan.mail_from);
        for rcpt in &rcpts {
            envelope.push_str(&format!("RCPT TO:<{rcpt}>\r\n"));
        }
        envelope.push_str("DATA\r\n");
        w.write_all(envelope.as_bytes())?;
        for _ in 0..rcpts.len() + 2 {
            let line = read_reply(&mut r)?;
            if !line.starts_with('2') && !line.starts_with("354") {
                return Err(std::io::Error::other(line));
            }
        }
        w.write_all(format!("{text}.\r\n").as_bytes())?;
        if read_reply(&mut r)?.starts_with("250") {
            acked.lock().unwrap().insert(id);
        }
        std::thread::sleep(plan.pace);
    }
    let _ = w.write_all(b"QUIT\r\n");
    Ok(())
}
