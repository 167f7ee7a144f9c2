//! What happens to a message between the end of its data and the spool, decided once for every
//! way in (an SMTP transaction, each message of a mail merge, an HTTP or pickup injection):
//! `bcc`, its virtual MTA (`x-virtual-mta`, `<pattern-list>`, a cold VMTA's share,
//! `<rewrite-list>`, a submission's own `*vmta`, `allowed-virtual-mta`), its job, the source's
//! header rules, VERP, and the reports it carries to the feedback-loop and bounce processors
//! (`prepare`); then, after any authentication checks, its DKIM signatures (`sign`).
//!
//! Sans-IO: the caller (the shard) gives the time and a Message-Id to add, and carries out the
//! results (accounting rows, suppression entries made durable, the store).

use crate::acct::Record;
use crate::dkim::{unstuffed, Keys};
use crate::route;
use crate::smtp::addr::domain_of;
use crate::smtp::headers::take_header;
use crate::smtp::reply::Reply;
use crate::smtp::server::Message;
use crate::suppress::AddressList;
use sluice_config::{Config, DkimOptions, DomainSettings, SenderRestrictions, SourcePolicy, VmtaTarget};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A `<feedback-loop-processor>` or `<bounce-processor>`: the addresses its reports come to,
/// and where the addresses they name go.
pub struct Processor {
    pub addresses: Arc<AddressList>,
    pub deliver_unmatched: bool,
    /// The `address-file` of the `auto-suppress-list`, and the list's name.
    pub auto_suppress: Option<PathBuf>,
    pub auto_suppress_list: Option<String>,
}

/// A cold VMTA's use for one destination.
#[derive(Debug, Clone, Copy, Default)]
struct ColdUse {
    first_day: u64,
    day: u64,
    count: u32,
}

/// Cold VMTA warm-up, shared by every shard: per (cold VMTA, destination domain), the day it
/// was first used and today's count (`max-cold-virtual-mta-msg`).
#[derive(Default)]
pub struct ColdCounts(Mutex<HashMap<(String, String), ColdUse>>);

impl ColdCounts {
    /// `cold-virtual-mta`: the first cold VMTA of `vmta` (in turn: the least used today first)
    /// still under its `max-cold-virtual-mta-msg` for today for the message's first
    /// destination, counted.
    pub fn pick(&self, config: &Config, vmta: &str, rcpts: &[String], now_unix_ms: u64) -> Option<String> {
        let colds = &config.vmtas.get(vmta)?.cold;
        let domain = domain_of(rcpts.first()?).to_ascii_lowercase();
        let today = now_unix_ms / 86_400_000;
        let limits = config.queue_settings(&domain, vmta).max_cold_msg;
        let mut uses = self.0.lock().expect("not poisoned");
        let mut order: Vec<&String> = colds.iter().collect();
        order.sort_by_key(|c| {
            uses.get(&((*c).clone(), domain.clone())).filter(|u| u.day == today).map_or(0, |u| u.count)
        });
        for cold in order {
            let cold_limits = config.queue_settings(&domain, cold).max_cold_msg;
            let limits = if limits != [0] { &limits } else { &cold_limits };
            let u = uses.entry((cold.clone(), domain.clone())).or_insert(ColdUse {
                first_day: today,
                day: today,
                count: 0,
            });
            if u.day != today {
                (u.day, u.count) = (today, 0);
            }
            if u.count < route::cold_limit(limits, today - u.first_day) {
                u.count += 1;
                return Some(cold.clone());
            }
        }
        None
    }
}

/// What preparation reads besides the message: the configuration and what was loaded with it.
pub struct World<'a> {
    pub config: &'a Config,
    pub dkim: &'a Keys,
    pub lists: &'a sluice_config::names::Names<Arc<AddressList>>,
    pub feedback: Option<&'a Processor>,
    pub bounces: Option<&'a Processor>,
    pub cold: &'a ColdCounts,
}

/// How the message came in.
pub struct Way<'a> {
    /// The VMTA or pool the submission names itself (a mail merge's `*vmta`, an injection's).
    pub vmta: Option<&'a str>,
    /// The sender's `allowed-virtual-mta` (its source's or its AUTH user's).
    pub restrictions: &'a SenderRestrictions,
    /// The message starts with sluice's own `Received:` (the header rules go below it).
    pub ours_first: bool,
    /// The shard preparing it and a number no other message of that shard gets: the
    /// Message-Id a source's `add-message-id-header` adds is made from them.
    pub number: (u32, u64),
    /// Reports to the feedback-loop and bounce processors are taken out (not for a mail
    /// merge's messages: they are the sender's own).
    pub reports: bool,
}

