//! The operator's commands (`sluice show queues`, `sluice pause queue Q`, ...): clients of
//! the running daemon's management API, found through the configuration file's
//! `http-mgmt-port` (and `http-api-key`, sent when set). Text tables by default, `--json`
//! for scripts.

use clap::{Args, Subcommand};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Clone)]
pub struct Target {
    /// The daemon's configuration file (the embedded default when absent).
    #[arg(short, long, global = true)]
    pub config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Show {
    /// Traffic, connections, queued mail, spool use, uptime.
    Status,
    /// Every queue (DOMAIN/VMTA), largest first.
    Queues,
    /// The 20 largest queues.
    Topqueues,
    /// Queued mail and outcomes per destination domain.
    Domains,
    /// Queued mail and outcomes per virtual MTA.
    Vmtas,
    /// Jobs (x-job) with queued recipients, and paused ones.
    Jobs,
    /// The settings a queue runs with.
    Settings { queue: String },
}

#[derive(Subcommand)]
pub enum Which {
    /// A queue: DOMAIN/VMTA, DOMAIN (every VMTA) or */VMTA.
    Queue { queue: String },
    /// A job (the x-job header's value).
    Job { id: String },
}

#[derive(Subcommand)]
pub enum SetWhat {
    /// `set queue --mode=backoff|normal Q`.
    Queue {
        #[arg(long)]
        mode: String,
        queue: String,
    },
}

#[derive(Subcommand)]
pub enum RotateWhat {
    /// Rotate every accounting file now.
    Acct,
}

#[derive(Subcommand)]
pub enum Verb {
    /// Show what the running daemon holds.
    Show {
        #[command(subcommand)]
        what: Show,
        #[command(flatten)]
        target: Target,
    },
    /// Stop delivering a queue or a job (mail keeps being accepted).
    Pause {
        #[command(subcommand)]
        what: Which,
        #[command(flatten)]
        target: Target,
    },
    /// Deliver a paused queue or job again.
    Resume {
        #[command(subcommand)]
        what: Which,
        #[command(flatten)]
        target: Target,
    },
    /// Retry a queue now (waiting recipients become due).
    Schedule {
        queue: String,
        #[command(flatten)]
        target: Target,
    },
    /// Change a queue's mode.
    Set {
        #[command(subcommand)]
        what: SetWhat,
        #[command(flatten)]
        target: Target,
    },
    /// Delete queued recipients of a queue or a job (a `b` accounting record each).
    Delete {
        #[arg(long)]
        queue: Option<String>,
        #[arg(long = "jobId", alias = "job-id")]
        job_id: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Re-read the configuration file (as SIGHUP); a bad one is refused with its errors.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Rotate files.
    Rotate {
        #[command(subcommand)]
        what: RotateWhat,
        #[command(flatten)]
        target: Target,
    },
    /// Resolve a domain's next hops as the daemon would.
    Resolve {
        domain: String,
        #[command(flatten)]
        target: Target,
    },
}

impl Verb {
    fn target(&self) -> &Target {
        match self {
            Verb::Show { target, .. }
            | Verb::Pause { target, .. }
            | Verb::Resume { target, .. }
            | Verb::Schedule { target, .. }
            | Verb::Set { target, .. }
            | Verb::Delete { target, .. }
            | Verb::Reload { target }
            | Verb::Rotate { target, .. }
            | Verb::Resolve { target, .. } => target,
        }
    }
}

/// `http-mgmt-port` and `http-api-key` from a configuration's text, without the rest.
fn mgmt_lines(text: &str) -> Option<sluice_config::Mgmt> {
    let mut listen = None;
    let mut api_key = None;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("http-mgmt-port"), Some(v)) => {
                listen = v
                    .parse::<u16>()
                    .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                    .or_else(|_| v.parse::<SocketAddr>())
                    .ok()
            }
            (Some("http-api-key"), Some(v)) => api_key = Some(v.to_string()),
            _ => {}
        }
    }
    Some(sluice_config::Mgmt { listen: listen?, access: Vec::new(), api_key })
}

/// Percent-encoding for a query value.
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'*' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One request to the API: (status, body).
pub fn request(addr: SocketAddr, key: Option<&str>, method: &str, target: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
        format!("cannot reach sluice's management API at {addr}: {e} (is it running, with http-mgmt-port?)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let key = key.map(|k| format!("X-API-Key: {k}\r\n")).unwrap_or_default();
    let req =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{key}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("a malformed reply")?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("a malformed status line")?;
    Ok((status, body.to_string()))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A text table of `rows` (objects) with these columns.
fn table(rows: &[Value], columns: &[&str]) -> String {
    let cells: Vec<Vec<String>> =
        rows.iter().map(|r| columns.iter().map(|c| cell(r.get(*c).unwrap_or(&Value::Null))).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).max().unwrap_or(0).max(c.len()))
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, vals: Vec<&str>| {
        let parts: Vec<String> = vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut out, columns.to_vec());
    for r in &cells {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    out
}

/// `a.b.c: value` lines for a nested object.
fn flatten(prefix: &str, v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&p, v, out);
            }
        }
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, out);
            }
        }
        other => out.push_str(&format!("{prefix}: {}\n", cell(other))),
    }
}

