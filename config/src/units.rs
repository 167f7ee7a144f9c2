//! Value parsers for PowerMTA's value forms: sizes (`40K`, `unlimited`), durations (`4d12h`,
//! `never`), rates (`83/10m`, `400/day`, `unlimited`, `0`), booleans, CIDRs (`10/8`), address
//! ranges and `[host]:port` next hops. Each returns a message fit for a user.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!("`{v}` is not a boolean; use yes or no")),
    }
}

/// `N{b|k|m|g|t}` (case-insensitive, `KB`/`MB` too), or a bare number of bytes.
pub fn parse_size(v: &str) -> Result<u64, String> {
    let bad = || format!("`{v}` is not a size; write e.g. 40K, 20M, 1G");
    let digits_end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(digits_end);
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        "T" | "TB" => 1 << 40,
        _ if digits.is_empty() => return Err(bad()),
        u => return Err(format!("`{v}`: unknown size unit `{u}`; use B, K, M, G or T")),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(mult).ok_or_else(|| format!("`{v}` is too large"))
}

/// A size limit: `unlimited` and `0` (PowerMTA's "no explicit limit") are None.
pub fn parse_size_limit(v: &str) -> Result<Option<u64>, String> {
    if v.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    parse_size(v).map(|n| (n > 0).then_some(n))
}

/// A count that may be `unlimited` (None); `0` stays 0 (the directive says what it means).
pub fn parse_count_or_unlimited(v: &str) -> Result<Option<u32>, String> {
    if v.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| format!("`{v}` is not a whole number or `unlimited`"))
}

/// `30s`, `10m`, `4h`, `2d`, `4d12h`, `1w`, `250ms`; a bare number is seconds.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("`{v}` is not a duration; write e.g. 30s, 10m, 4h, 4d12h");
    if v.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total_ms: u64 = 0;
    let mut number = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        let unit_ms: u64 = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 7 * 86_400_000,
            _ => return Err(bad()),
        };
        total_ms = total_ms.checked_add(n.checked_mul(unit_ms).ok_or_else(bad)?).ok_or_else(bad)?;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_millis(total_ms))
}

/// A duration or `never` (None).
pub fn parse_duration_or_never(v: &str) -> Result<Option<Duration>, String> {
    if v.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    parse_duration(v).map(Some)
}

/// A list of durations, `10m,10m,1h` (spaces after the commas allowed).
pub fn parse_durations(v: &str) -> Result<Vec<Duration>, String> {
    let list: Result<Vec<_>, _> = v.split(',').map(str::trim).filter(|d| !d.is_empty()).map(parse_duration).collect();
    match list? {
        l if l.is_empty() => Err(format!("`{v}` is not a list of durations; write e.g. 10m,1h,4h")),
        l => Ok(l),
    }
}

/// A rate: `count` events per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Rate {
    /// `0`: nothing may pass (PowerMTA's `max-msg-rate 0`).
    pub const ZERO: Rate = Rate { count: 0, period: Duration::from_secs(1) };

    pub fn is_zero(&self) -> bool {
        self.count == 0
    }
}

/// `N/[M]UNIT` with UNIT one of s, sec, second, m, min, minute, h, hr, hour, d, day (PowerMTA
/// 5's forms, plural too): `100/h`, `83/10m`, `400/day`, `5/sec`.
pub fn parse_rate(v: &str) -> Result<Rate, String> {
    let bad = || format!("`{v}` is not a rate; write e.g. 100/h, 83/10m, 400/day, 5/sec");
    let (count, per) = v.split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let per = per.trim();
    let digits_end = per.find(|c: char| !c.is_ascii_digit()).unwrap_or(per.len());
    let (mult, unit) = per.split_at(digits_end);
    let mult: u64 = if mult.is_empty() { 1 } else { mult.parse().map_err(|_| bad())? };
    let unit_secs: u64 = match unit.to_ascii_lowercase().as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        _ => return Err(bad()),
    };
    if mult == 0 {
        return Err(bad());
    }
    Ok(Rate { count, period: Duration::from_secs(mult.checked_mul(unit_secs).ok_or_else(bad)?) })
}

/// A rate limit: `unlimited` is None; `0` is `Rate::ZERO` (nothing passes).
pub fn parse_rate_limit(v: &str) -> Result<Option<Rate>, String> {
    match v.to_ascii_lowercase().as_str() {
        "unlimited" => Ok(None),
        "0" => Ok(Some(Rate::ZERO)),
        _ => parse_rate(v).map(Some),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix as u32) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix as u32) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            // `0/0` matches every client, IPv4 or IPv6.
            _ => self.prefix == 0,
        }
    }
}