/// A complainer (or a hard-bounced recipient) for an `auto-suppress-list`: its file (if it
/// has one) and its name (a `redis-set` list is shared with the fleet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressAdd {
    pub path: Option<PathBuf>,
    pub list: String,
    pub address: String,
}

/// A prepared message's VMTA, and what its reports said.
#[derive(Debug, Default)]
pub struct Prepared {
    pub vmta: String,
    /// `f` and `rb` accounting rows of the reports it carried.
    pub records: Vec<Record>,
    /// Suppression entries to make durable before the reply (complainers, hard bounces).
    pub suppress: Vec<SuppressAdd>,
}

/// Prepares `m` for the spool under `policy`; `Err` is the reply that refuses it. Its
/// recipients may all be gone afterwards (every one a report): nothing is then stored.
pub fn prepare(
    world: &World,
    policy: &SourcePolicy,
    m: &mut Message,
    way: &Way,
    now_unix_ms: u64,
) -> Result<Prepared, String> {
    let config = world.config;
    // `bcc`: an archive copy, as one more recipient (once).
    if let Some(bcc) = policy.bcc.as_ref().filter(|b| !m.recipients.iter().any(|r| r.eq_ignore_ascii_case(b))) {
        m.recipients.push(bcc.clone());
    }
    let mut vmta = route::select_vmta(config, policy, (m.mail_from.as_str(), &m.recipients), &mut m.data)?;
    if let Some(cold) = world.cold.pick(config, &vmta, &m.recipients, now_unix_ms) {
        vmta = cold;
    }
    route::rewrite(config, policy, &vmta, &mut m.mail_from, &mut m.data);
    if let Some(named) = way.vmta {
        vmta = match config.vmta_target(named) {
            Some(VmtaTarget::Vmta(n) | VmtaTarget::Pool(n)) => n,
            None => return Err(format!("550 5.7.1 Unknown virtual MTA `{named}` (*vmta)")),
        };
    }
    if !way.restrictions.vmta_allowed(&vmta) {
        return Err(format!("550 5.7.1 Virtual MTA `{vmta}` is not allowed for this sender (allowed-virtual-mta)"));
    }
    // `x-traffic-class:` is kept in the spool only when the source may name a class with it
    // (`route::header_class` reads it there; delivery takes it out).
    if !policy.process_x_traffic_class && !config.traffic_classes.is_empty() {
        while take_header(&mut m.data, route::X_TRAFFIC_CLASS, true).is_some() {}
    }
    if policy.process_x_job {
        let job = take_header(&mut m.data, &policy.jobid_header, !policy.retain_x_job);
        if let Some(job) = job.filter(|_| m.job_id.is_empty()) {
            m.job_id = job.trim().chars().take(crate::sched::JOB_ID_CHARS_MAX).collect();
        }
    }
    // X-Envid (process-x-envid) when the transaction gave no ENVID.
    if policy.headers != sluice_config::HeaderRules::default() {
        let (shard, number) = way.number;
        let message_id = format!("<{now_unix_ms:x}.{shard:x}.{number:x}@{}>", config.host_name);
        let date = crate::time::rfc5322_date(now_unix_ms);
        let shaping = crate::smtp::headers::Shaping {
            rules: &policy.headers,
            ours_first: way.ours_first,
            message_id: &message_id,
            date: &date,
        };
        if let Some(envid) = crate::smtp::headers::shape(&mut m.data, &shaping).filter(|_| m.envid.is_empty()) {
            m.envid = envid;
        }
    }
    if policy.verp {
        m.flags |= sluice_spool::codec::flags::VERP;
    }
    let (records, suppress) = if way.reports { take_reports(world, m, now_unix_ms) } else { Default::default() };
    Ok(Prepared { vmta, records, suppress })
}

