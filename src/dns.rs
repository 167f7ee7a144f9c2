//! DNS for delivery on the control plane (hickory): next hops for a domain — static
//! `smtp-hosts` names, MX records (RFC 5321 §5.1) with the implicit-MX fallback, RFC 7505
//! null MX — and the MX set MX rollup compares.

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::error::ResolveErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioAsyncResolver;
use sluice_config::{Config, HostPort};
use sluice_engine::route::mx::{self, MxPlan};
use sluice_engine::route::rollup::MxSet;
use sluice_engine::smtp::reply::Reply;
use sluice_netio::{Hop, Resolution};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long a resolution is cached by the asking shard when DNS gives no better TTL.
const RESOLVE_TTL_DEFAULT_MS: u64 = 300_000;
/// A failed lookup (SERVFAIL, timeout): asked again this soon.
const RESOLVE_FAILURE_TTL_MS: u64 = 5_000;
/// A definite "none" (NXDOMAIN, an MX host without an address).
const RESOLVE_NONE_TTL_MS: u64 = 60_000;

pub fn resolver(config: &Config) -> std::io::Result<TokioAsyncResolver> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    opts.ndots = 0;
    match config.dns_server {
        Some(addr) => {
            let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            Ok(TokioAsyncResolver::tokio(ResolverConfig::from_parts(None, vec![], group), opts))
        }
        None => {
            let (conf, mut sys_opts) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| std::io::Error::other(format!("cannot read the system resolver configuration: {e}")))?;
            sys_opts.timeout = opts.timeout;
            sys_opts.attempts = opts.attempts;
            Ok(TokioAsyncResolver::tokio(conf, sys_opts))
        }
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// What looking up names gave: addresses, a definite "none" (NXDOMAIN, or no A/AAAA record:
/// RFC 5321 §5.1's "no address"), or a failure that may pass (SERVFAIL, REFUSED, a timeout),
/// with the resolver's words.
#[derive(Debug, Default)]
struct Addresses {
    hops: Vec<Hop>,
    /// Hosts that have no address at all.
    none: Vec<String>,
    /// Hosts whose lookup failed, and why.
    failed: Vec<(String, String)>,
}

/// Does this error say the name, or the record type, does not exist (a definite answer)?
/// Every other answer (SERVFAIL, REFUSED, NOTIMP, a timeout, no server) may change.
fn definitely_none(e: &hickory_resolver::error::ResolveError) -> bool {
    matches!(e.kind(), ResolveErrorKind::NoRecordsFound { response_code, .. }
        if *response_code == ResponseCode::NXDomain || *response_code == ResponseCode::NoError)
}

async fn addresses_into(resolver: &TokioAsyncResolver, host: &str, port: u16, out: &mut Addresses) {
    if let Ok(ip) = host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        out.hops.push(Hop { host: host.to_string(), addr: SocketAddr::new(ip, port) });
        return;
    }
    let name = host.trim_end_matches('.').to_string();
    match resolver.lookup_ip(fqdn(host)).await {
        Ok(ips) => out.hops.extend(ips.iter().map(|ip| Hop { host: name.clone(), addr: SocketAddr::new(ip, port) })),
        Err(e) if definitely_none(&e) => out.none.push(name),
        Err(e) => {
            tracing::debug!(host, error = %e, "address lookup failed");
            out.failed.push((name, e.to_string()));
        }
    }
}

impl Addresses {
    /// No hop at all: a deferral naming the failure when any lookup failed (the answer may
    /// still come), else a bounce naming the hosts without an address (RFC 5321 §5.1; as
    /// Postfix, 5.4.4). None when there are hops.
    fn outcome_without_hops(&self, what: &str, none_bounces: bool) -> Option<(Resolution, u64)> {
        if !self.hops.is_empty() {
            return None;
        }
        if let Some((host, why)) = self.failed.first() {
            let reply = Reply::new(451, format!("4.4.3 address lookup for {host} failed: {why}"));
            return Some((Resolution::Temporary(reply), RESOLVE_FAILURE_TTL_MS));
        }
        let hosts = self.none.join(", ");
        Some(if none_bounces {
            (
                Resolution::Permanent(Reply::new(550, format!("5.4.4 {what}: no address for {hosts}"))),
                RESOLVE_NONE_TTL_MS,
            )
        } else {
            (
                Resolution::Temporary(Reply::new(451, format!("4.4.4 {what}: no address for {hosts}"))),
                RESOLVE_FAILURE_TTL_MS,
            )
        })
    }
}

