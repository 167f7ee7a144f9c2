//! The pickup directory (`pickup DIR BAD-DIR`), as IIS and PowerMTA have it: each file
//! dropped in DIR is one message whose envelope is in leading `x-sender:`, `x-receiver:` (one
//! per recipient) and `x-envid:` lines, or a BSMTP file: SMTP commands as a client would send
//! them, mail merge included (`XACK ON`, `XMRG FROM:`, `XDFN`, `RCPT TO:`, `XPRT 1 LAST`, the
//! message, `.`), the form mailer panels write; it is read by the same session machine as
//! SMTP, so it means what it would over a connection. A file is injected as an HTTP submission is (its
//! `<source {pickup}>` settings over 127.0.0.1's) and removed once the message is fsynced in
//! the spool; a file that is no message is moved to BAD-DIR with a `.why` file beside it.
//! A crash between the fsync and the removal injects the file again at the next start: a
//! recipient may get it twice, never not at all. Writers should create files elsewhere (or
//! as dot-files) and rename them in, so that no half-written file is read.

use sluice_config::Pickup;
use sluice_netio::admin::Injection;
use sluice_netio::Responder;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the directory is looked at when it was empty.
const POLL: Duration = Duration::from_millis(500);
/// The largest pickup file taken (the default `max-message-size` is smaller still).
const FILE_BYTES_MAX: u64 = 200 << 20;

/// Watches the pickup directory on a thread of its own until `stop`.
pub fn start(pickup: Pickup, responder: Responder, stop: Arc<AtomicBool>) {
    for dir in [&pickup.dir, &pickup.bad_dir] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create the pickup directory");
        }
    }
    std::thread::Builder::new()
        .name("pickup".into())
        .spawn(move || {
            let mut injected = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let n = round(&pickup, &responder, &mut injected);
                if n == 0 {
                    std::thread::sleep(POLL);
                }
            }
        })
        .expect("spawn the pickup thread");
}

/// One look at the directory: every file in name order; returns how many were handled.
fn round(pickup: &Pickup, responder: &Responder, injected: &mut u64) -> usize {
    let Ok(entries) = std::fs::read_dir(&pickup.dir) else { return 0 };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut handled = 0;
    for path in files {
        match take(pickup, &path, responder, *injected) {
            Ok(()) => {
                *injected += 1;
                handled += 1;
            }
            Err(Bad(why)) => {
                tracing::warn!(file = %path.display(), reason = %why, "pickup file is no message: moved to the bad-mail directory");
                set_aside(&path, &pickup.bad_dir, &why);
                handled += 1;
            }
            Err(Later(why)) => {
                tracing::warn!(file = %path.display(), reason = %why, "pickup file not taken now; tried again shortly");
                std::thread::sleep(POLL);
                return handled;
            }
        }
    }
    handled
}

enum Failure {
    /// Not a message: to the bad-mail directory.
    Bad(String),
    /// The spool could not take it now: the file stays.
    Later(String),
}
use Failure::{Bad, Later};