/// The `DKIM-Signature:` fields (put on top of the data here) when one of the message's
/// recipient domains has `dkim-sign yes` and a `domain-key` covers its From domain, then the
/// second signature with `second-dkim-sign yes` (User's Guide 10.3.4; `X-DKIM-Options` is for
/// the first only, and never delivered). Signing errors are logged and the message goes
/// without that signature rather than refused. Returns false when the message could not be
/// signed at all (a header section that is not one, a From without a domain): it goes
/// unsigned, counted by the caller.
pub fn sign(keys: &Keys, config: &Config, recipients: &[String], vmta: &str, data: &mut Vec<u8>) -> bool {
    if keys.is_empty() {
        return true;
    }
    let message =
        take_header(data, "x-dkim-options", true).map(|v| crate::dkim::MessageOptions::parse(&v)).unwrap_or_default();
    let mut seen: Vec<String> = Vec::with_capacity(1);
    let Some(settings) = recipients.iter().map(|r| domain_of(r).to_ascii_lowercase()).find_map(|d| {
        if seen.contains(&d) {
            return None;
        }
        let s = config.queue_settings(&d, vmta);
        seen.push(d);
        (s.dkim_sign || s.second_dkim_sign).then_some(s)
    }) else {
        return true;
    };
    let mut headers = Vec::new();
    let mut signable = true;
    if settings.dkim_sign {
        let options = signed_fields(&settings.dkim, &settings);
        match keys.sign_with(vmta, data, &options, &message) {
            Ok(None) if !crate::dkim::header_section_well_formed(data) => {
                tracing::debug!("message left unsigned: a line of its header section is not a field");
                return false;
            }
            Ok(None) if message.domain.is_none() && crate::dkim::from_domain(data).is_none() => {
                // No From address with a domain: nothing to sign for. It goes out unsigned.
                tracing::debug!("message left unsigned: its From field has no address with a domain");
                signable = false;
            }
            Ok(header) => headers.extend(header.unwrap_or_default()),
            Err(e) => tracing::error!(error = %e, "message left unsigned"),
        }
    }
    if settings.second_dkim_sign {
        let options = signed_fields(&settings.second_dkim, &settings);
        let plain = crate::dkim::MessageOptions::default();
        match keys.sign_with(vmta, data, &options, &plain) {
            Ok(header) => headers.extend(header.unwrap_or_default()),
            Err(e) => tracing::error!(error = %e, "message left without its second signature"),
        }
    }
    data.splice(0..0, headers);
    signable
}

/// A signature's options less the fields the destination's `remove-header` takes out at
/// delivery (they are not signed).
pub fn signed_fields(options: &DkimOptions, settings: &DomainSettings) -> DkimOptions {
    let mut options = options.clone();
    options.headers.retain(|h| !settings.smtp.remove_header.iter().any(|r| r.eq_ignore_ascii_case(h)));
    options
}

/// Reports to the feedback-loop and bounce processors: taken out of the message's recipients
/// as `f` / `rb` records, never relayed.
fn take_reports(world: &World, m: &mut Message, now_ms: u64) -> (Vec<Record>, Vec<SuppressAdd>) {
    let mut records = Vec::new();
    let mut suppress = Vec::new();
    for (processor, feedback) in [(world.feedback, true), (world.bounces, false)] {
        let Some(p) = processor else { continue };
        let (reports, rest): (Vec<String>, Vec<String>) =
            m.recipients.iter().cloned().partition(|r| p.addresses.contains(r));
        if reports.is_empty() {
            continue;
        }
        m.recipients = rest;
        let text = String::from_utf8_lossy(&unstuffed(&m.data).concat()).into_owned();
        let found = if feedback {
            feedback_records(world, p, &text, now_ms).map(|(r, add)| {
                suppress.extend(add);
                r
            })
        } else {
            bounce_records(world.config, &text, &reports[0], now_ms)
                .inspect(|r| suppress.extend(hard_bounced(world, p, r)))
        };
        match found {
            Some(r) => records.extend(r),
            None if p.deliver_unmatched => m.recipients.extend(reports),
            None => tracing::info!(from = %m.mail_from, feedback, "not a report; dropped"),
        }
    }
    (records, suppress)
}

fn feedback_records(world: &World, p: &Processor, text: &str, now: u64) -> Option<(Vec<Record>, Option<SuppressAdd>)> {
    let f = crate::feedback::parse(text)?;
    tracing::info!(rcpt = %f.rcpt, kind = %f.feedback_type, "feedback report");
    if let (Some(list), false) = (p.auto_suppress_list.as_ref().and_then(|n| world.lists.get(n)), f.rcpt.is_empty()) {
        list.add(&f.rcpt); // refused from now on, on every shard
    }
    let add = match (&p.auto_suppress_list, f.rcpt.is_empty()) {
        (Some(list), false) => {
            Some(SuppressAdd { path: p.auto_suppress.clone(), list: list.clone(), address: f.rcpt.clone() })
        }
        _ => None,
    };
    Some((vec![Record::feedback(now, &f, &world.config.acct_headers)], add))
}