/// `127.0.0.1`, `10.0.0.0/8`, `0/0`, `::1/128`, and the short IPv4 forms PowerMTA takes:
/// `10/8`, `10.1/16`, `10.1.0/24` (missing octets are 0).
pub fn parse_cidr(v: &str) -> Result<Cidr, String> {
    let bad = || format!("`{v}` is not an address or CIDR; write e.g. 10.0.0.0/8 or 0/0");
    let (addr, prefix) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
        None => (v, None),
    };
    let addr: IpAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) if prefix.is_some() && !addr.contains(':') => {
            let octets: Vec<&str> = addr.split('.').collect();
            if octets.is_empty() || octets.len() > 4 {
                return Err(bad());
            }
            let mut full = [0u8; 4];
            for (i, o) in octets.iter().enumerate() {
                full[i] = o.parse().map_err(|_| bad())?;
            }
            IpAddr::from(full)
        }
        Err(_) => return Err(bad()),
    };
    let width = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(width);
    if prefix > width {
        return Err(bad());
    }
    Ok(Cidr { addr, prefix })
}

/// The addresses of `smtp-source-host`: one IP, a CIDR (`10.0.0.0/30`), or a range
/// (`192.0.2.10-192.0.2.12`), at most `max` of them. Network and broadcast addresses of an
/// IPv4 CIDR wider than /31 are left out, and 127.0.0.1 is never one (PowerMTA's rule).
pub fn parse_ip_set(v: &str, max: usize) -> Result<Vec<IpAddr>, String> {
    let too_many = || format!("`{v}` names more than {max} addresses");
    if let Some((a, b)) = v.split_once('-') {
        let (a, b): (IpAddr, IpAddr) = match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return Err(format!("`{v}` is not an address range; write e.g. 192.0.2.10-192.0.2.12")),
        };
        let (IpAddr::V4(a), IpAddr::V4(b)) = (a, b) else {
            return Err(format!("`{v}`: ranges are IPv4 only; list IPv6 addresses one by one"));
        };
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a {
            return Err(format!("`{v}`: the range ends before it starts"));
        }
        if (b - a) as usize >= max {
            return Err(too_many());
        }
        return Ok((a..=b).map(|n| IpAddr::from(std::net::Ipv4Addr::from(n))).collect());
    }
    let c = parse_cidr(v)?;
    match c.addr {
        IpAddr::V4(net) if c.prefix < 32 => {
            let size = 1u64 << (32 - c.prefix);
            if size as usize > max + 2 {
                return Err(too_many());
            }
            let base = u32::from(net) & if c.prefix == 0 { 0 } else { u32::MAX << (32 - c.prefix) };
            let (first, last) = if c.prefix >= 31 { (0, size) } else { (1, size - 1) };
            Ok((first..last)
                .map(|i| IpAddr::from(std::net::Ipv4Addr::from(base + i as u32)))
                .filter(|ip| *ip != IpAddr::from([127, 0, 0, 1]))
                .collect())
        }
        IpAddr::V6(_) if c.prefix < 128 => Err(format!("`{v}`: give IPv6 source addresses one by one")),
        ip => Ok(vec![ip]),
    }
}

/// A listener address: `IP:PORT`, `[v6]:PORT`, PowerMTA's `0/0:25` (every address), or
/// `CIDR:PORT` (every address of this host in the range; taken here as all addresses, the
/// `<source>` rules still decide who may relay).
pub fn parse_listen(v: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = v.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = || format!("`{v}` is not IP:PORT; write e.g. 127.0.0.1:2525 or 0/0:25");
    let (cidr, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let c = parse_cidr(cidr).map_err(|_| bad())?;
    let full = if c.addr.is_ipv4() { 32 } else { 128 };
    if c.prefix == full {
        return Ok(SocketAddr::new(c.addr, port));
    }
    Ok(SocketAddr::new(if c.addr.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from([0u16; 8]) }, port))
}

/// One static next hop from `smtp-hosts`: `[127.0.0.1]:2526`, `[IPv6:2001:db8::1]`,
/// `[mx.example.com]`, `host:25`, or `lookup-mx:example.com` (the MX hosts of that domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
    /// `lookup-mx:DOMAIN`: `host` is a domain whose MX records give the hosts.
    pub lookup_mx: bool,
}

pub fn parse_hostport(v: &str) -> Result<HostPort, String> {
    let bad = || format!("`{v}` is not a next hop; write [IP]:PORT, host[:PORT] or lookup-mx:DOMAIN");
    if let Some(domain) = v.strip_prefix("lookup-mx:") {
        let domain = domain.trim().trim_end_matches('.');
        if domain.is_empty() {
            return Err(bad());
        }
        return Ok(HostPort { host: domain.to_ascii_lowercase(), port: 25, lookup_mx: true });
    }
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let host = host.strip_prefix("IPv6:").or_else(|| host.strip_prefix("ipv6:")).unwrap_or(host);
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => 25,
            None => return Err(bad()),
        };
        (host, port)
    } else {
        match v.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p.parse().map_err(|_| bad())?),
            _ => (v, 25),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(HostPort { host: host.to_ascii_lowercase(), port, lookup_mx: false })
}

