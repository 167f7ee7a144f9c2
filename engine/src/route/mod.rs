//! Routing, sans-IO: which queue a recipient's mail joins and which shard owns it
//! (`queue-to`, the owner hash), which virtual MTA sends a message (`x-virtual-mta`,
//! `<pattern-list>`, `default-virtual-mta`, a cold VMTA's daily share), what `<rewrite-list>`
//! does to its sender, which pool member takes the next connection, next hops that need no
//! DNS (IP-literal `smtp-hosts`), and MX rollup (`rollup`).

pub mod mx;
pub mod rollup;

use crate::smtp::headers::{header_value, take_header};
use crate::smtp::reply::Reply;
use sluice_config::{Config, HostPort, SourcePolicy};
use std::net::{IpAddr, SocketAddr};

/// The virtual MTA of mail that names none (a queue is `domain/vmta`).
pub const DEFAULT_VMTA: &str = "default";

/// One next hop: the host name (for accounting) and an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub host: String,
    pub addr: SocketAddr,
}

/// What resolving a destination gave.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// Preference levels, most preferred first.
    Hops(Vec<Vec<Hop>>),
    /// The domain has no MX records; these are its own addresses, the implicit MX (RFC 5321
    /// §5.1), used unless the queue's `bounce-upon-no-mx` says otherwise.
    NoMx(Vec<Hop>),
    /// The domain cannot receive mail (NXDOMAIN, null MX): bounce.
    Permanent(Reply),
    /// Try again later (SERVFAIL, timeout).
    Temporary(Reply),
}

/// Which shard owns a destination domain's queues: the same on every run and every build,
/// since recovery puts a stored message's recipients back on the shard that owned them. The
/// hash is SipHash-1-3 with zero keys over the domain's bytes and a 0xff byte — exactly what
/// `std::hash::DefaultHasher::new()` with `str: Hash` gave until now, written out because std
/// does not promise to keep it.
pub fn owner_shard(domain: &str, shards: u32) -> u32 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new();
    h.write(domain.as_bytes());
    h.write_u8(0xff);
    (h.finish() % shards as u64) as u32
}

/// The owner of a domain's queues among the shards `set` (a traffic class's, or the general
/// ones): `owner_shard` over the set.
pub fn owner_in(domain: &str, set: std::ops::Range<u32>) -> u32 {
    set.start + owner_shard(domain, set.len().max(1) as u32)
}

/// The shard that owns a queue: its domain's, among the shards of its traffic class: the
/// VMTA's, else the message's (`class`: its source's, or its `x-traffic-class:` header's).
pub fn queue_owner(
    config: &sluice_config::Config,
    sets: &sluice_config::ShardSets,
    domain: &str,
    vmta: &str,
    class: Option<&str>,
) -> u32 {
    owner_in(domain, sets.of(config.vmta_class(vmta).or(class)))
}

/// The header that names a message's traffic class (`process-x-traffic-class`).
pub const X_TRAFFIC_CLASS: &str = "x-traffic-class";

/// The traffic class a stored message's `x-traffic-class:` header names, if it is defined.
/// The header stays in the spool (so that a restart finds the class again) and is taken
/// out at delivery; a source that does not process it has it removed before the spool.
pub fn header_class(config: &Config, data: &[u8]) -> Option<String> {
    if config.traffic_classes.is_empty() {
        return None;
    }
    let name = header_value(data, X_TRAFFIC_CLASS)?;
    let name = name.trim();
    config.traffic_classes.iter().find(|c| c.name.eq_ignore_ascii_case(name)).map(|c| c.name.clone())
}

/// The domain whose queue a recipient domain's mail joins (`queue-to`, else itself).
pub fn queue_domain(config: &Config, domain: &str) -> String {
    config.queue_domain(domain)
}

/// `smtp-hosts` whose hosts are all IP literals need no DNS.
pub fn literal_hops(levels: &[Vec<HostPort>]) -> Option<Vec<Vec<Hop>>> {
    levels
        .iter()
        .map(|level| {
            level
                .iter()
                .map(|h| {
                    let ip = h.host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>().ok()?;
                    Some(Hop { host: h.host.clone(), addr: SocketAddr::new(ip, h.port) })
                })
                .collect()
        })
        .collect()
}

/// The VMTA or pool for an accepted message: its `x-virtual-mta:` header when the source
/// allows it (the header is removed unless `retain-x-virtual-mta`), else the source's
/// `default-virtual-mta`, else the default. An unknown name is refused with 550 when the
/// source says `reject-invalid-virtual-mta`, and otherwise falls back.
///
/// Between the header and the default, the source's `pattern-list`: its first rule matching
/// the envelope sender, a recipient or a header field names the VMTA.
pub fn select_vmta(
    config: &Config,
    policy: &SourcePolicy,
    envelope: (&str, &[String]),
    data: &mut Vec<u8>,
) -> Result<String, String> {
    // Names are matched in any case; queues, limits and rows use the name as defined.
    as_written(config, policy, envelope, data).map(|v| config.defined_vmta(&v))
}