/// Recipients an asynchronous bounce says do not exist (`bad-mailbox`, `bad-domain`,
/// `inactive-mailbox`): for the bounce processor's `auto-suppress-list`, if it has one.
fn hard_bounced(world: &World, p: &Processor, records: &[Record]) -> Vec<SuppressAdd> {
    let Some(name) = &p.auto_suppress_list else { return Vec::new() };
    let hard = ["bad-mailbox", "bad-domain", "inactive-mailbox"];
    records
        .iter()
        .filter(|r| hard.contains(&r.bounce_cat.as_str()) && !r.rcpt.is_empty())
        .map(|r| {
            if let Some(list) = world.lists.get(name) {
                list.add(&r.rcpt);
            }
            tracing::info!(rcpt = %r.rcpt, category = %r.bounce_cat, list = %name, "hard bounce suppressed");
            SuppressAdd { path: p.auto_suppress.clone(), list: name.clone(), address: r.rcpt.clone() }
        })
        .collect()
}

/// An asynchronous bounce's `rb` records, one per failed recipient, with their category
/// (None: not a DSN). `to` is the address it came to (VERP names the recipient).
fn bounce_records(config: &Config, text: &str, to: &str, now: u64) -> Option<Vec<Record>> {
    let bounces = crate::feedback::parse_dsn(text, to)?;
    let records = bounces
        .iter()
        .map(|b| {
            let line = format!("{}\r\n", b.diagnostic);
            let reply = crate::smtp::reply::parse_reply(line.as_bytes())
                .ok()
                .flatten()
                .map(|(r, _)| r)
                .unwrap_or_else(|| Reply::new(550, format!("{} {}", b.status, b.diagnostic)));
            let category = crate::bounce::classify(&reply, &config.bounce_patterns);
            tracing::info!(rcpt = %b.rcpt, %category, "remote bounce");
            Record::remote_bounce(now, b, category, &config.acct_headers)
        })
        .collect();
    Some(records)
}

/// What a receiver offers that changes what a transaction sends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offered {
    pub smtputf8: bool,
    pub eight_bit_mime: bool,
    /// CHUNKING (RFC 3030), offered and not `ignore-chunking`: the message goes as BDAT.
    pub bdat: bool,
}

/// Where a transaction sends a message: what the message as sent depends on.
pub struct Transaction<'a> {
    pub keys: &'a Keys,
    pub config: &'a Config,
    /// The queue's destination domain and VMTA (their `<domain>` settings).
    pub domain: &'a str,
    pub vmta: &'a str,
    /// The VMTA the connection sends from (a pool's member).
    pub sending_vmta: &'a str,
    /// The message's `<source>` (`date-header-time`, `add-x-virtual-mta-header`).
    pub source: &'a SourcePolicy,
    /// The destination's `remove-header`.
    pub remove_header: &'a [String],
    pub now_unix_ms: u64,
}