pub fn run(verb: Verb) -> ExitCode {
    let target = verb.target().clone();
    let mgmt = match crate::load_config(target.config.as_deref()) {
        Ok(c) => c.mgmt,
        // A file being edited may not parse (a reload is then refused by the daemon, with
        // its errors): the API's address and key are read from their lines alone.
        Err(e) => {
            target.config.as_deref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| mgmt_lines(&t)).or_else(
                || {
                    eprintln!("sluice: {e}");
                    None
                },
            )
        }
    };
    let Some(mgmt) = &mgmt else {
        eprintln!("sluice: the configuration has no `http-mgmt-port`: the daemon cannot be reached");
        return ExitCode::from(2);
    };
    let mut addr = mgmt.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let (method, path, columns): (&str, String, Option<(&str, &[&str])>) = match &verb {
        Verb::Show { what, .. } => match what {
            Show::Status => ("GET", "/status?format=json".into(), None),
            Show::Queues | Show::Topqueues => (
                "GET",
                if matches!(what, Show::Topqueues) { "/topqueues".into() } else { "/queues".into() },
                Some((
                    "queues",
                    &["queue", "rcpts", "bytes", "oldestAgeS", "connections", "mode", "nextRetryInS", "lastError"][..],
                )),
            ),
            Show::Domains => (
                "GET",
                "/domains".into(),
                Some(("domains", &["domain", "rcpts", "kb", "connections", "delivered", "bounced", "deferred"][..])),
            ),
            Show::Vmtas => (
                "GET",
                "/vmtas".into(),
                Some((
                    "vmtas",
                    &["vmta", "pool", "rcpts", "queues", "connections", "delivered", "bounced", "deferred"][..],
                )),
            ),
            Show::Jobs => ("GET", "/jobs".into(), Some(("jobs", &["jobId", "rcpts", "bytes", "state"][..]))),
            Show::Settings { queue } => ("GET", format!("/settings?queue={}", enc(queue)), None),
        },
        Verb::Pause { what: Which::Queue { queue }, .. } => ("POST", format!("/pause?queue={}", enc(queue)), None),
        Verb::Pause { what: Which::Job { id }, .. } => ("POST", format!("/pauseJob?jobId={}", enc(id)), None),
        Verb::Resume { what: Which::Queue { queue }, .. } => ("POST", format!("/resume?queue={}", enc(queue)), None),
        Verb::Resume { what: Which::Job { id }, .. } => ("POST", format!("/resumeJob?jobId={}", enc(id)), None),
        Verb::Schedule { queue, .. } => ("POST", format!("/schedule?queue={}", enc(queue)), None),
        Verb::Set { what: SetWhat::Queue { mode, queue }, .. } => {
            ("POST", format!("/setMode?queue={}&mode={}", enc(queue), enc(mode)), None)
        }
        Verb::Delete { queue, job_id, .. } => match (queue, job_id) {
            (Some(q), None) => ("POST", format!("/delete?queue={}", enc(q)), None),
            (None, Some(id)) => ("POST", format!("/delete?jobId={}", enc(id)), None),
            _ => {
                eprintln!("sluice: say either --queue=DOMAIN/VMTA or --jobId=ID");
                return ExitCode::from(2);
            }
        },
        Verb::Reload { .. } => ("POST", "/reload".into(), None),
        Verb::Rotate { what: RotateWhat::Acct, .. } => ("POST", "/rotateAcct".into(), None),
        Verb::Resolve { domain, .. } => ("GET", format!("/resolve?domain={}", enc(domain)), None),
    };
    let (status, body) = match request(addr, mgmt.api_key.as_deref(), method, &path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(1);
        }
    };
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
    if !(200..300).contains(&status) {
        eprintln!("sluice: {} (HTTP {status})", parsed.get("error").map(cell).unwrap_or(body));
        return ExitCode::from(1);
    }
    if target.json {
        println!("{}", serde_json::to_string_pretty(&parsed).unwrap_or(body));
        return ExitCode::SUCCESS;
    }
    match (columns, &verb) {
        (Some((key, cols)), _) => {
            let rows = parsed.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
            print!("{}", table(&rows, cols));
        }
        (None, Verb::Show { what: Show::Settings { .. }, .. }) => {
            println!("{}", parsed.get("settings").map(cell).unwrap_or_default());
        }
        _ => {
            let mut out = String::new();
            flatten("", &parsed, &mut out);
            print!("{out}");
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![serde_json::json!({"a": "x", "b": 10}), serde_json::json!({"a": "longer", "b": null})];
        assert_eq!(table(&rows, &["a", "b"]), "a       b\nx       10\nlonger  -\n");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(enc("gmail.com/pool 1"), "gmail.com%2Fpool%201");
        assert_eq!(enc("*/v"), "*%2Fv");
    }
}