/// `a, b; c` → preference levels `[[a, b], [c]]` (spaces around the separators allowed).
pub fn parse_smtp_hosts(v: &str) -> Result<Vec<Vec<HostPort>>, String> {
    v.split(';')
        .map(|level| level.split(',').filter(|h| !h.trim().is_empty()).map(|h| parse_hostport(h.trim())).collect())
        .filter(|level: &Result<Vec<HostPort>, String>| level.as_ref().map_or(true, |l| !l.is_empty()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (input, expected) in [
            ("40K", Some(40 << 10)),
            ("20M", Some(20 << 20)),
            ("1G", Some(1 << 30)),
            ("512", Some(512)),
            ("1X", None),
            ("M", None),
            ("2t", Some(2 << 40)),
            ("10mb", Some(10 << 20)),
            ("100b", Some(100)),
        ] {
            assert_eq!(parse_size(input).ok(), expected, "{input}");
        }
    }

    #[test]
    fn durations() {
        let s = Duration::from_secs;
        for (input, expected) in [
            ("30s", Some(s(30))),
            ("10m", Some(s(600))),
            ("4d12h", Some(s(4 * 86400 + 12 * 3600))),
            ("90", Some(s(90))),
            ("250ms", Some(Duration::from_millis(250))),
            ("4x", None),
            ("h", None),
            ("1h3", None),
        ] {
            assert_eq!(parse_duration(input).ok(), expected, "{input}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/h").unwrap(), Rate { count: 100, period: Duration::from_secs(3600) });
        assert_eq!(parse_rate("83/10m").unwrap(), Rate { count: 83, period: Duration::from_secs(600) });
        assert!(parse_rate("100").is_err());
        let day = Duration::from_secs(86_400);
        for (input, period) in [
            ("400/day", day),
            ("400/d", day),
            ("10/min", Duration::from_secs(60)),
            ("100/hr", Duration::from_secs(3600)),
            ("5/sec", Duration::from_secs(1)),
            ("100/15m", Duration::from_secs(900)),
            ("83/5s", Duration::from_secs(5)),
        ] {
            assert_eq!(parse_rate(input).unwrap().period, period, "{input}");
        }
        assert_eq!(parse_rate_limit("unlimited").unwrap(), None);
        assert!(parse_rate_limit("0").unwrap().unwrap().is_zero());
        assert_eq!(parse_size_limit("unlimited").unwrap(), None);
        assert_eq!(parse_size_limit("0").unwrap(), None);
        assert!(parse_rate("1/0s").is_err());
    }

    #[test]
    fn cidrs() {
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert!(c.contains("10.9.8.7".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(parse_cidr("0/0").unwrap().contains("::1".parse().unwrap()));
        assert!(parse_cidr("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!(!parse_cidr("127.0.0.1").unwrap().contains("127.0.0.2".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10/8").unwrap().contains("10.200.0.1".parse().unwrap()));
        assert!(parse_cidr("10.1.0/24").unwrap().contains("10.1.0.7".parse().unwrap()));
        assert!(!parse_cidr("10.1.0/24").unwrap().contains("10.1.1.7".parse().unwrap()));
        assert_eq!(parse_ip_set("192.0.2.10-192.0.2.12", 256).unwrap().len(), 3);
        assert_eq!(parse_ip_set("192.0.2.8/30", 256).unwrap().len(), 2);
        assert_eq!(parse_ip_set("192.0.2.9", 256).unwrap().len(), 1);
        assert!(parse_ip_set("10/8", 256).is_err());
        assert_eq!(parse_listen("0/0:25").unwrap(), "0.0.0.0:25".parse().unwrap());
        assert_eq!(parse_listen("192.0.2.0/28:25").unwrap(), "0.0.0.0:25".parse().unwrap());
        assert_eq!(parse_listen("127.0.0.1:2525").unwrap(), "127.0.0.1:2525".parse().unwrap());
    }

    #[test]
    fn hosts() {
        let levels = parse_smtp_hosts("[127.0.0.1]:2526,[127.0.0.2];mx.b.test").unwrap();
        assert_eq!(levels.len(), 2);
        assert_eq!(levels[0][0], HostPort { host: "127.0.0.1".into(), port: 2526, lookup_mx: false });
        let levels = parse_smtp_hosts("h1.test.com, h2.test.com; [10.1.1.1]:2525; last.test.com").unwrap();
        assert_eq!(levels.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1, 1]);
        assert_eq!(levels[1][0], HostPort { host: "10.1.1.1".into(), port: 2525, lookup_mx: false });
        let mx = parse_smtp_hosts("lookup-mx:example.com").unwrap();
        assert_eq!(mx[0][0], HostPort { host: "example.com".into(), port: 25, lookup_mx: true });
        assert_eq!(parse_hostport("[IPv6:2001:db8::1]:26").unwrap().host, "2001:db8::1");
        let levels = parse_smtp_hosts("[127.0.0.1]:2526,[127.0.0.2];mx.b.test").unwrap();
        assert_eq!(levels[0][1].port, 25);
        assert_eq!(levels[1][0].host, "mx.b.test");
        assert!(parse_hostport("[1.2.3.4]x").is_err());
    }
}