/// The message as this transaction sends it: `Ok(None)` as spooled (straight from the segment),
/// `Ok(Some)` changed for this receiver (8-bit content converted to quoted-printable for one
/// without 8BITMIME, RFC 6152 §3, and signed again; `remove-header` fields out; a delivery-time
/// `Date` and signatures made again; `X-Virtual-MTA`; BDAT's plain form), or the reply every
/// recipient gets instead: 553 for non-ASCII addresses to a receiver without SMTPUTF8 (RFC 6531
/// §3.2, as PowerMTA: a UTF-8 header alone goes as it is), 554 for 8-bit content with
/// `downgrade-8bit bounce`. `data` is in transparency form, `flags` the spool's.
pub fn for_transaction<'r>(
    t: &Transaction,
    mail_from: &str,
    rcpts: impl IntoIterator<Item = &'r str>,
    data: &[u8],
    flags: u8,
    offered: Offered,
) -> Result<Option<Vec<u8>>, Reply> {
    use crate::smtp::{headers, mime};
    if flags & sluice_spool::codec::flags::SMTPUTF8 != 0
        && !offered.smtputf8
        && !(mail_from.is_ascii() && rcpts.into_iter().all(|r| r.is_ascii()))
    {
        return Err(Reply::new(553, "5.6.7 non-ASCII address, and the receiver does not offer SMTPUTF8 (RFC 6531)"));
    }
    let mut converted = None;
    if !offered.eight_bit_mime && mime::has_8bit(data) {
        if t.config.queue_settings(t.domain, t.vmta).downgrade_8bit == sluice_config::Downgrade8bit::Bounce {
            return Err(Reply::new(
                554,
                "5.6.3 8-bit content, and the receiver does not offer 8BITMIME (downgrade-8bit bounce)",
            ));
        }
        let mut c = mime::convert_stuffed(data, mime::Convert { eight_bit: true, long_lines: false });
        // What is signed is what is sent: sluice's signature is made again over the converted
        // message (the one made at injection covered the 8-bit form).
        resign(t.keys, t.config, t.domain, t.vmta, &mut c);
        converted = Some(c);
    }
    let base = converted.as_deref().unwrap_or(data);
    // The class a message named for itself is the relay's business, not the receiver's.
    if !t.config.traffic_classes.is_empty() && headers::has_field(base, route::X_TRAFFIC_CLASS) {
        let mut copy = base.to_vec();
        headers::remove_fields(&mut copy, &[route::X_TRAFFIC_CLASS.to_string()]);
        converted = Some(copy);
    }
    let base = converted.as_deref().unwrap_or(data);
    if t.remove_header.iter().any(|h| headers::has_field(base, h)) {
        let mut copy = base.to_vec();
        headers::remove_fields(&mut copy, t.remove_header);
        converted = Some(copy);
    }
    // `date-header-time delivery`: its Date is this attempt's, and sluice's signatures are made
    // again over it.
    if t.source.headers.date_at_delivery {
        let mut copy = converted.take().unwrap_or_else(|| data.to_vec());
        let date = crate::time::rfc5322_date(t.now_unix_ms);
        if headers::date_for_delivery(&mut copy, &t.source.headers, &date) {
            resign(t.keys, t.config, t.domain, t.vmta, &mut copy);
        }
        converted = Some(copy);
    }
    // `add-x-virtual-mta-header`: the VMTA sending it (a field no signature covers, so the
    // signatures stay good).
    let base = converted.as_deref().unwrap_or(data);
    if t.source.add_x_virtual_mta_header && !headers::has_field(base, "X-Virtual-MTA") {
        let mut copy = format!("X-Virtual-MTA: {}\r\n", t.sending_vmta).into_bytes();
        copy.extend_from_slice(base);
        converted = Some(copy);
    }
    // BDAT sends the message as it is, not in the transparency form the spool keeps.
    if offered.bdat {
        let base = converted.as_deref().unwrap_or(data);
        converted = Some(unstuffed(base).concat());
    }
    Ok(converted)
}

/// Replaces sluice's own DKIM signatures on top of `data` (transparency form: the first and,
/// with `second-dkim-sign`, the second) with ones over `data` as it is now, each made with the
/// same key and the destination's `dkim-*` (or `second-dkim-*`) settings; a message sluice did
/// not sign is left as it is.
pub fn resign(keys: &Keys, config: &Config, domain: &str, vmta: &str, data: &mut Vec<u8>) {
    let mut found = Vec::with_capacity(2);
    let mut at = 0;
    while found.len() < 2 {
        let Some((len, message)) = crate::dkim::leading_signature(&data[at..], keys, vmta) else {
            break;
        };
        found.push((at..at + len, message));
        at += len;
    }
    if found.is_empty() {
        return;
    }
    let settings = config.queue_settings(domain, vmta);
    let mut headers = Vec::new();
    for (k, (old, message)) in found.iter().enumerate() {
        let options = match k == 0 && settings.dkim_sign {
            true => signed_fields(&settings.dkim, &settings),
            false => signed_fields(&settings.second_dkim, &settings),
        };
        match keys.sign_with(vmta, &data[at..], &options, message) {
            Ok(Some(header)) => headers.extend(header),
            Ok(None) => headers.extend_from_slice(&data[old.clone()]),
            Err(e) => {
                tracing::error!(error = %e, "the converted message keeps its signature as it was");
                headers.extend_from_slice(&data[old.clone()]);
            }
        }
    }
    data.splice(..at, headers);
}