/// Next hops for a domain: static `smtp-hosts`, else MX (RFC 5321 §5.1) with the implicit
/// MX fallback to A/AAAA, and RFC 7505 null MX as a permanent failure. Also the MX set when
/// the hops came from MX records. Only NXDOMAIN, or no record of the type asked, is taken as
/// "none"; every other DNS failure defers (`4.4.3`, the resolver's error), never bounces and
/// never falls back to the domain's own address.
pub async fn resolve(
    resolver: &TokioAsyncResolver,
    domain: &str,
    static_hosts: Option<Vec<Vec<HostPort>>>,
) -> (Resolution, u64, Option<MxSet>) {
    if let Some(levels) = static_hosts {
        let mut out = Vec::new();
        let mut all = Addresses::default();
        for level in levels {
            let mut found = Addresses::default();
            for h in level {
                addresses_into(resolver, &h.host, h.port, &mut found).await;
            }
            out.push(std::mem::take(&mut found.hops));
            all.none.append(&mut found.none);
            all.failed.append(&mut found.failed);
        }
        all.hops = out.iter().flatten().cloned().collect();
        // A configured host that is not in DNS today may be tomorrow: never a bounce.
        if let Some((resolution, ttl)) = all.outcome_without_hops(&format!("smtp-hosts of {domain}"), false) {
            return (resolution, ttl, None);
        }
        return (Resolution::Hops(out), RESOLVE_TTL_DEFAULT_MS, None);
    }
    match resolver.mx_lookup(fqdn(domain)).await {
        Ok(mx) => {
            let ttl_ms =
                mx.as_lookup().valid_until().saturating_duration_since(std::time::Instant::now()).as_millis() as u64;
            let records: Vec<(u16, String)> = mx.iter().map(|r| (r.preference(), r.exchange().to_utf8())).collect();
            let (levels, mx_set) = match mx::plan(&records) {
                (MxPlan::NullMx, _) => {
                    let reply = Reply::new(556, format!("5.1.10 {domain} does not accept mail (null MX, RFC 7505)"));
                    return (Resolution::Permanent(reply), ttl_ms.max(1_000), None);
                }
                (MxPlan::Levels(hosts), set) => {
                    let mut all = Addresses::default();
                    let mut levels: Vec<Vec<Hop>> = Vec::with_capacity(hosts.len());
                    for level in hosts {
                        let start = all.hops.len();
                        for host in level {
                            addresses_into(resolver, &host, 25, &mut all).await;
                        }
                        levels.push(all.hops[start..].to_vec());
                    }
                    if let Some((resolution, ttl)) = all.outcome_without_hops(&format!("MX hosts of {domain}"), true) {
                        return (resolution, ttl, None);
                    }
                    (levels, set)
                }
            };
            (Resolution::Hops(levels), ttl_ms.clamp(1_000, 86_400_000), Some(mx_set))
        }
        Err(e) => match e.kind() {
            ResolveErrorKind::NoRecordsFound { response_code, .. } if *response_code == ResponseCode::NXDomain => {
                let reply = Reply::new(550, format!("5.1.2 {domain}: no such domain"));
                (Resolution::Permanent(reply), RESOLVE_NONE_TTL_MS, None)
            }
            ResolveErrorKind::NoRecordsFound { response_code, .. } if *response_code == ResponseCode::NoError => {
                // No MX record: the domain itself is the implicit MX (RFC 5321 §5.1).
                let mut own = Addresses::default();
                addresses_into(resolver, domain, 25, &mut own).await;
                if let Some((resolution, ttl)) = own.outcome_without_hops(&format!("{domain} has no MX"), true) {
                    return (resolution, ttl, None);
                }
                (Resolution::NoMx(own.hops), RESOLVE_TTL_DEFAULT_MS, None)
            }
            _ => {
                let reply = Reply::new(451, format!("4.4.3 DNS lookup of the MX for {domain} failed: {e}"));
                (Resolution::Temporary(reply), RESOLVE_FAILURE_TTL_MS, None)
            }
        },
    }
}