fn as_written(
    config: &Config,
    policy: &SourcePolicy,
    envelope: (&str, &[String]),
    data: &mut Vec<u8>,
) -> Result<String, String> {
    let mut fallback = policy.default_virtual_mta.clone().unwrap_or_else(|| DEFAULT_VMTA.to_string());
    if let Some(list) = &policy.pattern_list {
        if let Some(v) = pattern_vmta(config, list, envelope.0, envelope.1, data, 0) {
            fallback = v;
        }
    }
    if !policy.process_x_virtual_mta {
        return Ok(fallback);
    }
    let Some(name) = take_header(data, "x-virtual-mta", !policy.retain_x_virtual_mta) else {
        return Ok(fallback);
    };
    if config.vmta_target(&name).is_some() {
        return Ok(name);
    }
    if policy.reject_invalid_virtual_mta {
        return Err(format!("550 5.7.1 Unknown virtual MTA `{name}` (x-virtual-mta header)"));
    }
    Ok(fallback)
}

/// How deep `call-to:` may chain pattern lists (a loop stops there).
const PATTERN_CALLS_MAX: u32 = 8;

/// The VMTA a `<pattern-list>` picks for a message: the first rule that matches (sender,
/// any recipient, a header field's value as received, or `*`) and names one, following
/// `call-to:` into other lists.
pub fn pattern_vmta(
    config: &Config,
    list: &str,
    mail_from: &str,
    rcpts: &[String],
    data: &[u8],
    depth: u32,
) -> Option<String> {
    let list = config.vmta_pattern_lists.get(list)?;
    for rule in &list.rules {
        let hit = match &rule.on {
            sluice_config::PatternOn::MailFrom => rule.regex.is_match(mail_from),
            sluice_config::PatternOn::RcptTo => rcpts.iter().any(|r| rule.regex.is_match(r)),
            sluice_config::PatternOn::Header(name) => {
                header_value(data, name).is_some_and(|v| rule.regex.is_match(&format!(" {v}")))
            }
            sluice_config::PatternOn::Any => true,
        };
        if !hit {
            continue;
        }
        if let Some(v) = &rule.vmta {
            return Some(v.clone());
        }
        if let (Some(next), true) = (&rule.call_to, depth < PATTERN_CALLS_MAX) {
            if let Some(v) = pattern_vmta(config, next, mail_from, rcpts, data, depth + 1) {
                return Some(v);
            }
        }
    }
    None
}

/// The source's `rewrite-list`, then the chosen VMTA's (or pool's): the envelope sender
/// after their `mail-from` rules, and the From header's domain after their `from-domain`
/// rules.
pub fn rewrite(config: &Config, policy: &SourcePolicy, vmta: &str, mail_from: &mut String, data: &mut Vec<u8>) {
    let target_list =
        config.vmtas.get(vmta).and_then(|v| v.rewrite_list.as_ref()).or_else(|| config.pool_rewrite_lists.get(vmta));
    for name in [policy.rewrite_list.as_ref(), target_list].into_iter().flatten() {
        let Some(list) = config.rewrite_lists.get(name) else { continue };
        if let Some(new) = list.mail_from(mail_from) {
            *mail_from = new;
        }
        if list.rewrites_from() {
            crate::smtp::headers::rewrite_from_domain(data, |d| list.from_domain(d).map(str::to_string));
        }
    }
}

/// Cold VMTA warm-up (`cold-virtual-mta`, `max-cold-virtual-mta-msg`): how many messages a
/// cold VMTA may take for a destination on day `day` of its use (0: the first), from the
/// per-day limits (the last one holds on).
pub fn cold_limit(limits: &[u32], day: u64) -> u32 {
    limits.get(day as usize).or(limits.last()).copied().unwrap_or(0)
}

/// The pool member that takes the next connection: members take turns, one per connection;
/// one `disabled` (by `disable-source-ip`) is passed over. None: every member is disabled.
pub fn next_member<'a>(members: &'a [String], turn: &mut usize, disabled: impl Fn(&str) -> bool) -> Option<&'a str> {
    for _ in 0..members.len() {
        *turn = turn.wrapping_add(1);
        let member = &members[*turn % members.len()];
        if !disabled(member) {
            return Some(member);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The domain → shard map of every build so far (std's DefaultHasher, recorded with
    /// rustc 1.95): a spool written by any of them recovers onto the same shards.
    #[test]
    fn the_owner_shard_map_never_changes() {
        let known: [(&str, u64); 6] = [
            ("gmail.com", 14240188746883912140),
            ("yahoo.com", 1964464958493115405),
            ("outlook.com", 1593326473303989298),
            ("example.org", 17436826529590970664),
            ("xn--bcher-kva.example", 11334455872301290443),
            ("a", 8186225505942432243),
        ];
        for shards in [1, 2, 3, 16, 64, 1000] {
            for (domain, hash) in known {
                assert_eq!(owner_shard(domain, shards), (hash % shards as u64) as u32, "{domain} over {shards}");
            }
        }
    }

    #[test]
    fn pool_members_take_turns_and_disabled_ones_are_passed_over() {
        let members: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut turn = 0;
        let picks: Vec<&str> = (0..4).map(|_| next_member(&members, &mut turn, |_| false).unwrap()).collect();
        assert_eq!(picks, ["b", "c", "a", "b"]);
        assert_eq!(next_member(&members, &mut turn, |m| m == "c"), Some("a"));
        assert_eq!(next_member(&members, &mut turn, |_| true), None);
    }

    #[test]
    fn literal_hops_need_every_host_to_be_an_address() {
        let h = |host: &str| HostPort { host: host.into(), port: 25, lookup_mx: false };
        let hops = literal_hops(&[vec![h("127.0.0.1"), h("[::1]")]]).unwrap();
        assert_eq!(hops[0][1].addr, "[::1]:25".parse().unwrap());
        assert!(literal_hops(&[vec![h("127.0.0.1"), h("mx.example")]]).is_none());
    }
}
