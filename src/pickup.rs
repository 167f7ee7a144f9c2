//! The pickup directory (`pickup DIR BAD-DIR`), as IIS and PowerMTA have it: each file
//! dropped in DIR is one message whose envelope is in leading `x-sender:`, `x-receiver:` (one
//! per recipient) and `x-envid:` lines. A file is injected as an HTTP submission is (its
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
    let file = parse(&bytes, pickup.remove_dot).map_err(Bad)?;
    let (done, wait) = crossbeam_channel::bounded(1);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let injection = Injection {
        mail_from: file.sender,
        recipients: file.receivers,
        data: file.data,
        job_id: String::new(),
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        source: Some("{pickup}"),
        src_mta: format!("pickup ({name})"),
        done,
        moved: None,
    };
    responder.inject(n, injection).map_err(Later)?;
    match wait.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(_)) => {}
        // The shard refused it for good (a policy says no): it is not a message we send.
        Ok(Err(why)) if why.starts_with('5') => return Err(Bad(why)),
        Ok(Err(why)) => return Err(Later(why)),
        Err(_) => return Err(Later("the spool did not answer in time".into())),
    }
    if let Err(e) = std::fs::remove_file(path) {
        // Stored but still there: it would be sent again. Say so loudly.
        tracing::error!(file = %path.display(), error = %e, "pickup file stored but cannot be removed: it will be sent again");
    }
    Ok(())
}

/// A pickup file's envelope and message.
#[derive(Debug, PartialEq, Eq)]
pub struct PickupFile {
    pub sender: String,
    pub receivers: Vec<String>,
    /// The message in SMTP transparency form (CRLF lines, leading dots doubled).
    pub data: Vec<u8>,
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
    Ok(PickupFile { sender, receivers, data })
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