/// Next hops learnt for `rollup-by-ip` and wildcard rollup queues: those of the last domain
/// rolled into each (the control plane's, shared by its resolutions).
pub type RollupHops = std::sync::Mutex<std::collections::HashMap<String, Vec<Vec<Hop>>>>;

/// A `NAME.rollup` queue's next hops (`<mx-rollup-list>`) when its `<domain>` gives no
/// `smtp-hosts`: the exact MX hosts listed for it, else those of the domains rolled into it.
pub async fn resolve_rollup(
    resolver: &TokioAsyncResolver,
    config: &Config,
    rollup: &str,
    learnt: &RollupHops,
) -> (Resolution, u64) {
    let hosts = config.mx_rollups.hosts_of(rollup);
    if !hosts.is_empty() {
        let mut found = Addresses::default();
        for h in hosts {
            addresses_into(resolver, h, 25, &mut found).await;
        }
        if let Some((resolution, ttl)) = found.outcome_without_hops(&format!("{rollup}'s MX hosts"), false) {
            return (resolution, ttl);
        }
        return (Resolution::Hops(vec![found.hops]), RESOLVE_TTL_DEFAULT_MS);
    }
    match learnt.lock().expect("not poisoned").get(rollup) {
        Some(levels) => (Resolution::Hops(levels.clone()), RESOLVE_TTL_DEFAULT_MS),
        None => {
            let reply = Reply::new(451, format!("4.4.4 no next hop known yet for {rollup}: give it smtp-hosts"));
            (Resolution::Temporary(reply), 30_000)
        }
    }
}

/// The `<mx-rollup-list>` queue a domain with this MX set joins (its most preferred hosts
/// all listed for one rollup), unless the domain says `disable-mx-rollup`; its next hops
/// are remembered for the rollup queue when it has no exact hosts of its own.
pub fn listed_rollup(
    config: &Config,
    domain: &str,
    mx: &MxSet,
    resolution: &Resolution,
    learnt: &RollupHops,
) -> Option<String> {
    if config.mx_rollups.entries.is_empty() || !config.domain_settings(domain).mx_rollup {
        return None;
    }
    let best = mx.iter().map(|(p, _)| *p).min()?;
    let hosts: Vec<&str> = mx.iter().filter(|(p, _)| *p == best).map(|(_, h)| h.as_str()).collect();
    let entry = config.mx_rollups.rollup_for(&hosts)?;
    if let Resolution::Hops(levels) = resolution {
        learnt.lock().expect("not poisoned").insert(entry.rollup.clone(), levels.clone());
    }
    Some(entry.rollup.clone())
}

#[cfg(test)]
mod tests {

    #[test]
    fn rollup_fingerprint_follows_settings_and_the_opt_out() {
        let text = "smtp-listener 127.0.0.1:25\n<virtual-mta v1>\n <domain c.test>\n max-smtp-out 3\n </domain>\n</virtual-mta>\n<domain b.test>\n max-smtp-out 5\n</domain>\n<domain off.test>\n disable-mx-rollup yes\n</domain>\n";
        let c = sluice_config::load("t.conf", text, &mut |_| Err("no".into())).unwrap();
        let f = |d: &str| c.rollup_fingerprint(d);
        assert_eq!(f("a.test"), f("z.test"));
        assert_ne!(f("a.test"), f("b.test"), "a global <domain> block differs");
        assert_ne!(f("a.test"), f("c.test"), "a VMTA's <domain> block differs");
        assert_eq!(f("off.test"), None);
    }
}