/// Injects one file and removes it once the message is durable.
fn take(pickup: &Pickup, path: &Path, responder: &Responder, n: u64) -> Result<(), Failure> {
    let size = std::fs::metadata(path).map_err(|e| Later(e.to_string()))?.len();
    if size > FILE_BYTES_MAX {
        return Err(Bad(format!("{size} bytes: over the {FILE_BYTES_MAX}-byte limit")));
    }
    let bytes = std::fs::read(path).map_err(|e| Later(e.to_string()))?;
    let messages = match is_bsmtp(&bytes) {
        true => bsmtp(&bytes, responder.config().mailmerge_expands_undefined).map_err(Bad)?,
        false => vec![parse(&bytes, pickup.remove_dot).map_err(Bad)?],
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut waits = Vec::with_capacity(messages.len());
    for (i, file) in messages.into_iter().enumerate() {
        let (done, wait) = crossbeam_channel::bounded(1);
        let injection = Injection {
            mail_from: file.sender,
            recipients: file.receivers,
            data: file.data,
            job_id: file.job_id,
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            source: Some("{pickup}"),
            vmta: file.vmta,
            envid: file.envid,
            src_mta: format!("pickup ({name})"),
            done,
            moved: None,
        };
        responder.inject(n + i as u64, injection).map_err(Later)?;
        waits.push(wait);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for wait in waits {
        match wait.recv_deadline(deadline) {
            Ok(Ok(_)) => {}
            // The shard refused it for good (a policy says no): it is not a message we send.
            Ok(Err(why)) if why.starts_with('5') => return Err(Bad(why)),
            Ok(Err(why)) => return Err(Later(why)),
            Err(_) => return Err(Later("the spool did not answer in time".into())),
        }
    }
    if let Err(e) = std::fs::remove_file(path) {
        // Stored but still there: it would be sent again. Say so loudly.
        tracing::error!(file = %path.display(), error = %e, "pickup file stored but cannot be removed: it will be sent again");
    }
    Ok(())
}

/// A pickup file's envelope and message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PickupFile {
    pub sender: String,
    pub receivers: Vec<String>,
    /// The message in SMTP transparency form (CRLF lines, leading dots doubled).
    pub data: Vec<u8>,
    /// A mail merge's `*jobid`, `*vmta`, `*envid` (BSMTP files).
    pub job_id: String,
    pub vmta: Option<String>,
    pub envid: Option<String>,
}

/// Whether a pickup file holds SMTP commands (BSMTP) rather than `x-sender:` lines.
fn is_bsmtp(bytes: &[u8]) -> bool {
    let first = bytes.split(|&b| b == b'\n').map(|l| l.trim_ascii()).find(|l| !l.is_empty()).unwrap_or_default();
    let upper = first.to_ascii_uppercase();
    ["XACK", "XMRG", "EHLO", "HELO", "MAIL FROM", "XDFN"].iter().any(|v| upper.starts_with(v.as_bytes()))
}

/// A BSMTP file's messages, read by the SMTP session machine (mail merge allowed, every
/// recipient taken): a merged transaction gives one message per recipient. A command it
/// refuses makes the file bad, with the refusal as the reason: nothing of it is sent.
pub fn bsmtp(bytes: &[u8], expand_undefined: bool) -> Result<Vec<PickupFile>, String> {
    use sluice_engine::smtp::server::{Event, Session, SessionPolicy};
    // Mailer panels write LF line ends: the session reads CRLF.
    let mut input = b"EHLO pickup\r\n".to_vec();
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        input.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        input.extend_from_slice(b"\r\n");
    }
    let policy = SessionPolicy {
        host_name: "pickup".into(),
        relay_allowed: true,
        allow_mailmerge: true,
        max_message_size: FILE_BYTES_MAX,
        max_rcpt_per_message: u32::MAX,
        add_received_header: false,
        ..SessionPolicy::default()
    };
    let mut s = Session::new(policy, IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let date = sluice_engine::time::rfc5322_date(crate::clock::unix_ms());
    let mut out = Vec::new();
    // Line by line, as a client waiting for each reply sends (DATA's text after its 354).
    'lines: for line in input.split_inclusive(|&b| b == b'\n') {
        let mut at = 0;
        while at < line.len() {
            let (used, event) = s.receive(crate::clock::unix_ms(), &line[at..]);
            at += used;
            let replies = String::from_utf8_lossy(s.output()).into_owned();
            s.clear_output();
            if let Some(bad) = replies.lines().find(|l| l.starts_with('4') || l.starts_with('5')) {
                return Err(format!("the file's commands were refused: {bad}"));
            }
            match event {
                Some(Event::Message) => {
                    let m = s.take_message();
                    match &m.merge {
                        Some(merge) => {
                            for (i, rcpt) in m.recipients.iter().enumerate() {
                                let p = merge.render(i, rcpt, &m.mail_from, &date, expand_undefined)?;
                                out.push(PickupFile {
                                    sender: p.mail_from.unwrap_or_else(|| m.mail_from.clone()),
                                    receivers: vec![rcpt.clone()],
                                    data: p.data,
                                    job_id: p.job_id.unwrap_or_default(),
                                    vmta: p.vmta,
                                    envid: p.envid.or_else(|| (!m.envid.is_empty()).then(|| m.envid.clone())),
                                });
                            }
                        }
                        None => out.push(PickupFile {
                            sender: m.mail_from.clone(),
                            receivers: m.recipients.clone(),
                            data: m.data.clone(),
                            envid: (!m.envid.is_empty()).then(|| m.envid.clone()),
                            ..PickupFile::default()
                        }),
                    }
                    s.message_stored(true, "pickup");
                }
                Some(Event::Close) => break 'lines,
                Some(Event::StartTls) => return Err("STARTTLS in a pickup file".into()),
                None if used == 0 => break,
                None => {}
            }
        }
    }
    if out.is_empty() {
        return Err("no complete message in the file's commands (a transaction without its end?)".into());
    }
    Ok(out)
}

/// Reads a pickup file: the `x-sender:` / `x-receiver:` / `x-envid:` lines at its start (in
/// any case and order, `<...>` or bare addresses), then the message, whose line ends become
/// CRLF and whose leading dots are doubled as SMTP's DATA has them. An `x-envid:` line stays
/// in the message, where `process-x-envid` takes it.
pub fn parse(bytes: &[u8], remove_dot: bool) -> Result<PickupFile, String> {
    let mut sender = None;
    let mut receivers = Vec::new();
    let mut at = 0;
    let mut envid = None;
    while at < bytes.len() {
        let end = bytes[at..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| at + i + 1);
        let line = String::from_utf8_lossy(&bytes[at..end]);
        let Some((name, value)) = line.split_once(':') else { break };
        let value = value.trim().trim_start_matches('<').trim_end_matches('>').trim().to_string();
        match name.trim().to_ascii_lowercase().as_str() {
            "x-sender" => sender = Some(value),
            "x-receiver" if value.is_empty() => return Err("an empty x-receiver line".into()),
            "x-receiver" => receivers.push(value),
            "x-envid" => envid = Some(line.trim_end().to_string()),
            _ => break,
        }
        at = end;
    }
    let Some(sender) = sender else { return Err("no x-sender line at the start of the file".into()) };
    if receivers.is_empty() {
        return Err("no x-receiver line at the start of the file".into());
    }
    let rest = &bytes[at..];
    if rest.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("no message after the envelope lines".into());
    }
    let mut data = Vec::with_capacity(rest.len() + rest.len() / 32);
    if let Some(envid) = envid {
        data.extend_from_slice(envid.as_bytes());
        data.extend_from_slice(b"\r\n");
    }
    for line in rest.split_inclusive(|&b| b == b'\n') {
        let mut line = line.strip_suffix(b"\n").unwrap_or(line);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        if remove_dot && line.starts_with(b"..") {
            line = &line[1..];
        }
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
        data.extend_from_slice(b"\r\n");
    }
    Ok(PickupFile { sender, receivers, data, ..PickupFile::default() })
}

/// Moves a bad file to `bad_dir` (copying when it is on another file system) with its
/// reason beside it.
fn set_aside(path: &Path, bad_dir: &Path, why: &str) {
    let name = path.file_name().unwrap_or_default();
    let to = bad_dir.join(name);
    let moved =
        std::fs::rename(path, &to).or_else(|_| std::fs::copy(path, &to).and_then(|_| std::fs::remove_file(path)));
    if let Err(e) = moved {
        tracing::error!(file = %path.display(), error = %e, "cannot move the bad pickup file; it stays");
        return;
    }
    let mut why_path = to.into_os_string();
    why_path.push(".why");
    let _ = std::fs::write(why_path, format!("{why}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_lines_then_the_message_in_smtp_form() {
        let f = parse(
            b"X-Sender: <me@over.here>\nx-receiver: you@over.there\nX-Receiver: <two@over.there>\nx-envid: me-0001\nFrom: Me <me@over.here>\nSubject: s\n\n.leading dot\nend\n",
            false,
        )
        .unwrap();
        assert_eq!(f.sender, "me@over.here");
        assert_eq!(f.receivers, ["you@over.there", "two@over.there"]);
        assert_eq!(
            f.data,
            b"x-envid: me-0001\r\nFrom: Me <me@over.here>\r\nSubject: s\r\n\r\n..leading dot\r\nend\r\n".to_vec()
        );
        // A feeder that stuffed dots itself (`pickup-remove-dot`); CRLF files stay CRLF.
        let f = parse(b"x-sender: a@b\r\nx-receiver: c@d\r\nSubject: s\r\n\r\n..x\r\n", true).unwrap();
        assert_eq!(f.data, b"Subject: s\r\n\r\n..x\r\n".to_vec());
        // The null sender (a bounce fed through pickup).
        assert_eq!(parse(b"x-sender: <>\nx-receiver: c@d\n\nhi\n", false).unwrap().sender, "");
    }

    /// The BSMTP files mailer panels write for PowerMTA's pickup directory (LF line ends,
    /// `XMRG FROM: addr VERP` without brackets, `RCPT TO: <addr>` with a blank).
    #[test]
    fn bsmtp_mail_merge_files_as_mailer_panels_write_them() {
        let file = b"XACK OFF\nEHLO panel.example\nXMRG FROM: bounce@src.test VERP\nXDFN EMAIL=\"ann@rcv.test\"\nXDFN FNAME=\"Ann\"\nXDFN *parts=1 *jobid=\"7\"\nRCPT TO: <ann@rcv.test>\n\
                     XDFN FNAME=\"Bob\"\nXDFN *parts=1 *jobid=\"7\" *vmta=\"v1\"\nRCPT TO: <bob@rcv.test>\nXPRT 1 LAST \nSubject: Hi [fname]\n\n.dot [fname]\n.\n";
        assert!(is_bsmtp(file));
        let m = bsmtp(file, true).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].sender.as_str(), m[0].receivers.as_slice()),
            ("bounce@src.test", ["ann@rcv.test".to_string()].as_slice())
        );
        assert_eq!(m[0].data, b"Subject: Hi Ann\r\n\r\n..dot Ann\r\n".to_vec());
        assert_eq!((m[1].job_id.as_str(), m[1].vmta.as_deref()), ("7", Some("v1")));
        // A plain SMTP transaction in a file, DATA and all.
        let file = b"HELO panel\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@rcv.test>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let m = bsmtp(file, true).unwrap();
        assert_eq!((m.len(), m[0].data.as_slice()), (1, &b"Subject: s\r\n\r\nbody\r\n"[..]));
        // A refused command makes the file bad; so does a transaction without its end.
        assert!(bsmtp(b"XMRG FROM:<a@src.test>\nRCPT TO:<not an address>\nXPRT 1 LAST\nx\n.\n", true)
            .unwrap_err()
            .contains("refused"));
        assert!(bsmtp(b"XMRG FROM:<a@src.test>\nRCPT TO:<b@rcv.test>\nXPRT 1 LAST\nno end\n", true)
            .unwrap_err()
            .contains("no complete message"));
    }

    #[test]
    fn what_is_no_message() {
        for (file, why) in [
            (&b"From: a@b\n\nno envelope\n"[..], "no x-sender"),
            (b"x-sender: a@b\nSubject: s\n\nno receiver\n", "no x-receiver"),
            (b"x-sender: a@b\nx-receiver:\n\n", "empty x-receiver"),
            (b"x-sender: a@b\nx-receiver: c@d\n", "no message"),
        ] {
            let e = parse(file, false).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
